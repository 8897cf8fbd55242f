"""Registration of the built-in loaders (one line each; the loaders live in their modules)."""
from __future__ import annotations

from .digits import load_digits_splits
from .registry import register


@register("digits")
def _digits(data_path=None, **options):
    # embedded and fixed (8x8, its own split): --res, --labels, --subset ... are refused, not
    # ignored; data_path is ignored (there are no files)
    _take("digits", options)
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


# --- Real datasets in the formats users download (one loader module per format) ---
# Loaders are imported when used, so `import trajdistill` stays light (no Pillow needed
# for the embedded digits). Options a loader does not know are refused unless None,
# so a typo (`sise=64`) is an error while a CLI may pass its unset defaults.
def _take(name: str, options: dict, known: tuple[str, ...] = ()) -> dict:
    from .base import DataError
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise DataError(f"{name} does not take option(s) {', '.join(unknown)}"
                        + (f"; it takes {', '.join(known)}" if known else ""))
    return {k: v for k, v in options.items() if k in known and v is not None}


@register("CIFAR10")
def _cifar10(data_path=None, **options):
    from .cifar import CIFAR10, load_cifar
    return load_cifar(data_path, CIFAR10, **_take("CIFAR10", options))


@register("CIFAR100")
def _cifar100(data_path=None, **options):
    from .cifar import CIFAR100, load_cifar
    return load_cifar(data_path, CIFAR100, **_take("CIFAR100", options))


@register("MNIST")
def _mnist(data_path=None, **options):
    from .mnist import load_mnist
    return load_mnist(data_path, "MNIST", **_take("MNIST", options))


@register("FashionMNIST")
def _fashion_mnist(data_path=None, **options):
    from .mnist import load_mnist
    return load_mnist(data_path, "FashionMNIST", **_take("FashionMNIST", options))


@register("ImageNet")
def _imagenet(data_path=None, subset=None, **options):
    from .imagenet import load_imagenet_subset
    return load_imagenet_subset(data_path, subset, **_take("ImageNet", options, ("res", "workers")))


@register("Tiny")
def _tiny(data_path=None, **options):
    from .tiny import load_tiny_imagenet
    return load_tiny_imagenet(data_path, **_take("Tiny", options, ("workers",)))


@register("imagefolder")
def _imagefolder(data_path=None, **options):
    from .imagefolder import load_image_folder
    return load_image_folder(data_path, **_take("imagefolder", options,
                                                ("size", "res", "crop", "mode", "workers",
                                                 "test_fraction")))


LABELLED_OPTIONS = ("labels", "id_column", "label_column", "classes", "class_names",
                    "test_fraction", "res", "crop", "workers")


@register("labelled")
def _labelled(data_path=None, **options):
    """A flat folder of images named by id + a labels CSV (data/labelled.py)."""
    from .labelled import load_labelled_folder
    return load_labelled_folder(data_path, **_take("labelled", options, LABELLED_OPTIONS))
