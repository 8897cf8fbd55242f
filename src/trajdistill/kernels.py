"""Step kernels: how one unrolled step's gradient and its vector products are computed.

The lean walk (matching.py) needs two things of every step i, both summed over the
minibatch's chunks (a step's loss is a sum over images):
    grad(p, theta, images, i)     = d loss_i / d theta                         (first order)
    hvp(p, theta, images, i, v)   = (g, d(g.v)/dtheta, d(g.v)/dimages, d(g.v)/dlabels or None)
Three kernels compute them, the same numbers up to summation order:
- `Eager`: autograd on the student's forward pass, chunk by chunk (the reference);
- `Compiled`: the per-chunk functions through torch.compile (`CompiledSteps`, --compile);
- `Graphed`: CUDA graphs of a whole step's call (cuda_graphs.py), replayed; a call that cannot
  be recorded runs eagerly.
The kernel follows from settings that are the same for every problem of a run (the device,
--compile, --cuda_graphs, --autocast, the network), so a run chooses it once
(matching.step_kernel) and hands it to every problem it builds.
The augmentation and the softmax of soft labels stay outside the chunks (eager, cheap): the
walk back pulls d(g.v)/dx and d(g.v)/dy through them with autograd.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Protocol

import torch

from . import cuda_graphs
from .models import FlatModel
from .training import is_soft, summed_cross_entropy


class StepKernel(Protocol):
    name: str

    def grad(self, p, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor: ...

    def hvp(self, p, theta: torch.Tensor, images: torch.Tensor, i: int, v: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


def _count(n: int, like: torch.Tensor) -> torch.Tensor:
    """The minibatch size as a 0-dim tensor: an input of the compiled graphs, not a constant
    baked into them (no recompilation for another value)."""
    return torch.tensor(float(n), dtype=like.dtype, device=like.device)


class Eager:
    """Autograd on the student's forward pass, one chunk of the minibatch at a time."""

    name = "eager"

    def grad(self, p, theta: torch.Tensor, images: torch.Tensor, i: int) -> torch.Tensor:
        with torch.no_grad():
            x, y = p.step_input(images, i)
        theta = self._theta(theta)
        n = x.shape[0]
        size = p.chunk_size(n, x.shape)
        total = None
        for xc, yc in zip(x.split(size), y.split(size)):
            g = self.chunk_grad(p, theta, xc, yc, n)
            total = g if total is None else total.add_(g)
        return total

    def hvp(self, p, theta: torch.Tensor, images: torch.Tensor, i: int, v: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x_leaf = images.detach().requires_grad_(True)
        soft = is_soft(p.labels)
        y_leaf = p.labels.detach().requires_grad_(soft)
        x, y = p.step_input(x_leaf, i, y_leaf)   # augmentation, softmax: cheap, kept whole
        xa, ya = x.detach(), y.detach()
        theta = theta.detach().requires_grad_(True)
        n = xa.shape[0]
        size = p.chunk_size(n, xa.shape)
        g_sum = hv_sum = None
        hx_parts, hy_parts = [], []
        for xc, yc in zip(xa.split(size), ya.split(size)):
            g, hv, hx, hy = self.chunk_hvp(p, theta, xc, yc, n, v, soft)
            g_sum = g if g_sum is None else g_sum.add_(g)
            hv_sum = hv if hv_sum is None else hv_sum.add_(hv)
            hx_parts.append(hx)
            if hy is not None:
                hy_parts.append(hy)
        himg, = torch.autograd.grad(x, x_leaf, grad_outputs=torch.cat(hx_parts))
        hlab = torch.autograd.grad(y, y_leaf, grad_outputs=torch.cat(hy_parts))[0] if soft else None
        return g_sum, hv_sum, himg, hlab

    def _theta(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.detach().requires_grad_(True)

    def chunk_grad(self, p, theta, xc, yc, n: int) -> torch.Tensor:
        loss = summed_cross_entropy(p.network(theta, xc), yc) / n
        g, = torch.autograd.grad(loss, theta)
        return g

    def chunk_hvp(self, p, theta, xc, yc, n: int, v, soft: bool):
        xc = xc.requires_grad_(True)
        yc = yc.requires_grad_(soft)
        loss = summed_cross_entropy(p.network(theta, xc), yc) / n
        g, = torch.autograd.grad(loss, theta, create_graph=True)
        hv, hx, *hy = torch.autograd.grad(g, (theta, xc, *([yc] if soft else [])), grad_outputs=v)
        return g.detach(), hv, hx, (hy[0] if hy else None)


class Compiled(Eager):
    """The same chunks through the student's torch.compile'd step functions. Where
    torch.compile fails (no C++ compiler for inductor, an unsupported op), one warning says so
    and this process computes the steps eagerly from then on: the same gradient, slower."""

    name = "compiled"

    def __init__(self):
        self.failed = False

    def _theta(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.detach()

    def chunk_grad(self, p, theta, xc, yc, n: int) -> torch.Tensor:
        if not self.failed:
            try:
                with torch.no_grad():
                    return compiled_steps(p.student).grad(theta, xc.contiguous(), yc.contiguous(),
                                                          _count(n, xc))
            except Exception as error:  # noqa: BLE001 - any failure leaves the eager steps
                self._give_up(error)
        return super().chunk_grad(p, theta.detach().requires_grad_(True), xc, yc, n)

    def chunk_hvp(self, p, theta, xc, yc, n: int, v, soft: bool):
        if not self.failed:
            try:
                with torch.no_grad():
                    g, hv, hx, *hy = compiled_steps(p.student).hvp(
                        theta.detach(), xc.contiguous(), yc.contiguous(), _count(n, xc),
                        v.contiguous(), soft)
                return g, hv, hx, (hy[0] if hy else None)
            except Exception as error:  # noqa: BLE001
                self._give_up(error)
        return super().chunk_hvp(p, theta, xc, yc, n, v, soft)

    def _give_up(self, error: Exception) -> None:
        self.failed = True
        first = (str(error).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"--compile: torch.compile failed ({type(error).__name__}: {first}); the "
                      "steps run eagerly (the same gradient, slower)", stacklevel=4)


class Graphed:
    """A whole step's call recorded once per shape as a CUDA graph and replayed; a call that
    cannot be recorded runs on `fallback` (the same numbers, slower)."""

    name = "cuda-graphs"

    def __init__(self, fallback: StepKernel):
        self.fallback = fallback

    def grad(self, p, theta, images, i):
        out = cuda_graphs.graphs_of(p.student).call(p, "grad", theta, images, i)
        return out if out is not None else self.fallback.grad(p, theta, images, i)

    def hvp(self, p, theta, images, i, v):
        out = cuda_graphs.graphs_of(p.student).call(p, "hvp", theta, images, i, v)
        return out if out is not None else self.fallback.hvp(p, theta, images, i, v)


EAGER, COMPILED = Eager(), Compiled()
GRAPHED = Graphed(EAGER)


def choose(graphed: bool, compiled: bool) -> StepKernel:
    """The kernel of a problem's settings (MatchProblem.graphed / .compiled)."""
    return GRAPHED if graphed else COMPILED if compiled else EAGER


# ----------------------------------------------------------------------------- compiled steps

class CompiledSteps:
    """`torch.compile`d per-chunk step functions of one student (`Compiled`, `MatchProblem.compile`).

    torch.compile cannot differentiate a compiled graph twice (a double backward through a
    compiled forward raises "torch.compile with aot_autograd does not currently support double
    backward"), so the Hessian-vector products are written functionally with torch.func and
    the whole second-order computation is traced into one graph, called without autograd:

        grad(theta, x, y, n)      = dloss/dtheta                             (first order)
        hvp(theta, x, y, n, v)    = (g, d(g.v)/dtheta, d(g.v)/dx[, d(g.v)/dy])

    with loss = summed_cross_entropy(f(x; theta), y) / n. The augmentation and the softmax of
    soft labels stay outside (eager): the walk back pulls d(g.v)/dx and d(g.v)/dy through
    them with autograd, as the eager walk does. Shapes are static (dynamic=False): each chunk
    size compiles once (a run has at most a few: the chunk and the remainders); past
    torch._dynamo.config.recompile_limit (8) shapes x networks in one process, dynamo warns and
    runs the function eagerly (the same gradient, uncompiled). Chunks are
    passed contiguous: DSA's crop leaves channels-last strides, which would recompile (strides
    are guarded) and which dynamo's fake group_norm cannot view ("Cannot view a tensor with
    shape [2, 16, 16, 16] and strides (4096, 1, 256, 16) as a tensor with shape (1, 32, 256)").

    Networks with batch statistics (ConvNetBN, ...) keep the eager walk: their running-stat
    updates mutate module buffers inside the grad transform, which torch.func refuses
    ("attempted to call in-place operation (aten::add_.Tensor) that would mutate a captured
    Tensor").
    """

    def __init__(self, student: FlatModel):
        from torch import func

        def loss(theta, x, y, n):
            return summed_cross_entropy(student(theta, x), y) / n

        def grad(theta, x, y, n):
            return func.grad(loss)(theta, x, y, n)

        def hvp(theta, x, y, n, v, soft: bool):
            # reverse-over-reverse (vjp of grad), like the eager walk; forward-over-reverse
            # (jvp of grad) was as exact but slower on CPU (docs/performance.md)
            if soft:
                g, pull = func.vjp(lambda th, xx, yy: func.grad(loss)(th, xx, yy, n), theta, x, y)
            else:
                g, pull = func.vjp(lambda th, xx: func.grad(loss)(th, xx, y, n), theta, x)
            return (g, *pull(v))

        opts = dict(dynamic=False, fullgraph=True)
        self.grad = torch.compile(grad, **opts)
        self.hvp = torch.compile(hvp, **opts)


_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, CompiledSteps]" = weakref.WeakKeyDictionary()


def compiled_steps(student: FlatModel) -> CompiledSteps:
    """The compiled step functions of a student, made once per network."""
    steps = _COMPILED.get(student.module)
    if steps is None:
        steps = _COMPILED[student.module] = CompiledSteps(student)
    return steps
