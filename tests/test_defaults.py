"""Defaults derived from the data and the buffer (issue 21): the rules against hand-computed
values, and the command line as a new user runs it on the embedded digits."""
import json

import pytest

from trajdistill.cli import main
from trajdistill.defaults import (derive_distill, derive_experts, expert_batch, expert_model,
                                  first_window)
from trajdistill.distill_config import DistillConfig, default_iterations, derive


@pytest.mark.parametrize("shape, model", [
    ((1, 8, 8), "ConvNetD2W32"),      # round(log2 8) - 2 = 1, at least 2
    ((1, 28, 28), "ConvNetW32"),      # 28 px grey: padded to 32 by the first convolution
    ((3, 32, 32), "ConvNetW32"),      # depth 3, the CIFAR ConvNet's
    ((3, 64, 64), "ConvNetD4W32"),    # as MTT for Tiny ImageNet
    ((3, 128, 128), "ConvNetD5W32"),  # as MTT for ImageNet subsets
    ((3, 512, 512), "ConvNetD5W32"),  # at most 5
])
def test_expert_model_deepens_with_the_resolution(shape, model):
    assert expert_model(shape) == model


@pytest.mark.parametrize("n, batch", [
    (100, 32),       # too small for 32 steps at any batch: the smallest batch
    (1438, 32),      # digits: 1438 // 64 = 22 < 32
    (2278, 64),      # gz1 at 3 classes: 2278 // 64 = 35, // 128 = 17
    (4096, 128),     # exactly 32 steps at 128
    (5000, 128),     # the CIFAR-10 subset
    (50000, 256),    # CIFAR-10: the reference's 256, the largest
])
def test_expert_batch_gives_every_epoch_enough_steps(n, batch):
    assert expert_batch(n) == batch


def test_given_expert_settings_are_not_derived():
    made = derive_experts((3, 32, 32), 5000, {"model": "ConvNet", "batch_train": None,
                                              "dsa_strategy": "crop"})
    assert set(made) == {"batch_train"} and made["batch_train"]["value"] == 128
    assert "5000 training images" in made["batch_train"]["from"]


def _derived(**kw):
    return {k: d["value"] for k, d in derive_distill(DistillConfig(**kw)).items()}


def test_distill_defaults_by_ipc_and_by_what_was_given():
    assert _derived() == {"img_optimizer": "adam", "lr_img": 0.01, "pace_lr_img": True,
                          "pix_init": "mean", "lr_teacher": ["auto"]}
    assert _derived(ipc=10)["pix_init"] == "kmeans"
    # an explicit --lr_img keeps the reference's meaning: SGD, and is not paced
    assert _derived(lr_img=1000.0)["img_optimizer"] == "sgd"
    assert "lr_img" not in _derived(lr_img=1000.0)
    assert _derived(lr_img=1000.0)["pace_lr_img"] is False
    assert _derived(img_optimizer="adam", lr_img=0.03)["pace_lr_img"] is False
    assert _derived(img_optimizer="sgd")["lr_img"] == 1000.0
    assert _derived(img_optimizer="sgd")["pace_lr_img"] is False
    assert _derived(lr_img=1000.0)["pix_init"] == "real"  # the reference's start with its step
    assert _derived(img_optimizer="adam") == {"lr_img": 0.01, "pace_lr_img": True,
                                              "pix_init": "mean", "lr_teacher": ["auto"]}
    # texture canvases keep the reference's settings (auto needs whole images)
    assert _derived(texture=True) == {"img_optimizer": "sgd", "lr_img": 1000.0,
                                      "pace_lr_img": False, "pix_init": "real",
                                      "lr_teacher": [0.01]}
    assert _derived(lr_teacher=[0.01], pix_init="noise", img_optimizer="sgd",
                    lr_img=100.0, pace_lr_img=False) == {}


@pytest.mark.parametrize("ipc, start_epochs, first", [
    (1, 49, 1),    # STM's published [0, 1) at 1 per class (MTT's CIFAR-10 window: 2 of 50)
    (10, 49, 20),  # MTT's CIFAR-10 max_start_epoch at 10 per class: 20 of 50 epochs
    (50, 49, 20),  # at most 0.4 of the start epochs
    (10, 14, 6),   # the robustness rows' 15-epoch buffers: 0.4 x 14 = 5.6
    (5, 14, 3),    # 0.2 x 14 = 2.8
    (2, 14, 1),    # 0.08 x 14 = 1.12
    (10, 1, 1),    # at least 1
])
def test_stms_first_window_grows_with_ipc_as_mtts_windows_do(ipc, start_epochs, first):
    assert first_window(ipc, start_epochs) == first


def test_stm_default_cap_follows_adams_own_stop():
    # Adam stops fine-tuning at 5 % of its start lr: 0.01 -> 0.0005 takes 14 decays of 0.8
    # (0.8^13 = 0.055 > 0.05, 0.8^14 = 0.044); 29 stages x 1010 + 50 x 14 + 1
    cfg = derive(DistillConfig(max_start_epoch=29))
    assert cfg.img_optimizer == "adam"
    assert default_iterations(cfg) == 29 * 1010 + 50 * 14 + 1


