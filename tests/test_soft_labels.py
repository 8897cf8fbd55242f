"""Learnable soft labels end to end on real data (digits): expert-initialised logits, the
update of the logits, checkpoint/resume, the divergence guard, --loss_threshold, the set's
file, `evaluate`, `export` and the report."""
import json

import pytest
import torch
import torch.nn.functional as F

from trajdistill.cli import main
from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer
from trajdistill.export import export_synthetic, load_export
from trajdistill.matching import MatchResult
from trajdistill.report import build_report, soft_label_rows
from trajdistill.synthetic import SyntheticSet
from trajdistill.training import set_loss

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE

SOFT = dict(ipc=1, syn_steps=3, eval_it=0, soft_labels=True, lr_y=5.0, lr_img=30)


@pytest.fixture(scope="module")
def setup(digits, digits_buffers):
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), digits_buffers


def test_soft_cross_entropy_equals_torch_probability_targets():
    """Our soft CE = torch's cross-entropy with probability targets (an independent code path)."""
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert set_loss(out, y).item() == pytest.approx(
        F.cross_entropy(out, torch.softmax(y, 1)).item(), rel=1e-6)
    hard = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    assert set_loss(out, hard).item() == pytest.approx(F.cross_entropy(out, hard).item())


def test_correct_init_and_expert_logits(setup, tmp_path):
    """--pix_init correct: every initial image is one the expert classifies as its class, and
    the initial logits are what the expert's final epoch says about those very images."""
    splits, store, _ = setup
    d = Distiller(DistillConfig(pix_init="correct", **{**SOFT, "ipc": 3}), splits, store,
                  tmp_path / "run", progress=False)
    assert d.learnables.label_logits.shape == (30, 10)
    assert torch.equal(d.learnables.label_logits.argmax(1), d.learnables.labels)
    # independently: a real nn.Module loaded with the expert's final parameters
    from trajdistill.models import build_model
    net = build_model("ConvNetD2", 1, 10, (8, 8))
    flat = store.load(d.experts[0])[-1].float()
    torch.nn.utils.vector_to_parameters(flat, net.parameters())
    with torch.no_grad():
        expected = net(d.learnables.images.detach())
    assert torch.allclose(d.learnables.label_logits.detach(), expected, atol=1e-4, rtol=1e-4)
    # and plain real init picks other images, some of which the expert gets wrong in general
    with pytest.raises(ConfigError, match="--label_init"):
        Distiller(DistillConfig(label_init="teacher", **SOFT), splits, store, tmp_path / "x",
                  progress=False)


def test_guard_refuses_nan_label_gradient_and_rolls_back_overflowing_logits(setup, tmp_path):
    splits, store, _ = setup
    d = Distiller(DistillConfig(iterations=10, **SOFT), splits, store, tmp_path / "run",
                  progress=False)
    assert [n for n, _, _ in d.learnables.items()] == ["images", "lr 0", "label logits"]
    real = d.grad_fn
    d.step()
    before = d.learnables.label_logits.detach().clone(), d.learnables.images.detach().clone()

    def nan_labels(p, x, lr):
        r = real(p, x, lr)
        return MatchResult(r.loss, r.grad_images, r.grad_log_lr, torch.full_like(r.grad_labels, float("nan")))
    d.grad_fn = nan_labels
    assert d.step()["diverged"] == "non-finite label gradient"
    assert torch.equal(d.learnables.label_logits.detach(), before[0])

    def huge_labels(p, x, lr):
        r = real(p, x, lr)
        return MatchResult(r.loss, r.grad_images, r.grad_log_lr, torch.full_like(r.grad_labels, 3e38))
    d.grad_fn = huge_labels
    d.learnables.opt_labels.param_groups[0]["lr"] = 1e10
    assert d.step()["diverged"] == "the update made label logits non-finite"
    assert torch.equal(d.learnables.label_logits.detach(), before[0])
    assert torch.equal(d.learnables.images.detach(), before[1])  # the images' update was rolled back too


def test_loss_threshold_skips_updates(setup, tmp_path):
    splits, store, _ = setup
    d = Distiller(DistillConfig(iterations=3, loss_threshold=1e-6, **SOFT), splits, store,
                  tmp_path / "run", progress=False)
    images, logits = d.learnables.images.detach().clone(), d.learnables.label_logits.detach().clone()
    d.run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("above --loss_threshold" in r["skipped"] for r in rows)
    assert all("diverged" not in r for r in rows) and d.guard.failures == 0
    assert torch.equal(d.learnables.images.detach(), images) and torch.equal(d.learnables.label_logits.detach(), logits)


