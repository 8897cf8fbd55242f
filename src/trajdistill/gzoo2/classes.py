"""The simplified GZ2 decision tree: class confidences and labels (algorithm.md section 7).

A class's confidence is the product of the vote fractions along its path through the
tree; a galaxy's label is its most confident class. Ties go to the lower class index
(np.argmax), which keeps labelling deterministic (about 2 % of the Stripe 82 galaxies
have a tie at the top). A galaxy whose confidences are all zero (e.g. voted 100 %
star/artifact in the nine-class tree) gets no label (-1) rather than an arbitrary one.
"""
from __future__ import annotations

import numpy as np

# Short names for the answers used by the tree -> catalog column stems (Willett et al.
# 2013 Table 5 / zoo2MainSpecz / Hart et al. 2016 all share these stems).
ANSWERS: dict[str, str] = {
    "smooth": "t01_smooth_or_features_a01_smooth",
    "features": "t01_smooth_or_features_a02_features_or_disk",
    "star": "t01_smooth_or_features_a03_star_or_artifact",
    "edgeon": "t02_edgeon_a04_yes",
    "not_edgeon": "t02_edgeon_a05_no",
    "bar": "t03_bar_a06_bar",
    "no_bar": "t03_bar_a07_no_bar",
    "spiral": "t04_spiral_a08_spiral",
    "no_spiral": "t04_spiral_a09_no_spiral",
    "round": "t07_rounded_a16_completely_round",
    "in_between": "t07_rounded_a17_in_between",
    "cigar": "t07_rounded_a18_cigar_shaped",
    "bulge_rounded": "t09_bulge_shape_a25_rounded",
    "bulge_boxy": "t09_bulge_shape_a26_boxy",
    "no_bulge": "t09_bulge_shape_a27_no_bulge",
}

VOTES = ("fraction", "debiased")

# (name, description, answers multiplied along the path); a tuple inside the path is a sum.
_TREE = [
    ("smooth_round", "smooth, completely round", ("smooth", "round")),
    ("smooth_in_between", "smooth, in between", ("smooth", "in_between")),
    ("smooth_cigar", "smooth, cigar-shaped", ("smooth", "cigar")),
    ("edge_on_bulge", "disk, edge-on, with bulge", ("features", "edgeon", ("bulge_rounded", "bulge_boxy"))),
    ("edge_on_no_bulge", "disk, edge-on, no bulge", ("features", "edgeon", "no_bulge")),
    ("bar_spiral", "disk, not edge-on, bar, spiral", ("features", "not_edgeon", "bar", "spiral")),
    ("bar_no_spiral", "disk, not edge-on, bar, no spiral", ("features", "not_edgeon", "bar", "no_spiral")),
    ("no_bar_spiral", "disk, not edge-on, no bar, spiral", ("features", "not_edgeon", "no_bar", "spiral")),
    ("no_bar_no_spiral", "disk, not edge-on, no bar, no spiral",
     ("features", "not_edgeon", "no_bar", "no_spiral")),
    ("star_or_artifact", "star or artifact", ("star",)),
]
TREES = (9, 10)


def _check_tree(tree: int) -> None:
    if tree not in TREES:
        raise ValueError(f"tree must be 9 or 10, got {tree!r}")


def class_names(tree: int = 9) -> list[str]:
    _check_tree(tree)
    return [name for name, _, _ in _TREE[:tree]]


def class_descriptions(tree: int = 9) -> list[str]:
    _check_tree(tree)
    return [desc for _, desc, _ in _TREE[:tree]]


def column_name(answer: str, votes: str = "fraction") -> str:
    """Catalog column of one answer, e.g. ('smooth', 'fraction') -> 't01_..._a01_smooth_fraction'."""
    if votes not in VOTES:
        raise ValueError(f"votes must be one of {VOTES}, got {votes!r}")
    return f"{ANSWERS[answer]}_{votes}"


def required_answers(tree: int = 9) -> list[str]:
    """The answers the tree reads, in a fixed order (star/artifact only for ten classes)."""
    _check_tree(tree)
    return [a for a in ANSWERS if tree == 10 or a != "star"]


def confidences(p: dict[str, np.ndarray], tree: int = 9) -> np.ndarray:
    """(N, tree) float64 class confidences from per-answer vote fractions `p[answer]`."""
    _check_tree(tree)
    cols = []
    for _, _, path in _TREE[:tree]:
        conf = None
        for step in path:  # multiplied left to right, in the order of the section 7 table
            term = (np.asarray(p[step[0]], np.float64) + np.asarray(p[step[1]], np.float64)
                    if isinstance(step, tuple) else np.asarray(p[step], np.float64))
            conf = term if conf is None else conf * term
        cols.append(conf)
    return np.stack(cols, axis=1)


def assign_labels(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most confident class per galaxy (-1 when every confidence is 0) and that confidence."""
    labels = np.argmax(conf, axis=1).astype(np.int64)
    best = conf[np.arange(conf.shape[0]), labels]
    labels[best <= 0] = -1
    return labels, best
