"""Image folders, decoded to uint8: `train/<class>/*` and `test/<class>/*` (or `val/`); or
just `<class>/*` (the layout of most downloaded sets: flower photos, DTD's textures), or a
`train/<class>/*` alone, from which a seeded, stratified test split is drawn (split.py).

Also the decoding helpers that the ImageNet-subset and Tiny ImageNet loaders share:
listing a class folder, decoding a list of files in parallel into one (N, C, H, W)
array (cached on disk, see cache.py), and the resize conventions.

Resizing follows torchvision's `Resize(side)` + `CenterCrop(side)` on PIL images, which
is what the reference code applied to ImageNet: the shorter side is scaled to `side`
(the longer to `int(side * long / short)`), bilinear with PIL's antialiasing, then the
centre `side` x `side` is cut with the offset rounded.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import progress
from .base import DataError, DatasetSplits, ImageDataset, Preprocess, channel_stats
from .cache import cached_images
from .split import SPLIT_SEED, TEST_FRACTION, check_fraction, stratified_split, too_few

TEST_SPLIT_NAMES = ("test", "val", "validation")  # validation/: the Keras/Kaggle name

# How an image becomes a square of the target side: "center" (shorter side to the side,
# then the central square, as ImageNet) or "center-half" (the central half of the image in
# each dimension, then an area resize: the Galaxy Zoo cut-out crop, which gzoo2.images shares).
CROPS = ("center", "center-half")


# ---------------------------------------------------------------- single images

def _half_box(w: int, h: int) -> tuple[int, int, int, int]:
    cw, ch = w // 2, h // 2
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, cw, ch


def central_half(img: Image.Image) -> Image.Image:
    """The middle half in each dimension: 212x212 out of a 424x424 cut-out."""
    left, top, cw, ch = _half_box(*img.size)
    return img.crop((left, top, left + cw, top + ch))


def resize_center_crop(im: Image.Image, side: int) -> Image.Image:
    """Shorter side to `side`, then the central `side` x `side` square."""
    w, h = im.size
    if min(w, h) != side:
        if w <= h:
            im = im.resize((side, int(side * h / w)), Image.BILINEAR)
        else:
            im = im.resize((int(side * w / h), side), Image.BILINEAR)
    w, h = im.size
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return im.crop((left, top, left + side, top + side))


# Pillow's modes for one channel of more than 8 bits (16-bit PNG or TIFF, 32-bit integer or
# float TIFF): `convert("L"/"RGB")` clips them at 255 instead of scaling, which turns a
# 16-bit X-ray white. `eight_bit` scales them first.
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def eight_bit(im: Image.Image) -> Image.Image:
    """An image of more than 8 bits per pixel as 8-bit grey ("L"); others as they are.

    Integers >= 0 are divided by the largest value of the smallest even bit depth that holds
    the image's maximum (10, 12, 14 or 16 bits, ...): 12-bit detector data in a 16-bit file
    keeps its contrast, and images of one sensor share one scale. Floats in [0, 1] are
    multiplied by 255; other floats and negative integers are stretched from their minimum
    to their maximum (per image: there is no common scale to read from the file).
    """
    if im.mode not in DEEP_MODES:
        return im
    a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(a.min()), float(a.max())
    if im.mode == "F" and low >= 0 and high <= 1:
        scaled = a * 255
    elif im.mode != "F" and low >= 0:
        bits = max(8, int(high).bit_length())
        scaled = a * (255 / (2 ** (bits + bits % 2) - 1))
    else:
        scaled = (a - low) * (255 / (high - low)) if high > low else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def decode_image(path: Path, shape: tuple[int, int], crop: bool | str, mode: str = "RGB") -> np.ndarray:
    """One file -> uint8 (C, H, W) of `shape` = (H, W).

    `crop`: True or "center": resize-and-centre-crop to a square (ImageNet style);
    "center-half": the central half, area-resized (galaxy cut-outs); False: a plain resize
    to `shape`, a no-op for images that already have it.
    """
    try:
        with Image.open(path) as im:
            im = eight_bit(im).convert(mode)  # convert() forces the full decode inside the try
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    h, w = shape
    if crop == "center-half":
        im = central_half(im).resize((w, h), Image.Resampling.BOX)
    elif crop:
        im = resize_center_crop(im, h)
    elif im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return h, w


# ---------------------------------------------------------------- many images

def decode_images(files: Sequence[Path], shape: tuple[int, int], crop: bool | str, mode: str = "RGB",
                  tag: str = "images", workers: int | None = None) -> np.ndarray:
    """Decode `files` into one uint8 (N, C, H, W) array, through the on-disk cache.

    Threads help because Pillow releases the GIL while decoding and resizing.
    """
    options = {"shape": list(shape), "crop": crop, "mode": mode}
    return cached_images(tag, files, options,
                         lambda: _decode_all(files, shape, crop, mode, tag, workers))


def _decode_all(files, shape, crop, mode, tag, workers) -> np.ndarray:
    channels = len(Image.new(mode, (1, 1)).getbands())
    out = np.empty((len(files), channels, *shape), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers)
    try:
        with progress.bar(total=len(files), desc=f"decoding {tag}", unit="images",
                          report=True) as bar:
            for i, arr in enumerate(pool.map(lambda f: decode_image(f, shape, crop, mode), files)):
                out[i] = arr
                bar.update()
    finally:
        # On a bad file (or Ctrl-C) stop at once instead of decoding the rest of the folder.
        pool.shutdown(wait=True, cancel_futures=True)
    return out


# ---------------------------------------------------------------- folder layout

# What file managers and archivers leave in folders unasked: macOS's resource forks
# (`__MACOSX/`, `._x.jpg`), `.DS_Store`, Windows' thumbnail caches and folder settings.
LITTER = {"__macosx", "thumbs.db", "desktop.ini"}


def litter(name: str) -> bool:
    """Hidden names and LITTER: never a class folder or an image."""
    return name.startswith(".") or name.lower() in LITTER


def list_images(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder` (recursively), sorted; an empty class is an error.

    Hidden files and `litter` (`.DS_Store`, `._x.jpg`, `__MACOSX/`, `Thumbs.db`) are
    skipped because file managers create them unasked; any other file must decode, or
    decoding names it.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: missing class folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(litter(part)
                                              for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: empty class folder (no image files)")
    return files


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the sub-folders of `split_dir`: the classes."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing directory")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not litter(p.name))
    if not names:
        raise DataError(f"{split_dir}: no class folders inside")
    return names


def scan_split(split_dir: Path, folders: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Files and labels for the class folders `folders` (label = position in the list)."""
    files, labels = [], []
    for label, name in enumerate(folders):
        found = list_images(split_dir / name)
        files += found
        labels += [label] * len(found)
    return files, labels


