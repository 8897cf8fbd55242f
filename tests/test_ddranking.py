"""DD-Ranking's yardstick (ddranking.py, export --format ddranking, evaluate --protocol
ddranking, the report's section): the score formulas against values worked by hand from its
docs, the protocol's accuracies against this package's own evaluation of the same networks,
and the export read back exactly."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill import ddranking as ddr
from trajdistill.cli import main
from trajdistill.data.base import Preprocess
from trajdistill.data.zca import ZCA
from trajdistill.errors import ConfigError
from trajdistill.baselines import class_means, random_real
from trajdistill.evaluate import EvalConfig, evaluate_set
from trajdistill.export import export_ddranking, load_ddranking_export
from trajdistill.io import FileFormatError
from trajdistill.report import build_report
from trajdistill.synthetic import SyntheticSet

E = math.e


# ----------------------------------------------------------------------------- the formulas

def test_normalisation_maps_minus_one_zero_one_to_0_26_89_100():
    # (e^x - e^-1) / (e - e^-1) x 100: x = -1 -> 0, x = 1 -> 100, x = 0 -> (1 - 1/e) / (e - 1/e)
    # = (e - 1) / (e^2 - 1) = 1 / (e + 1) = 0.268941 -> 26.8941 %
    assert ddr.normalised(-1) == pytest.approx(0, abs=1e-12)
    assert ddr.normalised(1) == pytest.approx(100)
    assert ddr.normalised(0) == pytest.approx(26.8941, abs=1e-4)


def test_lrs_by_hand():
    # real 80 %, syn (hard) 45 %, syn (own) 50 %, random (own) 30 %:
    # HLR = 0.80 - 0.45 = 0.35, IOR = 0.50 - 0.30 = 0.20, alpha = 0.5*0.20 - 0.5*0.35 = -0.075,
    # LRS = (e^-0.075 - e^-1) / (e - e^-1) = (0.927743 - 0.367879) / (2.718282 - 0.367879)
    #     = 0.559864 / 2.350402 = 0.238199 -> 23.82 %
    r = ddr.lrs(0.80, 0.45, 0.50, 0.30)
    assert r["HLR"] == pytest.approx(0.35) and r["IOR"] == pytest.approx(0.20)
    assert r["alpha"] == pytest.approx(-0.075)
    assert r["LRS"] == pytest.approx(23.82, abs=5e-3)
    # w weighs IOR against HLR: w = 1 is IOR alone (0.2 -> (e^0.2 - e^-1)/(e - e^-1) =
    # (1.221403 - 0.367879)/2.350402 = 36.31 %), w = 0 is -HLR alone (-0.35 -> (0.704688 -
    # 0.367879)/2.350402 = 14.33 %)
    assert ddr.lrs(0.80, 0.45, 0.50, 0.30, w=1)["LRS"] == pytest.approx(36.31, abs=5e-3)
    assert ddr.lrs(0.80, 0.45, 0.50, 0.30, w=0)["LRS"] == pytest.approx(14.33, abs=5e-3)


def test_ars_by_hand():
    # with augmentation 60 % vs random 50 %, without 55 % vs 35 %: gains 0.10 and 0.20,
    # beta = 0.5*0.10 + 0.5*0.20 = 0.15, ARS = (e^0.15 - e^-1)/(e - e^-1) = (1.161834 -
    # 0.367879)/2.350402 = 0.337796 -> 33.78 %; gamma = 1: the augmented gain alone (0.10 ->
    # (1.105171 - 0.367879)/2.350402 = 31.37 %)
    r = ddr.ars(0.60, 0.50, 0.55, 0.35)
    assert r["aug_gain"] == pytest.approx(0.10) and r["no_aug_gain"] == pytest.approx(0.20)
    assert r["beta"] == pytest.approx(0.15) and r["ARS"] == pytest.approx(33.78, abs=5e-3)
    assert ddr.ars(0.60, 0.50, 0.55, 0.35, gamma=1)["ARS"] == pytest.approx(31.37, abs=5e-3)


def test_scores_are_averaged_per_round_not_computed_from_mean_accuracies():
    # its compute_metrics appends each round's LRS, then takes np.mean / np.std: rounds at
    # alpha -1 and 1 score 0 and 100 -> 50 ± 50, where the LRS of the mean alpha 0 is 26.89
    rounds = [{"LRS": ddr.normalised(-1)}, {"LRS": ddr.normalised(1)}]
    s = ddr.over_rounds(rounds, ["LRS"])["LRS"]
    assert s["mean"] == pytest.approx(50) and s["std"] == pytest.approx(50)


def test_its_names_of_data_and_networks():
    assert ddr.dataset_name({"dataset": "CIFAR10"}) == "CIFAR10"
    assert ddr.dataset_name({"dataset": "Tiny"}) == "TinyImageNet"
    assert ddr.dataset_name({"dataset": "ImageNet", "subset": "imagewoof"}) == "ImageWoof"
    assert ddr.dataset_name({"dataset": "digits"}) is None
    assert ddr.normalisation("TinyImageNet") == ddr.IMAGENET_STATS
    shapes = {(3, 32, 32): "ConvNet-3", (1, 8, 8): "ConvNet-3", (3, 64, 64): "ConvNet-4",
              (3, 128, 128): "ConvNet-5", (3, 224, 224): "ResNet-18-BN"}
    assert {s: ddr.ddranking_model_name(ddr.protocol_model(s)) for s in shapes} == shapes


# ----------------------------------------------------------------------------- the protocol

def _digit_set(digits, soft: bool = False, ipc: int = 1) -> SyntheticSet:
    images, labels = class_means(digits)
    if ipc > 1:
        images, labels = images.repeat_interleave(ipc, 0), labels.repeat_interleave(ipc)
    logits = torch.eye(digits.num_classes)[labels] * 3 if soft else None
    return SyntheticSet(images, labels, [0.02], digits.preprocess, digits.describe(), "ConvNetD2",
                        0, {"iteration": 7}, logits)


TINY = dict(num_eval=2, epochs=3, real_epochs=1, lr_grid=(0.01, 0.05))


def _one_network(images, targets, splits, lr, dsa, seed, epochs):
    cfg = EvalConfig(num_eval=1, epoch_eval_train=epochs, batch_train=256, dsa=dsa, seed=seed,
                     batched="off")
    return evaluate_set(images, targets, splits, [lr], ["ConvNet"], cfg, progress=False)["ConvNet"]["mean"]


def test_every_accuracy_is_this_packages_evaluation_of_the_named_network(digits):
    """A round recomputed from evaluate_set: the set at its learned lr with and without DSA, the
    round's random real set (random_real, the round's seed) at the best of the grid, the whole
    training set at lr 0.01 without DSA; the scores follow from them by the formulas."""
    syn = _digit_set(digits)
    result = ddr.evaluate_ddranking(syn, digits, ddr.DDRankingConfig(**{**TINY, "num_eval": 1,
                                                                        "seed": 3}))
    assert len(result["rounds"]) == 1 and result["labels"] == "hard" and result["ipc"] == 1
    r = result["rounds"][0]
    assert r["seed"] == 3 and r["syn_lr"] == 0.02
    assert r["syn_aug"] == _one_network(syn.images, syn.labels, digits, 0.02, True, 3, 3)
    assert r["syn_naug"] == _one_network(syn.images, syn.labels, digits, 0.02, False, 3, 3)
    rdm, labels = random_real(digits, 1, seed=3)
    grid = [_one_network(rdm, labels, digits, lr, True, 3, 3) for lr in (0.01, 0.05)]
    assert r["rdm_aug"] == max(grid) and r["rdm_aug_lr"] == (0.01, 0.05)[int(np.argmax(grid))]
    assert r["real_hard"] == _one_network(digits.train.images, digits.train.labels, digits, 0.01,
                                          False, 3, 1)
    # a hard-label set: its own evaluation is the hard-label run (LabelRobustScoreHard)
    assert r["syn_hard"] == r["syn_aug"]
    assert r["LRS"] == pytest.approx(ddr.lrs(r["real_hard"], r["syn_hard"], r["syn_aug"], r["rdm_aug"])["LRS"])
    assert r["ARS"] == pytest.approx(ddr.ars(r["syn_aug"], r["rdm_aug"], r["syn_naug"], r["rdm_naug"])["ARS"])
    assert result["scores"]["LRS"] == {"mean": r["LRS"], "std": 0.0}
    assert result["ddranking_model"] == "ConvNet-3" and result["differences"]


def test_a_soft_label_set_searches_its_hard_label_lr_and_labels_random_images_by_teacher(digits):
    syn = _digit_set(digits, soft=True)
    with pytest.raises(ConfigError, match="--teacher"):
        ddr.evaluate_ddranking(syn, digits, ddr.DDRankingConfig(**TINY))
    seen = []

    def teacher(x):  # a teacher that is sure of class 0: the random set's targets are its logits
        seen.append(x.shape)
        return torch.eye(digits.num_classes)[[0] * len(x)] * 5
    cfg = ddr.DDRankingConfig(**{**TINY, "num_eval": 1, "real_accuracy": 0.9})
    r = ddr.evaluate_ddranking(syn, digits, cfg, teacher)["rounds"][0]
    assert seen and seen[0] == (10, 1, 8, 8)
    assert r["real_hard"] == 0.9 and r["syn_lr"] == 0.02 and r["syn_hard_lr"] in (0.01, 0.05)
    rdm, _ = random_real(digits, 1, seed=0)
    grid = [_one_network(rdm, teacher(digits.preprocess(rdm)), digits, lr, True, 0, 3)
            for lr in (0.01, 0.05)]
    assert r["rdm_aug"] == max(grid)


def test_the_buffer_teacher_is_the_labeller_of_the_distillation(digits, digits_buffers):
    from trajdistill.experts import open_buffer
    from trajdistill.initial import Labeller
    from trajdistill.models import FlatModel, build_model
    teacher = ddr.buffer_teacher(digits_buffers / "digits" / "ConvNetD2", digits)
    x = digits.preprocess(digits.test.images[:7])
    store = open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)
    student = FlatModel.wrap(build_model("ConvNetD2", 1, 10, (8, 8)))
    expected = Labeller.of(student, store, [0], torch.device("cpu")).logits(x)
    assert torch.equal(teacher(x), expected)
    assert (teacher(x).argmax(1) == digits.test.labels[:7]).float().mean() > 0.5  # a trained expert


def test_refuses_what_it_cannot_measure(digits):
    syn = _digit_set(digits)
    unequal = SyntheticSet(syn.images[:9], syn.labels[:9], [0.02], digits.preprocess,
                           digits.describe(), "ConvNetD2")
    with pytest.raises(ConfigError, match="same number of every class"):
        ddr.evaluate_ddranking(unequal, digits, ddr.DDRankingConfig(**TINY))
    for bad, flag in ((dict(lrs_lambda=1.5), "--lrs_lambda"), (dict(real_accuracy=1.2), "--real_accuracy")):
        with pytest.raises(ConfigError, match=flag):
            ddr.evaluate_ddranking(syn, digits, ddr.DDRankingConfig(**TINY, **bad))


# ----------------------------------------------------------------------------- the export

def _inverse(order):
    return torch.argsort(torch.tensor(order))


def test_export_round_trips_a_soft_label_set_in_any_order(digits, tmp_path):
    syn = _digit_set(digits, soft=True, ipc=2)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))  # not class-sorted
    syn = SyntheticSet(syn.images[perm], syn.labels[perm], [0.0123456789], syn.preprocess,
                       syn.data, syn.model, 0, {}, syn.soft_labels[perm] + torch.randn(20, 10))
    syn.save(tmp_path / "syn.pt")
    out = export_ddranking(tmp_path / "syn.pt", tmp_path / "out")
    back = load_ddranking_export(out)
    assert back["hard_labels"].tolist() == [c for c in range(10) for _ in range(2)]
    inv = _inverse(back["metadata"]["order"])
    assert torch.equal(back["images"][inv], syn.images)  # digits: its own normalisation, exactly
    assert torch.equal(back["hard_labels"][inv], syn.labels)
    assert torch.equal(back["soft_labels"][inv], syn.soft_labels)
    assert back["lr"] == 0.0123456789  # float64: the learned lr to the last bit
    assert back["metadata"]["ddranking_dataset"] is None and back["metadata"]["ipc"] == 2
    # the image-folder form: folders in class order, 8-bit pixels of the same images
    folders = sorted(p.name for p in (out / "image_folder").iterdir())
    assert folders == [f"{c:05d}" for c in range(10)]
    with Image.open(out / "image_folder" / "00003" / "00001.png") as im:
        row = back["images"][7]  # class 3, second image
        pixels = (row * digits.preprocess.std[0] + digits.preprocess.mean[0]).clamp(0, 1)
        assert np.array_equal(np.asarray(im), (pixels[0] * 255).round().byte().numpy())
    config = json.loads((out / "ddranking_config.json").read_text())
    assert config["label_type"] == "soft" and config["ipc"] == 2 and config["im_size"] == [8, 8]


# the keys LabelRobustScoreHard.__init__ reads from its Config (ddranking 0.2.0,
# ddranking/metrics/hard_label.py); Config.get of custom_*_trans indexes the key directly
HARD_LABEL_KEYS = ("dataset", "real_data_path", "ipc", "model_name", "data_aug_func", "aug_params",
                   "optimizer", "lr_scheduler", "weight_decay", "momentum", "step_size",
                   "num_eval", "im_size", "num_epochs", "real_batch_size", "syn_batch_size",
                   "save_path", "use_zca", "use_torchvision", "custom_train_trans",
                   "custom_val_trans", "num_workers", "device", "dist", "random_data_format",
                   "random_data_path", "eval_full_data")
DSA_KEYS = {"flip", "rotate", "saturation", "brightness", "contrast", "scale", "crop", "cutout"}


def test_export_of_a_cifar_set_in_its_normalisation_and_config(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # not its CIFAR statistics: renormalised
    data = {"dataset": "CIFAR10", "classes": [str(i) for i in range(10)], "zca": False,
            "image_shape": [3, 32, 32]}
    syn = SyntheticSet(torch.randn(10, 3, 32, 32, generator=g), torch.arange(10), [0.01],
                       Preprocess(mean, std), data, "ConvNet")
    syn.save(tmp_path / "syn.pt")
    back = load_ddranking_export(export_ddranking(tmp_path / "syn.pt", tmp_path / "out"))
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in ddr.CIFAR_STATS)
    assert torch.allclose(back["images"], (syn.images * 0.25 + 0.5 - m) / s, atol=1e-6)
    meta = back["metadata"]
    assert meta["ddranking_dataset"] == "CIFAR10" and meta["mean"] == list(ddr.CIFAR_STATS[0])
    config = json.loads((tmp_path / "out" / "ddranking_config.json").read_text())
    assert set(HARD_LABEL_KEYS) <= set(config) and set(config["aug_params"]) == DSA_KEYS
    assert (config["model_name"], config["num_epochs"], config["step_size"]) == ("ConvNet-3", 1000, 500)
    assert config["use_zca"] is False and config["label_type"] == "hard"
    # its Config.get builds torchvision transforms from [{name, args}]: the image folder's
    assert config["custom_train_trans"] == [
        {"name": "ToTensor"}, {"name": "Normalize", "args": {"mean": list(ddr.CIFAR_STATS[0]),
                                                             "std": list(ddr.CIFAR_STATS[1])}}]


def test_a_zca_set_is_exported_as_it_is_in_its_zca_space(tmp_path):
    """Its get_dataset with use_zca whitens ToTensor images (no normalisation) with kornia's
    ZCA, eps 0.1, fitted on the training images: this package's ZCA is that fit, so a ZCA
    set's own tensors are its input."""
    from trajdistill.data import load_dataset
    splits = load_dataset("digits", zca=True)
    images, labels = random_real(splits, 1)
    syn = SyntheticSet(splits.preprocess(images), labels, [0.01], splits.preprocess,
                       splits.describe(), "ConvNetD2")
    syn.save(tmp_path / "syn.pt")
    back = load_ddranking_export(export_ddranking(tmp_path / "syn.pt", tmp_path / "out"))
    assert torch.equal(back["images"], syn.images) and back["metadata"]["use_zca"] is True
    theirs = ZCA.fit(splits.train.images.float() / 255)  # its fit, done here independently
    assert torch.allclose(back["images"], theirs.whiten(images.float() / 255), atol=1e-5)
    config = json.loads((tmp_path / "out" / "ddranking_config.json").read_text())
    assert config["use_zca"] is True and config["custom_train_trans"] is None


