"""The Kaggle "Galaxy Zoo challenge" solutions table as a GZ2 catalog.

`training_solutions_rev1.csv` has `GalaxyID` and 37 columns `Class1.1` ... `Class11.6`:
the same GZ2 decision tree (task 1 smooth / features / star, task 2 edge-on, ...), but
each answer's value is *cumulative*: the share of all voters who reached that answer, so a
task's answers sum to the share that reached the task (Willett et al. 2013 weighting).
The GZ2 tables give per-task fractions instead. Dividing each answer by its task's sum
turns the one into the other (a task nobody reached gets fractions 0), so the tree code
(classes.py) reads either table the same way. Images of that challenge are named
`<GalaxyID>.jpg`, the layout `ImageSource` already reads without a mapping table.
"""
from __future__ import annotations

import numpy as np

from ..data.base import DataError

ID_COLUMN = "galaxyid"

# Kaggle task -> its answers' GZ2 column stems, in Kaggle order (Class<task>.<1..n>).
# Only the tasks the simplified tree reads; the others are not needed for labels.
TASKS: dict[int, tuple[str, ...]] = {
    1: ("t01_smooth_or_features_a01_smooth", "t01_smooth_or_features_a02_features_or_disk",
        "t01_smooth_or_features_a03_star_or_artifact"),
    2: ("t02_edgeon_a04_yes", "t02_edgeon_a05_no"),
    3: ("t03_bar_a06_bar", "t03_bar_a07_no_bar"),
    4: ("t04_spiral_a08_spiral", "t04_spiral_a09_no_spiral"),
    7: ("t07_rounded_a16_completely_round", "t07_rounded_a17_in_between",
        "t07_rounded_a18_cigar_shaped"),
    9: ("t09_bulge_shape_a25_rounded", "t09_bulge_shape_a26_boxy", "t09_bulge_shape_a27_no_bulge"),
}
_TASK_OF = {stem: (task, k) for task, stems in TASKS.items() for k, stem in enumerate(stems)}


def is_kaggle(header: list[str]) -> bool:
    lower = {h.strip().lower() for h in header}
    return ID_COLUMN in lower and "class1.1" in lower


def kaggle_columns(path, columns: list[str]) -> list[str]:
    """The Kaggle columns needed for the requested GZ2 `*_fraction` columns (whole tasks)."""
    tasks = []
    for c in columns:
        stem, _, votes = c.rpartition("_")
        if votes != "fraction" or stem not in _TASK_OF:
            raise DataError(f"{path}: a Kaggle Galaxy Zoo table (GalaxyID, Class1.1 ...) has only "
                            f"vote fractions of tasks {sorted(TASKS)}; {c!r} cannot be derived "
                            "(use --votes fraction)")
        if _TASK_OF[stem][0] not in tasks:
            tasks.append(_TASK_OF[stem][0])
    return [f"Class{t}.{k + 1}" for t in tasks for k in range(len(TASKS[t]))]


def kaggle_fractions(values: dict[str, np.ndarray], columns: list[str]) -> dict[str, np.ndarray]:
    """Cumulative Kaggle values -> the per-task fractions of the GZ2 `columns`."""
    out = {}
    for c in columns:
        task, k = _TASK_OF[c.rpartition("_")[0]]
        parts = [values[f"Class{task}.{j + 1}"] for j in range(len(TASKS[task]))]
        total = np.sum(parts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = np.where(total > 0, parts[k] / np.where(total > 0, total, 1), 0.0)
    return out