def test_soft_set_downstream_evaluate_export_report(setup, tmp_path, capsys):
    splits, store, root = setup
    d = Distiller(DistillConfig(iterations=2, **{**SOFT, "eval_it": 2, "num_eval": 1,
                                                 "epoch_eval_train": 5}),
                  splits, store, tmp_path / "run", progress=False)
    d.run()
    path = tmp_path / "run" / "synthetic_last.pt"
    syn = SyntheticSet.load(path)
    assert syn.soft_labels is not None and torch.equal(syn.targets(), syn.soft_labels)
    assert main(["evaluate", "--syn", str(path), "--dataset", "digits", "--num_eval", "1",
                 "--epoch_eval_train", "3", "--device", DEVICE, "--quiet"]) == 0
    assert "%" in capsys.readouterr().out
    out = export_synthetic(path, tmp_path / "export")
    blob = load_export(out / "synthetic.pt")
    assert torch.equal(blob["soft_labels"], syn.soft_labels)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["soft_labels"] is True
    dist = meta["files"][0]["label_distribution"]
    assert sum(dist) == pytest.approx(1, abs=1e-4) and len(dist) == 10
    assert "soft cross-entropy" in (out / "README.txt").read_text()
    html = build_report(tmp_path / "run").read_text()
    assert "Learned soft labels" in html
    rows = soft_label_rows(syn, splits.classes)
    top = torch.softmax(syn.soft_labels[4], 0).max().item()
    assert rows[4][2][0][1] == pytest.approx(top) and len(rows[4][2]) == 3


# ----------------------------------------------------------------------------- aligned windows

@pytest.mark.parametrize("method", ["original-MTT", "STM"])
def test_aligned_windows_combine_with_both_methods(setup, tmp_path, method):
    """original-MTT: DATM's growing window; STM: the first stage is DATM's first window
    [min, current_max) and the start epochs count from min_start_epoch."""
    splits, store, _ = setup
    cfg = DistillConfig(method=method, ipc=1, syn_steps=2, iterations=8, eval_it=0,
                        start_schedule="aligned", min_start_epoch=1, current_max_start_epoch=2,
                        max_start_epoch=3, expansion_end_epoch=4, soft_labels=True)
    d = Distiller(cfg, splits, store, tmp_path / method, progress=False)
    d.run()
    starts = [json.loads(l)["start_epoch"] for l in (tmp_path / method / "metrics.jsonl")
              .read_text().splitlines()]
    if method == "STM":
        assert d.cfg.init_epoch == 1 and starts == [1] * 8   # cap 1 from epoch 1, no test yet
    else:
        assert set(starts[:4]) == {1}                          # upper(it < 4) = 2
        assert set(starts[4:]) <= {1, 2}
    with pytest.raises(ConfigError, match="--current_max_start_epoch"):
        Distiller(DistillConfig(**{**vars(cfg), "current_max_start_epoch": 1, "init_epoch": 1}),
                  splits, store, tmp_path / "bad", progress=False)


def test_datm_presets_hold_the_published_settings():
    from dataclasses import fields
    from trajdistill.presets import PRESETS
    names = {f.name for f in fields(DistillConfig)} | {"dataset", "Iteration", "zca"}
    datm = {k: v for k, v in PRESETS.items() if k.startswith("DATM-")}
    assert sorted(datm) == sorted(f"DATM-{d}-ipc{n}" for d in ("CIFAR10", "CIFAR100")
                                  for n in (1, 10, 50))
    for p in datm.values():
        assert set(p) <= names
    # configs/CIFAR-10/ConvIN/IPC10.yaml, read by hand
    p = PRESETS["DATM-CIFAR10-ipc10"]
    assert (p["syn_steps"], p["expert_epochs"], p["lr_img"], p["lr_y"], p["batch_syn"]) == \
        (80, 2, 100, 2.0, 100)
    assert (p["min_start_epoch"], p["current_max_start_epoch"], p["max_start_epoch"],
            p["expansion_end_epoch"], p["start_schedule"]) == (0, 10, 20, 1000, "aligned")
    assert p["pix_init"] == "correct" and p["soft_labels"] and p["loss_threshold"] == 1.0
    assert "start_schedule" not in PRESETS["DATM-CIFAR10-ipc1"]  # Sequential_Generation: False


def test_load_syn_image_continues_with_the_sets_soft_labels(setup, tmp_path):
    splits, store, _ = setup
    first = Distiller(DistillConfig(iterations=2, **SOFT), splits, store, tmp_path / "a",
                      progress=False)
    first.run()
    d = Distiller(DistillConfig(iterations=4, prev_iter=2, **SOFT,
                                load_syn_image=str(tmp_path / "a" / "synthetic_last.pt")),
                  splits, store, tmp_path / "b", progress=False)
    assert torch.equal(d.learnables.label_logits.detach(), first.learnables.label_logits.detach())
    assert torch.equal(d.learnables.images.detach(), first.learnables.images.detach())
