"""Does the data have an up? The class means against their own flips and quarter turns.

Augmentation should apply the transforms the data is invariant to. DSA's default strategy
flips left-right and rotates by at most 15 degrees, which suits photographs, digits and
clothes (they have an up). Galaxies, seen from nowhere in particular, have no up, down or
handedness: the `galaxy` strategy turns them through any angle and flips them both ways.

Whether a data set is like that can be read from its class means. Each mean, less its
per-channel spatial mean, is compared with its own vertical flip and quarter turn:

    asymmetry(T) = mean over classes of ||x - T(x)|| / (sqrt(2) ||x||)

0 for a mean that T leaves unchanged, about 1 for one T scrambles (x and T(x) orthogonal).
Measured on the data sets here (docs/defaults-history.md): gz1 galaxies 0.064-0.070 under both
transforms; digits, the CIFAR-10 subset and Fashion-MNIST 0.45-1.08; EuroSAT, whose class
means are nearly flat, 0.88-0.92 (what is left after the spatial mean is noise, which a turn
scrambles: data without a clear mean shape keep the default). A set is orientation-free when
both asymmetries are under ORIENTATION_FREE, far from both groups.
"""
from __future__ import annotations

import math

import torch

from .augment import DEFAULT_STRATEGY
from .baselines import class_means

GALAXY = "galaxy"           # augment.NAMED_STRATEGIES: any rotation, both flips
ORIENTATION_FREE = 0.2      # both asymmetries below this: the data has no up
FLAT = 1e-6                 # rms of a centred class mean (in the data's std) below which it is flat


def asymmetries(means: torch.Tensor) -> dict[str, float]:
    """{'vflip', 'rot90'}: how much the class means (K, C, H, W) change under each (see
    the module's doc). A non-square image has no quarter turn: rot90 is then 1."""
    x = means.double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    norm = x.flatten(1).norm(dim=1)
    # a flat mean has no shape to judge: it counts as scrambled (1), never as free
    flat = norm <= FLAT * math.sqrt(x[0].numel())

    def asym(t: torch.Tensor) -> float:
        ratio = (x - t).flatten(1).norm(dim=1) / (math.sqrt(2) * norm.clamp_min(1e-300))
        return float(torch.where(flat, torch.ones_like(ratio), ratio).mean())

    square = x.shape[-1] == x.shape[-2]
    return {"vflip": round(asym(x.flip(2)), 4),
            "rot90": round(asym(x.rot90(1, (2, 3))), 4) if square else 1.0}


def measure(splits, means: torch.Tensor | None = None) -> dict[str, float]:
    """asymmetries of a data set's training class means (`means`: those already computed, in
    network input space). With ZCA the means are unwhitened first: whitening boosts the fine
    grain and noise of a mean, which no flip or turn maps onto itself, and would hide that
    the images have no up (gz1's class means: 0.07 as images, 0.33-0.37 whitened)."""
    x = class_means(splits)[0] if means is None else means
    zca = splits.preprocess.zca
    return asymmetries(zca.unwhiten(x) if zca is not None else x)


def strategy_of(splits, means: torch.Tensor | None = None) -> tuple[str, str]:
    """(DSA strategy, why) for a data set: its training split's class means measured."""
    return strategy_for(measure(splits, means), DEFAULT_STRATEGY)


def strategy_for(measured: dict[str, float], default: str) -> tuple[str, str]:
    """(DSA strategy, why) for data with these asymmetries."""
    shown = f"vertical flip {measured['vflip']:.2f}, quarter turn {measured['rot90']:.2f}"
    if max(measured.values()) < ORIENTATION_FREE:
        return GALAXY, (f"the class means are their own flips and quarter turns ({shown}, "
                        f"both < {ORIENTATION_FREE}): the data has no up, so any rotation and "
                        "both flips")
    return default, (f"the class means change under a flip or quarter turn ({shown}; "
                     f"< {ORIENTATION_FREE} for both would mean no up): DSA's default")
