"""The unrolled student and the trajectory-matching loss (algorithm.md section 2).

From theta_0 = expert[t], N SGD steps on synthetic minibatches
    theta_{i+1} = theta_i - alpha * grad_theta CE(f(aug(X_b); theta_i), y_b)
and the loss L = ||theta_N - theta*||^2 / ||theta_0 - theta*||^2.

Everything random about one unroll (minibatch order, augmentation draws) is drawn ahead
into an `UnrollPlan`, so that every way of computing dL/dX and dL/dlog(alpha) sees the
same problem and can be checked against the others:

- `unroll`: the plain autograd unroll (reference; keeps every step's graph alive,
  memory grows with N);
- `lean` (the default of the distillation loop): keeps only the N+1 parameter vectors,
  then walks back one step at a time, recomputing that step's graph and propagating the
  adjoint with a Hessian-vector product (activation memory of one step, whatever N is).
  For networks without batch statistics (every ConvNet but ConvNetBN, ...) a step's
  minibatch also goes through the network in chunks of `MatchProblem.chunk` images:
  the loss is a sum over images, so the gradient and both Hessian-vector products are
  sums over chunks, and the activation memory is that of one chunk, whatever batch_syn is.

Both give the same loss and gradients up to floating-point summation order
(tests/test_matching.py: 1e-8 relative in float64, 1e-4 in float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import augment as dsa
from . import texture
from .models import FlatModel


# lean walk: images per network call = CHUNK_PIXELS // (H * W) (25 for 32x32, 1 for 128x128).
# Measured (benchmarks/step_benchmark.py, 2 CPU cores, ConvNet-128, batch_syn 100): chunks of
# 25 images are ~1.8x faster per step than the whole batch (activations stay in cache, and
# tensors below glibc's mmap threshold are reused without page faults) and keep the peak
# resident memory of config A at ~0.7 GB; chunks of 10 are slower again (per-op overhead).
CHUNK_PIXELS = 25 * 32 * 32


@dataclass
class UnrollPlan:
    """Minibatch indices and augmentation draws of each unrolled step; with texture
    distillation also each step's window shifts (texture.py) and the window size."""

    batches: list[torch.Tensor]
    augs: list[dict | None]
    shifts: list[torch.Tensor] | None = None  # per step (canvas_samples, batch, 2)
    window: tuple[int, int] | None = None     # the network's input size (texture only)


def plan_unroll(num_images: int, syn_steps: int, batch_syn: int, image_hw: tuple[int, int],
                strategy: str | None, generator: torch.Generator | None = None,
                texture_spec: texture.TextureSpec | None = None) -> UnrollPlan:
    """Shuffle the synthetic set into minibatches (reshuffled when exhausted), draw the
    texture windows (if any: image_hw is then the window size), then DSA for each input."""
    batches: list[torch.Tensor] = []
    while len(batches) < syn_steps:
        batches += list(torch.randperm(num_images, generator=generator).split(batch_syn))
    batches = batches[:syn_steps]
    shifts = None
    if texture_spec is not None:
        canvas_hw = texture_spec.canvas_shape((1, *image_hw))[1:]
        shifts = [texture_spec.draw_shifts(len(b), canvas_hw, generator) for b in batches]
    per_step = texture_spec.canvas_samples if texture_spec is not None else 1
    augs = [dsa.sample(strategy, per_step * len(b), *image_hw, generator=generator) if strategy
            else None for b in batches]
    return UnrollPlan(batches, augs, shifts, tuple(image_hw) if shifts is not None else None)