def find_split(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    listed = [n + "/" for n in names]
    either = ", ".join(listed[:-1]) + " or " + listed[-1] if len(listed) > 1 else listed[0]
    raise DataError(f"{root}: no {either} directory")


def check_root(data_path) -> Path:
    if data_path is None:
        raise DataError("no data_path given: pass the folder that holds the dataset")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: missing directory")
    return root


def to_dataset(images: np.ndarray, labels: Sequence[int], classes: list[str]) -> ImageDataset:
    return ImageDataset(torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), classes)


# ---------------------------------------------------------------- the generic loader

def folder_layout(root: Path) -> str:
    """"splits" (train/ and test/), "train-only" (train/ alone) or "classes" (class folders
    at the top); anything else is refused with what was expected."""
    tests = [n for n in TEST_SPLIT_NAMES if (root / n).is_dir()]
    if (root / "train").is_dir():
        return "splits" if tests else "train-only"
    if tests:
        raise DataError(f"{root}: a {tests[0]}/ folder but no train/ folder; an image folder has "
                        "train/<class>/ and test/<class>/, or class folders only (<class>/*)")
    subs = sorted(p.name for p in root.iterdir() if p.is_dir() and not litter(p.name))
    if len(subs) == 1:
        raise DataError(f"{root}: one sub-folder ({subs[0]}/) and no train/ folder; if "
                        f"{root / subs[0]} holds the class folders, give --dataset that path; "
                        "a flat folder of images named by id needs --labels CSV")
    if not subs:
        raise DataError(f"{root}: no train/ folder and no class folders; an image folder has "
                        "train/<class>/ and test/<class>/, or class folders only (<class>/*); "
                        "a flat folder of images named by id needs --labels CSV")
    return "classes"


