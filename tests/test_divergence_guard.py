"""The divergence the non-finite guard could not see, reproduced on real data: digits, a buffer of
3 expert epochs, the default distill flags. The first matching loss is about 13 (> 1); the
first update then threw the images ~1e4 times their own norm and, the step after, the lr to
~7e12 -- finite, so kept -- and every later iteration was NaN with that state kept as "good".
Now: a one-line warning names the flags to change, runaway updates are refused like
non-finite ones, and the state left behind is the one before them."""
import math

import pytest
import torch

from trajdistill.cli import main
from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, DivergenceError, open_buffer
from trajdistill.experts import ExpertConfig, train_experts
from trajdistill.io import read_jsonl

from conftest import DEVICE, REFERENCE  # TRAJDISTILL_TEST_DEVICE


@pytest.fixture(scope="module")
def short_buffer(tmp_path_factory):
    root = tmp_path_factory.mktemp("short_buffer")
    splits = load_dataset("digits")
    train_experts(splits, ExpertConfig(model="ConvNet", train_epochs=3, num_experts=1,
                                      batch_train=256),  # the reference's batch
                  root / "digits" / "ConvNet", progress=False)
    return splits, open_buffer(root / "digits" / "ConvNet", splits), root


def _distiller(short_buffer, tmp_path, **overrides):
    splits, store, _ = short_buffer
    cfg = DistillConfig(iterations=10, eval_it=0, max_failures=2, **{**REFERENCE, **overrides})
    return Distiller(cfg, splits, store, tmp_path / "run", progress=False)


def test_reference_flags_refuse_the_runaway_image_step_and_keep_the_initial_state(short_buffer,
                                                                                 tmp_path, capsys):
    d = _distiller(short_buffer, tmp_path)
    initial = d.learnables.images.detach().clone()
    with pytest.raises(DivergenceError, match=r"--lr_img.*first matching losses averaged 1\d\.\d"):
        d.run()
    assert "warning: the first matching loss is" in capsys.readouterr().err
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert metrics[0]["loss"] > 5  # the reproduction: far above 1
    assert all("image update is" in r["diverged"] for r in metrics)
    # the rollback went back to a state that was good: the initial one, optimiser untouched
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["images"], initial) and torch.equal(d.learnables.images.detach(), initial)
    assert ckpt["log_lrs"][0].item() == pytest.approx(math.log(0.01))
    assert d.learnables.opt_img.state_dict()["state"] == {} and d.learnables.opt_lrs[0].state_dict()["state"] == {}


def test_the_refusal_quotes_the_image_lr_the_update_used(short_buffer, tmp_path):
    """STM's fine-tuning lowers the image lr below --lr_img: a refusal names the lr that made
    the step, not the flag's starting value."""
    d = _distiller(short_buffer, tmp_path)
    for g in d.learnables.opt_img.param_groups:
        g["lr"] = 512.0  # as fine-tuning's decays would leave it
    record = d.step()
    assert "the image lr is now 512)" in record["diverged"]


def test_an_lr_that_jumps_by_orders_of_magnitude_is_refused_naming_lr_lr(short_buffer, tmp_path):
    """Images frozen (lr_img 0) and a larger lr step (lr_lr 0.1): the lr update from the first
    loss would take the lr from 0.01 to ~1e-12 -- finite, and the start of a divergence. It is
    refused, like every following one, and the lr stays where it was."""
    d = _distiller(short_buffer, tmp_path, lr_img=0.0, lr_lr=0.1)
    with pytest.raises(DivergenceError, match="--lr_lr"):
        d.run()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(metrics) == 2  # max_failures
    for r in metrics:
        assert "lr 0 from 0.01 to" in r["diverged"] and "--lr_lr (now 0.1)" in r["diverged"]
        assert r["lrs"][0] == pytest.approx(0.01)  # every refused update left the lr where it was
    assert d.lrs()[0] == pytest.approx(0.01) and d.learnables.opt_lrs[0].state_dict()["state"] == {}


