"""CUDA graphs of the lean walk's steps: record a step's kernels once, replay them every step.

At the sizes of trajectory matching (10-100 images of 32x32 per step) a GPU step is hundreds of
small kernels, and launching them one by one from Python and autograd takes longer than running
them: on an H200, eager config C spends 12 ms per unrolled step, of which the arithmetic is well
under one. A CUDA graph records the kernels of one call and replays them with a single launch.

Two calls of `MatchProblem` are recorded: `step_grad` (a step's first-order gradient: the lean
walk's forward steps and the STM held-out loss) and `step_hvp` (the recomputed step with the walk
back's two vector products). A replay runs the recorded kernels on fixed buffers, so each call
copies its inputs in (theta, the adjoint, the images, the labels, the step's minibatch indices
and augmentation draws: device-to-device copies, no synchronisation) and its outputs out. The
kernels are those of the eager call on the same numbers, so the gradient is the eager one
(tests/test_cuda.py: float64, graphed against eager and against the CPU's plain unroll).

One recording per shape of call: (first or second order, minibatch size, DSA group, dtypes),
a dozen per run at most, made on first use and kept with the student network, all in one
memory pool (the calls never overlap: each replay's outputs are copied out before the next).
A call that cannot be recorded (an operation that synchronises with the host) warns once and
runs eagerly, with the same result.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

WARMUP_CALLS = 2  # eager calls on a side stream before recording (cuDNN/cuBLAS set-up)


def wanted(mode: str, device_type: str, compiled: bool) -> bool:
    """--cuda_graphs: on, or auto (the default) wherever there is CUDA and --compile does not
    run the steps its own way; off never. (resolve refuses on without CUDA or with --compile.)"""
    mode = str(mode).lower()
    return device_type == "cuda" and (mode == "on" or (mode == "auto" and not compiled))


class _Recording:
    """One recorded call and its fixed input and output buffers."""

    def __init__(self, problem, kind: str, theta: torch.Tensor, images: torch.Tensor, i: int,
                 v: torch.Tensor | None, pool):
        plan = problem.device_plan(images)
        aug = plan.augs[i]
        self.idx = plan.batches[i].clone()
        self.aug = None if aug is None else {k: t.clone() if torch.is_tensor(t) else t
                                             for k, t in aug.items()}
        self.theta, self.images = theta.detach().clone(), images.detach().clone()
        self.labels = problem.labels.detach().clone()
        self.v = None if v is None else v.detach().clone()
        # the same problem on the buffers: one step, never graphed itself (nor through the
        # run's kernel choice, which is this very kernel: its settings choose again)
        fixed = dataclasses.replace(
            problem, labels=self.labels, cuda_graphs=False, kernel_choice=None,
            plan=dataclasses.replace(problem.plan, batches=[self.idx], augs=[self.aug]))
        if kind == "grad":
            call = lambda: fixed.step_grad(self.theta, self.images, 0)  # noqa: E731
        else:
            call = lambda: fixed.step_hvp(self.theta, self.images, 0, self.v)  # noqa: E731
        self.graph, self.out = record(call, images.device, pool)

    def __call__(self, problem, theta, images, i, v):
        plan = problem.device_plan(images)
        with torch.no_grad():  # the buffers never join an autograd graph (learnable labels)
            self.idx.copy_(plan.batches[i])
            if self.aug is not None:
                for k, t in self.aug.items():
                    if torch.is_tensor(t):
                        t.copy_(plan.augs[i][k])
            self.theta.copy_(theta)
            self.images.copy_(images)
            self.labels.copy_(problem.labels)
            if v is not None:
                self.v.copy_(v)
        self.graph.replay()
        if torch.is_tensor(self.out):
            return self.out.clone()
        return tuple(None if t is None else t.clone() for t in self.out)


def record(call, device: torch.device, pool):
    """Warm `call` up on a side stream (as torch.cuda.graph requires), then record it into a
    CUDA graph: (the graph, the outputs its replays overwrite)."""
    with torch.cuda.device(device):  # the images' GPU, whichever is current (one of several)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = call()
    return graph, out


class StepGraphs:
    """The recordings of one student network (`graphs_of`)."""

    def __init__(self):
        self.pool = None
        self.recordings: dict[tuple, _Recording | None] = {}  # None: could not be recorded

    def call(self, problem, kind: str, theta: torch.Tensor, images: torch.Tensor, i: int,
             v: torch.Tensor | None = None):
        """The replayed call's outputs, or None where it cannot be recorded (run it eagerly)."""
        key = _key(problem, kind, theta, images, i)
        if key not in self.recordings:
            if self.pool is None and images.is_cuda:
                self.pool = torch.cuda.graph_pool_handle()
            try:
                self.recordings[key] = _Recording(problem, kind, theta, images, i, v, self.pool)
            except RuntimeError as e:
                warnings.warn(f"cuda_graphs: the {kind} step of shape {key[1:4]} could not be "
                              f"recorded ({str(e).splitlines()[0]}); it runs eagerly (same "
                              "gradient, slower)", stacklevel=3)
                self.recordings[key] = None
        recording = self.recordings[key]
        return None if recording is None else recording(problem, theta, images, i, v)

    @property
    def recorded(self) -> int:
        return sum(r is not None for r in self.recordings.values())

    @property
    def failed(self) -> int:
        return sum(r is None for r in self.recordings.values())


def _key(problem, kind: str, theta: torch.Tensor, images: torch.Tensor, i: int) -> tuple:
    """What fixes a recording: every shape, dtype and constant the kernels depend on."""
    aug = problem.plan.augs[i]
    aug_key = None if aug is None else tuple(
        (k, tuple(t.shape), t.dtype) if torch.is_tensor(t) else (k, t) for k, t in sorted(aug.items()))
    return (kind, len(problem.plan.batches[i]), aug_key, tuple(images.shape), images.dtype,
            images.device, tuple(problem.labels.shape), problem.labels.dtype, theta.numel(),
            theta.dtype, problem.chunk, problem.autocast)


def graphs_of(student) -> StepGraphs:
    """The recorded steps of a student (a `FlatModel`), kept on its network: they go when it
    goes (a global table keyed by the network would keep it alive through the recordings)."""
    graphs = student.module.__dict__.get("_cuda_step_graphs")
    if graphs is None:
        graphs = StepGraphs()
        object.__setattr__(student.module, "_cuda_step_graphs", graphs)
    return graphs
