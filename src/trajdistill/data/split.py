"""A test split drawn from data that comes without one (a flat folder + labels CSV, a folder
of class folders, a train/ folder alone): per class a seeded permutation, so that the same
files and options always give the same split, whatever the training seed, and experts and
distillation agree on it."""
from __future__ import annotations

import numpy as np

from .base import DataError

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, num_classes: int, test_fraction: float,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded permutation; the first round(n * fraction) (at least 1) are test."""
    gen = np.random.default_rng(seed)
    train, test = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        members = members[gen.permutation(len(members))]
        k = max(1, int(round(len(members) * test_fraction))) if len(members) > 1 else 0
        test.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def check_fraction(test_fraction) -> float:
    if not 0 < float(test_fraction) < 1:
        raise DataError(f"--test_fraction must be between 0 and 1, got {test_fraction}")
    return float(test_fraction)


def too_few(where, counts, names, inside: str = "", advice: str = "") -> None:
    """Refuse classes with fewer than 2 images: the split could leave one without a test (or
    a training) image. `inside` and `advice` extend the message (" in FOLDER", " (merge ...)")."""
    few = [f"{names[c]} ({counts[c]})" for c in range(len(names)) if counts[c] < 2]
    if few:
        raise DataError(f"{where}: class(es) {', '.join(few)} have fewer than 2 images{inside}; "
                        f"each class needs one to train and one to test on{advice}")
