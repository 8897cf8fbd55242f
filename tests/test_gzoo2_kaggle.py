"""The Kaggle "Galaxy Zoo challenge" solutions table (GalaxyID, Class1.1 ... Class11.6) as a
`gzoo2 build` catalog: a small hand-made table whose ids are the names of the 100 real GZ2
cut-outs in ../shared/data/gz2/images (Kaggle images are named <GalaxyID>.jpg)."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from trajdistill.data import DataError
from trajdistill.gzoo2 import add_gzoo2_parser, label_catalog

# the 37 columns of training_solutions_rev1.csv, answers per task
TASK_SIZES = {1: 3, 2: 2, 3: 2, 4: 2, 5: 4, 6: 2, 7: 3, 8: 7, 9: 3, 10: 3, 11: 6}
HEADER = ["GalaxyID"] + [f"Class{t}.{a}" for t, n in TASK_SIZES.items() for a in range(1, n + 1)]

# cumulative values (each task's answers sum to the share of voters who reached it)
ROUND = {"Class1.1": 0.8, "Class1.2": 0.15, "Class1.3": 0.05, "Class6.2": 1.0,
         "Class7.1": 0.6, "Class7.2": 0.15, "Class7.3": 0.05,
         "Class2.1": 0.03, "Class2.2": 0.12, "Class3.2": 0.12, "Class4.2": 0.12}
EDGE_ON = {"Class1.1": 0.1, "Class1.2": 0.85, "Class1.3": 0.05, "Class6.2": 1.0,
           "Class2.1": 0.68, "Class2.2": 0.17, "Class9.1": 0.1, "Class9.3": 0.58,
           "Class3.2": 0.17, "Class4.1": 0.05, "Class4.2": 0.12,
           "Class7.1": 0.05, "Class7.2": 0.05}


def write_table(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for galaxy_id, values in rows:
            w.writerow([galaxy_id] + [values.get(c, 0.0) for c in HEADER[1:]])


@pytest.fixture()
def table(shared_data, tmp_path):
    ids = sorted(int(p.stem) for p in (shared_data / "gz2" / "images").glob("*.jpg"))[:12]
    rows = [(i, ROUND if k % 2 == 0 else EDGE_ON) for k, i in enumerate(ids)]
    write_table(tmp_path / "training_solutions_rev1.csv", rows)
    return tmp_path / "training_solutions_rev1.csv", ids


def test_cumulative_values_become_per_task_fractions(table):
    path, ids = table
    cat, conf, labels, best = label_catalog(path, progress=False)
    assert cat.id_column == "galaxyid" and cat.ids.tolist() == ids
    frac = cat.values
    # by hand: edge-on yes = 0.68 / (0.68 + 0.17); round = 0.6 / 0.8; no bulge = 0.58 / 0.68
    assert frac["t02_edgeon_a04_yes_fraction"][1] == pytest.approx(0.8)
    assert frac["t07_rounded_a16_completely_round_fraction"][0] == pytest.approx(0.75)
    assert frac["t09_bulge_shape_a27_no_bulge_fraction"][1] == pytest.approx(0.58 / 0.68)
    assert frac["t09_bulge_shape_a27_no_bulge_fraction"][0] == 0.0  # task 9 not reached
    # smooth, completely round: 0.8 * 0.75; disk, edge-on, no bulge: 0.85 * 0.8 * 0.58/0.68
    assert best[0] == pytest.approx(0.6) and labels[0] == 0
    assert best[1] == pytest.approx(0.85 * 0.8 * 0.58 / 0.68) and labels[1] == 4


def test_gzoo2_build_accepts_the_kaggle_table(table, shared_data, tmp_path):
    path, ids = table
    parser = argparse.ArgumentParser(prog="trajdistill")
    add_gzoo2_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "built"
    args = parser.parse_args(["gzoo2", "build", "--catalog", str(path), "--images",
                              str(shared_data / "gz2" / "images"), "--out", str(out),
                              "--per-class", "4", "--test-per-class", "1", "--aug", "1",
                              "--size", "16", "--no-progress"])
    args.func(args)
    manifest = json.loads((out / "manifest.json").read_text())
    # 6 galaxies of each kind, 4 kept per class (3 train + 1 test), the others classes empty
    assert manifest["counts"] == {"train": 6, "test": 2}
    assert np.bincount(np.load(out / "train_labels.npy"), minlength=9).tolist() == \
        [3, 0, 0, 0, 3, 0, 0, 0, 0]


def test_debiased_votes_are_refused_for_the_kaggle_table(table):
    path, _ = table
    with pytest.raises(DataError, match="only vote fractions.*--votes fraction"):
        label_catalog(path, votes="debiased", progress=False)
