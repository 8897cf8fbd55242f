"""`resolve`: a distillation config settled from the data and the buffer, without changing the
caller's config (issue 22): reused configs, config.json round trips, --eval_mode pools and the
measured --lr_teacher auto."""
import json
from dataclasses import asdict

import pytest
import torch

from trajdistill.distill import DistillConfig, Distiller, open_buffer, resolve
from trajdistill.experts import ExpertConfig, train_experts
from trajdistill.initial import measure_teacher_lr


@pytest.fixture(scope="module")
def stores(digits, digits_buffers, tmp_path_factory):
    """The shared 4-epoch buffer and a 6-epoch one of the same data."""
    longer = tmp_path_factory.mktemp("longer")
    train_experts(digits, ExpertConfig(model="ConvNetD2", train_epochs=6, num_experts=1), longer,
                  progress=False)
    return open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), open_buffer(longer, digits)


def test_resolve_leaves_the_callers_config_as_it_was(digits, stores):
    cfg = DistillConfig(ipc=1, syn_steps=3, lr_teacher=["auto"])
    before = asdict(cfg)
    settled = resolve(cfg, digits, stores[0])
    assert asdict(cfg) == before
    assert settled.max_start_epoch == 3 and settled.iterations and settled.val_size
    assert isinstance(settled.lr_teacher[0], float) and settled.eval_models == ["ConvNetD2"]


def test_a_config_reused_for_a_second_buffer_takes_that_buffers_epochs(digits, stores, tmp_path):
    cfg = DistillConfig(ipc=1, syn_steps=3, eval_it=0, lr_teacher=[0.01])
    first = Distiller(cfg, digits, stores[0], tmp_path / "a", progress=False)
    second = Distiller(cfg, digits, stores[1], tmp_path / "b", progress=False)
    # 4 and 6 stored epochs, expert_epochs 1: the windows end at 3 and 5
    assert (first.cfg.max_start_epoch, second.cfg.max_start_epoch) == (3, 5)
    assert cfg.max_start_epoch is None and cfg.iterations is None


def test_resolving_a_resolved_config_gives_it_back(digits, stores):
    """config.json holds the resolved config; resume resolves it again, to the same."""
    settled = resolve(DistillConfig(ipc=2, syn_steps=3, start_schedule="aligned"), digits, stores[1])
    assert resolve(settled, digits, stores[1]) == settled
    saved = json.loads(json.dumps(asdict(settled)))  # what config.json keeps
    assert resolve(DistillConfig(**saved), digits, stores[1]) == settled


def test_eval_mode_picks_the_references_pool(digits, stores):
    assert resolve(DistillConfig(eval_mode="C"), digits, stores[0]).eval_models == [
        "ConvNetD2", "ConvNet"]
    assert resolve(DistillConfig(eval_mode="C", eval_models=["ConvNetD2"]), digits,
                   stores[0]).eval_models == ["ConvNetD2"]  # an explicit list wins


def test_lr_teacher_auto_is_measured_once_and_recorded_without_touching_the_rng(digits, stores):
    state = torch.random.get_rng_state()
    settled = resolve(DistillConfig(syn_steps=3), digits, stores[0])  # lr_teacher derived: auto
    assert torch.equal(torch.random.get_rng_state(), state)
    lr = measure_teacher_lr(settled, digits, stores[0])
    assert settled.lr_teacher == [lr] and 1e-5 < lr < 1.0
    assert f"measured {lr:.4g}" in settled.derived["lr_teacher"]["from"]
    # independent-lr: one lr per initial stage, all the measured one
    two = resolve(DistillConfig(syn_steps=3, lr_mode="independent-lr", init_epoch=2), digits,
                  stores[0])
    assert two.lr_teacher == [two.lr_teacher[0]] * 2


def test_stms_first_window_is_derived_from_ipc_unless_given(digits, stores):
    """6 stored epochs, expert_epochs 1: start epochs 0-4, 5 of them. At 10 per class the first
    stage takes 0.4 x 5 = 2 of them; at 1 per class, or given, or with the reference's SGD
    step, the published 1; original-MTT does not use it (nothing derived)."""
    def settle(**kw):
        return resolve(DistillConfig(syn_steps=3, lr_teacher=[0.01], **kw), digits, stores[1])
    ten = settle(ipc=10)
    assert ten.init_epoch == 2 and ten.derived["init_epoch"]["value"] == 2
    assert "2 of the 5 start epochs" in ten.derived["init_epoch"]["from"]
    assert settle(ipc=1).init_epoch == 1
    given = settle(ipc=10, init_epoch=3)
    assert given.init_epoch == 3 and "init_epoch" not in given.derived
    sgd = settle(ipc=10, lr_img=1000.0)
    assert sgd.init_epoch == 1 and "SGD" in sgd.derived["init_epoch"]["from"]
    mtt = settle(ipc=10, method="original-MTT")
    assert "init_epoch" not in mtt.derived
    # independent-lr: one synthetic lr per start epoch of the derived first stage
    assert settle(ipc=10, lr_mode="independent-lr").lr_teacher == [0.01, 0.01]
