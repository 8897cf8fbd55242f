"""Plain network training and testing, shared by expert training and evaluation.

Inputs may be uint8 real images (preprocessed per batch on the device, so large sets
never exist as float copies) or float synthetic images (already in network space).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment as dsa
from . import texture as tex
from .data.base import Preprocess


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over present classes (1s when balanced)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    w = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    present = counts > 0
    w = w / w[present].mean()
    return w.float()


def is_soft(labels: torch.Tensor) -> bool:
    """Float (N, classes) label logits are soft targets; integer (N,) labels are classes."""
    return labels.is_floating_point()


def summed_cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: hard targets are class indices, soft targets
    are probabilities (the softmax of label logits)."""
    if target.is_floating_point():
        return -(target * F.log_softmax(out, dim=1)).sum()
    return F.cross_entropy(out, target, reduction="sum")


def set_loss(out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss on a set: cross-entropy on class indices (optionally class-weighted),
    or the soft cross-entropy -sum(softmax(y) * log_softmax(out)) / batch on label logits
    (the loss the unrolled student of the distillation used)."""
    if is_soft(y):
        return summed_cross_entropy(out, F.softmax(y, dim=1)) / out.shape[0]
    return F.cross_entropy(out, y, weight=weights)


def targets_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Class weights for hard labels; none for soft ones (their mass is in the targets)."""
    return None if is_soft(labels) else class_weights(labels, num_classes)


def to_input(x: torch.Tensor, preprocess: Preprocess | None, device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        if preprocess is None:
            raise ValueError("uint8 images need a Preprocess to become network inputs")
        return preprocess(x)
    return x


def train_epoch(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                optimizer: torch.optim.Optimizer, *, batch_size: int, device,
                preprocess: Preprocess | None = None, dsa_strategy: str | None = None,
                weights: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                texture: "tex.TextureSpec | None" = None) -> tuple[float, float]:
    """One shuffled pass; returns (mean loss, accuracy). With `texture` the images are
    canvases and each batch is canvas_samples random windows of each (texture.py)."""
    net.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    w = weights.to(device) if weights is not None else None
    for idx in order.split(batch_size):
        x = to_input(images[idx], preprocess, device)
        y = labels[idx].to(device)
        if texture is not None:
            shifts = texture.draw_shifts(len(idx), x.shape[-2:], generator)
            x = tex.windows(x, shifts, (x.shape[-2] // texture.canvas_size,
                                        x.shape[-1] // texture.canvas_size))
            y = y.repeat(texture.canvas_samples, *[1] * (y.dim() - 1))
        if dsa_strategy:
            x = dsa.augment(x, dsa_strategy, generator=generator)
        out = net(x)
        loss = set_loss(out, y, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (out.argmax(1) == (y.argmax(1) if is_soft(y) else y)).sum().item()
        seen += len(y)
    return total_loss / seen, correct / seen


@dataclass
class TestResult:
    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    val_accuracy: float | None = None  # the same network on the validation split, if any

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "per_class": self.per_class, "confusion": self.confusion}


@torch.no_grad()
def test_network(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                 device, preprocess: Preprocess | None = None, batch_size: int = 512) -> TestResult:
    net.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, images.shape[0], batch_size):
        x = to_input(images[i:i + batch_size], preprocess, device)
        pred = net(x).argmax(1).cpu()
        y = labels[i:i + batch_size].cpu()
        confusion += torch.bincount(y * num_classes + pred,
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    net.train()
    return confusion_result(confusion)


def confusion_result(confusion: torch.Tensor) -> TestResult:
    per_class_total = confusion.sum(1).clamp_min(1)
    per_class = (confusion.diag().double() / per_class_total).tolist()
    accuracy = (confusion.diag().sum() / confusion.sum().clamp_min(1)).item()
    return TestResult(accuracy, per_class, confusion.tolist())
