"""A meta-batch of trajectories: each iteration matches M (expert, start epoch) pairs.

Slot m of iteration t draws everything random about itself (its expert, its start epoch,
the minibatch order and augmentation of its unrolls) from (seed, t, m) alone, so an
iteration's result depends on M but not on how many processes share the slots out:
K processes give the result of one, up to the order in which floating-point sums are
added (tests/test_distributed.py).

- Expert: the slots of all iterations walk through a sequence of shuffled passes over
  the experts (slot counter c = t * M + m; pass c // E uses its own seeded shuffle), so
  every expert is used equally often, as MTT's cycling through the buffer.
- Start epoch: the schedule's draw for (t, m) with the slot's own random.Random
  (STM's `cycle` counts slots: t * M + m modulo the stage cap).
- Unrolls: the slot's own torch.Generator; the STM held-out plan is drawn first, then
  the matching plan.

`combine` turns the ranks' slot results into the meta-batch's mean loss and mean
gradients with one all-reduce (a sum over ranks of one packed float64 vector).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .distributed import Comm
from .matching import MatchResult


def slot_seed(seed: int, iteration: int, slot: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, iteration, slot) (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([seed, iteration, slot, stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def slot_expert(experts: list[int], seed: int, iteration: int, slot: int, slots: int) -> int:
    """The expert of slot `slot` at `iteration`: position c % E of the c // E-th shuffled
    pass over the experts, c = iteration * slots + slot."""
    c = iteration * slots + slot
    order = list(experts)
    random.Random(slot_seed(seed, c // len(order), 0, stream=1)).shuffle(order)
    return order[c % len(order)]


@dataclass
class Slot:
    index: int
    expert: int
    start_epoch: int
    generator: torch.Generator  # minibatches and augmentation of this slot's unrolls


def draw_slots(schedule, experts: list[int], seed: int, iteration: int, slots: int) -> list[Slot]:
    """Every slot of one iteration (each rank then works on its share)."""
    out = []
    for m in range(slots):
        s = slot_seed(seed, iteration, m)
        start = schedule.start_epoch(iteration, random.Random(s), slot=m, slots=slots)
        out.append(Slot(m, slot_expert(experts, seed, iteration, m, slots), start,
                        torch.Generator().manual_seed(s)))
    return out


def logged_matches(record: dict) -> list[tuple[int, float]]:
    """(start epoch, matching loss) of every slot of a metrics.jsonl record."""
    if "slots" in record:
        return [(s["start_epoch"], s["loss"]) for s in record["slots"]]
    if "start_epoch" in record and "loss" in record:
        return [(record["start_epoch"], record["loss"])]
    return []


@dataclass
class SlotResult:
    """One slot's matching result, its held-out loss (STM, or None) and which lr it used."""

    index: int
    result: MatchResult
    heldout: float | None
    lr_index: int
    heldout_seconds: float = 0.0


@dataclass
class Combined:
    """The meta-batch's mean loss and gradients (those of the mean of the slots' losses)."""

    losses: list[float]            # every slot's matching loss, in slot order
    heldouts: list[float] | None   # every slot's held-out loss (STM), in slot order
    grad_images: torch.Tensor
    grad_log_lrs: list[torch.Tensor]  # one per lr; zero where no slot used it
    lr_used: list[bool]
    grad_labels: torch.Tensor | None

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    @property
    def heldout(self) -> float | None:
        return None if self.heldouts is None else sum(self.heldouts) / len(self.heldouts)


def combine(parts: list[SlotResult], slots: int, num_lrs: int, images: torch.Tensor,
            labels: torch.Tensor | None, heldout: bool, comm: Comm) -> Combined:
    """Sum this rank's slots, add up the ranks with one all-reduce, divide by M.

    Packed vector: [dL/dX | dL/dY | dL/dlog lr_k (num_lrs) | lr k used (num_lrs) |
    loss of slot m (M) | held-out loss of slot m (M)]; a slot's own entries are zero on
    every rank but the one that computed it, so the sum puts each in place.
    """
    n_img, n_lab = images.numel(), (labels.numel() if labels is not None else 0)
    sizes = [n_img, n_lab, num_lrs, num_lrs, slots, slots]
    packed = torch.zeros(sum(sizes), dtype=torch.float64, device=images.device)
    gi, gy, glr, used, losses, heldouts = packed.split(sizes)  # views into packed
    for p in parts:
        gi.add_(p.result.grad_images.reshape(-1).to(torch.float64))
        if n_lab:
            gy.add_(p.result.grad_labels.reshape(-1).to(torch.float64))
        glr[p.lr_index] += p.result.grad_log_lr.reshape(()).to(torch.float64)
        used[p.lr_index] = 1.0
        losses[p.index] = p.result.loss
        if p.heldout is not None:
            heldouts[p.index] = p.heldout
    comm.all_reduce_sum(packed)
    packed[:n_img + n_lab + num_lrs] /= slots  # gradients of the mean loss over the slots
    return Combined(
        losses=losses.tolist(), heldouts=heldouts.tolist() if heldout else None,
        grad_images=gi.to(images.dtype).reshape(images.shape),
        grad_log_lrs=[glr[k].to(images.dtype) for k in range(num_lrs)],
        lr_used=[bool(u > 0) for u in used.tolist()],
        grad_labels=gy.to(labels.dtype).reshape(labels.shape) if n_lab else None)
