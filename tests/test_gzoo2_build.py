"""Building GZoo2 / GZoo2_aug from the real Stripe 82 table and the 100 real cut-outs, and
loading the result (docs/algorithm.md section 7).

The real asset_id -> objid mapping table is not available (see shared/data/README.md),
so the tests write their own mapping: the 100 cut-outs are paired with the 11 most
confident galaxies of each of the nine classes (99) plus the 12th of class 0. Every
class then has images for its top galaxies, so a small per_class fills from the top;
the pixels do not show those galaxies, which no test relies on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill.data import DataError, load_dataset
from trajdistill.gzoo2 import GZoo2Warning, add_gzoo2_parser, build_gzoo2, label_catalog, ranked
from trajdistill.gzoo2.images import decode, to_array

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE

PER_CLASS, TEST, AUG, SIZE = 4, 1, 3, 32
OPTS = dict(per_class=PER_CLASS, test_per_class=TEST, aug=AUG, size=SIZE, progress=False)


@pytest.fixture(scope="module")
def gz2(shared_data):
    return shared_data / "gz2"


@pytest.fixture(scope="module")
def ranking(gz2):
    """Per class, the catalog ids from most to least confident."""
    cat, _, labels, best = label_catalog(gz2 / "gz2_stripe82_table5.csv.gz", progress=False)
    return [cat.ids[ranked(cat.ids, labels, best, c)].tolist() for c in range(9)]


@pytest.fixture(scope="module")
def pairing(gz2, ranking):
    """objid -> asset_id of a real cut-out (see the module docstring)."""
    assets = sorted(p.stem for p in (gz2 / "images").glob("*.jpg"))
    assert len(assets) == 100
    objids = [o for c in range(9) for o in ranking[c][:11]] + [ranking[0][11]]
    return dict(zip(objids, assets))


def write_mapping(path, pairs):
    with open(path, "w") as f:
        f.write("objid,sample,asset_id\n")
        for objid, asset in pairs.items() if isinstance(pairs, dict) else pairs:
            f.write(f"{objid},stripe82,{asset}\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, gz2, pairing):
    root = tmp_path_factory.mktemp("gzoo2")
    mapping = write_mapping(root / "mapping.csv", pairing)
    out = root / "data" / "GZoo2_aug"
    with warnings.catch_warnings():
        warnings.simplefilter("error", GZoo2Warning)  # every class fills: no warning
        manifest = build_gzoo2(gz2 / "gz2_stripe82_table5.csv.gz", gz2 / "images", out,
                               mapping=mapping, workers=1, verbose=False, **OPTS)
    return root, out, manifest


def test_selection_is_the_top_of_each_class(built, ranking):
    _, _, m = built
    assert m["name"] == "GZoo2_aug" and m["missing_images"] == []
    for c, info in enumerate(m["per_class"]):
        kept = info["train_ids"] + info["test_ids"]
        assert sorted(kept) == sorted(ranking[c][:PER_CLASS])
        assert (info["found"], info["kept"], info["train"], info["test"]) == (
            len(ranking[c]), PER_CLASS, PER_CLASS - TEST, TEST)
        assert info["filled"] and info["skipped"] == 0
    assert [d["found"] for d in m["per_class"]] == [5911, 8121, 1972, 485, 105, 840, 109, 1932, 284]
    assert m["unlabelled"] == 2


def test_arrays_layout_and_pixels(built, gz2, pairing):
    _, out, m = built
    tr = np.load(out / "train_images.npy", mmap_mode="r")
    te = np.load(out / "test_images.npy", mmap_mode="r")
    trl, tel = np.load(out / "train_labels.npy"), np.load(out / "test_labels.npy")
    assert tr.dtype == np.uint8 and tr.shape == (9 * (PER_CLASS - TEST) * AUG, 3, SIZE, SIZE)
    assert te.shape == (9 * TEST, 3, SIZE, SIZE) and tel.dtype == trl.dtype == np.int64
    assert trl.tolist() == [c for c in range(9) for _ in range((PER_CLASS - TEST) * AUG)]
    assert tel.tolist() == list(range(9))
    # Pixels by the section 7 recipe, written out with PIL: rotate the whole 424 cut-out
    # about its centre (bilinear), keep the middle 212x212, area-resize, channel-first.
    for c in (0, 4, 8):
        info = m["per_class"][c]
        for g, objid in enumerate(info["train_ids"]):
            img = Image.open(gz2 / "images" / f"{pairing[objid]}.jpg").convert("RGB")
            assert img.size == (424, 424)
            for k in range(AUG):
                rot = img.rotate(360 * k / AUG, resample=Image.Resampling.BILINEAR)
                ref = rot.crop((106, 106, 318, 318)).resize((SIZE, SIZE), Image.Resampling.BOX)
                row = c * (PER_CLASS - TEST) * AUG + g * AUG + k
                assert np.array_equal(tr[row], np.asarray(ref).transpose(2, 0, 1)), (objid, k)
        img = Image.open(gz2 / "images" / f"{pairing[info['test_ids'][0]]}.jpg").convert("RGB")
        ref = img.crop((106, 106, 318, 318)).resize((SIZE, SIZE), Image.Resampling.BOX)
        assert np.array_equal(te[c], np.asarray(ref).transpose(2, 0, 1))


def test_rotation_shortcut_is_exact_on_every_cutout(gz2):
    # to_array computes only the kept pixels of the rotated image; it must equal
    # rotating the full cut-out and cropping, for every real cut-out and every angle.
    for path in sorted((gz2 / "images").glob("*.jpg"))[::4]:
        img = decode(path.read_bytes())
        for angle in (36.0, 90.0, 180.0, 324.0):
            full = img.rotate(angle, resample=Image.Resampling.BILINEAR)
            ref = full.crop((106, 106, 318, 318)).resize((64, 64), Image.Resampling.BOX)
            assert np.array_equal(to_array(img, 64, angle), np.asarray(ref).transpose(2, 0, 1))


def test_manifest_statistics_and_figures(built, gz2):
    root, out, m = built
    tr = np.load(out / "train_images.npy").astype(np.float64) / 255.0
    assert m["mean"] == pytest.approx(tr.mean(axis=(0, 2, 3)).tolist(), abs=1e-9)
    assert m["std"] == pytest.approx(tr.std(axis=(0, 2, 3)).tolist(), abs=1e-9)
    inputs = m["inputs"]
    import hashlib
    table = gz2 / "gz2_stripe82_table5.csv.gz"
    assert inputs["catalog"]["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert inputs["catalog"]["rows"] == 19761 and inputs["catalog"]["id_column"] == "objid"
    assert inputs["mapping"]["sha256"] == hashlib.sha256((root / "mapping.csv").read_bytes()).hexdigest()
    assert inputs["images"]["used"] == 9 * PER_CLASS
    for name, info in m["arrays"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]
    assert m["options"] == {"per_class": PER_CLASS, "test_per_class": TEST, "aug": AUG,
                            "votes": "fraction", "seed": 0, "size": SIZE, "tree": 9}
    assert m["code_version"]["trajdistill"]
    # last_confidence is the confidence of the PER_CLASS-th most confident of the class
    cat, _, labels, best = label_catalog(table, progress=False)
    for c, info in enumerate(m["per_class"]):
        assert info["last_confidence"] == best[ranked(cat.ids, labels, best, c)[PER_CLASS - 1]]
    means = np.load(out / "class_means.npy")
    labels_tr = np.load(out / "train_labels.npy")
    assert means.shape == (9, 3, SIZE, SIZE) and means.dtype == np.float32
    assert np.allclose(means[5], tr[labels_tr == 5].mean(axis=0), atol=1e-6)
    for png in ("montage.png", "class_means.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_build_is_reproducible_and_cli_matches(built, gz2, tmp_path):
    root, out, _ = built
    parser = argparse.ArgumentParser(prog="trajdistill")
    add_gzoo2_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "gzoo2", "build", "--catalog", str(gz2 / "gz2_stripe82_table5.csv.gz"),
        "--images", str(gz2 / "images"), "--mapping", str(root / "mapping.csv"),
        "--out", str(tmp_path / "again"), "--per-class", str(PER_CLASS),
        "--test-per-class", str(TEST), "--aug", str(AUG), "--size", str(SIZE),
        "--workers", "2", "--no-progress", "--quiet"])
    assert args.func(args) == 0
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy",
                 "class_means.npy", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # another seed: same galaxies, another split
    m = build_gzoo2(gz2 / "gz2_stripe82_table5.csv.gz", gz2 / "images", tmp_path / "seed1",
                    mapping=root / "mapping.csv", seed=1, verbose=False, **OPTS)
    m0 = json.loads((out / "manifest.json").read_text())
    pairs = [(sorted(a["train_ids"] + a["test_ids"]), sorted(b["train_ids"] + b["test_ids"]))
             for a, b in zip(m["per_class"], m0["per_class"])]
    assert all(x == y for x, y in pairs)
    assert any(a["test_ids"] != b["test_ids"] for a, b in zip(m["per_class"], m0["per_class"]))


def test_missing_and_unreadable_images_are_replaced_and_reported(tmp_path, gz2, pairing, ranking,
                                                                 capsys):
    images = tmp_path / "images"
    images.mkdir()
    for p in (gz2 / "images").glob("*.jpg"):
        os.symlink(p, images / p.name)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    pairs = dict(pairing)
    # class 4: its two most confident galaxies point at files that do not exist
    for objid in ranking[4][:2]:
        pairs[objid] = f"no_such_asset_{objid}"
    # class 5: the most confident one points at an unreadable file
    pairs[ranking[5][0]] = "corrupt"
    # class 6: only 3 galaxies have images at all, so it cannot reach PER_CLASS
    for objid in ranking[6][3:11]:
        del pairs[objid]
    mapping = write_mapping(tmp_path / "mapping.csv", pairs)
    with pytest.warns(GZoo2Warning) as record:
        m = build_gzoo2(gz2 / "gz2_stripe82_table5.csv.gz", images, tmp_path / "out",
                        mapping=mapping, **OPTS)
    messages = [str(w.message) for w in record]
    assert any("class 6 (bar_no_spiral): only 3 of 4" in s and "109 labelled" in s for s in messages)
    assert any("109 galaxies considered had no usable image (2 missing file, 106 not in the mapping "
               "table, 1 unreadable file)" in s for s in messages)
    info = m["per_class"]
    assert sorted(info[4]["train_ids"] + info[4]["test_ids"]) == sorted(ranking[4][2:2 + PER_CLASS])
    assert sorted(info[5]["train_ids"] + info[5]["test_ids"]) == sorted(ranking[5][1:1 + PER_CLASS])
    assert info[6]["kept"] == 3 and not info[6]["filled"] and info[6]["skipped"] == 109 - 3
    assert (info[6]["train"], info[6]["test"]) == (2, 1)  # ratio kept for a short class
    missing = {d["objid"]: d for d in m["missing_images"]}
    for objid in ranking[4][:2]:
        assert missing[objid]["class"] == 4 and "missing file no_such_asset" in missing[objid]["reason"]
    assert "unreadable file corrupt.jpg" in missing[ranking[5][0]]["reason"]
    assert missing[ranking[6][3]]["reason"] == "not in the mapping table"
    assert len(missing) == 2 + 1 + 106
    err = capsys.readouterr().err
    assert f"skipped {ranking[4][0]} (class 4): missing file" in err
    assert f"skipped {ranking[5][0]} (class 5): unreadable file corrupt.jpg" in err
    assert "and 9 more (see manifest.json" in err  # 109 skipped, 100 printed
    assert m["counts"]["train"] == (8 * (PER_CLASS - TEST) + 2) * AUG


def test_objid_named_images_without_mapping(tmp_path, gz2, pairing):
    images = tmp_path / "images"
    images.mkdir()
    for objid, asset in pairing.items():
        os.symlink(gz2 / "images" / f"{asset}.jpg", images / f"{objid}.jpg")
    m = build_gzoo2(gz2 / "gz2_stripe82_table5.csv.gz", images, tmp_path / "out", aug=1,
                    per_class=3, test_per_class=1, size=16, progress=False, verbose=False)
    assert m["name"] == "GZoo2" and m["inputs"]["mapping"] is None
    assert m["counts"] == {"train": 18, "test": 9} and m["missing_images"] == []


def test_loader_round_trip(built):
    root, out, m = built
    for name, path in (("GZoo2", out), ("GZoo2_aug", out), ("GZoo2_aug", out.parent)):
        d = load_dataset(name, data_path=path)
        assert d.name == "GZoo2_aug" and d.classes == m["classes"] and d.num_classes == 9
        assert d.train.images.dtype == torch.uint8 and d.image_shape == (3, SIZE, SIZE)
        assert torch.equal(d.train.images, torch.from_numpy(np.load(out / "train_images.npy")))
        assert torch.equal(d.test.labels, torch.from_numpy(np.load(out / "test_labels.npy")))
        assert d.preprocess.mean == tuple(m["mean"]) and d.preprocess.std == tuple(m["std"])
        assert d.meta["gzoo2_aug"] == AUG and d.meta["build_dir"] == str(out.resolve())
        assert d.train.class_counts() == [(PER_CLASS - TEST) * AUG] * 9
    with pytest.raises(DataError, match="no GZoo2 build found"):
        load_dataset("GZoo2", data_path=out.parent)  # holds GZoo2_aug/ only
    with pytest.raises(DataError, match="needs data_path"):
        load_dataset("GZoo2")
    with pytest.raises(DataError, match="takes no option.*size"):
        load_dataset("GZoo2", data_path=out, size=64)
    assert len(load_dataset("GZoo2", data_path=out, size=None).test) == 9


def test_loader_rejects_half_built_directories(built, tmp_path):
    _, out, _ = built
    half = tmp_path / "half"
    shutil.copytree(out, half)
    (half / "manifest.json").unlink()
    with pytest.raises(DataError, match="did not finish"):
        load_dataset("GZoo2", data_path=half)
    shutil.copy(out / "manifest.json", half / "manifest.json")
    np.save(half / "test_labels.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"test_labels\.npy: int64 \[3\] but manifest\.json records"):
        load_dataset("GZoo2", data_path=half)
    (half / "train_images.npy").unlink()
    with pytest.raises(DataError, match="train_images.npy is missing"):
        load_dataset("GZoo2", data_path=half)


def test_cli_reports_bad_input(tmp_path, gz2, capsys):
    parser = argparse.ArgumentParser(prog="trajdistill")
    add_gzoo2_parser(parser.add_subparsers(dest="command"))
    (tmp_path / "cat.csv").write_text("objid,t01_smooth_or_features_a01_smooth_fraction\n1,0.5\n")
    args = parser.parse_args(["gzoo2", "build", "--catalog", str(tmp_path / "cat.csv"),
                              "--images", str(gz2 / "images"), "--out", str(tmp_path / "o"),
                              "--no-progress"])
    with pytest.raises(SystemExit) as exit_:
        args.func(args)
    assert exit_.value.code == 2
    assert "cat.csv: missing columns 't01_smooth_or_features_a02" in capsys.readouterr().err
    args = parser.parse_args(["gzoo2", "build", "--catalog", str(tmp_path / "cat.csv"),
                              "--images", str(gz2 / "images"), "--out", "z", "--tree", "10"])
    assert args.tree == 10 and args.per_class is None and args.test_per_class is None
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_ten_class_build(tmp_path, gz2, pairing, ranking):
    # the ten-class tree adds star/artifact; give its 5 most confident galaxies images too
    # (re-using cut-outs already paired above: an image may serve two catalog rows here)
    cat, _, labels, best = label_catalog(gz2 / "gz2_stripe82_table5.csv.gz", tree=10, progress=False)
    stars = cat.ids[ranked(cat.ids, labels, best, 9)[:5]].tolist()
    pairs = list(pairing.items()) + list(zip(stars, list(pairing.values())[:5]))
    mapping = write_mapping(tmp_path / "mapping.csv", pairs)
    m = build_gzoo2(gz2 / "gz2_stripe82_table5.csv.gz", gz2 / "images", tmp_path / "out",
                    mapping=mapping, tree=10, per_class=5, aug=1, size=16, progress=False,
                    verbose=False)
    assert all(d["filled"] for d in m["per_class"]) and m["missing_images"] == []
    assert m["name"] == "GZoo2_10class" and len(m["classes"]) == 10
    assert m["classes"][9] == "star_or_artifact"
    star = m["per_class"][9]
    assert sorted(star["train_ids"] + star["test_ids"]) == sorted(stars)
    assert (star["train"], star["test"]) == (4, 1)  # the 80/20 split
    assert m["per_class"][9]["found"] == 256
    d = load_dataset("GZoo2", data_path=tmp_path / "out")
    assert d.num_classes == 10 and d.name == "GZoo2_10class"


def test_mapping_prefers_the_catalog_sample(tmp_path):
    from trajdistill.gzoo2.catalog import read_mapping
    from trajdistill.gzoo2.images import ImageSource

    path = tmp_path / "m.csv"
    path.write_text("objid,sample,asset_id\n7,stripe82_coadd_1,11\n7,original,12\n8,original,13\n")
    table = read_mapping(path, progress=False)
    assert table == {7: [("stripe82_coadd_1", "11"), ("original", "12")], 8: [("original", "13")]}
    src = ImageSource(tmp_path, table)
    assert [p.name for p in src.candidates(7, "original")] == ["12.jpg", "11.jpg"]
    assert [p.name for p in src.candidates(7, "stripe82_c")] == ["11.jpg", "12.jpg"]  # file order
    assert src.find(9).reason == "not in the mapping table"
    assert "missing file 11.jpg; missing file 12.jpg" == src.find(7).reason


def test_built_set_runs_the_whole_pipeline_by_name(built, tmp_path, capsys):
    """The science case end to end: experts, STM distillation, report and a baseline on
    `--dataset GZoo2_aug`, read from the directory the builder wrote."""
    from trajdistill.cli import main
    root, out, _ = built
    common = ["--dataset", "GZoo2_aug", "--data_path", str(root / "data"), "--model", "ConvNetD2",
              "--device", DEVICE, "--quiet"]
    assert main(["buffer", *common, "--train_epochs", "2", "--num_experts", "1",
                 "--lr_teacher", "0.001", "--buffer_path", str(tmp_path / "buf")]) == 0
    run_dir = tmp_path / "run"
    assert main(["distill", *common, "--buffer_path", str(tmp_path / "buf"), "--ipc", "1",
                 "--syn_steps", "3", "--Iteration", "3", "--eval_it", "3", "--num_eval", "1",
                 "--epoch_eval_train", "5", "--lr_img", "1000", "--lr_teacher", "0.0001",
                 "--run_dir", str(run_dir)]) == 0
    syn = torch.load(run_dir / "synthetic_best.pt", weights_only=True)
    assert syn["images"].shape == (9, 3, SIZE, SIZE) and syn["data"]["dataset"] == "GZoo2_aug"
    html = (run_dir / "report.html").read_text()
    assert "smooth" in html  # the report names the galaxy classes
    assert main(["baseline", "--kind", "mean", *common, "--num_eval", "1",
                 "--epoch_eval_train", "5"]) == 0
    assert "ConvNetD2:" in capsys.readouterr().out