def test_export_refuses_a_texture_set_and_unequal_classes(tmp_path):
    data = {"dataset": "CIFAR10", "classes": ["a", "b"], "zca": False, "image_shape": [3, 4, 4]}
    pre = Preprocess((0.5,) * 3, (0.25,) * 3)
    SyntheticSet(torch.randn(2, 3, 4, 4), torch.arange(2), [0.01], pre, data, "ConvNet", 0,
                 {"texture": {"canvas_size": 2, "canvas_samples": 1}}).save(tmp_path / "t.pt")
    with pytest.raises(ConfigError, match="texture"):
        export_ddranking(tmp_path / "t.pt", tmp_path / "out")
    SyntheticSet(torch.randn(3, 3, 4, 4), torch.tensor([0, 0, 1]), [0.01], pre, data,
                 "ConvNet").save(tmp_path / "u.pt")
    with pytest.raises(ConfigError, match=r"\[2, 1\]"):
        export_ddranking(tmp_path / "u.pt", tmp_path / "out")


def test_loader_names_a_damaged_export(digits, tmp_path):
    _digit_set(digits).save(tmp_path / "syn.pt")
    out = export_ddranking(tmp_path / "syn.pt", tmp_path / "out")
    torch.save(torch.zeros(10, dtype=torch.int64), out / "images.pt")
    with pytest.raises(FileFormatError, match="images.pt"):
        load_ddranking_export(out)