@pytest.fixture(scope="module")
def short_buffer(tmp_path_factory):
    """The issue's short buffer: 2 experts x 4 epochs on the digits, every setting derived."""
    root = tmp_path_factory.mktemp("short")
    assert main(["buffer", "--dataset", "digits", "--num_experts", "2", "--train_epochs", "4",
                 "--buffer_path", str(root / "buffers"), "--quiet"]) in (0, None)
    return root


def test_buffer_derives_and_records_its_model_and_batch(short_buffer):
    folder = short_buffer / "buffers" / "digits" / "ConvNetD2W32"
    meta = json.loads((folder / "buffer.json").read_text())
    assert meta["expert"]["model"] == "ConvNetD2W32" and meta["expert"]["batch_train"] == 32
    assert set(meta["derived"]) == {"model", "batch_train", "dsa_strategy"}
    assert "8 px" in meta["derived"]["model"]["from"]
    # digits have an up (orientation.py): DSA's default, and the buffer says why
    assert meta["expert"]["dsa_strategy"] == meta["derived"]["dsa_strategy"]["value"] == \
        "color_crop_cutout_flip_scale_rotate"
    assert "change under a flip" in meta["derived"]["dsa_strategy"]["from"]


def test_default_distill_on_a_short_buffer_neither_diverges_nor_warns(short_buffer, capsys):
    # before: first matching loss 15, image updates 1e5 x the images' norm, 5 refusals, stop
    run = short_buffer / "run"
    assert main(["distill", "--dataset", "digits", "--Iteration", "30", "--eval_it", "0",
                 "--buffer_path", str(short_buffer / "buffers"), "--run_dir", str(run),
                 "--quiet"]) in (0, None)
    err = capsys.readouterr().err
    assert "warning" not in err.lower() and "refused" not in err
    assert "derived settings: model ConvNetD2W32, img_optimizer adam, lr_img 0.01" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and not any(r.get("diverged") for r in rows)
    assert rows[0]["loss"] < 1  # the auto lr: the student does not overshoot the expert
    config = json.loads((run / "config.json").read_text())
    assert config["img_optimizer"] == "adam" and config["pix_init"] == "mean"
    lr = config["lr_teacher"][0]
    assert config["derived"]["lr_teacher"]["value"] == [lr] and f"{lr:.4g}" in \
        config["derived"]["lr_teacher"]["from"]
    assert "only buffer" in config["derived"]["model"]["from"] or \
        "derived expert model" in config["derived"]["model"]["from"]


def test_the_reference_commands_keep_their_meaning(short_buffer, tmp_path):
    # --model ConvNet and --lr_img given: the reference's SGD on the reference's model's buffer
    assert main(["buffer", "--dataset", "digits", "--model", "ConvNetD2", "--num_experts", "1",
                 "--train_epochs", "3", "--batch_train", "256", "--buffer_path",
                 str(tmp_path / "b"), "--quiet"]) in (0, None)
    assert main(["distill", "--dataset", "digits", "--Iteration", "2", "--eval_it", "0",
                 "--lr_img", "100", "--lr_teacher", "0.01", "--pix_init", "real",
                 "--buffer_path", str(tmp_path / "b"), "--run_dir", str(tmp_path / "r"),
                 "--quiet"]) in (0, None)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["img_optimizer"] == "sgd" and config["lr_img"] == 100
    # the only buffer there, and --gradient auto's method (the reference's own is the unroll);
    # the given image lr is not paced
    # and the experts' augmentation (DSA's default, as the reference's)
    # (and --compile auto's choice: off, for the unroll)
    assert set(config["derived"]) == {"img_optimizer", "model", "gradient", "compile",
                                      "pace_lr_img", "dsa_strategy", "init_epoch"}
    assert config["compile"] is False
    assert config["init_epoch"] == 1 and "reference's SGD" in config["derived"]["init_epoch"]["from"]
    assert config["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"
    assert config["pace_lr_img"] is False
    assert config["derived"]["model"]["value"] == "ConvNetD2"


def test_distill_finds_the_buffers_model(tmp_path):
    from trajdistill.experts import BufferError, find_model

    def make(*models):
        for m in models:
            (tmp_path / m).mkdir(parents=True, exist_ok=True)
            (tmp_path / m / "buffer.json").write_text("{}")

    assert find_model(tmp_path, "ConvNetW32")[0] == "ConvNetW32"  # none yet: the derived one
    make("ConvNetD2")
    model, why = find_model(tmp_path, "ConvNetW32")
    assert model == "ConvNetD2" and "only buffer" in why
    make("ConvNet")
    assert find_model(tmp_path, "ConvNetW32")[0] == "ConvNet"  # the reference's, among several
    make("ConvNetW32")
    assert find_model(tmp_path, "ConvNetW32")[0] == "ConvNetW32"  # the derived one first
    (tmp_path / "ConvNet").rename(tmp_path / "ConvNetAP")
    with pytest.raises(BufferError, match="several models"):  # none derived, no ConvNet
        find_model(tmp_path, "ConvNetD4W32")
