"""Figures of a built dataset: example galaxies per class, and the class-mean images.

The class means (computed in output.PixelStats) are the seed's baseline, one average
image per class. matplotlib's object API (Figure + Agg canvas) avoids pyplot's global
state and any display backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, metadata={"Software": None}))


def _show(ax, img_chw: np.ndarray | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if img_chw is not None:
        pixels = np.clip(np.rint(img_chw.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        ax.imshow(pixels, interpolation="nearest")


def save_montage(examples: list[list[np.ndarray]], labels: list[str], path: str | Path) -> None:
    """A row per class of uint8 (3, H, W) images, labelled with the class name on the left."""
    ncols = max(1, max((len(r) for r in examples), default=1))
    fig = _figure(2.6 + 1.1 * ncols, 0.3 + 1.1 * len(labels))
    grid = fig.subplots(len(labels), ncols, squeeze=False)
    for c, label in enumerate(labels):
        for j in range(ncols):
            _show(grid[c][j], examples[c][j] if j < len(examples[c]) else None)
        grid[c][0].set_ylabel(f"{c}: {label}", rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=2.4 / (2.6 + 1.1 * ncols), right=0.99, top=0.99, bottom=0.01,
                        wspace=0.04, hspace=0.04)
    _save(fig, Path(path))


def save_class_means(means: np.ndarray, labels: list[str], path: str | Path) -> None:
    """One column per class, titled with its name."""
    k = len(labels)
    fig = _figure(1.6 * k, 2.0)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for c, ax in enumerate(axes):
        ok = np.isfinite(means[c]).all()
        _show(ax, means[c] * 255.0 if ok else None)
        ax.set_title(f"{c}: {labels[c]}", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.02, wspace=0.05)
    _save(fig, Path(path))
