"""Pacing the image step by how far the images move (issue 21).

Adam moves each pixel by at most its lr per iteration, but where the matching gradient does
not hold its sign (most pixels of a 128 px galaxy carry little signal) its steps cancel and
the images hardly move: on gz1 at 128 px the default 0.01 moved them 0.10 of their norm in
200 iterations and the set did not beat its start, while 0.03 moved them 0.32 and gained 8
points (docs/defaults-history.md). Every data set whose default run beat its baselines moved its
images 0.29-0.36 of their norm in those 200 iterations, along a curve close to sqrt(t).

So a derived Adam image lr is paced: at every tenth of the horizon N (the planned iterations,
but at least the 200 those runs had) the drift so far, ||X - X0|| / ||X0|| (`drift`), is
compared with the pace that reaches DRIFT_LOW at N, DRIFT_LOW * sqrt(t / N). A shorter run is
held to the speed of those 200-iteration runs, not asked to cover their distance; a longer one
has longer to go, so in a run of thousands of iterations the default lr is rarely behind. A
run on pace is left exactly as it is; one behind it has its image lr raised to what would put
it at DRIFT_AIM's pace (drift grows in proportion to the lr), at most MOST_PER_CHECK at a time
and MOST in all. The lr is only ever raised: where the images
move too far the guard and the verdict speak (guard.py, verdict.DRIFT_LIMIT).
"""
from __future__ import annotations

import math

import torch

DRIFT_LOW, DRIFT_AIM = 0.2, 0.3  # of the images' norm by the end of the planned run
MIN_HORIZON = 200                # the runs measured above: a shorter run keeps their speed
CHECKS = 10                      # pacing points: after each tenth of the horizon
MOST_PER_CHECK = 2.0             # the largest raise at one point
MOST = 10.0                      # the largest raise in all (the derived lr x 10)


def drift(images: torch.Tensor, start: torch.Tensor) -> float:
    """How far `images` have moved from `start`, ||X - X0|| / ||X0||: the scale-free measure
    of the image step (also the verdict's, verdict.DRIFT_LIMIT)."""
    with torch.no_grad():
        return float((images.detach() - start).norm() / start.norm().clamp_min(1e-12))


def horizon(planned: int) -> int:
    return max(planned, MIN_HORIZON)


def pace(done: int, planned: int, drift: float = DRIFT_LOW) -> float:
    """The drift after `done` iterations of a run on pace to `drift` at its horizon."""
    return drift * math.sqrt(min(1.0, done / horizon(planned)))


def is_check(done: int, planned: int) -> bool:
    """After each tenth of the horizon, within the run (not at its end: nothing would use
    the raise)."""
    every = horizon(planned) // CHECKS
    return done % every == 0 and 0 < done < planned


def raise_factor(done: int, planned: int, drift: float, raised: float) -> float:
    """The factor on the image lr after `done` iterations that moved the images `drift` of
    their norm, when the lr has been raised `raised` times already: 1 on pace."""
    if drift >= pace(done, planned):
        return 1.0
    wanted = pace(done, planned, DRIFT_AIM) / max(drift, 1e-12)
    return max(1.0, min(wanted, MOST_PER_CHECK, MOST / raised))


def raised_lr(start: float, records: list[dict]) -> float:
    """The image lr after the raises a run's metrics records (`lr_img_raised`) name."""
    return start * math.prod(r.get("lr_img_raised", 1.0) for r in records)
