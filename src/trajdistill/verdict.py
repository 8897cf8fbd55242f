"""Whether a distillation worked: the chosen set against what it must beat (issue 21).

At the end of a run the chosen set (synthetic_best.pt) is compared, on the validation split,
with its own start, the class-mean images and random real images of the same size (an
expectation over draws: each evaluation network its own draw at its own best lr). Every
set is trained at each lr of a grid and judged at the lr whose networks score best on
validation (a distilled set trains best below the lr it learned; the baselines have no lr
of their own), and the distilled set's figure at its learned lr (the reference's protocol)
is kept beside it. When the distilled set does not beat them, the verdict says so and names
the likely cause from the run's own record: the matching loss, the image drift, refused
updates, the experts' accuracy.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from .distributed import SINGLE, Comm
from .baselines import class_means, random_draws
from .evaluate import EDGE_STEPS, EvalConfig, evaluate_sweep
from .guard import FIRST_LOSSES  # the overshoot warning judges the same first losses
from .pacing import DRIFT_AIM, DRIFT_LOW  # below DRIFT_LOW the images hardly moved (pacing.py)
from .records import standard_error

# The lrs every set of the final comparison is trained at (a distilled set's learned lr
# competes too): the range where the galaxy, digit and CIFAR sets measured in docs/results.md did best.
EVAL_LRS = (0.01, 0.003, 0.001, 0.0003, 0.0001)
FINAL_EVALS = ("sweep", "off")
DRIFT_LIMIT = 1.0        # ||X - X0|| / ||X0|| beyond this: the images left what they started as
STUCK_RATIO = 0.95       # last losses / first losses above this: the matching barely learned


@dataclass
class Contender:
    """A set in the final comparison: images (uint8 or network space), targets, lrs to try."""

    name: str
    images: torch.Tensor
    targets: torch.Tensor
    lrs: list[float]
    syn_steps: int = 0
    learned: float | None = None
    draws: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # network k: draws[k]


def contenders(chosen, initial: torch.Tensor, splits, ipc: int, pix_init: str, seed: int,
               grid=EVAL_LRS, draws: int = 1, exclude: torch.Tensor | None = None
               ) -> list[Contender]:
    """The distilled set, its start (unless it started as the class mean) and the baselines;
    random real images as `draws` independent draws, one per evaluation network, none of
    them a training image in `exclude` (the validation split)."""
    learned = chosen.lrs[0] if len(chosen.lrs) == 1 else None
    out = [Contender("distilled", chosen.images, chosen.targets(),
                     list(grid) + ([learned] if learned else []), chosen.syn_steps, learned)]
    mean_start = pix_init == "mean" and ipc == 1  # the start is the class-mean baseline
    if initial is not None and not mean_start:
        out.append(Contender(f"its start ({pix_init})", initial, chosen.labels, list(grid)))
    out.append(Contender("class mean", *class_means(splits), list(grid)))
    sets = random_draws(splits, ipc, seed, draws, exclude)
    out.append(Contender(f"random real ({ipc}/class)", *sets[0], list(grid), draws=sets))
    return out


def compare(sets: list[Contender], splits, model: str, cfg: EvalConfig, val, progress=False,
            comm: Comm = SINGLE) -> dict:
    """{set name: {lr, val_mean, mean, std, sweep[, learned: {lr, val_mean, mean, std}]}}."""
    out = {}
    for s in sets:
        r = evaluate_sweep(s.images, s.targets, splits, s.lrs, [model], cfg, val, s.syn_steps,
                           progress=progress, comm=comm, beyond=EDGE_STEPS, draws=s.draws)[model]
        out[s.name] = {k: r[k] for k in ("lr", "val_mean", "val_std", "val_accuracies", "mean",
                                         "std", "sweep")}
        if s.draws is not None:  # each network its own draw at its own lr
            out[s.name].update(draws=len(s.draws), lrs=r["lrs"])
        if s.learned is not None:
            out[s.name]["learned"] = next(e for e in r["sweep"] if e["lr"] == s.learned)
    return out


def diagnose(losses: list[float], drift: float | None, refused: int,
             expert_accuracy: float | None, baseline_val: float,
             lr_img: float | None = None) -> list[str]:
    """Likely causes of a set that does not beat its baselines, from the run's record
    (`drift`: how far the run moved its images, ||X_last - X_0|| / ||X_0||)."""
    causes = []
    if losses:
        first = statistics.fmean(losses[:FIRST_LOSSES])
        last = statistics.fmean(losses[-20:])
        if first > 1:
            causes.append(f"the first matching losses average {first:.2f} (> 1: the student "
                          "overshoots the expert; the synthetic lr is too large for it: lower "
                          "--lr_teacher or --syn_steps)")
        elif last > STUCK_RATIO * first:
            causes.append(f"the matching loss barely fell ({first:.3f} -> {last:.3f}): the "
                          "synthetic lr may not suit the experts (--lr_teacher auto derives it), "
                          "or the run was too short (--Iteration)")
    if drift is not None and drift > DRIFT_LIMIT:
        causes.append(f"the images drifted {drift:.1f} times their own norm from their start: "
                      "lower --lr_img (or use --img_optimizer adam, the default)")
    if drift is not None and drift < DRIFT_LOW:
        more = min(10.0, DRIFT_AIM / max(drift, 1e-6))
        hint = f"--lr_img {lr_img * more:.2g}" if lr_img else f"--lr_img about {more:.0f}x"
        causes.append(f"the images moved only {drift:.2f} of their norm from their start: "
                      f"the image step is too small for this data and budget: try {hint} "
                      "or more --Iteration")
    if refused:
        causes.append(f"{refused} updates were refused as runaway or non-finite: lower --lr_img "
                      "or --lr_lr")
    if expert_accuracy is not None and expert_accuracy < baseline_val + 0.05:
        where = "below" if expert_accuracy < baseline_val else "hardly above"
        causes.append(f"the experts are weak (test accuracy {100 * expert_accuracy:.1f} %, {where} "
                      f"the best baseline's {100 * baseline_val:.1f} % on validation): "
                      "train them longer (--train_epochs) or with a smaller --batch_train")
    return causes or ["no clear cause in the run's record: try more iterations, more experts, "
                      "or --syn_steps"]


def margin(mine: dict, other: dict) -> tuple[float, float]:
    """(the distilled set's validation accuracy minus another set's, the standard error of
    that difference: sqrt(s_a^2 / n_a + s_b^2 / n_b) over each set's networks, with s the
    sample standard deviation; a set whose networks' figures are not kept adds nothing)."""
    return mine["val_mean"] - other["val_mean"], standard_error(
        mine.get("val_accuracies") or [], other.get("val_accuracies") or [])


def judge(results: dict, causes_of) -> tuple[bool, str]:
    """(whether the distilled set beats every other set on validation, one line saying so).
    A set is beaten when the distilled set's lead exceeds one standard error of the
    difference (`margin`): a lead inside the networks' own spread is a tie, and the line says
    the set is not clearly better. `causes_of(best baseline validation accuracy)` gives the
    likely causes when it is not."""
    mine = results["distilled"]
    others = {k: v for k, v in results.items() if k != "distilled"}
    margins = {k: margin(mine, v) for k, v in others.items()}
    beaten = [k for k, (d, se) in margins.items() if d > se]
    figures = ", ".join(f"{k} {100 * v['val_mean']:.2f} %" for k, v in others.items())
    if len(beaten) == len(others):
        return True, (f"the distilled set beats {', '.join(others)} on validation "
                      f"({100 * mine['val_mean']:.2f} % against {figures}; each at its best lr)")
    lost = [k for k, (d, se) in margins.items() if d < -se]
    level = [k for k in others if k not in beaten and k not in lost]
    best_other = max(v["val_mean"] for v in others.values())
    said = []
    if lost:
        said.append(f"does not beat {', '.join(lost)}")
    if level:
        noise = ", ".join(f"{100 * margins[k][1]:.2f}" for k in level)
        said.append(f"is level with {', '.join(level)} (a lead or lag within one standard error "
                    f"of the difference: {noise} points)")
    return False, (f"warning: the distilled set {' and '.join(said)} on validation "
                   f"({100 * mine['val_mean']:.2f} % against {figures}; each at its best lr). "
                   "Likely: " + "; ".join(causes_of(best_other)))