def load_image_folder(data_path, size: int | None = None, mode: str = "RGB",
                      workers: int | None = None, res: int | None = None,
                      crop: str | None = None, test_fraction: float | None = None) -> DatasetSplits:
    """Any folder with `train/<class>/` and `test/<class>/` (or `val/`, `validation/`), or
    with class folders only, or `train/<class>/` only: then a seeded, stratified share
    `test_fraction` (default 0.2) of each class is the test split.

    Classes are the class folders sorted by name; a test split must have the same.
    `size` (or `res`, the CLI's name): resize the shorter side and centre-crop to `size` x
    `size` (`crop="center-half"`: the galaxy crop instead); by default the images keep their
    size, which must then be one for all (`one_size`). Mean/std come from the train split.
    """
    if res is not None and size is not None and res != size:
        raise DataError(f"give the side once: size={size} and res={res} differ")
    size = size if size is not None else res
    root = check_root(data_path)
    layout = folder_layout(root)
    if layout != "splits":
        return _load_drawn(root, root / "train" if layout == "train-only" else root, size, mode,
                           workers, crop, test_fraction)
    if test_fraction is not None:
        raise DataError(f"--test_fraction: {root} has its own test split; it applies to folders "
                        "without one")
    classes = class_folders(root / "train")
    test_dir = find_split(root, TEST_SPLIT_NAMES)
    test_classes = class_folders(test_dir)
    if test_classes != classes:
        raise DataError(f"{test_dir}: class folders {test_classes} differ from train/'s {classes}")
    _two_classes(root / "train", classes)
    train_files, train_labels = scan_split(root / "train", classes)
    test_files, test_labels = scan_split(test_dir, classes)
    shape, crop = target_shape(size, train_files + test_files, crop)
    decode = dict(shape=shape, crop=crop, mode=mode, workers=workers)
    train = to_dataset(decode_images(train_files, tag="imagefolder-train", **decode), train_labels, classes)
    test = to_dataset(decode_images(test_files, tag="imagefolder-test", **decode), test_labels, classes)
    return _splits(root, train, test, shape, mode, crop)


def _load_drawn(root: Path, base: Path, size, mode, workers, crop, test_fraction) -> DatasetSplits:
    """Class folders under `base` with no test split of their own: one is drawn."""
    fraction = check_fraction(TEST_FRACTION if test_fraction is None else test_fraction)
    classes = class_folders(base)
    _two_classes(base, classes)
    files, labels = scan_split(base, classes)
    labels = np.asarray(labels, dtype=np.int64)
    too_few(base, np.bincount(labels, minlength=len(classes)), classes)
    shape, crop = target_shape(size, files, crop)
    pixels = decode_images(files, shape=shape, crop=crop, mode=mode, workers=workers,
                           tag="imagefolder")
    train_idx, test_idx = stratified_split(labels, len(classes), fraction)
    train = to_dataset(pixels[train_idx], labels[train_idx].tolist(), classes)
    test = to_dataset(pixels[test_idx], labels[test_idx].tolist(), classes)
    return _splits(root, train, test, shape, mode, crop,
                   {"split": "drawn", "test_fraction": fraction, "split_seed": SPLIT_SEED,
                    **({"split_from": "train"} if base != root else {})})


def _two_classes(where: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(f"{where}: one class folder ({classes[0]}); a classifier needs at least 2")


def _splits(root: Path, train: ImageDataset, test: ImageDataset, shape, mode, crop,
            more: dict | None = None) -> DatasetSplits:
    mean, std = channel_stats(train.images)
    meta = {"folder": root.resolve().name, "size": list(shape), "mode": mode, **(more or {})}
    if isinstance(crop, str) and crop != "center":
        meta["crop"] = crop
    return DatasetSplits("imagefolder", train, test, Preprocess(mean, std), meta)


def target_shape(res, files: Sequence[Path], crop: str | None = None
                 ) -> tuple[tuple[int, int], bool | str]:
    """(H, W) to decode `files` to, and how: `res` x `res` by `crop` ("center", the default,
    or "center-half"); without `res` the images' own size, which must then be one size for
    all (a plain resize would stretch every image to the first one's shape)."""
    if crop is not None and crop not in CROPS:
        raise DataError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if res is None:
        if crop is not None:  # a crop without a side would be ignored
            raise DataError(f"--crop {crop} needs --res (the side to resize the crop to)")
        return one_size(files), False
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise DataError(f"--res must be a positive integer (the square side), got {res!r}")
    return (res, res), (crop or "center")


def one_size(files: Sequence[Path]) -> tuple[int, int]:
    """The (H, W) every file has (read from the headers); images of several sizes are
    refused with two of them named and the flag that resizes them."""
    first = image_shape(files[0])
    for path in files[1:]:
        shape = image_shape(path)
        if shape != first:
            raise DataError(f"{path.parent.parent}: the images are not all one size ({first[1]}x"
                            f"{first[0]} {files[0].name}, {shape[1]}x{shape[0]} {path.name}); "
                            "give --res N to resize and centre-crop them to N x N (32, 64 or "
                            "128 for the derived ConvNets)")
    return first
