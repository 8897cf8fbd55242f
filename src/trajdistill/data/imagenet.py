"""ImageNet ten-class subsets (algorithm.md section 8) from a wnid folder tree.

The subsets are defined as indices into the standard 1000-class order; users' folders
(ImageNet, Imagenette downloads) name classes by WordNet id: `train/n01440764/...`,
`val/n01440764/...`. The standard index -> (wnid, name) table ships with the package
(imagenet_class_index.json, public data), so this works offline.

Label i is the i-th index of the subset as listed (not sorted), as in the reference
code, so label numbers agree with published per-class results.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from .base import DataError, DatasetSplits, Preprocess
from .imagefolder import TEST_SPLIT_NAMES, check_root, decode_images, find_split, scan_split, to_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RES = 128

IMAGENET_SUBSETS: dict[str, tuple[int, ...]] = {
    "imagenette": (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    "imagewoof": (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    "imagemeow": (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    "imagesquawk": (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    "imagefruit": (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    "imageyellow": (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
}


@lru_cache(maxsize=1)
def imagenet_class_index() -> tuple[tuple[str, str], ...]:
    """The standard 1000 classes in order: (wnid, name) per index."""
    text = resources.files(__package__).joinpath("imagenet_class_index.json").read_text()
    table = json.loads(text)
    return tuple(tuple(table[str(i)]) for i in range(len(table)))


def subset_classes(subset: str) -> list[tuple[str, str]]:
    """(wnid, name) of the subset's ten classes, in label order."""
    key = str(subset).lower() if subset is not None else None
    if key not in IMAGENET_SUBSETS:
        raise DataError(f"ImageNet needs subset= one of {', '.join(IMAGENET_SUBSETS)}; got {subset!r}")
    index = imagenet_class_index()
    return [index[i] for i in IMAGENET_SUBSETS[key]]


def load_imagenet_subset(data_path, subset: str, res: int = IMAGENET_RES,
                         workers: int | None = None) -> DatasetSplits:
    """`data_path/train/<wnid>/` and `data_path/val/<wnid>/` (or `test/`) -> 3 x res x res."""
    classes = subset_classes(subset)
    root = check_root(data_path)
    wnids = [wnid for wnid, _ in classes]
    names = [name for _, name in classes]
    decode = dict(shape=(res, res), crop=True, mode="RGB", workers=workers)
    splits = {}
    for split, split_dir in (("train", root / "train"), ("test", find_split(root, TEST_SPLIT_NAMES))):
        _check_wnids(split_dir, classes, subset)
        files, labels = scan_split(split_dir, wnids)
        images = decode_images(files, tag=f"imagenet-{subset}-{split}", **decode)
        splits[split] = to_dataset(images, labels, names)
    meta = {"subset": subset.lower(), "wnids": wnids, "resolution": res}
    return DatasetSplits("ImageNet", splits["train"], splits["test"],
                         Preprocess(IMAGENET_MEAN, IMAGENET_STD), meta)


def _check_wnids(split_dir, classes, subset) -> None:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing directory")
    missing = [f"{wnid} ({name})" for wnid, name in classes if not (split_dir / wnid).is_dir()]
    if missing:
        raise DataError(f"{split_dir}: no folder for {subset} class(es) {', '.join(missing)}")
