"""Image folders: the real CIFAR-10 JPEG folder as a generic image folder, and ImageNet-subset
and Tiny ImageNet layouts built in tmp_path from those real JPEGs; the decode cache; bad input."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill.data import DataError, channel_stats, load_dataset
from trajdistill.data import imagefolder
from trajdistill.data.imagefolder import resize_center_crop
from trajdistill.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_SUBSETS, imagenet_class_index
from trajdistill.data.safe_pickle import safe_loads

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache, never ~/.cache or the data folder."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TRAJDISTILL_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def folder(shared_data) -> Path:
    return shared_data / "cifar10-imagefolder"


@pytest.fixture(scope="module")
def pickled(shared_data) -> dict[str, np.ndarray]:
    """file name -> (3, 32, 32) pixels from the CIFAR pickles (`airplane_train_0000.jpg`)."""
    out = {}
    with tarfile.open(shared_data / "cifar10-subset" / "cifar-10-python.tar.gz") as tar:
        for m in tar:
            if m.isfile() and "batch" in os.path.basename(m.name) and "meta" not in m.name:
                d = safe_loads(tar.extractfile(m).read(), m.name)
                for name, row in zip(d[b"filenames"], d[b"data"]):
                    out[name.decode()] = row.reshape(3, 32, 32)
    return out


def decode(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


# ------------------------------------------------------------------ generic image folder

def test_real_image_folder_by_path(folder, pickled):
    splits = load_dataset(str(folder))
    assert splits.name == "imagefolder" and splits.classes == CLASSES
    assert splits.train.images.shape == (200, 3, 32, 32) and splits.test.images.shape == (100, 3, 32, 32)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    assert splits.train.class_counts() == [20] * 10 and splits.test.class_counts() == [10] * 10
    mean, std = channel_stats(splits.train.images)
    assert splits.preprocess.mean == mean and splits.preprocess.std == std
    # Each image is the pickled CIFAR image of the same name, under the label of its folder:
    # this pins labels, channel order and H/W orientation against the other loader.
    for split, ds, per_class in (("train", splits.train, 20), ("test", splits.test, 10)):
        for i in range(len(ds)):
            cls = ds.classes[ds.labels[i]]
            name = f"{cls}_{split}_{i % per_class:04d}.jpg"
            assert np.array_equal(ds.images[i].numpy(), pickled[name]), name


def test_val_folder_and_size_option(folder, tmp_path):
    shutil.copytree(folder / "train", tmp_path / "d" / "train")
    shutil.copytree(folder / "test", tmp_path / "d" / "val")
    splits = load_dataset("imagefolder", tmp_path / "d", size=20)
    assert splits.train.images.shape == (200, 3, 20, 20) and splits.test.images.shape == (100, 3, 20, 20)
    first = Image.open(folder / "train" / "airplane" / "0000.jpg").convert("RGB")
    expected = np.asarray(first.resize((20, 20), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(splits.train.images[0].numpy(), expected)


def test_mixed_sizes_need_res_and_modes_become_rgb(folder, tmp_path):
    root = tmp_path / "d"
    for split in ("train", "test"):
        for cls in ("bird", "cat"):
            (root / split / cls).mkdir(parents=True)
            for j, src in enumerate(sorted((folder / split / cls).iterdir())[:3]):
                im = Image.open(src)
                if j == 1:  # a grayscale, differently sized PNG among RGB JPEGs
                    im.convert("L").resize((48, 40)).save(root / split / cls / f"{j}.png")
                else:
                    shutil.copy(src, root / split / cls / f"{j}.jpg")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # ignored: hidden
    # without --res the images would be stretched to one of their sizes: refused, naming the
    # two sizes and the flag
    with pytest.raises(DataError, match=r"not all one size \(32x32 0.jpg, 48x40 1.png\); give --res"):
        load_dataset("imagefolder", root)
    splits = load_dataset("imagefolder", root, res=32)
    assert splits.train.images.shape == (6, 3, 32, 32)
    gray = splits.train.images[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_deeper_than_8_bit_grey_images_are_scaled_not_clipped(folder, tmp_path):
    """Medical and astronomical images often come as 16-bit PNGs (12-bit detector data in a
    16-bit file) or float TIFFs; Pillow's own conversion clips them at 255 (a white image).
    Each real grey image saved at a deeper depth must decode to the same 8-bit pixels."""
    sources = sorted((folder / "train" / "cat").iterdir())[:4]
    grey = [np.asarray(Image.open(f).convert("L")) for f in sources]
    root = tmp_path / "deep"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    writers = [
        lambda g, p: Image.fromarray((g.astype(np.uint16) * 257)).save(p.with_suffix(".png")),
        lambda g, p: Image.fromarray(np.rint(g * (4095 / 255)).astype(np.uint16)).save(
            p.with_suffix(".png")),  # 12 bits in a 16-bit PNG
        lambda g, p: Image.fromarray((g / 255).astype(np.float32)).save(p.with_suffix(".tif")),
        lambda g, p: Image.fromarray(g).save(p.with_suffix(".png")),  # plain 8-bit
    ]
    for cls in ("a", "b"):
        for j, (g, write) in enumerate(zip(grey, writers)):
            write(g, root / cls / str(j))
    deep = Image.open(root / "a" / "1.png")
    assert deep.mode.startswith("I") and np.asarray(deep.convert("L")).mean() > 250  # the trap
    splits = load_dataset(str(root), test_fraction=0.5)
    every = torch.cat([splits.train.images, splits.test.images])
    decoded = {tuple(img[0].flatten()[:64].tolist()): img for img in every}
    for g in grey:
        img = decoded[tuple(g.flatten()[:64].tolist())]  # found: the pixels came back exactly
        assert all(torch.equal(img[c], torch.from_numpy(g.copy())) for c in range(3))
    # floats outside [0, 1] are stretched from their minimum to their maximum
    values = np.array([[-2.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    out = imagefolder.decode_image(tmp_path / "f.tif", (2, 2), False, mode="L")
    assert out[0].tolist() == [[0, 128], [191, 255]]  # 255 x (0, 2, 3, 4) / 4, rounded


def test_resize_center_crop_keeps_orientation():
    # A wide image: left half red, right half blue; a tall one: top red, bottom blue.
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (100, 0, 200, 100))
    out = np.asarray(resize_center_crop(wide, 64))
    assert out.shape == (64, 64, 3)
    assert (out[:, :28, 0] > 250).all() and (out[:, 36:, 2] > 250).all()
    tall = wide.transpose(Image.Transpose.TRANSPOSE)  # 100 wide, 200 high, red on top
    out = np.asarray(resize_center_crop(tall, 64))
    assert (out[:28, :, 0] > 250).all() and (out[36:, :, 2] > 250).all()


# ------------------------------------------------------------------ the decode cache

def test_cache_is_reused_and_invalidated(folder, tmp_path, cache_dir, monkeypatch):
    shutil.copytree(folder, tmp_path / "d")
    first = load_dataset("imagefolder", tmp_path / "d")
    entries = sorted(cache_dir.glob("*.npy"))
    assert len(entries) == 2 and not list((tmp_path / "d").rglob("*.npy"))

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache is valid")
    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    again = load_dataset("imagefolder", tmp_path / "d")
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.images, first.test.images)
    monkeypatch.undo()
    monkeypatch.setenv("TRAJDISTILL_CACHE", str(cache_dir))

    # Rewriting one file (new content, new mtime) must re-decode and see the new pixels.
    target = tmp_path / "d" / "test" / "airplane" / "0000.jpg"
    Image.new("RGB", (32, 32), (0, 255, 0)).save(target)
    os.utime(target, ns=(1, 1))
    changed = load_dataset("imagefolder", tmp_path / "d")
    assert changed.test.images[0, 1].min() > 240 and changed.test.images[0, 0].max() < 15
    assert len(list(cache_dir.glob("*.npy"))) == 3
    # Another option is another entry.
    load_dataset("imagefolder", tmp_path / "d", size=16)
    assert len(list(cache_dir.glob("*.npy"))) == 5


def test_unwritable_cache_still_loads(folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRAJDISTILL_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write"):
        splits = load_dataset("imagefolder", folder)
    assert len(splits.train) == 200


# ------------------------------------------------------------------ ImageNet subsets

def build_wnid_tree(folder: Path, root: Path, wnids: list[str], per_split=(4, 2)) -> None:
    """train/<wnid>/ and val/<wnid>/ holding the real JPEGs of CIFAR class i for wnid i."""
    for (split, src_split), n in zip((("train", "train"), ("val", "test")), per_split):
        for wnid, cls in zip(wnids, CLASSES):
            (root / split / wnid).mkdir(parents=True)
            for src in sorted((folder / src_split / cls).iterdir())[:n]:
                shutil.copy(src, root / split / wnid / f"{wnid}_{src.stem}.JPEG")


def test_packaged_class_index_is_the_standard_one(shared_data):
    import json
    table = json.loads((shared_data / "imagenet_class_index.json").read_text())
    index = imagenet_class_index()
    assert len(index) == 1000 and index[0] == ("n01440764", "tench")
    assert [list(x) for x in index] == [table[str(i)] for i in range(1000)]
    assert [w for w, _ in index] == sorted(w for w, _ in index)


def test_imagenet_subset(folder, tmp_path):
    index = imagenet_class_index()
    wnids = [index[i][0] for i in IMAGENET_SUBSETS["imagewoof"]]
    build_wnid_tree(folder, tmp_path / "imagenet", wnids)
    splits = load_dataset("ImageNet", tmp_path / "imagenet", subset="imagewoof")
    assert splits.name == "ImageNet" and splits.meta["subset"] == "imagewoof"
    assert splits.train.images.shape == (40, 3, 128, 128) and splits.test.images.shape == (20, 3, 128, 128)
    assert splits.train.class_counts() == [4] * 10 and splits.test.class_counts() == [2] * 10
    assert splits.meta["wnids"] == wnids and splits.classes[0] == index[193][1]
    assert splits.preprocess.mean == IMAGENET_MEAN and splits.preprocess.std == IMAGENET_STD
    # Label i holds the images of the subset's i-th index (given order, not sorted wnids).
    src = Image.open(folder / "train" / CLASSES[3] / "0000.jpg").convert("RGB")
    expected = np.asarray(src.resize((128, 128), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(splits.train.images[12].numpy(), expected)
    assert splits.train.labels[12] == 3


def test_imagenet_errors(folder, tmp_path):
    index = imagenet_class_index()
    wnids = [index[i][0] for i in IMAGENET_SUBSETS["imagenette"]]
    build_wnid_tree(folder, tmp_path / "inet", wnids, per_split=(1, 1))
    with pytest.raises(DataError, match="subset= one of imagenette"):
        load_dataset("ImageNet", tmp_path / "inet")
    with pytest.raises(DataError, match="imagewoof class"):
        load_dataset("ImageNet", tmp_path / "inet", subset="imagewoof")
    shutil.rmtree(tmp_path / "inet" / "val" / wnids[4])
    with pytest.raises(DataError, match=rf"val: no folder for imagenette class\(es\) {wnids[4]} \({index[497][1]}\)"):
        load_dataset("ImageNet", tmp_path / "inet", subset="imagenette")


# ------------------------------------------------------------------ Tiny ImageNet

def build_tiny(folder: Path, root: Path, wnids: list[str]) -> list[tuple[str, str]]:
    """The tiny-imagenet-200 layout with real JPEGs; returns the val (file, wnid) rows."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{CLASSES[i]}, other name\n" for i, w in enumerate(wnids)))
    rows = []
    for i, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\t0\t0\t63\t63\n")
        for src in sorted((folder / "train" / CLASSES[i]).iterdir())[:3]:
            shutil.copy(src, root / "train" / wnid / "images" / f"{wnid}_{src.stem}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for k in range(2):  # interleave classes, as the real val folder does
        for i, wnid in enumerate(wnids):
            name = f"val_{len(rows)}.JPEG"
            shutil.copy(folder / "test" / CLASSES[i] / f"{k:04d}.jpg", root / "val" / "images" / name)
            rows.append((name, wnid))
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in rows))
    return rows


