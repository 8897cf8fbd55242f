"""A flat folder of real gz1 galaxy cut-outs + a labels CSV (the Kaggle layout), and
--res / --crop / validation/ for image folders. Small folders are built in tmp_path from the
real files of ../shared/data (gz1/, cifar10-imagefolder/)."""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill.cli import main
from trajdistill.data import DataError, load_dataset
from trajdistill.data.imagefolder import resize_center_crop
from trajdistill.data.labelled import parse_classes, stratified_split
from trajdistill.gzoo2.images import decode, to_array

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("TRAJDISTILL_CACHE", str(path))
    return path


def gz1_rows(shared_data) -> list[tuple[str, str]]:
    with open(shared_data / "gz1" / "gz1_labels.csv", newline="") as f:
        return [(r["OBJID"], r["CLASS"]) for r in csv.DictReader(f)]


@pytest.fixture()
def small_gz1(shared_data, tmp_path) -> tuple[Path, dict[str, str]]:
    """6 galaxies of each class 0-3 and 2 of class 5, copied; one extra row has no image."""
    rows, chosen = gz1_rows(shared_data), {}
    for cls, n in (("0", 6), ("1", 6), ("2", 6), ("3", 6), ("5", 2)):
        for key, label in [r for r in rows if r[1] == cls][:n]:
            chosen[key] = label
    root = tmp_path / "gz"
    (root / "images").mkdir(parents=True)
    for key in chosen:
        shutil.copy(shared_data / "gz1" / "images" / f"{key}.jpeg", root / "images")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["OBJID", "CLASS"])
        w.writerows(chosen.items())
        w.writerow(["123456789", "0"])  # a row whose image is missing
    return root, chosen


def load_small(root, **kw):
    opts = dict(labels="labels.csv", id_column="OBJID", label_column="CLASS", classes="0,1+2,3",
                class_names="elliptical,spiral,edge-on", res=16, crop="center-half",
                test_fraction=0.25)
    return load_dataset(str(root), **{**opts, **kw})


def test_gz1_flat_folder_merges_classes_splits_and_counts_what_it_left_out(small_gz1):
    root, chosen = small_gz1
    with pytest.warns(UserWarning, match=r"24 of 27 rows used; left out 2 with a class not in "
                      r"--classes; 1 without an image .*123456789 \(line 28\)"):
        splits = load_small(root)
    assert splits.classes == ["elliptical", "spiral", "edge-on"]
    # 6 / 12 / 6 per class, a quarter of each (rounded) in the test split
    assert splits.train.class_counts() == [4, 9, 4] and splits.test.class_counts() == [2, 3, 2]
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert splits.describe()["left_out"] == {"class_not_kept": 2, "image_missing": 1}
    # every pixel is the GZoo2 builder's own crop (central half, area resize) of the file
    expected = {}
    for key, label in chosen.items():
        if label != "5":
            arr = to_array(decode((root / "images" / f"{key}.jpeg").read_bytes()), 16)
            expected[arr.tobytes()] = {"0": 0, "1": 1, "2": 1, "3": 2}[label]
    got = [(x.numpy().tobytes(), int(y)) for split in (splits.train, splits.test)
           for x, y in zip(split.images, split.labels)]
    assert len(got) == 24 and dict(got) == expected


def test_split_is_seeded_stratified_and_the_same_every_time(small_gz1):
    root, _ = small_gz1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = load_small(root), load_small(root)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    train, test = stratified_split(labels, 3, 0.3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(20))
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 2, 1]  # round(n * 0.3), >= 1


