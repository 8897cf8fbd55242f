"""CUDA against the CPU: the same gradient on both devices, the GPU's chunk rule, TF32's
drift. Skipped without CUDA; `TRAJDISTILL_TEST_DEVICE=cuda bash test.sh` also moves the
device-aware tests of the other files (gradient identities, resume, end to end) to the GPU."""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from trajdistill import augment, cuda_graphs
from trajdistill.matching import MatchProblem, lean_unroll, matching_loss, plain_unroll
from trajdistill.precision import set_tf32

from test_matching import as_float32, make_problem, rel, soft_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def on(problem: MatchProblem, images: torch.Tensor, device: str):
    """The same problem (network, start, target, labels, plan) on another device."""
    problem.student.module.to(device)
    moved = MatchProblem(problem.student, problem.start.to(device), problem.target.to(device),
                         problem.labels.to(device), problem.plan, chunk=problem.chunk)
    return moved, images.to(device)


def assert_same(a, b, tol):
    assert a.loss == pytest.approx(b.loss, rel=tol)
    assert rel(a.grad_images, b.grad_images) < tol
    assert rel(a.grad_log_lr, b.grad_log_lr) < tol
    if b.grad_labels is not None:
        assert rel(a.grad_labels, b.grad_labels) < tol


@pytest.mark.parametrize("strategy", [*augment.GROUPS, None])
def test_graphed_steps_replay_the_eager_walk_float64(strategy):
    """--cuda_graphs: the recorded steps give the eager walk's gradient and held-out loss, for
    every DSA group and none, with soft labels and two minibatch sizes (12 images in batches
    of 5: 5, 5, 2, 5); a second call with other images and another start reaches the recorded
    kernels through their buffers. Graphed and eager run the same kernels: only the order of
    atomic additions (the images' scatter) may differ, far below 1e-12."""
    problem, images = soft_problem(name="ConvNetW16", shape=(3, 16, 16), steps=4, batch=5,
                                   strategy=strategy)
    eager, x = on(problem, images, "cuda")
    graphed = dataclasses.replace(eager, cuda_graphs=True)
    assert graphed.graphed and not eager.graphed
    graphed.labels.requires_grad_(True)  # as the Distiller's learnable logits
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device="cuda")
    x2 = x + 0.3 * torch.randn_like(x)
    graphs = cuda_graphs.graphs_of(eager.student)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a step that could not be recorded warns
        first = lean_unroll(graphed, x, log_lr)
        graphed.start = graphed.start + 0.01
        second = lean_unroll(graphed, x2, log_lr)
        held = matching_loss(graphed, x2, log_lr.exp())
    assert graphs.recorded >= 4 and graphs.failed == 0  # (grad, hvp) x (batch 5, batch 2)
    assert_same(first, lean_unroll(eager, x, log_lr), 1e-12)
    eager.start = graphed.start
    assert_same(second, lean_unroll(eager, x2, log_lr), 1e-12)
    assert held == pytest.approx(matching_loss(eager, x2, log_lr.exp()), rel=1e-12)


def test_graphed_walk_on_cuda_equals_the_plain_unroll_on_the_cpu():
    """The default on CUDA (graphed lean walk) against the reference on the CPU: hard labels,
    the default DSA strategy, float64."""
    problem, images = make_problem(name="ConvNetW16", shape=(3, 16, 16), steps=6, batch=5)
    cpu, x_cpu = on(problem, images, "cpu")
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64)
    ref = plain_unroll(cpu, x_cpu, log_lr)
    gpu, x = on(problem, images, "cuda")
    gpu.cuda_graphs = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lean_unroll(gpu, x, log_lr.cuda())
    assert rel(got.grad_images.cpu(), ref.grad_images) < 1e-8
    assert rel(got.grad_log_lr.cpu(), ref.grad_log_lr) < 1e-8
    assert got.loss == pytest.approx(ref.loss, rel=1e-8)


