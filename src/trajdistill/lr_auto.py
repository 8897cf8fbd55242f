"""`--lr_teacher auto`: an initial synthetic lr derived from the expert buffer.

Definition. For an expert k and a start epoch e, let D = ||theta_{e+E} - theta_e|| be how far
the expert moved in E = expert_epochs epochs, and G = ||grad CE(f(X; theta_e), y)|| the norm
of the full-batch gradient of the student's loss on the initial synthetic set (no
augmentation). N = syn_steps plain SGD steps of size alpha move the student by about
alpha * N * G while the gradient keeps its direction, so

    alpha(k, e) = D / (N * G)

makes the student's first unrolled steps travel about as far as the expert did. The auto lr
is the median of alpha(k, e) over up to `max_experts` experts and up to `max_epochs` start
epochs spread over the first sampling window (the median: one flat or steep epoch must not
set the scale). Small datasets give experts few steps per epoch, so a default lr (0.01)
can overshoot or undershoot D by orders of magnitude; this fixes the scale, and the
learned lr refines it.
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .models import FlatModel


def step_ratio(student: FlatModel, start: torch.Tensor, end: torch.Tensor, images: torch.Tensor,
               labels: torch.Tensor, syn_steps: int) -> float:
    """alpha(k, e) = ||end - start|| / (syn_steps * ||grad CE at start||) for one expert span."""
    theta = start.detach().float().requires_grad_(True)
    loss = F.cross_entropy(student(theta, images.detach()), labels)
    grad, = torch.autograd.grad(loss, theta)
    g = float(grad.norm())
    if not g > 0:
        raise ValueError("the synthetic set's gradient is zero at the expert's start: "
                         "no lr moves the student; pass --lr_teacher explicitly")
    return float((end.float() - start.float()).norm()) / (syn_steps * g)


def spread(first: int, last: int, count: int) -> list[int]:
    """Up to `count` integers evenly spread over [first, last] (both included)."""
    if last - first + 1 <= count:
        return list(range(first, last + 1))
    return sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)})


def auto_lr(student: FlatModel, trajectories: list[torch.Tensor], start_epochs: list[int],
            expert_epochs: int, images: torch.Tensor, labels: torch.Tensor,
            syn_steps: int) -> float:
    """Median of `step_ratio` over every (trajectory, start epoch) pair."""
    device = images.device
    ratios = [step_ratio(student, t[e].to(device), t[e + expert_epochs].to(device), images, labels,
                         syn_steps)
              for t in trajectories for e in start_epochs]
    return statistics.median(ratios)
