"""Load a directory written by `build_gzoo2` as DatasetSplits, memory-mapped.

The uint8 arrays are opened with np.load(mmap_mode="r"), so the 45,000-image GZoo2_aug
costs page cache, not a float copy. The directory counts as built only when its
manifest.json exists (the builder writes it last) and every array matches the shape
and dtype it records.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.base import DataError, DatasetSplits, ImageDataset, Preprocess
from .build import ARRAYS, FORMAT, MANIFEST

# Sub-folders looked for when data_path is a parent directory of several builds.
# "GZoo2" is also the generic name (the registry is case-insensitive): any build loads.
_SUBDIRS = {"GZoo2": ("GZoo2", "gzoo2"), "GZoo2_aug": ("GZoo2_aug", "gzoo2_aug")}


def find_build(data_path, name: str = "GZoo2") -> Path:
    """The build directory: data_path itself, or its GZoo2/ (GZoo2_aug/) sub-folder."""
    if data_path is None:
        raise DataError(f"{name} needs data_path: the directory written by `trajdistill gzoo2 "
                        "build --out DIR`, or a folder holding GZoo2/ and GZoo2_aug/")
    root = Path(data_path)
    candidates = [root] + [root / s for s in _SUBDIRS.get(name, ())]
    for c in candidates:
        if (c / MANIFEST).is_file():
            return c
    for c in candidates:
        if any((c / a).exists() or (c / (a[:-4] + ".tmp.npy")).exists() for a in ARRAYS):
            raise DataError(f"{c} has no {MANIFEST}: the GZoo2 build there did not finish; "
                            "run `trajdistill gzoo2 build` again")
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(f"no GZoo2 build found for {name} (looked for {MANIFEST} in {tried}); "
                    "build one with `trajdistill gzoo2 build --catalog ... --images ... --out DIR`")


def read_manifest(build: Path) -> tuple[dict, str]:
    raw = (build / MANIFEST).read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{build / MANIFEST}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{build / MANIFEST}: not a GZoo2 build manifest (format "
                        f"{manifest.get('format')!r}, expected {FORMAT!r})")
    return manifest, hashlib.sha256(raw).hexdigest()


def _load_array(build: Path, name: str, manifest: dict) -> np.ndarray:
    path = build / name
    if not path.is_file():
        raise DataError(f"{path} is missing: the GZoo2 build in {build} is incomplete")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable .npy ({e})") from None
    want = manifest["arrays"][name]
    if list(arr.shape) != want["shape"] or str(arr.dtype) != want["dtype"]:
        raise DataError(f"{path}: {arr.dtype} {list(arr.shape)} but {MANIFEST} records "
                        f"{want['dtype']} {want['shape']}: the build directory is inconsistent")
    return arr


def _split(build: Path, split: str, manifest: dict, classes: list[str]) -> ImageDataset:
    images = _load_array(build, f"{split}_images.npy", manifest)
    labels = np.asarray(_load_array(build, f"{split}_labels.npy", manifest))
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{build / f'{split}_labels.npy'}: labels outside 0..{len(classes) - 1}")
    with warnings.catch_warnings():
        # a read-only memory map: torch warns it is not writable; nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(images)
    return ImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), list(classes))


def load_gzoo2_dir(data_path=None, name: str = "GZoo2", **options) -> DatasetSplits:
    """DatasetSplits of a GZoo2 build, with the manifest's mean/std and provenance in meta.

    A build has no load-time options; unknown ones are refused unless None (a CLI may
    pass its unset defaults), so a typo is an error rather than silently ignored.
    """
    unknown = sorted(k for k, v in options.items() if v is not None)
    if unknown:
        raise DataError(f"{name} takes no option(s) {', '.join(unknown)}: the images were fixed "
                        "when the dataset was built (rebuild with `trajdistill gzoo2 build`)")
    build = find_build(data_path, name)
    manifest, digest = read_manifest(build)
    if name == "GZoo2_aug" and manifest["augment"]["copies"] == 1:
        warnings.warn(f"loading {name} from {build}, which holds a {manifest['name']} build "
                      f"({manifest['augment']['copies']} copies per training image)", stacklevel=3)
    classes = manifest["classes"]
    train = _split(build, "train", manifest, classes)
    test = _split(build, "test", manifest, classes)
    opts = manifest.get("options", {})
    meta = {"source": "gzoo2-build", "build_dir": str(build.resolve()), "manifest_sha256": digest,
            **{f"gzoo2_{k}": v for k, v in opts.items()},
            "catalog_sha256": manifest.get("inputs", {}).get("catalog", {}).get("sha256"),
            "code_version": manifest.get("code_version")}
    return DatasetSplits(manifest["name"], train, test,
                         Preprocess(tuple(manifest["mean"]), tuple(manifest["std"])), meta)
