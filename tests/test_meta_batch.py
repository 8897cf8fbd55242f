"""A meta-batch of trajectories (meta_batch.py): which expert and start epoch each slot
draws, and one update with the mean of the slots' gradients, checked against the plain
autograd unroll of each slot computed by hand."""
import math
import random

import pytest
import torch

from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer
from trajdistill.distributed import SINGLE
from trajdistill.matching import MatchProblem, MatchResult, plain_unroll, plan_unroll
from trajdistill.meta_batch import SlotResult, combine, draw_slots, slot_expert, slot_seed
from trajdistill.schedule import StageMachine, UniformStart

from conftest import REFERENCE


def test_slot_experts_use_every_expert_once_per_pass():
    experts = [0, 3, 5, 7, 9]
    for slots in (1, 2, 3):
        seq = [slot_expert(experts, 0, it, m, slots) for it in range(10) for m in range(slots)]
        for p in range(len(seq) // 5):
            assert sorted(seq[5 * p:5 * p + 5]) == experts
    # the same slot counter, whatever M splits it into: (it=1, m=0) of M=2 is counter 2
    assert slot_expert(experts, 4, 1, 0, 2) == slot_expert(experts, 4, 2, 0, 1)


def test_slot_seeds_differ_by_iteration_slot_and_seed():
    seeds = {slot_seed(s, it, m) for s in range(3) for it in range(20) for m in range(4)}
    assert len(seeds) == 3 * 20 * 4


def test_stm_cycle_counts_slots():
    sm = StageMachine(max_start_epoch=10, init_epoch=3)
    got = [[sm.start_epoch(it, random.Random(0), m, 2) for m in range(2)] for it in range(3)]
    assert got == [[0, 1], [2, 0], [1, 2]]
    draws = draw_slots(UniformStart(10), [0, 1], seed=5, iteration=7, slots=3)
    again = draw_slots(UniformStart(10), [0, 1], seed=5, iteration=7, slots=3)
    assert [(s.expert, s.start_epoch) for s in draws] == [(s.expert, s.start_epoch) for s in again]


def test_combine_averages_over_the_meta_batch():
    images = torch.zeros(2, 3)

    def part(m, loss, g, k, held):
        return SlotResult(m, MatchResult(loss, torch.full((2, 3), g), torch.tensor(g)), held, k)

    c = combine([part(0, 1.0, 2.0, 0, 0.5), part(2, 3.0, 4.0, 0, 1.5), part(1, 2.0, 6.0, 1, 1.0)],
                slots=3, num_lrs=3, images=images, labels=None, heldout=True, comm=SINGLE)
    assert c.losses == [1.0, 2.0, 3.0] and c.loss == pytest.approx(2.0)
    assert c.heldouts == [0.5, 1.0, 1.5] and c.heldout == pytest.approx(1.0)
    assert torch.allclose(c.grad_images, torch.full((2, 3), 4.0))  # (2 + 4 + 6) / 3
    # d(mean loss)/d(lr k): the slots that used lr k, over M
    assert [float(g) for g in c.grad_log_lrs] == pytest.approx([2.0, 2.0, 0.0])
    assert c.lr_used == [True, True, False] and c.grad_labels is None


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), tmp_path_factory.mktemp("meta")


@pytest.mark.parametrize("slots", [1, 3])
def test_one_update_with_the_mean_of_the_slots_gradients(setup, slots):
    """X1 = X0 - lr_img * mean_m dL_m/dX (SGD's first step), each slot's gradient from the
    plain unroll of its own expert, start epoch and plan."""
    splits, store, root = setup
    cfg = DistillConfig(method="original-MTT", ipc=2, syn_steps=4, batch_syn=8, iterations=1,
                        eval_it=0, learn_lr=False, num_trajectories=slots, seed=11,
                        **{**REFERENCE, "lr_img": 100})
    d = Distiller(cfg, splits, store, root / f"run{slots}", progress=False)
    x0 = d.learnables.images.detach().clone()
    record = d.step()
    grads, losses = [], []
    for slot in draw_slots(d.schedule, d.experts, cfg.seed, 0, slots):
        traj = store.load(slot.expert)
        plan = plan_unroll(len(x0), 4, 8, splits.image_shape[1:], d.cfg.dsa_strategy, slot.generator)
        problem = MatchProblem(d.student, traj[slot.start_epoch], traj[slot.start_epoch + 1],
                               d.learnables.labels, plan)
        r = plain_unroll(problem, x0, torch.tensor(math.log(0.01)))
        grads.append(r.grad_images)
        losses.append(r.loss)
    expected = x0 - 100 * torch.stack(grads).mean(0)
    assert torch.allclose(d.learnables.images.detach(), expected, rtol=1e-4, atol=1e-6)
    assert record["loss"] == pytest.approx(sum(losses) / slots, rel=1e-4)
    if slots > 1:
        assert [s["loss"] for s in record["slots"]] == pytest.approx(losses, rel=1e-4)


def test_a_checkpoint_of_the_earlier_format_still_loads(setup, tmp_path):
    """Format /1 held an expert cursor and generator states (now drawn per slot): ignored."""
    splits, store, root = setup
    cfg = DistillConfig(method="original-MTT", ipc=1, syn_steps=2, iterations=2, eval_it=0)
    d = Distiller(cfg, splits, store, tmp_path / "a", progress=False)
    d.step()
    old = dict(d.state_dict(), format="trajdistill.checkpoint/1", expert_order=[1, 0],
               rng="[3, [1, 2], null]", gen=torch.Generator().get_state())
    e = Distiller(cfg, splits, store, tmp_path / "b", progress=False)
    e.load_state_dict(old)
    assert e.iteration == 1 and torch.equal(e.learnables.images.detach(), d.learnables.images.detach())
    with pytest.raises(ConfigError, match="not a trajdistill distillation checkpoint"):
        e.load_state_dict(dict(old, format="something else"))
