"""A flat folder of images named by id plus a labels CSV (the Kaggle layout).

    images/<id>.jpeg ...      gz1_labels.csv: OBJID,CLASS
    load_labelled_folder("gz1", labels="gz1_labels.csv", id_column="OBJID",
                         label_column="CLASS", classes="0,1+2,3", res=32, crop="center-half")

No split is given in this layout, so a seeded, stratified test split is drawn per class
(`test_fraction`, seed `split_seed`): the same data and options always give the same split,
whatever the training seed, so experts and distillation agree on it.

`classes` keeps and merges labels: "0,1+2,3" makes three classes (0), (1 or 2), (3); rows
with any other label are left out and counted. Rows whose image is missing are left out and
counted too (with a warning naming a few); a duplicate id is an error, since it is unclear
which label is meant.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import torch

from .base import DataError, DatasetSplits, ImageDataset, Preprocess, channel_stats
from .imagefolder import check_root, decode_images, litter, target_shape
from .split import SPLIT_SEED, check_fraction, stratified_split, too_few


def parse_classes(spec: str | None) -> list[list[str]] | None:
    """'0,1+2,3' -> [['0'], ['1', '2'], ['3']]: kept labels, merged with '+'."""
    if spec is None:
        return None
    groups = [[v.strip() for v in g.split("+")] for g in str(spec).split(",")]
    if any(not v for g in groups for v in g):
        raise DataError(f"--classes {spec!r}: expected labels separated by ',' (keep) and '+' "
                        "(merge), e.g. 0,1+2,3")
    seen = [v for g in groups for v in g]
    dup = sorted({v for v in seen if seen.count(v) > 1})
    if dup:
        raise DataError(f"--classes {spec!r}: label(s) {', '.join(dup)} named more than once")
    return groups


def read_labels(path: Path, id_column: str, label_column: str) -> list[tuple[str, str, int]]:
    """(id, label, line) per data row; missing columns and duplicate ids are errors."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"labels file {path}: cannot be read ({e})") from None
    try:
        with f:
            return _read_rows(path, csv.reader(f), id_column, label_column)
    except UnicodeDecodeError as e:
        raise DataError(f"labels file {path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                        "expected a CSV") from None
    except csv.Error as e:
        raise DataError(f"labels file {path}: not a readable CSV ({e})") from None


def _read_rows(path: Path, reader, id_column: str, label_column: str) -> list[tuple[str, str, int]]:
    """read_labels' work, inside its guard against bytes that are not UTF-8 text."""
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError(f"{path}: empty file, expected a CSV header with {id_column!r} and "
                        f"{label_column!r}")
    missing = [c for c in (id_column, label_column) if c not in header]
    if missing:
        raise DataError(f"{path}: no column {' or '.join(map(repr, missing))} (the header has "
                        f"{', '.join(header)}); pass --id_column / --label_column")
    i, j = header.index(id_column), header.index(label_column)
    rows, first_line = [], {}
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, the header "
                            f"has {len(header)}")
        key, label = row[i].strip(), row[j].strip()
        if not key or not label:
            raise DataError(f"{path}, line {reader.line_num}: empty {id_column!r} or "
                            f"{label_column!r}")
        if key in first_line:
            raise DataError(f"{path}, line {reader.line_num}: duplicate id {key} (first on "
                            f"line {first_line[key]})")
        first_line[key] = reader.line_num
        rows.append((key, label, reader.line_num))
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def index_images(folder: Path) -> dict[str, Path]:
    """File stem -> path for the files directly in `folder`, hidden ones and file managers'
    litter (`imagefolder.litter`) left out."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or litter(p.name):
            continue
        if p.stem in found:
            raise DataError(f"{folder}: two images for id {p.stem} ({found[p.stem].name}, {p.name})")
        found[p.stem] = p
    return found


def _sort_key(label: str):
    return (0, int(label), label) if label.lstrip("-").isdigit() else (1, 0, label)


def _image_folder(root: Path) -> Path:
    """The images may sit in `root` itself or in `root/images/` (as in gz1/)."""
    sub = root / "images"
    return sub if sub.is_dir() else root


def _labels_path(root: Path, labels) -> Path:
    path = Path(labels).expanduser()
    if not path.is_file() and (root / path).is_file():
        path = root / path
    if path.is_dir():
        raise DataError(f"--labels {labels}: a directory; expected the labels CSV file")
    if not path.is_file():
        raise DataError(f"--labels {labels}: no such file (looked also in {root})")
    return path


def load_labelled_folder(data_path, labels, id_column: str = "id", label_column: str = "label",
                         classes: str | None = None, class_names: str | None = None,
                         test_fraction: float = 0.2, res: int | None = None,
                         crop: str | None = None, workers: int | None = None) -> DatasetSplits:
    """A flat image folder + labels CSV -> train/test splits (see the module docstring)."""
    root = check_root(data_path)
    test_fraction = check_fraction(test_fraction)
    labels_path = _labels_path(root, labels)
    folder = _image_folder(root)
    rows = read_labels(labels_path, id_column, label_column)
    groups = parse_classes(classes)
    if groups is None:
        groups = [[v] for v in sorted({label for _, label, _ in rows}, key=_sort_key)]
    names = _class_names(class_names, groups)
    if len(groups) < 2:
        raise DataError(f"{labels_path}: only one class ({names[0]}) in column {label_column!r}"
                        f"{' after --classes' if classes else ''}; a classifier needs at least 2")
    label_of = {v: k for k, g in enumerate(groups) for v in g}
    unknown = [g for group in groups for g in group if g not in {lab for _, lab, _ in rows}]
    if unknown:
        raise DataError(f"--classes: label(s) {', '.join(unknown)} do not occur in column "
                        f"{label_column!r} of {labels_path}")
    images = index_images(folder)
    files, targets, not_kept, missing = [], [], 0, []
    for key, label, line in rows:
        if label not in label_of:
            not_kept += 1
        elif key not in images:
            missing.append(f"{key} (line {line})")
        else:
            files.append(images[key])
            targets.append(label_of[label])
    if not files:
        raise DataError(f"{labels_path}: no row has both a kept class and an image in {folder}")
    _warn_left_out(labels_path, folder, len(rows), not_kept, missing)
    shape, crop_mode = target_shape(res, files, crop)
    pixels = decode_images(files, shape=shape, crop=crop_mode, mode="RGB",
                           tag="labelled", workers=workers)
    targets = np.asarray(targets, dtype=np.int64)
    # the split could give a class of one image no test (or no training) image
    too_few(labels_path, np.bincount(targets, minlength=len(groups)), names, f" in {folder}",
            " (merge or leave them out with --classes)")
    train_idx, test_idx = stratified_split(targets, len(groups), test_fraction)
    empty = [names[c] for c in range(len(groups)) if not (targets[train_idx] == c).any()]
    if empty:
        raise DataError(f"{labels_path}: class(es) {', '.join(empty)} have no training image")
    train = _subset(pixels, targets, train_idx, names)
    test = _subset(pixels, targets, test_idx, names)
    mean, std = channel_stats(train.images)
    meta = {"folder": root.resolve().name, "labels": labels_path.name,
            "classes_spec": ",".join("+".join(g) for g in groups), "test_fraction": test_fraction,
            "split_seed": SPLIT_SEED, "size": list(shape), "crop": crop_mode,
            "left_out": {"class_not_kept": not_kept, "image_missing": len(missing)}}
    return DatasetSplits("labelled", train, test, Preprocess(mean, std), meta)


def _class_names(class_names, groups) -> list[str]:
    if class_names is None:
        return ["+".join(g) for g in groups]
    names = [n.strip() for n in str(class_names).split(",")]
    if len(names) != len(groups) or not all(names):
        raise DataError(f"--class_names gives {len(names)} name(s) for {len(groups)} classes "
                        f"({','.join('+'.join(g) for g in groups)})")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"--class_names {class_names!r}: {', '.join(dup)} named more than once "
                        "(merge those labels with --classes a+b instead)")
    return names


def _warn_left_out(labels_path, folder, total, not_kept, missing) -> None:
    parts = []
    if not_kept:
        parts.append(f"{not_kept} with a class not in --classes")
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        parts.append(f"{len(missing)} without an image in {folder} ({shown})")
    if parts:
        warnings.warn(f"{labels_path}: {total - not_kept - len(missing)} of {total} rows used; "
                      f"left out " + "; ".join(parts), stacklevel=3)


def _subset(pixels, targets, idx, names) -> ImageDataset:
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(pixels[idx])),
                        torch.from_numpy(targets[idx]), list(names))
