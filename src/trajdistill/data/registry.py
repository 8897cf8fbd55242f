"""Datasets by name: `load_dataset("CIFAR10", data_path)` -> DatasetSplits.

Each loader is registered under its name (case-insensitive); the built-in ones by
data/builtin.py, which the package imports (this module imports no loader). A name that is not
registered but is an existing directory is read as an image folder (train/<class>/,
test/<class>/), or, with a `labels=` CSV, as a flat folder of images named by id.
"""
from __future__ import annotations

import os
from typing import Callable

from .base import DataError, DatasetSplits

Loader = Callable[..., DatasetSplits]
_LOADERS: dict[str, Loader] = {}


def register(name: str):
    def deco(fn: Loader) -> Loader:
        _LOADERS[name.lower()] = fn
        return fn
    return deco


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, data_path: str | None = None, zca: bool = False, **options) -> DatasetSplits:
    """Load a dataset by name (see `dataset_names()`), offline, from `data_path`."""
    name = str(name)  # a Path to an image folder is welcome too
    fn = _LOADERS.get(name.lower())
    if fn is None:
        if os.path.isdir(name) and options.get("labels") is not None:
            fn, data_path = _LOADERS["labelled"], name
        elif os.path.isdir(name) and "imagefolder" in _LOADERS:
            fn, data_path = _LOADERS["imagefolder"], name
        else:
            raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(_LOADERS))} "
                            "(or the path of an image folder: train/<class>/ and test/<class>/, or class "
                            "folders only)")
    splits = fn(data_path=data_path, **options)
    if zca:
        from .zca_apply import with_zca
        splits = with_zca(splits)
    return splits
