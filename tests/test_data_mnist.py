"""MNIST-style idx files, written here in the real format (there is no MNIST file in
shared/data) from real CIFAR images turned grayscale and cut to 28 x 28."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill.data import DataError, load_dataset
from trajdistill.data.mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx

FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def write_idx(path: Path, array: np.ndarray, gz: bool = False, type_code: int = 0x08) -> Path:
    """The idx format: 0, 0, type code, ndim; big-endian uint32 dims; the bytes in C order."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture(scope="module")
def gray(shared_data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (N, 28, 28) uint8 grayscale, (N,) labels, from the real CIFAR subset."""
    cifar = load_dataset("CIFAR10", shared_data / "cifar10-subset")
    out = {}
    for split, ds, n in (("train", cifar.train, 600), ("test", cifar.test, 200)):
        rgb = ds.images[:n].permute(0, 2, 3, 1).numpy()
        images = np.stack([np.asarray(Image.fromarray(x).convert("L"))[2:30, 2:30] for x in rgb])
        out[split] = images, ds.labels[:n].numpy().astype(np.uint8)
    return out


def write_split_files(folder: Path, gray, gz=False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for (split, kind), name in FILES.items():
        array = gray[split][0 if kind == "images" else 1]
        write_idx(folder / (name + (".gz" if gz else "")), array, gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(gray, tmp_path, gz):
    write_split_files(tmp_path, gray, gz=gz)
    splits = load_dataset("MNIST", tmp_path)
    assert splits.name == "MNIST" and splits.classes == [str(d) for d in range(10)]
    assert splits.train.images.shape == (600, 1, 28, 28) and splits.test.images.shape == (200, 1, 28, 28)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    for split in ("train", "test"):
        ds = getattr(splits, split)
        assert np.array_equal(ds.images[:, 0].numpy(), gray[split][0])
        assert np.array_equal(ds.labels.numpy(), gray[split][1])
    assert splits.preprocess.mean == (0.1307,) and splits.preprocess.std == (0.3081,)


def test_fashion_mnist_in_torchvision_layout(gray, tmp_path):
    write_split_files(tmp_path / "FashionMNIST" / "raw", gray, gz=True)
    splits = load_dataset("FashionMNIST", tmp_path)
    assert splits.name == "FashionMNIST" and splits.classes[0] == "T-shirt/top"
    assert splits.preprocess.mean == (0.2861,) and splits.preprocess.std == (0.3530,)
    assert np.array_equal(splits.test.images[:, 0].numpy(), gray["test"][0])


def test_read_idx_checks_the_magic_number(gray, tmp_path):
    images = write_idx(tmp_path / "x", gray["test"][0])
    assert np.array_equal(read_idx(images, IMAGES_MAGIC), gray["test"][0])
    with pytest.raises(DataError, match=r"x: bad magic number 0x00000803, expected 0x00000801"):
        read_idx(images, LABELS_MAGIC)


def broken(gray, tmp_path, name: str, data: bytes | None = None, array=None) -> Path:
    write_split_files(tmp_path, gray)
    path = tmp_path / name
    if array is not None:
        write_idx(path, array)
    if data is not None:
        path.write_bytes(data)
    return path


def test_mismatched_counts(gray, tmp_path):
    broken(gray, tmp_path, FILES["train", "labels"], array=gray["train"][1][:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds 600 images but "
                                        r".*train-labels-idx1-ubyte holds 599 labels"):
        load_dataset("MNIST", tmp_path)


def test_bad_magic(gray, tmp_path):
    path = broken(gray, tmp_path, FILES["test", "images"])
    path.write_bytes(b"\x00\x00\x08\x02" + path.read_bytes()[4:])  # says 2-d
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: bad magic number 0x00000802"):
        load_dataset("MNIST", tmp_path)
    path.write_bytes(b"GIF89a" + path.read_bytes())
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: bad magic number 0x47494638 \(not an idx file\)"):
        load_dataset("MNIST", tmp_path)


def test_truncated_data(gray, tmp_path):
    path = broken(gray, tmp_path, FILES["train", "images"])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 470316 bytes, but the header's "
                                        r"shape \(600, 28, 28\) needs 470416"):
        load_dataset("MNIST", tmp_path)


def test_corrupt_gzip(gray, tmp_path):
    write_split_files(tmp_path, gray, gz=True)
    path = tmp_path / (FILES["train", "labels"] + ".gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: unreadable or corrupt"):
        load_dataset("MNIST", tmp_path)


def test_label_out_of_range_and_missing_file(gray, tmp_path):
    labels = gray["test"][1].copy()
    labels[7] = 10
    broken(gray, tmp_path, FILES["test", "labels"], array=labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 10 outside 0\.\.9"):
        load_dataset("MNIST", tmp_path)
    (tmp_path / FILES["test", "labels"]).unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[\.gz\] in"):
        load_dataset("MNIST", tmp_path)
    with pytest.raises(DataError, match=r"missing directory"):
        load_dataset("MNIST", tmp_path / "absent")
