"""Datasets: uint8 images + metadata, loaded by name (see registry.load_dataset)."""
from .base import DataError, DatasetSplits, ImageDataset, Preprocess, channel_stats
from .registry import dataset_names, load_dataset, register
from . import builtin  # noqa: F401,E402 (registers the built-in loaders; imports none of them)
from .zca import ZCA

__all__ = ["DataError", "DatasetSplits", "ImageDataset", "Preprocess", "ZCA", "channel_stats",
           "dataset_names", "load_dataset", "register"]
