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

With `MatchProblem.compile` the lean walk's per-chunk gradient and Hessian-vector products
(and the held-out loss's gradients) run through torch.compile (kernels.Compiled): the same
gradient (float64: 1e-15), 1.1-1.3x faster on CPU, about a minute of compilation per process.

With `MatchProblem.autocast` (torch.bfloat16) the student's forward passes run under
torch.autocast: an inexact opt-in (`distill --autocast bf16`), 1.2-1.4x faster per step on a
CPU with bfloat16 instructions, whose gradient drifts 1.5-3.6x as far from float64 as float32's
own (docs/performance.md). Everything else (the loss, theta, the adjoint) stays float32.

Soft labels (DATM): when `MatchProblem.labels` is a float (N, classes) tensor of logits Y,
each step's loss is the soft cross-entropy -sum(softmax(Y_b) * log_softmax(f(x_b))) / batch,
and both methods also return dL/dY (`MatchResult.grad_labels`), carried back through the
whole unroll exactly like dL/dX. With integer labels grad_labels is None.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from . import augment as dsa
from . import kernels, texture
from .models import FlatModel
from .training import is_soft as soft_labels, summed_cross_entropy


# lean walk: images per network call = CHUNK_PIXELS // (H * W) (25 for 32x32, 1 for 128x128).
# Measured (benchmarks/step_benchmark.py, 2 CPU cores, ConvNet-128, batch_syn 100): chunks of
# 25 images are ~1.8x faster per step than the whole batch (activations stay in cache, and
# tensors below glibc's mmap threshold are reused without page faults) and keep the peak
# resident memory of config A at ~0.7 GB; chunks of 10 are slower again (per-op overhead).
CHUNK_PIXELS = 25 * 32 * 32
# On a GPU small chunks only multiply kernel launches: the lean walk takes the whole
# minibatch per call up to this many pixels (256 images of 32x32, 16 of 128x128), which bounds
# a call's activations of the width-128 ConvNet at about 1 GB.
CUDA_CHUNK_PIXELS = 256 * 32 * 32


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
    labels: torch.Tensor  # class indices (N,), or learnable label logits (N, classes)
    plan: UnrollPlan
    # images per network call in the lean walk; None: automatic (see `chunk_size`), 0: no chunks
    chunk: int | None = None
    # lean walk and held-out loss through torch.compile'd step functions (kernels.Compiled);
    # ignored (eager, one warning) for networks with batch statistics
    compile: bool = False
    # the hybrid (--gradient_memory): the last keep_steps unrolled steps keep their autograd
    # graphs, as the plain unroll does, and the lean walk recomputes only the steps before
    keep_steps: int = 0
    # CUDA only: the lean walk's steps and the held-out loss's replay recorded CUDA graphs
    # (cuda_graphs.py); ignored on a CPU, with texture distillation and batch statistics
    cuda_graphs: bool = False
    # the student's forward passes under torch.autocast in this dtype (torch.bfloat16), an
    # inexact opt-in (`network`); None, the default: the problem's own dtype throughout
    autocast: torch.dtype | None = None
    # the step kernel (kernels.py) chosen once for a whole run (`step_kernel`); None: chosen
    # from this problem's own settings on each use (a problem built on its own). A copy
    # (dataclasses.replace) with other kernel settings passes kernel_choice=None
    kernel_choice: kernels.StepKernel | None = field(default=None, repr=False, compare=False)
    _on_device: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def device_plan(self, like: torch.Tensor) -> UnrollPlan:
        """The plan with its indices and draws on `like`'s device (float draws in its dtype),
        moved once per problem: a host-to-device copy per step would wait for the GPU."""
        if like.device.type == "cpu":
            return self.plan
        plan, key = self.plan, (like.device, like.dtype)
        if self._on_device is None or self._on_device[0] is not plan or self._on_device[1] != key:
            moved = replace(
                plan, batches=[b.to(like.device) for b in plan.batches],
                augs=[None if a is None else {k: dsa.to_like(t, like) for k, t in a.items()}
                      for a in plan.augs],
                shifts=None if plan.shifts is None else [s.to(like.device) for s in plan.shifts])
            self._on_device = (plan, key, moved)
        return self._on_device[2]

    @property
    def graphed(self) -> bool:
        """Whether step_grad and step_hvp replay CUDA graphs (`cuda_graphs`)."""
        return replays_cuda_graphs(self.cuda_graphs, self.start.device.type, self.compile,
                                   self.plan.shifts is not None, self.student)

    def network(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The student's logits at theta. With `autocast` the forward pass runs under
        torch.autocast (convolutions and matrix products in bfloat16, float32 weights cast per
        call) and the logits come back in theta's dtype, so the loss, the gradients and the
        walk's adjoint stay float32. Autocast leaves float64 alone."""
        if self.autocast is None:
            return self.student(theta, x)
        # cache_enabled=False: the weight casts must be part of every call (a CUDA graph
        # records them; a cache would hold casts of a theta that the next step replaces)
        with torch.autocast(theta.device.type, dtype=self.autocast, cache_enabled=False):
            out = self.student(theta, x)
        return out.to(theta.dtype)

    def step_input(self, images: torch.Tensor, i: int, labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unrolled step i's augmented minibatch and its targets: class indices, or the
        softmax of the label logits (differentiable in images and in `labels`)."""
        labels = self.labels if labels is None else labels
        plan = self.device_plan(images)
        idx = plan.batches[i]
        x, y = images[idx], labels[idx]
        if plan.shifts is not None:  # texture: windows of the canvases, targets repeated
            x = texture.windows(x, plan.shifts[i], plan.window)
            y = y.repeat(plan.shifts[i].shape[0], *[1] * (y.dim() - 1))
        if plan.augs[i] is not None:
            x = dsa.apply(x, plan.augs[i])
        return x, (F.softmax(y, dim=1) if soft_labels(y) else y)

    def step_loss(self, theta: torch.Tensor, images: torch.Tensor, i: int,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy (mean over the minibatch) of unrolled step i at parameters theta."""
        x, y = self.step_input(images, i, labels)
        return summed_cross_entropy(self.network(theta, x), y) / x.shape[0]

    def chunk_size(self, batch: int, image_shape: torch.Size) -> int:
        """Images per network call: the whole minibatch when the network mixes images
        (batch norm), else about `CHUNK_PIXELS` pixels per call on a CPU (25 images of
        32x32) and `CUDA_CHUNK_PIXELS` on a GPU (the whole minibatch of 100 at 32x32)."""
        if not self.student.batch_independent or self.chunk == 0:
            return batch
        if self.chunk is not None:
            return max(1, min(self.chunk, batch))
        pixels = int(image_shape[-1]) * int(image_shape[-2])
        budget = CUDA_CHUNK_PIXELS if self.start.device.type == "cuda" else CHUNK_PIXELS
        return max(1, min(batch, budget // max(1, pixels)))

    @property
    def compiled(self) -> bool:
        """Whether the step functions go through torch.compile (kernels.Compiled)."""
        return runs_compiled(self.compile, self.autocast, self.student)

    @property
    def kernel(self) -> kernels.StepKernel:
        """How step_grad and step_hvp are computed (kernels.py): the run's choice when one
        was handed in (`kernel_choice`), else the one this problem's settings give."""
        if self.kernel_choice is not None:
            return self.kernel_choice
        return kernels.choose(graphed=self.graphed, compiled=self.compiled)

    def step_grad(self, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor:
        """First-order gradient of step i's loss at theta (no graph kept), chunked."""
        return self.kernel.grad(self, theta, images, i)

    def step_hvp(self, theta: torch.Tensor, images: torch.Tensor, i: int, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Step i's gradient g at theta and the products of v with its derivatives:
        (g, d(g.v)/dtheta = H v, d(g.v)/dimages, d(g.v)/dlabels or None for hard labels),
        recomputing the step's graph chunk by chunk."""
        return self.kernel.hvp(self, theta, images, i, v)

    def normaliser(self) -> torch.Tensor:
        return (self.start - self.target).pow(2).sum()


def replays_cuda_graphs(cuda_graphs: bool, device_type: str, compile: bool, texture: bool,
                        student: FlatModel) -> bool:
    """Whether the steps replay CUDA graphs: asked for, on CUDA, not compiled, and neither
    texture windows nor batch statistics (a recording cannot hold them)."""
    return (cuda_graphs and device_type == "cuda" and not compile and not texture
            and student.batch_independent)


def runs_compiled(compile: bool, autocast: torch.dtype | None, student: FlatModel) -> bool:
    """Whether the steps go through torch.compile: asked for, and neither batch statistics
    nor autocast (each warned about: the walk then stays eager)."""
    if compile and not student.batch_independent:
        warnings.warn("compile: networks with batch statistics keep the eager lean walk "
                      "(torch.func cannot trace their running-stat updates)", stacklevel=3)
        return False
    if compile and autocast is not None:
        warnings.warn("compile: the compiled steps do not autocast; with autocast the lean "
                      "walk stays eager", stacklevel=3)
        return False
    return compile


def step_kernel(student: FlatModel, device_type: str, compile: bool = False,
                cuda_graphs: bool = False, autocast: torch.dtype | None = None,
                texture: bool = False) -> kernels.StepKernel:
    """The kernel of every problem with these settings: a run's are the same for all its
    problems (device, network, --compile, --cuda_graphs, --autocast, --texture), so it
    chooses once and hands the choice to each (`MatchProblem.kernel_choice`)."""
    graphed = replays_cuda_graphs(cuda_graphs, device_type, compile, texture, student)
    return kernels.choose(graphed=graphed, compiled=runs_compiled(compile, autocast, student))


@dataclass
class MatchResult:
    loss: float
    grad_images: torch.Tensor
    grad_log_lr: torch.Tensor
    grad_labels: torch.Tensor | None = None  # dL/d(label logits); None with hard labels


GradientMethod = Callable[[MatchProblem, torch.Tensor, torch.Tensor], MatchResult]


def plain_unroll(problem: MatchProblem, images: torch.Tensor, log_lr: torch.Tensor) -> MatchResult:
    """Reference: unroll with create_graph, then one backward through everything."""
    images = images.detach().requires_grad_(True)
    log_lr = log_lr.detach().requires_grad_(True)
    soft = soft_labels(problem.labels)
    labels = problem.labels.detach().requires_grad_(soft)
    lr = log_lr.exp()
    theta = problem.start.detach().requires_grad_(True)
    for i in range(len(problem.plan.batches)):
        g, = torch.autograd.grad(problem.step_loss(theta, images, i, labels), theta,
                                 create_graph=True)
        theta = theta - lr * g
    loss = (theta - problem.target).pow(2).sum() / problem.normaliser()
    gx, glr, *gy = torch.autograd.grad(loss, (images, log_lr, *([labels] if soft else [])))
    return MatchResult(loss.item(), gx, glr, gy[0] if soft else None)


def step_graph_bytes(problem: MatchProblem, images: torch.Tensor, lr: torch.Tensor) -> int:
    """Bytes that autograd keeps for one unrolled step with its graph (step 0 of the plan,
    the whole minibatch at once, as `plain_unroll` and the hybrid's kept steps hold it): the
    distinct storages saved for backward while the step and its create_graph gradient are
    built, counted through saved-tensor hooks, so the same on every device."""
    seen: dict[tuple, int] = {}
    alive = []  # every packed tensor lives to the end: no freed address is counted twice or
    # shadowed by a later storage at the same address

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        alive.append(t)
        return t

    x_leaf = images.detach().requires_grad_(True)
    soft = soft_labels(problem.labels)
    y_leaf = problem.labels.detach().requires_grad_(soft)
    theta = problem.start.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        g, = torch.autograd.grad(problem.step_loss(theta, x_leaf, 0, y_leaf), theta,
                                 create_graph=True)
        theta - lr.detach() * g  # the step's update: it saves lr and g too
    return sum(seen.values())


def kept_steps(budget_gb: float, syn_steps: int, problem: MatchProblem, images: torch.Tensor,
               lr: torch.Tensor) -> tuple[int, int]:
    """--gradient_memory: how many of the last of `syn_steps` unrolled steps keep their graphs
    within `budget_gb`, and the bytes of one such step (`step_graph_bytes`, measured on
    `problem`, which needs the run's minibatch shapes, not its length)."""
    per_step = step_graph_bytes(problem, images, lr)
    return int(min(syn_steps, budget_gb * 2**30 // max(1, per_step))), per_step


def lean_unroll(problem: MatchProblem, images: torch.Tensor, log_lr: torch.Tensor) -> MatchResult:
    """Same gradient as `plain_unroll`, with the memory of one step (of one chunk of it).

    Forward: plain first-order steps, keeping theta_0..theta_N (flat vectors only).
    Backward, with the adjoint a_{i+1} = dL/dtheta_{i+1} and g_i the step's gradient:
        dL/dX      += -alpha * d(g_i . a_{i+1})/dX
        dL/dY      += -alpha * d(g_i . a_{i+1})/dY      (soft labels only)
        dL/dalpha  += -(g_i . a_{i+1})
        a_i         = a_{i+1} - alpha * H_i a_{i+1}
    where all the vector products come from one double-backward of the recomputed step.
    With `problem.keep_steps` = k > 0 (the hybrid) the last k steps are unrolled with their
    graphs and differentiated by autograd, which hands the walk its adjoint at theta_{N-k}.
    """
    images = images.detach()
    lr = log_lr.detach().exp()
    steps = len(problem.plan.batches)
    walked = steps - min(max(problem.keep_steps, 0), steps)  # steps the lean walk recomputes
    thetas = [problem.start.detach()]
    for i in range(walked):
        thetas.append(thetas[-1] - lr * problem.step_grad(thetas[-1], images, i))

    if walked < steps:
        loss, adjoint, grad_images, grad_labels, grad_log_lr = _kept_tail(
            problem, images, log_lr, thetas[-1], walked)
    else:
        denom = problem.normaliser()
        diff = thetas[-1] - problem.target
        loss = (diff.pow(2).sum() / denom).item()
        adjoint = 2 * diff / denom
        grad_images = torch.zeros_like(images)
        grad_labels = torch.zeros_like(problem.labels) if soft_labels(problem.labels) else None
        grad_log_lr = torch.zeros((), dtype=images.dtype, device=images.device)
    grad_lr = torch.zeros((), dtype=images.dtype, device=images.device)
    lr_value = float(lr)  # once: on a GPU each float() waits for the queued kernels
    for i in reversed(range(walked)):
        thetas[i + 1] = None  # free as we go
        g, hvp_theta, hvp_x, hvp_y = problem.step_hvp(thetas[i], images, i, adjoint)
        grad_images.sub_(hvp_x, alpha=lr_value)
        if grad_labels is not None:
            grad_labels.sub_(hvp_y, alpha=lr_value)
        grad_lr -= torch.dot(g, adjoint)
        adjoint = adjoint - lr * hvp_theta
    return MatchResult(loss, grad_images, (grad_log_lr + grad_lr * lr).reshape(log_lr.shape),
                       grad_labels)


def _kept_tail(problem: MatchProblem, images: torch.Tensor, log_lr: torch.Tensor,
               theta: torch.Tensor, first: int):
    """The hybrid's last steps (first .. N-1), unrolled with their graphs as `plain_unroll`
    does: the loss, dL/dtheta_first (the walk's adjoint), and this part's dL/dX, dL/dY and
    dL/dlog lr. Written apart from `plain_unroll` on purpose: that one is the reference the
    tests hold the hybrid to."""
    x_leaf = images.detach().requires_grad_(True)
    log_lr = log_lr.detach().requires_grad_(True)
    soft = soft_labels(problem.labels)
    y_leaf = problem.labels.detach().requires_grad_(soft)
    lr = log_lr.exp()
    start = theta.detach().requires_grad_(True)
    theta = start
    for i in range(first, len(problem.plan.batches)):
        g, = torch.autograd.grad(problem.step_loss(theta, x_leaf, i, y_leaf), theta,
                                 create_graph=True)
        theta = theta - lr * g
    loss = (theta - problem.target).pow(2).sum() / problem.normaliser()
    adjoint, gx, glr, *gy = torch.autograd.grad(
        loss, (start, x_leaf, log_lr, *([y_leaf] if soft else [])))
    return loss.item(), adjoint, gx, gy[0] if soft else None, glr


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
