"""The update guard of a distillation: no update that starts a divergence is kept.

An iteration makes no update when its loss or gradients are non-finite, or (DATM's
--loss_threshold) when its matching loss is above the threshold. An update that leaves a
learnable non-finite, moves the images by more than MAX_IMAGE_STEP times their norm, or changes
an lr by more than MAX_LR_FACTOR in one step is rolled back: every learnable and its optimiser
are put back as they were. Refused updates count as failures; `max_failures` of them in a row
end the run with a DivergenceError that names the flag to change, after the last good state is
checkpointed. Two warnings come early: first matching losses that average above 1 (the student
overshoots the expert's target) and, at `loss_warn_it`, a loss that never fell below 1.
"""
from __future__ import annotations

import copy
import math
import statistics
from typing import Callable

import torch

from . import progress as progress_out
from .errors import TrajdistillError
from .meta_batch import Combined


class DivergenceError(TrajdistillError, RuntimeError):
    """Repeated non-finite losses, gradients or lrs: the run stops instead of saving NaNs."""


# An lr update that multiplies or divides the synthetic lr by more than this in one step is
# refused like a non-finite one: it is the first step of a divergence (a finite 7e12 lr is
# followed by NaNs), not learning.
MAX_LR_FACTOR = 10.0
# Likewise an image update ten times larger than the images themselves (in norm): a first
# matching loss far above 1 gives such steps (7e4 on the digits reproduction), and the set they
# leave is noise that no later step repairs. Healthy runs stay near or below 1 (the demo's
# first steps: 1.1).
MAX_IMAGE_STEP = 10.0
# The overshoot warning judges the mean matching loss of the first FIRST_LOSSES iterations (so
# does verdict.diagnose), not the first alone: one loss is one expert, start epoch and
# augmentation draw, and a healthy run can start just above 1 (gz1 spiral vs rest at 10 per
# class: 1.02, then 0.52 by iteration 10). A refusal before then judges what it has seen.
FIRST_LOSSES = 10

# (name, tensor, its optimiser): "images", "lr <k>" (a log lr) or "label logits"
Learnable = tuple[str, torch.Tensor, torch.optim.Optimizer]


def non_finite(result: Combined) -> str | None:
    """What in a meta-batch's result is not finite, if anything."""
    if not math.isfinite(result.loss):
        return f"non-finite matching loss ({result.loss})"
    if result.heldout is not None and not math.isfinite(result.heldout):
        return f"non-finite held-out loss ({result.heldout})"
    if not torch.isfinite(result.grad_images).all():
        return "non-finite image gradient"
    if not all(torch.isfinite(g).all() for g in result.grad_log_lrs):
        return "non-finite lr gradient"
    if result.grad_labels is not None and not torch.isfinite(result.grad_labels).all():
        return "non-finite label gradient"
    return None


def apply_or_roll_back(learnables: list[Learnable], apply: Callable[[], None], lr_img: float,
                       lr_lr: float) -> str | None:
    """Run `apply` (the optimisers' step); if the update is unsound, put every learnable and
    its optimiser back as they were and say why."""
    saved = [(t.detach().clone(), copy.deepcopy(o.state_dict())) for _, t, o in learnables]
    apply()
    trouble = _unsound(learnables, [value for value, _ in saved], lr_img, lr_lr)
    if trouble:
        with torch.no_grad():
            for (_, t, o), (value, state) in zip(learnables, saved):
                t.copy_(value)
                o.load_state_dict(state)
    return trouble


def _unsound(learnables: list[Learnable], before: list[torch.Tensor], lr_img: float,
             lr_lr: float) -> str | None:
    bad = [name for name, t, _ in learnables if not torch.isfinite(t).all()]
    if bad:
        return "the update made " + ", ".join(bad) + " non-finite"
    for (name, t, _), old in zip(learnables, before):
        if name == "images":
            step = float((t.detach() - old).norm() / old.norm())
            if step > MAX_IMAGE_STEP:
                return (f"the image update is {step:.3g} times the images' own norm (more than "
                        f"{MAX_IMAGE_STEP:g}); lower --lr_img (the image lr is now {lr_img:g})")
        elif name.startswith("lr "):
            old_log, new_log = float(old), float(t.detach())
            if abs(new_log - old_log) > math.log(MAX_LR_FACTOR):  # log space: exp() may overflow
                return (f"the update would change {name} from {math.exp(old_log):.3g} to "
                        f"{math.exp(min(new_log, 700)):.3g} in one step "
                        f"(more than {MAX_LR_FACTOR:g}x); lower --lr_lr (now {lr_lr:g})")
    return None


