"""CIFAR-10 / CIFAR-100 from the official python archives, as users download them.

`data_path` may be the archive (`cifar-10-python.tar.gz`), a folder holding it, the
extracted folder (`cifar-10-batches-py/`), or a folder holding that. The archive is read
in place (tarfile, streamed once, nothing written to disk).

Each batch is a pickled dict: `data` N x 3072 uint8 (the R plane, then G, then B, each
32 x 32 row-major), `labels` (CIFAR-100: `fine_labels`, used here, and `coarse_labels`),
`filenames`, `batch_label`; the meta file holds the class names. Keys are bytes in the
official (Python 2) files. Pickles are read with safe_pickle, never plain `pickle`.
"""
from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .base import DataError, DatasetSplits, ImageDataset, Preprocess
from .safe_pickle import safe_loads

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarFormat:
    name: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels_key: str
    names_key: str
    num_classes: int

    @property
    def members(self) -> tuple[str, ...]:
        return self.train + self.test + (self.meta,)


CIFAR10 = CifarFormat("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", "labels", "label_names", 10)
CIFAR100 = CifarFormat("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python",
                       ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100)


def load_cifar(data_path, fmt: CifarFormat = CIFAR10) -> DatasetSplits:
    """The CIFAR dataset of format `fmt` (CIFAR10 or CIFAR100) from `data_path`."""
    raw = read_members(locate(data_path, fmt), fmt)
    classes = _class_names(raw[fmt.meta], _source(data_path, fmt, fmt.meta), fmt)
    splits = {}
    for split, members in (("train", fmt.train), ("test", fmt.test)):
        parsed = [parse_batch(raw[m], _source(data_path, fmt, m), fmt) for m in members]
        images = np.concatenate([p[0] for p in parsed])
        labels = np.concatenate([p[1] for p in parsed])
        splits[split] = ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes)
    return DatasetSplits(fmt.name, splits["train"], splits["test"], Preprocess(CIFAR_MEAN, CIFAR_STD))


# ---------------------------------------------------------------- where the files are

def locate(data_path, fmt: CifarFormat) -> Path:
    """The archive file or the extracted batch folder that `data_path` points at."""
    if data_path is None:
        raise DataError(f"no data_path given: pass {fmt.archive} or the folder holding it")
    path = Path(data_path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: missing (expected {fmt.archive} or {fmt.folder}/)")
    for candidate in (path, path / fmt.folder):
        if (candidate / fmt.meta).is_file():
            return candidate
    if (path / fmt.archive).is_file():
        return path / fmt.archive
    raise DataError(f"{path}: contains neither {fmt.archive} nor {fmt.folder}/")


def read_members(source: Path, fmt: CifarFormat) -> dict[str, bytes]:
    """The raw bytes of every batch and the meta file, from the folder or the archive."""
    if source.is_dir():
        missing = [m for m in fmt.members if not (source / m).is_file()]
        if missing:
            raise DataError(f"{source}: missing {', '.join(missing)}")
        return {m: (source / m).read_bytes() for m in fmt.members}
    return _read_archive(source, fmt)


def _read_archive(archive: Path, fmt: CifarFormat) -> dict[str, bytes]:
    # One sequential pass: seeking backwards in a .gz stream means decompressing again.
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if member.isfile() and name.name in fmt.members and name.parent.name == fmt.folder:
                    found[name.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e})") from None
    missing = [m for m in fmt.members if m not in found]
    if missing:
        raise DataError(f"{archive}: no {', '.join(f'{fmt.folder}/{m}' for m in missing)} inside")
    return found


def _source(data_path, fmt: CifarFormat, member: str) -> str:
    return f"{data_path}: {fmt.folder}/{member}"


# ---------------------------------------------------------------- what the pickles hold

def _plain_keys(obj, source: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_batch(data: bytes, source: str, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 (N, 3, 32, 32) images and int64 (N,) labels."""
    batch = _plain_keys(safe_loads(data, source), source)
    for key in ("data", fmt.labels_key):
        if key not in batch:
            raise DataError(f"{source}: no {key!r} entry (has {sorted(map(str, batch))})")
    images = _pixels(batch["data"], source)
    labels = _labels(batch[fmt.labels_key], source, fmt)
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    return images.reshape(-1, 3, 32, 32), labels


def _pixels(data, source: str) -> np.ndarray:
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, _PIXELS) if len(data) % _PIXELS == 0 else data
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{source}: 'data' must be N x {_PIXELS} pixels, got {shape}")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{source}: 'data' must hold 0..255 integers, got {data.dtype}")
    return np.ascontiguousarray(data, dtype=np.uint8)


def _labels(labels, source: str, fmt: CifarFormat) -> np.ndarray:
    ok = isinstance(labels, (list, tuple, np.ndarray)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels)
    if not ok:
        raise DataError(f"{source}: {fmt.labels_key!r} must be a list of ints")
    out = np.asarray(labels, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= fmt.num_classes):
        raise DataError(f"{source}: label outside 0..{fmt.num_classes - 1}")
    return out


def _class_names(data: bytes, source: str, fmt: CifarFormat) -> list[str]:
    meta = _plain_keys(safe_loads(data, source), source)
    names = meta.get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes:
        raise DataError(f"{source}: {fmt.names_key!r} must list {fmt.num_classes} class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
