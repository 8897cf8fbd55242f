"""Texture distillation (MTT's `--texture`): synthetic images that tile seamlessly.

Each synthetic image is a toroidal canvas `canvas_size` times the image side. Whenever a
network sees it (each unrolled step of distillation, each batch of evaluation training) it
sees `canvas_samples` image-sized windows of every canvas, each at a random toroidal shift:
window pixel (i, j) is canvas pixel ((i - dy) mod H, (j - dx) mod W), as the reference's
`torch.roll(canvas, (dy, dx))[:, :h, :w]`, windows sample-major ([all canvases at draw 0,
all at draw 1, ...]) with the labels repeated alike. Windows wrap around the canvas edges,
so the learned canvas has no seams and can be tiled.

Distillation draws the shifts ahead into the `UnrollPlan` (matching.py), so every gradient
method sees the same windows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextureSpec:
    canvas_size: int = 2     # canvas side / image side
    canvas_samples: int = 1  # windows per canvas per step

    def canvas_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = image_shape
        return c, h * self.canvas_size, w * self.canvas_size

    def draw_shifts(self, num_canvases: int, canvas_hw: tuple[int, int],
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Shifts (canvas_samples, num_canvases, 2): (dy, dx) uniform on the canvas."""
        hc, wc = canvas_hw
        dy = torch.randint(hc, (self.canvas_samples, num_canvases), generator=generator)
        dx = torch.randint(wc, (self.canvas_samples, num_canvases), generator=generator)
        return torch.stack([dy, dx], dim=-1)


def windows(canvases: torch.Tensor, shifts: torch.Tensor, window_hw: tuple[int, int]) -> torch.Tensor:
    """Image-sized windows of canvases (B, C, H, W) at shifts (S, B, 2) -> (S * B, C, h, w).

    Differentiable in the canvases (an index gather; its gradient scatters back)."""
    s, b = shifts.shape[:2]
    hc, wc = canvases.shape[-2:]
    h, w = window_hw
    shifts = shifts.to(canvases.device)
    rows = (torch.arange(h, device=canvases.device) - shifts[..., 0:1]) % hc   # (S, B, h)
    cols = (torch.arange(w, device=canvases.device) - shifts[..., 1:2]) % wc   # (S, B, w)
    which = torch.arange(b, device=canvases.device).expand(s, b)
    out = canvases[which[..., None, None], :, rows[..., :, None], cols[..., None, :]]  # S,B,h,w,C
    return out.permute(0, 1, 4, 2, 3).reshape(s * b, canvases.shape[1], h, w)


def tiled(canvases: torch.Tensor, reps: int = 2) -> torch.Tensor:
    """Each canvas repeated reps x reps (for display: a seamless texture shows no edges)."""
    return canvases.repeat(1, 1, reps, reps)


def real_canvases(images: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Canvases made of canvas_size x canvas_size real images each (the reference's real
    initialisation): images (N * canvas_size**2, C, h, w), canvas-major -> (N, C, kh, kw)."""
    k = canvas_size
    n, c, h, w = images.shape[0] // (k * k), *images.shape[1:]
    x = images.reshape(n, k, k, c, h, w).permute(0, 3, 1, 4, 2, 5)  # n, c, k, h, k, w
    return x.reshape(n, c, k * h, k * w)


def spec_of(meta: dict | None) -> TextureSpec | None:
    """The texture settings saved with a synthetic set (None for ordinary images)."""
    t = (meta or {}).get("texture")
    return TextureSpec(int(t["canvas_size"]), int(t["canvas_samples"])) if t else None