class Guard:
    """What one distillation process has seen go wrong: refused updates in a row, its first
    matching loss and its lowest one. `note` prints a line (the Distiller's: rank 0 only)."""

    def __init__(self, max_failures: int, loss_threshold: float | None, loss_warn_it: int,
                 note: Callable[[str], None] = progress_out.note):
        self.max_failures, self.loss_threshold, self.loss_warn_it = (
            max_failures, loss_threshold, loss_warn_it)
        self.note = note
        self.failures = 0  # consecutive iterations whose update was refused (checkpointed)
        self.last_failure = ""
        self.first_losses: list[float] = []  # of this process's first FIRST_LOSSES iterations
        self.overshoot_warned = False
        self.min_loss = math.inf

    @property
    def first_loss(self) -> float | None:
        """The mean of the first matching losses seen (None before any): > 1 means the
        student overshoots the expert's target, the usual start of a divergence."""
        return statistics.fmean(self.first_losses) if self.first_losses else None

    def see_loss(self, it: int, loss: float, hint: str) -> None:
        """Collect the matching losses of iterations < FIRST_LOSSES; at the last of them, warn
        once if they average above 1. `hint` names the flags that set how far the student goes."""
        if it >= FIRST_LOSSES or not math.isfinite(loss):
            return
        self.first_losses.append(loss)
        if it == FIRST_LOSSES - 1:
            self.warn_overshoot(hint)

    def warn_overshoot(self, hint: str) -> None:
        """The warning, once, where the first losses seen average above 1."""
        first = self.first_loss
        if self.overshoot_warned or first is None or first <= 1:
            return
        self.overshoot_warned = True
        n = len(self.first_losses)
        what = f"first matching loss is {first:.3g}" if n == 1 else \
            f"first {n} matching losses average {first:.3g}"
        self.note(f"warning: the {what} (> 1: the student overshoots the expert's target, "
                  f"which can diverge); if it does, {hint}")

    def above_threshold(self, loss: float, record: dict) -> bool:
        """--loss_threshold: an iteration whose normalised matching loss exceeds it makes no
        update (logged as `skipped`); the schedule still advances."""
        T = self.loss_threshold
        if T is None or loss <= T:
            return False
        record["skipped"] = f"matching loss {loss:.4g} above --loss_threshold {T:g}"
        return True

    def refuse(self, record: dict, reason: str, hint: str) -> None:
        """No update this iteration; the last good state stays. The overshoot warning comes
        now if the losses seen so far call for it (a divergence may not wait FIRST_LOSSES)."""
        self.warn_overshoot(hint)
        self.failures += 1
        self.last_failure = reason
        record.update(diverged=reason, failures=self.failures)
        self.note(f"it {record['it']}: {reason}; update skipped, last good state kept "
                  f"({self.failures}/{self.max_failures})")

    def accept(self) -> None:
        self.failures = 0

    def check(self, checkpoint: Callable[[], None], where: str) -> None:
        """Too many refusals in a row: checkpoint (the state is the last good one: every bad
        update was refused) and stop."""
        if self.failures < self.max_failures:
            return
        checkpoint()
        raise DivergenceError(
            f"distillation diverged: {self.failures} iterations in a row with refused "
            f"updates (last: {self.last_failure}). The last good state is in {where}; try a "
            f"smaller --lr_img or --lr_lr, or --learn_lr False" + self._first_loss_hint() + ".")

    def _first_loss_hint(self) -> str:
        first = self.first_loss
        if first is None or first <= 1:
            return ""
        what = "loss was" if len(self.first_losses) == 1 else "losses averaged"
        return (f"; the first matching {what} {first:.3g} (> 1): lower --lr_teacher "
                f"or --syn_steps, or raise --expert_epochs")

    def warn_if_stuck(self, record: dict) -> None:
        """At iteration loss_warn_it: if the loss never fell below 1, nothing is distilled yet.

        A matching loss >= 1 means the student ends no closer to the expert's target than
        it started; the user should learn that before hours pass.
        """
        self.min_loss = min(self.min_loss, record.get("loss", math.inf))
        if not self.loss_warn_it or record["it"] + 1 != self.loss_warn_it:
            return
        if self.min_loss >= 1:
            msg = (f"warning: after {self.loss_warn_it} iterations the matching loss has not "
                   f"fallen below 1 (lowest {self.min_loss:.3f}): nothing is being distilled. "
                   "Try --lr_teacher auto, a smaller --lr_img, --pix_init mean, or other experts.")
            record["warning"] = msg
            self.note(msg)
