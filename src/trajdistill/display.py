"""The synthetic images as a person sees them: display scaling, grids, the class comparison.

Used by the report, `export` (PNG files) and tracking (image logs): one way of showing a set
everywhere. Pixels are clipped at the set's mean +- CLIP_STD std and stretched per image; ZCA
is inverted first; texture canvases are shown tiled.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .data.base import DatasetSplits  # noqa: E402
from .synthetic import SyntheticSet  # noqa: E402
from .texture import spec_of, tiled  # noqa: E402

CLIP_STD = 2.5
MAX_SHOWN_IPC = 10        # the grid shows at most this many images of each class
MAX_COMPARED_CLASSES = 20  # the class comparison shows the first classes only


def display_images(pixels: torch.Tensor, clip_std: float = CLIP_STD) -> torch.Tensor:
    """Pixels (N, C, H, W) -> [0,1] for showing: clip at mean +- clip_std std, scale each image."""
    x = pixels.detach().float()
    m, s = x.mean(), x.std() if x.numel() > 1 else torch.tensor(0.0)
    x = x.clamp(m - clip_std * s, m + clip_std * s)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def synthetic_display(syn: SyntheticSet, clip_std: float = CLIP_STD,
                      tile: bool = True) -> torch.Tensor:
    """The synthetic images as shown everywhere (grid, export): ZCA inverted, clipped, scaled.
    Texture canvases are shown tiled 2 x 2, so that seams (or their absence) are visible."""
    shown = display_images(syn.pixels(), clip_std)
    return tiled(shown) if tile and spec_of(syn.meta) else shown


def to_uint8_hwc(image01: torch.Tensor) -> np.ndarray:
    """One [0,1] image (C, H, W) -> uint8 (H, W, 3) (grey images repeated to RGB)."""
    img = (image01.detach().float().clamp(0, 1) * 255).round().byte()
    img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]
    return img.permute(1, 2, 0).numpy()


def grid_image(images01: torch.Tensor, rows: int, cols: int, min_cell: int = 64,
               pad: int = 2) -> Image.Image:
    """Tile [0,1] images (rows*cols, C, H, W) into one PIL image, upscaled (nearest) for small ones."""
    n, c, h, w = images01.shape
    scale = max(1, min_cell // max(h, w))
    H, W = h * scale, w * scale
    canvas = np.ones((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), dtype=np.uint8) * 255
    for k in range(min(n, rows * cols)):
        arr = to_uint8_hwc(images01[k]).repeat(scale, 0).repeat(scale, 1)
        r, q = divmod(k, cols)
        y0, x0 = pad + r * (H + pad), pad + q * (W + pad)
        canvas[y0:y0 + H, x0:x0 + W] = arr
    return Image.fromarray(canvas)


def synthetic_grid(syn: SyntheticSet, num_classes: int) -> tuple[Image.Image, int]:
    """The bare grid (no labels): one row per class, at most MAX_SHOWN_IPC images each; with
    one image per class a single row (rows of 10 beyond 20 classes). Returns (grid, ipc)."""
    ipc = max(1, len(syn.labels) // max(num_classes, 1))
    order = torch.argsort(syn.labels, stable=True)
    shown = synthetic_display(syn)[order]
    if ipc == 1:
        cols = len(shown) if len(shown) <= 20 else 10
        return grid_image(shown, math.ceil(len(shown) / cols), cols), ipc
    k = min(ipc, MAX_SHOWN_IPC)
    labels = syn.labels[order]
    picked = torch.cat([shown[labels == c][:k] for c in range(num_classes)])
    return grid_image(picked, num_classes, k), ipc


def save_synthetic_grid(syn: SyntheticSet, classes: list[str], path: str | Path) -> Path:
    """One row per class, one column per image of that class, class names on the left."""
    classes = list(classes) or [str(i) for i in range(int(syn.labels.max()) + 1)]
    num_classes = len(classes)
    grid, ipc = synthetic_grid(syn, num_classes)
    zca = " ZCA inverted," if syn.preprocess.zca is not None else ""
    if ipc == 1 and num_classes > 20:  # rows of 10, classes in order
        rows = math.ceil(num_classes / 10)
        fig, ax = plt.subplots(figsize=(12, max(2.0, 1.2 * rows)))
        ax.imshow(grid)
        cell = grid.size[1] / rows
        ax.set_yticks([cell * (i + 0.5) for i in range(rows)], [f"{10 * i}-" for i in range(rows)],
                      fontsize=7)
        ax.set_xticks([])
    elif ipc == 1:  # a single row reads better than a column
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * num_classes), 2.2))
        ax.imshow(grid)
        cell = grid.size[0] / num_classes
        ax.set_xticks([cell * (i + 0.5) for i in range(num_classes)], classes, rotation=30,
                      ha="right", fontsize=8)
        ax.set_yticks([])
    else:
        k = min(ipc, MAX_SHOWN_IPC)
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * k + 1.5), max(3, 0.8 * num_classes)))
        ax.imshow(grid)
        cell = grid.size[1] / num_classes
        ax.set_yticks([cell * (i + 0.5) for i in range(num_classes)], classes, fontsize=8)
        ax.set_xticks([])
    ax.set_title(f"synthetic images ({ipc} per class;{zca} clipped at {CLIP_STD} std)", fontsize=9)
    return save_figure(fig, path)


def class_pixel_means(splits: DatasetSplits, chunk: int = 256) -> torch.Tensor:
    """Per-class mean training image in [0,1] pixel space (C, H, W each), chunked."""
    c, h, w = splits.image_shape
    out = torch.zeros(splits.num_classes, c, h, w, dtype=torch.float64)
    for k in range(splits.num_classes):
        members = splits.train.indices_of(k)
        for part in members.split(chunk):
            out[k] += splits.train.images[part].to(torch.float64).sum(0) / 255.0
        out[k] /= max(len(members), 1)
    return out.float()


def save_class_comparison(syn: SyntheticSet, splits: DatasetSplits, path: str | Path,
                          n_real: int = 4, seed: int = 0) -> Path:
    """Per class (one row): its synthetic image(s) | the class mean | n_real real images."""
    n_cls = min(splits.num_classes, MAX_COMPARED_CLASSES)
    classes = splits.classes[:n_cls]
    # texture canvases: an image-sized window (their top-left corner), beside real images
    shown = synthetic_display(syn, tile=False)[..., :splits.image_shape[1], :splits.image_shape[2]]
    ipc = min(max(1, len(syn.labels) // splits.num_classes), 3)
    means = display_images(class_pixel_means(splits))  # contrast-stretched like the synthetic
    gen = torch.Generator().manual_seed(seed)
    cols = ipc + 1 + n_real
    cells = []
    for k in range(n_cls):
        mine = shown[syn.labels == k][:ipc]
        mine = torch.cat([mine, torch.ones(ipc - len(mine), *shown.shape[1:])]) if len(mine) < ipc else mine
        members = splits.train.indices_of(k)
        pick = members[torch.randperm(len(members), generator=gen)[:n_real]]
        real = splits.train.images[pick].float() / 255.0
        if len(real) < n_real:
            real = torch.cat([real, torch.ones(n_real - len(real), *real.shape[1:])])
        cells += [mine, means[k:k + 1], real]
    grid = grid_image(torch.cat(cells), n_cls, cols)
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * cols + 1.5), max(3, 0.85 * n_cls + 0.8)))
    ax.imshow(grid)
    cw, ch = grid.size[0] / cols, grid.size[1] / n_cls
    ax.set_yticks([ch * (i + 0.5) for i in range(n_cls)], classes, fontsize=8)
    labels = [f"synthetic {i + 1}" if ipc > 1 else "synthetic" for i in range(ipc)] + \
             ["class mean"] + [f"real {i + 1}" for i in range(n_real)]
    ax.set_xticks([cw * (i + 0.5) for i in range(cols)], labels, rotation=30, ha="right", fontsize=8)
    more = f" (first {n_cls} of {splits.num_classes} classes)" if n_cls < splits.num_classes else ""
    ax.set_title("each class: synthetic | mean of its training images | random real images" + more,
                 fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as a PNG (folders made) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
