"""What a distillation learns, each with its optimiser: the synthetic images, the log synthetic
lr(s) and, with soft labels, the label logits (algorithm.md sections 2-3).

The loop (distill.py) holds one `Learnables`: the matching gradient steps it (`apply`), the
guard rolls it back (guard.py, through `items`), the stage machine and pacing set its image
lr, and its `state_dict` is the learnable part of a checkpoint. The lrs are learned in log
space, so that a step can never make one negative.
"""
from __future__ import annotations

import math

import torch

from .errors import ConfigError
from .meta_batch import Combined

Item = tuple[str, torch.Tensor, torch.optim.Optimizer]


class Learnables:
    """The synthetic images (N, C, H, W), their class labels (N,), the log lr(s) and, when
    `label_logits` is given, learnable soft labels (N, classes); each with its optimiser."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, lrs: list[float], *,
                 img_optimizer: str, lr_img: float, lr_lr: float,
                 label_logits: torch.Tensor | None = None, lr_y: float = 0.0):
        self.images = images.detach().clone().requires_grad_(True)
        self.labels = labels
        self.lr_lr = lr_lr
        self.log_lrs = [torch.tensor(math.log(v), device=images.device, requires_grad=True)
                        for v in lrs]
        self.opt_img = (torch.optim.Adam([self.images], lr=lr_img) if img_optimizer == "adam"
                        else torch.optim.SGD([self.images], lr=lr_img, momentum=0.5))
        self.opt_lrs = [self._lr_optimizer(p) for p in self.log_lrs]
        self.label_logits = self.opt_labels = None
        if label_logits is not None:
            self.label_logits = label_logits.detach().to(images.device).clone().requires_grad_(True)
            self.opt_labels = torch.optim.SGD([self.label_logits], lr=lr_y, momentum=0.9)

    def _lr_optimizer(self, p: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([p], lr=self.lr_lr, momentum=0.5)

    # ------------------------------------------------------------------ reading
    def lrs(self) -> list[float]:
        """The synthetic lr(s), out of log space."""
        return [float(p.detach().exp()) for p in self.log_lrs]

    def targets(self) -> torch.Tensor:
        """What the synthetic images are trained towards: label logits, or class indices."""
        return (self.label_logits if self.label_logits is not None else self.labels).detach()

    def items(self) -> list[Item]:
        """Every learnable with its name and optimiser (what the guard saves and restores)."""
        out = [("images", self.images, self.opt_img)]
        out += [(f"lr {k}", p, o) for k, (p, o) in enumerate(zip(self.log_lrs, self.opt_lrs))]
        if self.label_logits is not None:
            out.append(("label logits", self.label_logits, self.opt_labels))
        return out

    @property
    def image_lr(self) -> float:
        return self.opt_img.param_groups[0]["lr"]

    @image_lr.setter
    def image_lr(self, lr: float) -> None:
        for g in self.opt_img.param_groups:
            g["lr"] = lr

    # ------------------------------------------------------------------ updating
    def apply(self, result: Combined, learn_lr: bool) -> None:
        """One optimiser step with the meta-batch's mean gradients; an lr no slot used
        this iteration is not stepped (its momentum would move it with a zero gradient)."""
        self.opt_img.zero_grad(set_to_none=True)
        self.images.grad = result.grad_images.to(self.images.dtype)
        self.opt_img.step()
        if learn_lr:
            for p, o, g, used in zip(self.log_lrs, self.opt_lrs, result.grad_log_lrs,
                                     result.lr_used):
                if used:
                    o.zero_grad(set_to_none=True)
                    p.grad = g.reshape(p.shape).to(p.dtype)
                    o.step()
        if self.label_logits is not None:
            self.opt_labels.zero_grad(set_to_none=True)
            self.label_logits.grad = result.grad_labels.to(self.label_logits.dtype)
            self.opt_labels.step()

    def add_stage_lr(self, stage: int) -> None:
        """independent-lr: a new stage's lr starts as a copy of the previous one's, and every
        lr now learns at lr_lr x the stage cap."""
        p = self.log_lrs[-1].detach().clone().requires_grad_(True)
        self.log_lrs.append(p)
        self.opt_lrs.append(self._lr_optimizer(p))
        for o in self.opt_lrs:
            for g in o.param_groups:
                g["lr"] = self.lr_lr * stage

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The learnable part of a checkpoint (tensors on the CPU)."""
        soft = self.label_logits is not None
        return {"images": self.images.detach().cpu(),
                "log_lrs": [p.detach().cpu() for p in self.log_lrs],
                "opt_img": self.opt_img.state_dict(),
                "opt_lrs": [o.state_dict() for o in self.opt_lrs],
                "label_logits": self.label_logits.detach().cpu() if soft else None,
                "opt_labels": self.opt_labels.state_dict() if soft else None}

    def check(self, s: dict, source: str) -> None:
        """Refuse a checkpoint whose learnables have another shape than these."""
        if tuple(s["images"].shape) != tuple(self.images.shape):
            raise ConfigError(f"{source}: images of shape {tuple(s['images'].shape)}, but this run "
                              f"needs {tuple(self.images.shape)}")
        if (s.get("label_logits") is None) != (self.label_logits is None):
            raise ConfigError(f"{source}: saved {'with' if s.get('label_logits') is not None else 'without'}"
                              " soft labels, but this run is configured the other way")

    def load_state_dict(self, s: dict, source: str = "checkpoint") -> None:
        self.check(s, source)
        device = self.images.device
        with torch.no_grad():
            self.images.copy_(s["images"].to(device))
            if self.label_logits is not None:
                self.label_logits.copy_(s["label_logits"].to(device))
        if self.opt_labels is not None:
            self.opt_labels.load_state_dict(s["opt_labels"])
        self.log_lrs = [v.to(device).clone().requires_grad_(True) for v in s["log_lrs"]]
        self.opt_img.load_state_dict(s["opt_img"])
        self.opt_lrs = [self._lr_optimizer(p) for p in self.log_lrs]
        for o, st in zip(self.opt_lrs, s["opt_lrs"]):
            o.load_state_dict(st)