def test_the_cli_says_it_in_one_error_line(short_buffer, tmp_path, capsys):
    _, _, root = short_buffer
    code = main(["distill", "--dataset", "digits", "--buffer_path", str(root), "--device", DEVICE,
                 "--run_dir", str(tmp_path / "cli"), "--Iteration", "10", "--eval_it", "0",
                 "--max_failures", "1", "--lr_img", "1000", "--lr_teacher", "0.01",
                 "--pix_init", "real", "--quiet"])  # the reference's settings
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: distillation diverged")
    assert "--lr_teacher" in err and "--syn_steps" in err and "--expert_epochs" in err


def test_roll_back_restores_values_and_optimiser_momentum_exactly():
    """guard.apply_or_roll_back on hand-made learnables: a step that moves the log lr by
    log(20) > log(MAX_LR_FACTOR) is undone, values and SGD momentum buffers alike; a step of
    log(2) is kept. The momentum check: after a refused step, the next good step equals the one
    a fresh copy that never saw the bad step takes."""
    from trajdistill.guard import apply_or_roll_back

    def learnables(images, log_lr):
        return [("images", images, torch.optim.SGD([images], lr=1.0, momentum=0.5)),
                ("lr 0", log_lr, torch.optim.SGD([log_lr], lr=1.0, momentum=0.5))]

    def step(items, d_images, d_log_lr):
        def apply():
            for (_, t, o), g in zip(items, (d_images, d_log_lr)):
                o.zero_grad()
                t.grad = torch.full_like(t, -g)  # SGD: t += g
                o.step()
        return apply_or_roll_back(items, apply, lr_img=1.0, lr_lr=1.0)

    images = torch.ones(2, 3, requires_grad=True)
    log_lr = torch.tensor(0.0, requires_grad=True)
    items = learnables(images, log_lr)
    twin = learnables(images.detach().clone().requires_grad_(True),
                      log_lr.detach().clone().requires_grad_(True))
    assert step(items, 0.1, math.log(2)) is None and step(twin, 0.1, math.log(2)) is None
    assert log_lr.item() == pytest.approx(math.log(2))
    trouble = step(items, 0.1, math.log(20))
    assert "lr 0 from 2 to" in trouble and "--lr_lr (now 1)" in trouble
    assert log_lr.item() == pytest.approx(math.log(2)) and torch.allclose(images, torch.full((2, 3), 1.1))
    assert step(items, 0.1, 0.1) is None and step(twin, 0.1, 0.1) is None
    for (_, a, _), (_, b, _) in zip(items, twin):
        assert torch.equal(a.detach(), b.detach())  # momentum buffers were restored too
    assert "images non-finite" in step(items, float("nan"), 0.0)
    assert "times the images' own norm" in step(items, 100.0, 0.0)


def test_the_overshoot_warning_judges_the_first_ten_losses_not_the_first_alone():
    """A start just above 1 that falls at once (gz1 spiral vs rest at 10 per class: 1.02, then
    0.52 by iteration 10) is no overshoot; ten losses averaging 1.5 are, and a refusal warns at
    once from the losses it has seen. Each warning comes once."""
    from trajdistill.guard import FIRST_LOSSES, Guard

    def run(losses, refuse_at=None):
        notes = []
        g = Guard(max_failures=5, loss_threshold=None, loss_warn_it=0, note=notes.append)
        for it, loss in enumerate(losses):
            g.see_loss(it, loss, "HINT")
            if it == refuse_at:
                g.refuse({"it": it}, "trouble", "HINT")
        return g, [n for n in notes if n.startswith("warning")]

    assert FIRST_LOSSES == 10
    g, warnings = run([1.02] + [0.6] * 19)
    assert warnings == [] and g.first_loss == pytest.approx((1.02 + 9 * 0.6) / 10)
    g, warnings = run([1.5] * 9 + [0.5] + [3.0] * 10)  # the mean of the first ten: 1.4
    assert warnings == ["warning: the first 10 matching losses average 1.4 (> 1: the student "
                        "overshoots the expert's target, which can diverge); if it does, HINT"]
    assert g.first_loss == pytest.approx(1.4) and len(g.first_losses) == 10
    _, warnings = run([13.0, 11.0, 0.1, 0.1], refuse_at=1)  # a refusal at it 1: mean 12 so far
    assert len(warnings) == 1 and "first 2 matching losses average 12" in warnings[0]
    _, warnings = run([float("nan")] + [0.9] * 12)  # a non-finite loss is no evidence either way
    assert warnings == []
