"""Tiny ImageNet 200 in its distributed layout (tiny-imagenet-200/):

    wnids.txt                       the 200 class wnids
    words.txt                       optional: wnid -> names (used for class names)
    train/<wnid>/images/*.JPEG      500 per class (the <wnid>_boxes.txt beside it is ignored)
    val/images/*.JPEG               10,000 images, labels in
    val/val_annotations.txt         <file> TAB <wnid> TAB <box...>

The official test/ split has no labels, so val/ is the test split, as in the reference
runs. Classes are the wnids sorted (torchvision ImageFolder order). Images are 64x64;
any that are not are resized and centre-cropped like the ImageNet subsets.
"""
from __future__ import annotations

from pathlib import Path

from .base import DataError, DatasetSplits, Preprocess
from .imagefolder import check_root, decode_images, list_images, to_dataset
from .imagenet import IMAGENET_MEAN, IMAGENET_STD

TINY_RES = 64


def load_tiny_imagenet(data_path, workers: int | None = None) -> DatasetSplits:
    root = _find_root(check_root(data_path))
    wnids = read_wnids(root / "wnids.txt")
    decode = dict(shape=(TINY_RES, TINY_RES), crop=True, mode="RGB", workers=workers)
    names = _class_names(root / "words.txt", wnids)
    train_files, train_labels = _train_files(root / "train", wnids)
    test_files, test_labels = _val_files(root / "val", wnids)
    train = to_dataset(decode_images(train_files, tag="tiny-train", **decode), train_labels, names)
    test = to_dataset(decode_images(test_files, tag="tiny-val", **decode), test_labels, names)
    return DatasetSplits("Tiny", train, test, Preprocess(IMAGENET_MEAN, IMAGENET_STD),
                         {"wnids": wnids})


def _find_root(path: Path) -> Path:
    # Accept the folder itself or the folder the archive was unpacked into.
    for candidate in (path, path / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise DataError(f"{path}: no wnids.txt (expected the tiny-imagenet-200 folder)")


def read_wnids(path: Path) -> list[str]:
    wnids = [w.strip() for w in path.read_text().split() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: expected distinct wnids, one per line; got {len(wnids)} "
                        f"({len(set(wnids))} distinct)")
    return sorted(wnids)


def _class_names(words: Path, wnids: list[str]) -> list[str]:
    """First synonym from words.txt where available, else the wnid."""
    table = {}
    if words.is_file():
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            table[wnid.strip()] = text.split(",")[0].strip()
    return [table.get(w) or w for w in wnids]


def _train_files(train_dir: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing directory")
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        found = list_images(train_dir / wnid / "images")
        files += found
        labels += [label] * len(found)
    return files, labels


def _val_files(val_dir: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    table = val_dir / "val_annotations.txt"
    if not table.is_file():
        raise DataError(f"{table}: missing (Tiny ImageNet's validation labels)")
    label_of = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for n, line in enumerate(table.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DataError(f"{table}, line {n}: expected <file> TAB <wnid from wnids.txt>, got {line!r}")
        path = val_dir / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{table}, line {n}: {path} does not exist")
        files.append(path)
        labels.append(label_of[fields[1]])
    present = set(labels)
    empty = [w for w in wnids if label_of[w] not in present]
    if empty:
        raise DataError(f"{table}: no validation images for class(es) {', '.join(empty)}")
    return files, labels
