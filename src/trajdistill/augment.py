"""Differentiable Siamese augmentation (DSA, algorithm.md section 4) as two pure steps.

    params = sample(strategy, n, height, width, generator)   # random draws only
    x_aug  = apply(x, params)                                # deterministic, differentiable in x

Replaying `apply` with the same params gives identical output, which is what lets the
lean gradient recompute an unrolled step exactly. Every transform is vectorised over the
batch (one affine grid, one gather or one mask per call; no Python loop over images).

Ranges follow the DSA reference parameters: brightness ratio 1.0 (an additive shift drawn
uniformly in [-0.5, 0.5]), saturation x[0, 2], contrast x[0.5, 1.5], crop = translation by up
to 12.5 % of the side with zero padding, cutout = one zeroed square of half the side,
horizontal flip with p = 0.5, scale x[1/1.2, 1.2] per axis, rotation within +-15 degrees.
In the default single mode one group of the strategy is drawn per call.

Galaxies have no up, down or handedness, so two more groups exist for them: `rotate360`
(any angle) and `flips` (a horizontal and an independent vertical flip, p = 0.5 each);
the strategy name `galaxy` stands for GALAXY_STRATEGY, which uses them in place of the
small rotation and the horizontal flip.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate", "rotate360", "flips")
GALAXY_STRATEGY = "color_crop_cutout_flips_scale_rotate360"
NAMED_STRATEGIES = {"galaxy": GALAXY_STRATEGY}

BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5
CROP_RATIO, CUTOUT_RATIO, FLIP_PROB, SCALE_RATIO, ROTATE_DEGREES = 0.125, 0.5, 0.5, 1.2, 15.0

Params = dict  # {"group": str, tensors of per-image draws}


def parse_strategy(strategy: str) -> list[str]:
    if not isinstance(strategy, str):
        raise ValueError(f"expected a DSA strategy (groups joined by _), got {strategy!r}")
    strategy = NAMED_STRATEGIES.get(strategy, strategy)
    groups = [g for g in strategy.split("_") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise ValueError(f"unknown DSA group(s) {bad or strategy!r} in strategy {strategy!r}; "
                         f"known: {'_'.join(GROUPS)}")
    return groups


def sample(strategy: str, n: int, height: int, width: int,
           generator: torch.Generator | None = None) -> Params:
    """Draw one call's augmentation: one group of the strategy, independent draws per image."""
    groups = parse_strategy(strategy)
    group = groups[int(torch.randint(len(groups), (1,), generator=generator))]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if group == "color":
        return {"group": group, "brightness": (rand(n) - 0.5) * BRIGHTNESS,
                "saturation": rand(n) * SATURATION, "contrast": rand(n) + CONTRAST}
    if group == "crop":
        sh, sw = int(height * CROP_RATIO + 0.5), int(width * CROP_RATIO + 0.5)
        return {"group": group,
                "shift": torch.stack([torch.randint(-sh, sh + 1, (n,), generator=generator),
                                      torch.randint(-sw, sw + 1, (n,), generator=generator)], 1)}
    if group == "cutout":
        ch, cw = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
        # the size is the same for every image: plain ints, read on the host without a
        # device synchronisation (which a CUDA graph could not record)
        return {"group": group, "size": (ch, cw),
                "centre": torch.stack([
                    torch.randint(0, height + (1 - ch % 2), (n,), generator=generator),
                    torch.randint(0, width + (1 - cw % 2), (n,), generator=generator)], 1)}
    if group == "flip":
        return {"group": group, "flip": rand(n) < FLIP_PROB}
    if group == "flips":
        return {"group": group, "flip": rand(n) < FLIP_PROB, "flip_v": rand(n) < FLIP_PROB}
    if group == "rotate360":
        return {"group": group, "angle": (rand(n) - 0.5) * 2 * math.pi}
    if group == "scale":
        lo = 1.0 / SCALE_RATIO
        return {"group": group, "scale": rand(n, 2) * (SCALE_RATIO - lo) + lo}
    # rotate
    return {"group": group, "angle": (rand(n) - 0.5) * 2 * ROTATE_DEGREES * math.pi / 180}


def apply(x: torch.Tensor, params: Params) -> torch.Tensor:
    """Apply a sampled augmentation to a batch (N, C, H, W); differentiable in x."""
    fn = _APPLY[params["group"]]
    return fn(x, {k: to_like(v, x) for k, v in params.items()})


def to_like(v, x: torch.Tensor):
    """A draw on the images' device; float draws also in their dtype (a float32 rotation
    matrix would round its sin/cos differently on CPU and GPU: 1e-7, measured in float64 runs
    on an H200)."""
    if not torch.is_tensor(v):
        return v
    return v.to(x.device, x.dtype) if v.is_floating_point() else v.to(x.device)


def augment(x: torch.Tensor, strategy: str = DEFAULT_STRATEGY,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample and apply in one call (expert and evaluation training)."""
    return apply(x, sample(strategy, x.shape[0], x.shape[2], x.shape[3], generator))


# ----------------------------------------------------------------------------- transforms

def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _color(x, p):
    x = x + _per_image(p["brightness"], x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _per_image(p["saturation"], x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(p["contrast"], x) + mean


def _crop(x, p):
    """Integer translation with zero fill: gather from a 1-pixel zero-padded copy."""
    n, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device).view(1, h) + p["shift"][:, :1] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + p["shift"][:, 1:] + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)


def _cutout(x, p):
    _, _, h, w = x.shape
    ch, cw = p["size"]
    top = (p["centre"][:, 0] - ch // 2).view(-1, 1)
    left = (p["centre"][:, 1] - cw // 2).view(-1, 1)
    r = torch.arange(h, device=x.device).view(1, h)
    c = torch.arange(w, device=x.device).view(1, w)
    in_rows = (r >= top) & (r < top + ch)
    in_cols = (c >= left) & (c < left + cw)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x, p):
    return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)


def _flips(x, p):
    x = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)
    return torch.where(p["flip_v"].view(-1, 1, 1, 1), x.flip(2), x)


def _affine(x, theta):
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x, p):
    s = p["scale"]
    zero = torch.zeros_like(s[:, 0])
    theta = torch.stack([torch.stack([s[:, 0], zero, zero], 1),
                         torch.stack([zero, s[:, 1], zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x, p):
    a = p["angle"]
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    return _affine(x, theta)


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "flips": _flips,
          "scale": _scale, "rotate": _rotate, "rotate360": _rotate}
