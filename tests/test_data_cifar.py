"""CIFAR python archives: the real CIFAR-10 subset in every path form, the official
Python 2 encoding, CIFAR-100's layout, and tampered or broken files."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from trajdistill.data import DataError, load_dataset
from trajdistill.data.cifar import CIFAR_MEAN, CIFAR_STD
from trajdistill.data.safe_pickle import safe_loads

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def archive(shared_data):
    return shared_data / "cifar10-subset" / ARCHIVE


@pytest.fixture(scope="module")
def cifar10(archive):
    return load_dataset("CIFAR10", archive)


@pytest.fixture(scope="module")
def members(archive) -> dict[str, dict]:
    """The real batches, unpickled (safely), keyed by member name."""
    with tarfile.open(archive) as tar:
        return {os.path.basename(m.name): safe_loads(tar.extractfile(m).read(), m.name)
                for m in tar if m.isfile()}


@pytest.fixture(scope="module")
def small(members) -> dict[str, dict]:
    """The real batches cut to 20 images each: enough for the error cases, quick to pack."""
    cut = {}
    for name, d in members.items():
        cut[name] = {k: v[:20] if k in (b"data", b"labels", b"filenames") else v for k, v in d.items()}
    return cut


def write_tar(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def same(a, b) -> None:
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert a.classes == b.classes


# ------------------------------------------------------------------ the real subset

def test_real_subset_shapes_counts_and_normalisation(cifar10):
    assert cifar10.name == "CIFAR10" and cifar10.classes == CLASSES
    assert cifar10.train.images.shape == (5000, 3, 32, 32)
    assert cifar10.test.images.shape == (1000, 3, 32, 32)
    assert cifar10.train.images.dtype == torch.uint8 and cifar10.train.labels.dtype == torch.int64
    assert cifar10.train.class_counts() == [500] * 10
    assert cifar10.test.class_counts() == [100] * 10
    assert cifar10.preprocess.mean == CIFAR_MEAN and cifar10.preprocess.std == CIFAR_STD
    assert cifar10.preprocess.zca is None


def test_pixels_are_rgb_planes_row_major(cifar10, members):
    # data row = R plane, G plane, B plane, each 32 rows of 32: pixel (r, c) of channel k
    # sits at k*1024 + r*32 + c. Check against the raw rows, off-diagonal pixels included.
    raw = members["data_batch_1"][b"data"]
    img = cifar10.train.images[7].numpy()
    for k, r, c in [(0, 0, 31), (1, 31, 0), (2, 5, 17), (0, 17, 5)]:
        assert img[k, r, c] == raw[7, k * 1024 + r * 32 + c]
    assert cifar10.train.labels[:1000].tolist() == members["data_batch_1"][b"labels"]


def test_archive_folder_and_parents_give_identical_tensors(cifar10, archive, tmp_path):
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    for path in (archive.parent, tmp_path / "extracted", tmp_path / "extracted" / FOLDER):
        same(load_dataset("CIFAR10", path), cifar10)


# ------------------------------------------------------------------ the official encoding

def py2_pickle(obj) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for the official batches: strings
    are Python 2 `str` (BINSTRING), arrays go through numpy's _reconstruct."""
    out = bytearray(b"\x80\x02")
    _py2(obj, out)
    return bytes(out + b".")


