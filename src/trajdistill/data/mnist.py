"""MNIST and Fashion-MNIST from their four idx files (plain or .gz).

The idx format: a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), the dimensions as big-endian uint32, then the data in C order. Images are
0x00000803 (uint8, 3-d: N x 28 x 28), labels 0x00000801 (uint8, 1-d: N).

Files are looked for in `data_path` itself, or in the torchvision layout
`data_path/<MNIST|FashionMNIST>/raw/` or `data_path/raw/`.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DataError, DatasetSplits, ImageDataset, Preprocess

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

VARIANTS = {
    "MNIST": {"classes": [str(d) for d in range(10)], "mean": (0.1307,), "std": (0.3081,)},
    "FashionMNIST": {"classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                 "Shirt", "Sneaker", "Bag", "Ankle boot"],
                     "mean": (0.2861,), "std": (0.3530,)},
}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    """An idx file (gzip-compressed or not) -> numpy array; `magic` is checked if given."""
    data = _read_bytes(Path(path))
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an idx file")
    found = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: bad magic number 0x{found:08x} (not an idx file)")
    if magic is not None and found != magic:
        raise DataError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, but the header's shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        # Decide by content, not name: some mirrors ship gzip data without the .gz suffix.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable or corrupt ({type(e).__name__}: {e})") from None


def find_idx_file(folders: list[Path], split: str, kind: str) -> Path:
    """`kind` is "images" or "labels"; the plain file wins over the .gz when both exist."""
    ndim = 3 if kind == "images" else 1
    prefix = _SPLIT_PREFIX[split]
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for folder in folders:
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    raise DataError(f"no {names[0]}[.gz] in {', '.join(str(f) for f in folders)}")


def load_idx_split(folders: list[Path], split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) uint8 images and (N,) labels, with counts and label range checked."""
    images_path = find_idx_file(folders, split, "images")
    labels_path = find_idx_file(folders, split, "labels")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                        f"holds {labels.shape[0]} labels")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images[:, None], labels


def load_mnist(data_path, variant: str = "MNIST") -> DatasetSplits:
    """MNIST or FashionMNIST (`variant`) from its idx files: 1 x 28 x 28, 10 classes."""
    if variant not in VARIANTS:
        raise DataError(f"unknown idx dataset {variant!r}; known: {', '.join(VARIANTS)}")
    if data_path is None:
        raise DataError(f"no data_path given: pass the folder that holds the {variant} idx files")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: missing directory")
    spec = VARIANTS[variant]
    folders = [root, root / variant / "raw", root / "raw"]
    splits = {}
    for split in ("train", "test"):
        images, labels = load_idx_split(folders, split, len(spec["classes"]))
        splits[split] = ImageDataset(torch.from_numpy(np.ascontiguousarray(images)),
                                     torch.from_numpy(labels.astype(np.int64)), spec["classes"])
    return DatasetSplits(variant, splits["train"], splits["test"], Preprocess(spec["mean"], spec["std"]))