def test_tiny_imagenet(folder, tmp_path):
    index = imagenet_class_index()
    wnids = [index[i][0] for i in (900, 17, 450, 300)]  # deliberately unsorted in wnids.txt
    rows = build_tiny(folder, tmp_path / "tiny-imagenet-200", wnids)
    splits = load_dataset("Tiny", tmp_path)  # the folder holding tiny-imagenet-200/
    order = sorted(wnids)
    assert splits.name == "Tiny" and splits.meta["wnids"] == order
    assert splits.classes == [CLASSES[wnids.index(w)] for w in order]
    assert splits.train.images.shape == (12, 3, 64, 64) and splits.test.images.shape == (8, 3, 64, 64)
    assert splits.train.class_counts() == [3] * 4 and splits.test.class_counts() == [2] * 4
    assert splits.test.labels.tolist() == [order.index(w) for _, w in rows]
    assert splits.preprocess.mean == IMAGENET_MEAN
    src = Image.open(tmp_path / "tiny-imagenet-200" / "val" / "images" / rows[5][0]).convert("RGB")
    expected = np.asarray(src.resize((64, 64), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(splits.test.images[5].numpy(), expected)


def test_tiny_imagenet_errors(folder, tmp_path):
    index = imagenet_class_index()
    wnids = [index[i][0] for i in (1, 2)]
    root = tmp_path / "tiny-imagenet-200"
    build_tiny(folder, root, wnids)
    with pytest.raises(DataError, match="no wnids.txt"):
        load_dataset("Tiny", tmp_path / "tiny-imagenet-200" / "train")
    table = root / "val" / "val_annotations.txt"
    table.write_text(table.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations\.txt, line 5: .*n99999999"):
        load_dataset("Tiny", root)
    table.write_text("val_0.JPEG\t" + wnids[0] + "\n")
    with pytest.raises(DataError, match=rf"no validation images for class\(es\) {wnids[1]}"):
        load_dataset("Tiny", root)


# ------------------------------------------------------------------ bad input

@pytest.fixture
def small_copy(folder, tmp_path) -> Path:
    root = tmp_path / "d"
    for split in ("train", "test"):
        for cls in ("bird", "cat"):
            shutil.copytree(folder / split / cls, root / split / cls)
    return root


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"nothing-here: missing directory"):
        load_dataset("imagefolder", tmp_path / "nothing-here")
    (tmp_path / "only-test" / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"only-test: a test/ folder but no train/ folder"):
        load_dataset("imagefolder", tmp_path / "only-test")
    (tmp_path / "nested" / "flower_photos" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"one sub-folder \(flower_photos/\) and no train/ folder; "
                       r"if .*nested/flower_photos holds the class folders, give --dataset"):
        load_dataset("imagefolder", tmp_path / "nested")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no train/ folder and no class folders"):
        load_dataset("imagefolder", tmp_path / "empty")


# ------------------------------------------------------------------ folders without a test split

@pytest.fixture
def class_folders_only(folder, tmp_path) -> Path:
    """The layout of most downloads (flower_photos/<class>/*.jpg): the 20 training JPEGs of
    each of the 10 classes, class folders at the top, a stray file beside them, and what a
    zip made on a Mac and a folder opened on Windows leave behind (never classes or images)."""
    root = tmp_path / "photos"
    for cls in CLASSES:
        shutil.copytree(folder / "train" / cls, root / cls)
    (root / "LICENSE.txt").write_text("not an image, and not in a class folder")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0000.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (root / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (root / "dog" / "desktop.ini").write_text("[.ShellClassInfo]")
    return root


def _rows(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


def test_class_folders_only_get_a_seeded_stratified_test_split(class_folders_only, folder):
    splits = load_dataset(str(class_folders_only))
    assert splits.classes == CLASSES
    # 20 images per class, 0.2 of each to test: 4 per class
    assert torch.bincount(splits.test.labels).tolist() == [4] * 10
    assert torch.bincount(splits.train.labels).tolist() == [16] * 10
    meta = splits.describe()
    assert meta["split"] == "drawn" and meta["test_fraction"] == 0.2 and meta["split_seed"] == 0
    # every image is one of its class's files, each in exactly one split
    for c, cls in enumerate(CLASSES):
        files = _rows(torch.from_numpy(np.stack([decode(f) for f in sorted((folder / "train" / cls).iterdir())])))
        train = _rows(splits.train.images[splits.train.labels == c])
        test = _rows(splits.test.images[splits.test.labels == c])
        assert train | test == files and not train & test and len(train | test) == 20
    # the same files always give the same split; another share gives another
    again = load_dataset(str(class_folders_only))
    assert torch.equal(again.test.images, splits.test.images)
    half = load_dataset(str(class_folders_only), test_fraction=0.5)
    assert torch.bincount(half.test.labels).tolist() == [10] * 10
    # the mean / std are the training split's alone
    assert splits.preprocess.mean == channel_stats(splits.train.images)[0]


def test_a_train_folder_alone_draws_the_same_split(class_folders_only, tmp_path):
    root = tmp_path / "kaggle"
    shutil.copytree(class_folders_only, root / "train")
    drawn, flat = load_dataset(str(root)), load_dataset(str(class_folders_only))
    assert torch.equal(drawn.test.images, flat.test.images)
    assert torch.equal(drawn.train.labels, flat.train.labels)
    assert drawn.describe()["split_from"] == "train"


def test_drawn_split_errors(class_folders_only, small_copy):
    with pytest.raises(DataError, match=r"--test_fraction: .* has its own test split"):
        load_dataset(str(small_copy), test_fraction=0.3)
    for f in sorted((class_folders_only / "cat").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match=r"class\(es\) cat \(1\) have fewer than 2 images"):
        load_dataset(str(class_folders_only))
    with pytest.raises(DataError, match=r"--test_fraction must be between 0 and 1, got 1.5"):
        load_dataset(str(class_folders_only), test_fraction=1.5)


def test_non_image_file_is_named(small_copy):
    bad = small_copy / "train" / "cat" / "notes.txt"
    bad.write_text("these are cats")
    with pytest.raises(DataError, match=rf"{bad}: not a readable image"):
        load_dataset("imagefolder", small_copy)


def test_truncated_image_is_named(small_copy):
    bad = small_copy / "test" / "bird" / "0003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=rf"{bad}: not a readable image"):
        load_dataset("imagefolder", small_copy)


def test_empty_class_is_named(small_copy):
    (small_copy / "test" / "dog").mkdir()
    (small_copy / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"train/dog: empty class folder"):
        load_dataset("imagefolder", small_copy)


def test_test_classes_must_match_train(small_copy):
    shutil.rmtree(small_copy / "test" / "cat")
    with pytest.raises(DataError, match=r"test: class folders \['bird'\] differ"):
        load_dataset("imagefolder", small_copy)


def test_bad_options(small_copy):
    with pytest.raises(DataError, match="--res must be a positive integer"):
        load_dataset("imagefolder", small_copy, size=0)
    with pytest.raises(DataError, match="imagefolder does not take option"):
        load_dataset("imagefolder", small_copy, subset="imagenette")
