"""Registration of the built-in loaders (one line each; the loaders live in their modules)."""
from __future__ import annotations

from .digits import load_digits_splits
from .registry import register


@register("digits")
def _digits(data_path=None, **_):
    return load_digits_splits()


# --- Galaxy Zoo 2 (a directory built by `trajdistill gzoo2 build`; see trajdistill.gzoo2) ---
# Names are case-insensitive, so "GZoo2" is also the generic "gzoo2": it loads any build.
def _gzoo2(name):
    def load(data_path=None, **options):
        from ..gzoo2.dataset import load_gzoo2_dir
        return load_gzoo2_dir(data_path, name, **options)
    return load


register("GZoo2")(_gzoo2("GZoo2"))
register("GZoo2_aug")(_gzoo2("GZoo2_aug"))