# ----------------------------------------------------------------------------- command line, report

def test_cli_export_and_evaluate_into_the_run_and_its_report(digits, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "digits", "ipc": 1}))
    _digit_set(digits).save(run / "synthetic_best.pt")
    assert main(["export", "--format", "ddranking", str(run / "synthetic_best.pt"),
                 str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "images.pt").exists() and (tmp_path / "exp" / "lr.pt").exists()
    assert main(["evaluate", "--syn", str(run / "synthetic_best.pt"), "--protocol", "ddranking",
                 "--num_eval", "1", "--epoch_eval_train", "2", "--real_accuracy", "95",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "ddranking.json").read_text())
    lrs = result["scores"]["LRS"]["mean"]
    assert result["rounds"][0]["real_hard"] == 0.95 and f"LRS {lrs:.2f}" in printed
    assert result["protocol"]["lr_grid"] == list(ddr.LR_GRID)
    report = (run / "report.md").read_text()
    assert "## DD-Ranking scores" in report and f"| LRS | {lrs:.2f} ± 0.00 |" in report
    assert "after the last epoch" in report  # the differences are stated


def test_cli_soft_label_set_takes_its_teacher_from_the_run(digits, digits_buffers, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _digit_set(digits, soft=True).save(run / "synthetic_best.pt")
    argv = ["evaluate", "--syn", str(run / "synthetic_best.pt"), "--protocol", "ddranking",
            "--num_eval", "1", "--epoch_eval_train", "1", "--real_accuracy", "90", "--quiet"]
    (run / "config.json").write_text(json.dumps({"source": {"dataset": "digits"}}))
    assert main(argv) == 2 and "--teacher" in capsys.readouterr().err
    buffer = digits_buffers / "digits" / "ConvNetD2"
    (run / "config.json").write_text(json.dumps({"source": {"dataset": "digits",
                                                            "buffer_dir": str(buffer)}}))
    assert main(argv) == 0
    result = json.loads((run / "ddranking.json").read_text())
    assert result["labels"] == "soft" and result["rounds"][0]["syn_hard_lr"] in ddr.LR_GRID


@pytest.mark.parametrize("argv, flag", [
    (["--real_accuracy", "90"], "--real_accuracy"),                      # without the protocol
    (["--protocol", "ddranking", "--lr", "0.01", "0.02"], "--lr"),
    (["--protocol", "ddranking", "--lrs_lambda", "2"], "--lrs_lambda"),
    (["--protocol", "ddranking", "--real_accuracy", "140"], "--real_accuracy"),
    (["--protocol", "ddranking", "--eval_mode", "M"], "--eval_mode"),
    (["--protocol", "ddranking", "--dsa", "False"], "--dsa"),
])
def test_cli_refuses_in_one_line(digits, tmp_path, capsys, argv, flag):
    _digit_set(digits).save(tmp_path / "syn.pt")
    assert main(["evaluate", "--syn", str(tmp_path / "syn.pt"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and err.count("\n") == 1


def test_report_names_a_damaged_results_file(digits, tmp_path):
    _digit_set(digits).save(tmp_path / "synthetic_best.pt")
    (tmp_path / "ddranking.json").write_text(json.dumps({"format": ddr.FORMAT, "scores": {},
                                                         "accuracies": {}, "protocol": {}}))
    with pytest.raises(FileFormatError, match="ddranking.json.*LRS"):
        build_report(tmp_path)