def _py2(obj, out: bytearray) -> None:
    if isinstance(obj, dict):
        out += b"}("
        for k, v in obj.items():
            _py2(k, out)
            _py2(v, out)
        out += b"u"
    elif isinstance(obj, (list, tuple)):
        out += b"](" if isinstance(obj, list) else b"("
        for v in obj:
            _py2(v, out)
        out += b"e" if isinstance(obj, list) else b"t"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"J" + struct.pack("<i", obj)
    elif obj is None:
        out += b"N"
    elif isinstance(obj, (bytes, str)):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        out += b"T" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, np.ndarray):
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _py2((0,), out)
        _py2("b", out)
        out += b"\x87R("  # TUPLE3, REDUCE, then the state tuple for BUILD
        _py2(1, out)
        _py2(tuple(obj.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2(("u1", 0, 1), out)
        out += b"R"
        _py2((3, "|", None, None, None, -1, -1, 0), out)
        out += b"b"
        _py2(False, out)
        _py2(obj.tobytes(), out)
        out += b"tb"
    else:
        raise TypeError(type(obj))


def test_python2_encoded_archive_loads_the_same(members, cifar10, tmp_path):
    files = {f"{FOLDER}/{name}": py2_pickle(d) for name, d in members.items()}
    # The writer is right if plain pickle reads it back the way the usual recipe does.
    back = pickle.loads(files[f"{FOLDER}/data_batch_2"], encoding="bytes")
    assert np.array_equal(back[b"data"], members["data_batch_2"][b"data"])
    write_tar(tmp_path / ARCHIVE, files)
    same(load_dataset("CIFAR10", tmp_path), cifar10)


# ------------------------------------------------------------------ CIFAR-100 layout

def cifar100_files(members, n: int = 600) -> dict[str, bytes]:
    """A cifar-100-python archive made of real CIFAR-10 pixels with 100 fine labels."""
    def batch(src, label_offset):
        data = src[b"data"][:n]
        fine = [(lab * 10 + i + label_offset) % 100 for i, lab in enumerate(src[b"labels"][:n])]
        return {b"data": data, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                b"filenames": src[b"filenames"][:n], b"batch_label": b"x"}
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    parts = {"train": batch(members["data_batch_1"], 0), "test": batch(members["test_batch"], 3),
             "meta": meta}
    return {f"cifar-100-python/{k}": pickle.dumps(v, protocol=4) for k, v in parts.items()}


def test_cifar100_uses_fine_labels(members, tmp_path):
    files = cifar100_files(members)
    write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    splits = load_dataset("CIFAR100", tmp_path / "cifar-100-python.tar.gz")
    assert splits.name == "CIFAR100" and splits.num_classes == 100
    assert splits.classes[:2] == ["fine0", "fine1"]
    assert splits.train.images.shape == (600, 3, 32, 32) and splits.test.images.shape == (600, 3, 32, 32)
    expected = pickle.loads(files["cifar-100-python/train"])[b"fine_labels"]
    assert splits.train.labels.tolist() == expected
    assert splits.preprocess.mean == CIFAR_MEAN and splits.preprocess.std == CIFAR_STD
    assert torch.equal(splits.train.images[:5].reshape(5, -1),
                       torch.from_numpy(members["data_batch_1"][b"data"][:5]))


# ------------------------------------------------------------------ bad input

class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def tampered(small, tmp_path, name: str, payload) -> str:
    files = {f"{FOLDER}/{k}": pickle.dumps(v, protocol=2) for k, v in small.items()}
    files[f"{FOLDER}/{name}"] = pickle.dumps(payload, protocol=2)
    write_tar(tmp_path / ARCHIVE, files)
    return str(tmp_path / ARCHIVE)


def test_pickle_that_calls_os_system_is_refused(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tampered(small, tmp_path, "data_batch_3", {b"data": RunsCode(), b"labels": []})
    with pytest.raises(DataError, match=r"data_batch_3.*refused global (posix|os|nt)\.system"):
        load_dataset("CIFAR10", path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload, problem", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": {1, 2}}, r"refused global .*set"),
    ({b"data": np.array([[object()]], dtype=object), b"labels": [0]}, r"refused global|object"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, r"2 images but 3 labels"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"N x 3072"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"label outside 0\.\.9"),
    ({b"labels": [0, 1]}, r"no 'data' entry"),
    ([1, 2, 3], r"expected a pickled dict"),
])
def test_pickle_with_unexpected_content_is_refused(small, tmp_path, payload, problem):
    path = tampered(small, tmp_path, "data_batch_2", payload)
    with pytest.raises(DataError, match=problem) as err:
        load_dataset("CIFAR10", path)
    assert "data_batch_2" in str(err.value)


def test_dtype_flags_cannot_turn_bytes_into_objects():
    # numpy accepts any flags in dtype.__setstate__ (63 = "holds Python objects"); the
    # restricted unpickler rebuilds dtypes from their name, so the flags are dropped.
    raw = pickle.dumps(np.zeros(8, np.uint8), protocol=2)
    evil = raw.replace(b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t")
    assert evil != raw
    arr = safe_loads(evil, "evil")
    assert arr.dtype == np.uint8 and not arr.dtype.hasobject and not arr.any()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_safe_loads_reads_numeric_arrays_at_every_protocol(protocol):
    data = {b"a": np.arange(24, dtype=">i4").reshape(2, 3, 4), "b": np.asfortranarray(np.eye(3)),
            "c": [b"", "text", 7, None, True, 1.5], "d": np.zeros((0, 3072), np.uint8)}
    back = safe_loads(pickle.dumps(data, protocol=protocol), "t")
    for key in (b"a", "b", "d"):
        assert back[key].dtype == data[key].dtype and np.array_equal(back[key], data[key])
    assert back["c"] == data["c"]


def test_missing_path_or_members(tmp_path, small):
    with pytest.raises(DataError, match=r"nowhere.*missing"):
        load_dataset("CIFAR10", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"contains neither cifar-10-python\.tar\.gz"):
        load_dataset("CIFAR10", tmp_path)
    files = {f"{FOLDER}/{k}": pickle.dumps(v, protocol=2) for k, v in small.items() if k != "test_batch"}
    write_tar(tmp_path / ARCHIVE, files)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: no cifar-10-batches-py/test_batch"):
        load_dataset("CIFAR10", tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_damaged_archive(archive, tmp_path, damage):
    data = archive.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"this is not a tar file" * 10
    else:  # a corrupted gzip stream: the CRC or the deflate data no longer agree
        data = data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:]
    bad = tmp_path / ARCHIVE
    bad.write_bytes(data)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: truncated or corrupt archive"):
        load_dataset("CIFAR10", bad)
