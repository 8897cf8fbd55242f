"""The unrolled student and the trajectory-matching loss (algorithm.md section 2).

From theta_0 = expert[t], N SGD steps on synthetic minibatches
    theta_{i+1} = theta_i - alpha * grad_theta CE(f(aug(X_b); theta_i), y_b)
and the loss L = ||theta_N - theta*||^2 / ||theta_0 - theta*||^2.

Everything random about one unroll (minibatch order, augmentation draws) is drawn ahead
into an `UnrollPlan`, so that every way of computing dL/dX and dL/dlog(alpha) sees the
same problem and can be checked against the others:

- `unroll`: the plain autograd unroll (reference; keeps every step's graph alive,
  memory grows with N);
- `lean`: keeps only the N+1 parameter vectors, then walks back one step at a time,
  recomputing that step's graph and propagating the adjoint with a Hessian-vector
  product (activation memory of one step, whatever N is).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import augment as dsa
from .models import FlatModel


@dataclass
class UnrollPlan:
    """Minibatch indices and augmentation draws of each unrolled step."""

    batches: list[torch.Tensor]
    augs: list[dict | None]


def plan_unroll(num_images: int, syn_steps: int, batch_syn: int, image_hw: tuple[int, int],
                strategy: str | None, generator: torch.Generator | None = None) -> UnrollPlan:
    """Shuffle the synthetic set into minibatches (reshuffled when exhausted), draw DSA."""
    batches: list[torch.Tensor] = []
    while len(batches) < syn_steps:
        batches += list(torch.randperm(num_images, generator=generator).split(batch_syn))
    batches = batches[:syn_steps]
    augs = [dsa.sample(strategy, len(b), *image_hw, generator=generator) if strategy else None
            for b in batches]
    return UnrollPlan(batches, augs)


@dataclass
class MatchProblem:
    """One matching problem: the student, where it starts, where the expert went."""

    student: FlatModel
    start: torch.Tensor   # theta_0, flat
    target: torch.Tensor  # theta*, flat
    labels: torch.Tensor  # labels of the synthetic set
    plan: UnrollPlan

    def step_loss(self, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor:
        """Cross-entropy of unrolled step i's minibatch at parameters theta."""
        idx = self.plan.batches[i].to(images.device)
        x = images[idx]
        if self.plan.augs[i] is not None:
            x = dsa.apply(x, self.plan.augs[i])
        return F.cross_entropy(self.student(theta, x), self.labels[idx])

    def normaliser(self) -> torch.Tensor:
        return (self.start - self.target).pow(2).sum()


@dataclass
class MatchResult:
    loss: float
    grad_images: torch.Tensor
    grad_log_lr: torch.Tensor


GradientMethod = Callable[[MatchProblem, torch.Tensor, torch.Tensor], MatchResult]


def plain_unroll(problem: MatchProblem, images: torch.Tensor, log_lr: torch.Tensor) -> MatchResult:
    """Reference: unroll with create_graph, then one backward through everything."""
    images = images.detach().requires_grad_(True)
    log_lr = log_lr.detach().requires_grad_(True)
    lr = log_lr.exp()
    theta = problem.start.detach().requires_grad_(True)
    for i in range(len(problem.plan.batches)):
        g, = torch.autograd.grad(problem.step_loss(theta, images, i), theta, create_graph=True)
        theta = theta - lr * g
    loss = (theta - problem.target).pow(2).sum() / problem.normaliser()
    gx, glr = torch.autograd.grad(loss, (images, log_lr))
    return MatchResult(loss.item(), gx, glr)


def lean_unroll(problem: MatchProblem, images: torch.Tensor, log_lr: torch.Tensor) -> MatchResult:
    """Same gradient as `plain_unroll`, with the memory of one step.

    Forward: plain first-order steps, keeping theta_0..theta_N.
    Backward, with the adjoint a_{i+1} = dL/dtheta_{i+1} and g_i the step's gradient:
        dL/dX      += -alpha * d(g_i . a_{i+1})/dX
        dL/dalpha  += -(g_i . a_{i+1})
        a_i         = a_{i+1} - alpha * H_i a_{i+1}
    where both vector products come from one double-backward of the recomputed step.
    """
    images = images.detach()
    lr = log_lr.detach().exp()
    steps = len(problem.plan.batches)
    thetas = [problem.start.detach()]
    for i in range(steps):
        theta = thetas[-1].requires_grad_(True)
        g, = torch.autograd.grad(problem.step_loss(theta, images, i), theta)
        thetas[-1] = theta.detach()
        thetas.append((theta - lr * g).detach())

    denom = problem.normaliser()
    diff = thetas[-1] - problem.target
    loss = diff.pow(2).sum() / denom
    adjoint = 2 * diff / denom
    grad_images = torch.zeros_like(images)
    grad_lr = torch.zeros((), dtype=images.dtype, device=images.device)
    x_leaf = images.requires_grad_(True)
    for i in reversed(range(steps)):
        theta = thetas[i].requires_grad_(True)
        g, = torch.autograd.grad(problem.step_loss(theta, x_leaf, i), theta, create_graph=True)
        hvp_theta, hvp_x = torch.autograd.grad(g, (theta, x_leaf), grad_outputs=adjoint)
        grad_images -= lr * hvp_x
        grad_lr -= torch.dot(g.detach(), adjoint)
        adjoint = adjoint - lr * hvp_theta
        thetas[i + 1] = None  # free as we go
    return MatchResult(loss.item(), grad_images, (grad_lr * lr).reshape(log_lr.shape))


GRADIENT_METHODS: dict[str, GradientMethod] = {"unroll": plain_unroll, "lean": lean_unroll}


@torch.no_grad()
def matching_loss(problem: MatchProblem, images: torch.Tensor, lr: float | torch.Tensor) -> float:
    """The loss alone, with no graph through the images (STM's held-out next-epoch loss).

    Each step needs only a first-order gradient of the student parameters.
    """
    images = images.detach()
    theta = problem.start.detach()
    for i in range(len(problem.plan.batches)):
        with torch.enable_grad():
            t = theta.requires_grad_(True)
            g, = torch.autograd.grad(problem.step_loss(t, images, i), t)
        theta = theta.detach() - lr * g
    return ((theta - problem.target).pow(2).sum() / problem.normaliser()).item()