def test_lean_on_cuda_equals_the_plain_unroll_on_the_cpu_float64():
    """Device independence of the default gradient: soft labels and DSA on, float64, the
    lean walk on the GPU against the plain autograd unroll on the CPU."""
    problem, images = soft_problem(name="ConvNetW16", shape=(3, 16, 16), steps=5, batch=5)
    cpu, x_cpu = on(problem, images, "cpu")
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64)
    a = plain_unroll(cpu, x_cpu, log_lr)
    gpu, x_gpu = on(problem, images, "cuda")
    b = lean_unroll(gpu, x_gpu, log_lr.cuda())
    assert b.grad_images.is_cuda
    # float64 sums in another order on each device: 1e-10 apart after 5 steps (measured on an
    # H200), so the same 1e-8 as the gradients
    assert b.loss == pytest.approx(a.loss, rel=1e-8)
    assert rel(b.grad_images.cpu(), a.grad_images) < 1e-8
    assert rel(b.grad_log_lr.cpu(), a.grad_log_lr) < 1e-8
    assert rel(b.grad_labels.cpu(), a.grad_labels) < 1e-8
    held = matching_loss(gpu, x_gpu, log_lr.exp().cuda())
    assert held == pytest.approx(a.loss, rel=1e-8)


def test_cuda_takes_the_whole_minibatch_per_call_and_chunks_agree():
    """On CUDA the automatic chunk is the whole minibatch (config A: 100 of 32x32); a chunked
    walk gives the same gradient (float64)."""
    problem, images = soft_problem(name="ConvNetW16", shape=(3, 16, 16), steps=4, batch=12)
    gpu, x = on(problem, images, "cuda")
    assert gpu.chunk_size(100, torch.Size([100, 3, 32, 32])) == 100
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device="cuda")
    whole = lean_unroll(gpu, x, log_lr)
    gpu.chunk = 5
    chunked = lean_unroll(gpu, x, log_lr)
    assert rel(chunked.grad_images, whole.grad_images) < 1e-10
    assert rel(chunked.grad_log_lr, whole.grad_log_lr) < 1e-10


def test_tf32_drift_of_the_float32_gradient():
    """TF32 (off by default, TRAJDISTILL_TF32=1) against exact float32, both measured against
    float64, on the default ConvNet with sigmoid activations (no ReLU ties, see
    test_matching): exact float32 stays at 1e-4; TF32 drifts further. The numbers are printed
    (pytest -s) for the README."""
    problem, images = soft_problem(name="ConvNetAS", shape=(3, 32, 32), classes=10, ipc=2,
                                   steps=5, batch=10)
    gpu, x = on(problem, images, "cuda")
    log_lr = torch.tensor(math.log(0.01), dtype=torch.float64, device="cuda")
    ref = lean_unroll(gpu, x, log_lr)
    f32, x32 = as_float32(gpu, x)
    drift = {}
    try:
        for tf32 in (False, True):
            set_tf32(tf32)
            r = lean_unroll(f32, x32, log_lr.float())
            drift[tf32] = max(rel(r.grad_images, ref.grad_images),
                              rel(r.grad_log_lr, ref.grad_log_lr))
    finally:
        set_tf32(False)
    print(f"\nfloat32 gradient vs float64: exact {drift[False]:.2e}, TF32 {drift[True]:.2e}")
    assert drift[False] < 1e-4
    assert drift[True] > drift[False]  # the switch reaches cuDNN


def test_bf16_autocast_on_cuda_graphed_as_eager_and_near_float64():
    """--autocast bf16 on CUDA: the graphed walk replays the eager autocast walk (the weight
    casts are recorded with it: cache_enabled=False), and both sit within a few bfloat16
    roundoffs of float64 on the smooth ConvNet, as on the CPU (test_matching)."""
    problem, images = make_problem(name="ConvNetAS", shape=(3, 32, 32), classes=10, ipc=1,
                                   steps=3, batch=5)
    gpu, x = on(problem, images, "cuda")
    log_lr = torch.tensor(math.log(0.01), dtype=torch.float64, device="cuda")
    ref = plain_unroll(gpu, x, log_lr)
    f32, x32 = as_float32(gpu, x)
    eager = dataclasses.replace(f32, autocast=torch.bfloat16)
    graphed = dataclasses.replace(eager, cuda_graphs=True)
    a = lean_unroll(eager, x32, log_lr.float())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = lean_unroll(graphed, x32, log_lr.float())
    assert cuda_graphs.graphs_of(eager.student).failed == 0
    assert_same(b, a, 1e-5)
    assert 2e-3 < rel(a.grad_images, ref.grad_images) < 3e-2
