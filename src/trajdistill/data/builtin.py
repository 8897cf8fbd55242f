"""Registration of the built-in loaders (one line each; the loaders live in their modules)."""
from __future__ import annotations

from .digits import load_digits_splits
from .registry import register


@register("digits")
def _digits(data_path=None, **_):
    return load_digits_splits()