def test_bad_rows_and_options_are_named(small_gz1):
    root, chosen = small_gz1
    key = next(iter(chosen))
    with open(root / "labels.csv", "a") as f:
        f.write(f"{key},3\n")
    with pytest.raises(DataError, match=rf"line 29: duplicate id {key} \(first on line 2\)"):
        load_small(root)
    with pytest.raises(DataError, match="no column 'GalaxyID'"):
        load_small(root, id_column="GalaxyID")
    (root / "labels.csv").write_text("OBJID,CLASS\n" + "".join(f"{k},{v}\n" for k, v in chosen.items()))
    with pytest.raises(DataError, match=r"--classes: label\(s\) 7 do not occur"):
        load_small(root, classes="0,7", class_names=None)
    with pytest.raises(DataError, match="--class_names gives 2 name"):
        load_small(root, class_names="a,b")
    with pytest.raises(DataError, match="'\\+' \\(merge\\)"):
        parse_classes("0,,3")
    with pytest.raises(DataError, match="--labels nope.csv: no such file"):
        load_small(root, labels="nope.csv")
    assert parse_classes("0, 1+2 ,3") == [["0"], ["1", "2"], ["3"]]


def test_without_classes_every_label_is_a_class_in_numeric_order(small_gz1):
    root, _ = small_gz1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_small(root, classes=None, class_names=None, res=8, crop=None)
    assert splits.classes == ["0", "1", "2", "3", "5"]
    assert [a + b for a, b in zip(splits.train.class_counts(), splits.test.class_counts())] == \
        [6, 6, 6, 6, 2]  # class 0 has 7 rows; the one without an image is left out


def test_image_folder_res_and_a_validation_split(shared_data, tmp_path):
    src = shared_data / "cifar10-imagefolder"
    root = tmp_path / "folder"
    for split, name in (("train", "train"), ("test", "validation")):
        for cls in ("airplane", "cat"):
            shutil.copytree(src / split / cls, root / name / cls)
    splits = load_dataset(str(root), res=20)
    assert splits.classes == ["airplane", "cat"] and splits.test.images.shape == (20, 3, 20, 20)
    first = sorted((root / "validation" / "airplane").iterdir())[0]
    with Image.open(first) as im:
        want = np.asarray(resize_center_crop(im.convert("RGB"), 20)).transpose(2, 0, 1)
    assert np.array_equal(splits.test.images[0].numpy(), want)
    with pytest.raises(DataError, match="CIFAR10 does not take option.*res"):
        load_dataset("CIFAR10", str(shared_data / "cifar10-subset"), res=16)


def test_cli_baseline_on_a_labelled_folder(small_gz1, capsys):
    root, _ = small_gz1
    args = ["baseline", "--kind", "mean", "--dataset", str(root), "--labels", "labels.csv",
            "--id_column", "OBJID", "--label_column", "CLASS", "--classes", "0,1+2,3",
            "--res", "16", "--crop", "center-half", "--model", "ConvNetD2", "--num_eval", "1",
            "--epoch_eval_train", "3", "--dsa_strategy", "galaxy", "--device", DEVICE, "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    assert "ConvNetD2:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # refused while parsing, with the flag named
        main(args[:-5] + ["--dsa_strategy", "spin", "--device", DEVICE])
    assert stop.value.code == 2 and "--dsa_strategy" in capsys.readouterr().err


def test_gz1_presets_run_buffer_distill_and_resume_on_a_labelled_folder(small_gz1, tmp_path, capsys):
    root, _ = small_gz1
    common = ["--dataset", str(root), "--labels", "labels.csv", "--res", "16", "--device", DEVICE,
              "--buffer_path", str(tmp_path / "buffers"), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["buffer", "--preset", "GZ1", "--train_epochs", "3", "--num_experts", "1",
                     *common]) == 0
        assert (tmp_path / "buffers" / "gz-16px" / "ConvNetW32" / "expert_000.pt").exists()
        run = tmp_path / "run"
        assert main(["distill", "--preset", "GZ1-ipc1", "--Iteration", "2", "--eval_it", "0",
                     "--syn_steps", "3", "--run_dir", str(run), *common]) == 0
        config = json.loads((run / "config.json").read_text())
        assert config["dsa_strategy"] == "galaxy" and config["lr_teacher"][0] > 0  # auto resolved
        assert config["source"]["classes"] == "0,1+2,3" and config["source"]["res"] == 16
        assert main(["distill", "--resume", str(run), "--Iteration", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    # the preset's own image lr is kept (not paced); its lr_teacher auto is measured
    assert "derived settings: pace_lr_img False, lr_teacher 0." in captured.err
    assert "resuming" in captured.out + captured.err