@dataclass
class MatchProblem:
    """One matching problem: the student, where it starts, where the expert went."""

    student: FlatModel
    start: torch.Tensor   # theta_0, flat
    target: torch.Tensor  # theta*, flat
    labels: torch.Tensor  # labels of the synthetic set
    plan: UnrollPlan
    # images per network call in the lean walk; None: automatic (see `chunk_size`), 0: no chunks
    chunk: int | None = None

    def step_input(self, images: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unrolled step i's augmented minibatch and its labels (differentiable in images)."""
        idx = self.plan.batches[i].to(images.device)
        x, y = images[idx], self.labels[idx]
        if self.plan.shifts is not None:  # texture: windows of the canvases
            x = texture.windows(x, self.plan.shifts[i], self.plan.window)
            y = y.repeat(self.plan.shifts[i].shape[0])
        if self.plan.augs[i] is not None:
            x = dsa.apply(x, self.plan.augs[i])
        return x, y

    def step_loss(self, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor:
        """Cross-entropy of unrolled step i's minibatch at parameters theta."""
        x, y = self.step_input(images, i)
        return F.cross_entropy(self.student(theta, x), y)

    def chunk_size(self, batch: int, image_shape: torch.Size) -> int:
        """Images per network call: the whole minibatch when the network mixes images
        (batch norm), else about `CHUNK_PIXELS` pixels per call (25 images of 32x32)."""
        if not self.student.batch_independent or self.chunk == 0:
            return batch
        if self.chunk is not None:
            return max(1, min(self.chunk, batch))
        pixels = int(image_shape[-1]) * int(image_shape[-2])
        return max(1, min(batch, CHUNK_PIXELS // max(1, pixels)))

    def step_grad(self, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor:
        """First-order gradient of step i's loss at theta (no graph kept), chunked."""
        with torch.no_grad():
            x, y = self.step_input(images, i)
        theta = theta.detach().requires_grad_(True)
        n = x.shape[0]
        total = None
        for xc, yc in zip(x.split(self.chunk_size(n, x.shape)), y.split(self.chunk_size(n, x.shape))):
            loss = F.cross_entropy(self.student(theta, xc), yc, reduction="sum") / n
            g, = torch.autograd.grad(loss, theta)
            total = g if total is None else total.add_(g)
        return total

    def step_hvp(self, theta: torch.Tensor, images: torch.Tensor, i: int, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step i's gradient g at theta and the products of v with its derivatives:
        (g, d(g.v)/dtheta = H v, d(g.v)/dimages), recomputing the step's graph chunk by chunk."""
        x_leaf = images.detach().requires_grad_(True)
        x, y = self.step_input(x_leaf, i)           # augmentation: cheap, kept whole
        xa = x.detach()
        theta = theta.detach().requires_grad_(True)
        n = xa.shape[0]
        size = self.chunk_size(n, xa.shape)
        g_sum = hv_sum = None
        hx_parts = []
        for xc, yc in zip(xa.split(size), y.split(size)):
            xc = xc.requires_grad_(True)
            loss = F.cross_entropy(self.student(theta, xc), yc, reduction="sum") / n
            g, = torch.autograd.grad(loss, theta, create_graph=True)
            hv, hx = torch.autograd.grad(g, (theta, xc), grad_outputs=v)
            g = g.detach()
            g_sum = g if g_sum is None else g_sum.add_(g)
            hv_sum = hv if hv_sum is None else hv_sum.add_(hv)
            hx_parts.append(hx)
        hx = torch.cat(hx_parts) if len(hx_parts) > 1 else hx_parts[0]
        if x.requires_grad:
            himg, = torch.autograd.grad(x, x_leaf, grad_outputs=hx)
        else:  # pragma: no cover - step_input always indexes images
            himg = torch.zeros_like(images)
        return g_sum, hv_sum, himg

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
    """Same gradient as `plain_unroll`, with the memory of one step (of one chunk of it).

    Forward: plain first-order steps, keeping theta_0..theta_N (flat vectors only).
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
        thetas.append(thetas[-1] - lr * problem.step_grad(thetas[-1], images, i))

    denom = problem.normaliser()
    diff = thetas[-1] - problem.target
    loss = diff.pow(2).sum() / denom
    adjoint = 2 * diff / denom
    grad_images = torch.zeros_like(images)
    grad_lr = torch.zeros((), dtype=images.dtype, device=images.device)
    for i in reversed(range(steps)):
        thetas[i + 1] = None  # free as we go
        g, hvp_theta, hvp_x = problem.step_hvp(thetas[i], images, i, adjoint)
        grad_images.sub_(hvp_x, alpha=float(lr))
        grad_lr -= torch.dot(g, adjoint)
        adjoint = adjoint - lr * hvp_theta
    return MatchResult(loss.item(), grad_images, (grad_lr * lr).reshape(log_lr.shape))


GRADIENT_METHODS: dict[str, GradientMethod] = {"unroll": plain_unroll, "lean": lean_unroll}


def matching_loss(problem: MatchProblem, images: torch.Tensor, lr: float | torch.Tensor) -> float:
    """The loss alone, with no graph through the images (STM's held-out next-epoch loss).

    Each step needs only a first-order gradient of the student parameters (chunked like
    the lean walk); nothing is kept from one step to the next but theta.
    """
    images = images.detach()
    lr = lr.detach() if torch.is_tensor(lr) else lr
    theta = problem.start.detach()
    for i in range(len(problem.plan.batches)):
        theta = theta - lr * problem.step_grad(theta, images, i)
    with torch.no_grad():
        return ((theta - problem.target).pow(2).sum() / problem.normaliser()).item()
