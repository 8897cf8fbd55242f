"""The lean gradient (and the held-out loss) against the plain autograd unroll."""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from trajdistill import matching
from trajdistill.augment import DEFAULT_STRATEGY
from trajdistill.matching import (GRADIENT_METHODS, MatchProblem, lean_unroll, matching_loss,
                                  plain_unroll, plan_unroll)
from trajdistill.models import FlatModel, build_model
from trajdistill.texture import TextureSpec

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE: every problem here lives there


def make_problem(name="ConvNetW8", shape=(3, 8, 8), classes=4, ipc=3, steps=4, batch=5,
                 dtype=torch.float64, strategy=DEFAULT_STRATEGY, chunk=None, seed=0, texture=None):
    """texture: a TextureSpec; the images are then canvases, `shape` the window."""
    torch.manual_seed(seed)
    student = FlatModel.wrap(build_model(name, shape[0], classes, shape[1:]).to(dtype))
    start = student.flat_params()
    target = start + 0.05 * torch.randn_like(start)
    n = classes * ipc
    images = torch.randn(n, *(texture.canvas_shape(shape) if texture else shape), dtype=dtype)
    labels = torch.arange(classes).repeat_interleave(ipc)
    plan = plan_unroll(n, steps, batch, shape[1:], strategy, torch.Generator().manual_seed(seed),
                       texture_spec=texture)
    # drawn on the CPU (the same numbers on every device), then moved
    student.module.to(DEVICE)  # batch-norm buffers; the parameters are start/target
    start, target = start.to(DEVICE), target.to(DEVICE)
    return (MatchProblem(student, start, target, labels.to(DEVICE), plan, chunk=chunk),
            images.to(DEVICE))


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def test_plan_reshuffles_and_covers_every_image():
    plan = plan_unroll(12, 5, 5, (8, 8), DEFAULT_STRATEGY, torch.Generator().manual_seed(0))
    assert [len(b) for b in plan.batches] == [5, 5, 2, 5, 5]
    assert sorted(torch.cat(plan.batches[:3]).tolist()) == list(range(12))
    assert all(a is not None for a in plan.augs)


def test_gradient_matches_central_finite_differences():
    """(1) The unrolled gradient against central differences, float64, tiny network."""
    problem, images = make_problem(name="ConvNetW4", shape=(1, 8, 8), classes=3, ipc=2,
                                   steps=3, batch=4)
    log_lr = torch.tensor(math.log(0.1), dtype=torch.float64, device=DEVICE)
    res = lean_unroll(problem, images, log_lr)
    loss = lambda x, ll: plain_unroll(problem, x, ll).loss  # noqa: E731
    h = 1e-5
    for idx in [(0, 0, 3, 4), (4, 0, 1, 6)]:
        xp, xm = images.clone(), images.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (loss(xp, log_lr) - loss(xm, log_lr)) / (2 * h)
        assert fd != 0
        assert res.grad_images[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)
    fd = (loss(images, log_lr + h) - loss(images, log_lr - h)) / (2 * h)
    assert res.grad_log_lr.item() == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("chunk", [None, 2, 0])
def test_lean_equals_plain_float64(chunk):
    """(2) Same loss and gradients, float64, DSA on, batch_syn < set size, any chunking."""
    problem, images = make_problem(name="ConvNetW16", shape=(3, 16, 16), steps=5, batch=5,
                                   chunk=chunk)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    b = lean_unroll(problem, images, log_lr)
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8
    assert b.grad_log_lr.shape == log_lr.shape


def test_lean_equals_plain_with_batch_norm_float64():
    """Batch statistics couple the images: no chunks there, still the same gradient."""
    problem, images = make_problem(name="ConvNetBN", shape=(3, 8, 8), steps=3, batch=5)
    assert problem.chunk_size(5, images.shape) == 5
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a, b = plain_unroll(problem, images, log_lr), lean_unroll(problem, images, log_lr)
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8


def test_lean_equals_plain_float32_default_convnet():
    """(3) The default ConvNet (width 128, depth 3, instance norm) on 3x32x32, float32."""
    problem, images = make_problem(name="ConvNet", shape=(3, 32, 32), classes=10, ipc=1,
                                   steps=3, batch=6, dtype=torch.float32, chunk=4)
    log_lr = torch.tensor(math.log(0.01), device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    b = lean_unroll(problem, images, log_lr)
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert rel(b.grad_images, a.grad_images) < 1e-4
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-4


def test_matching_loss_equals_plain_loss_and_builds_no_graph(monkeypatch):
    """(4) The held-out loss: same value, a float, first-order gradients only."""
    problem, images = make_problem(steps=4, batch=5)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    expected = plain_unroll(problem, images, log_lr).loss
    calls = []
    real_grad = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        calls.append(bool(kwargs.get("create_graph", False)))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    leaf = images.clone().requires_grad_(True)
    value = matching_loss(problem, leaf, log_lr.exp())
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12)
    assert calls and not any(calls)           # never a second-order graph
    assert leaf.grad is None


def test_per_stage_lr_gets_the_same_gradient_in_both_methods():
    """(5) independent-lr: the stage's own lr tensor, chosen from a list, same gradient."""
    problem, images = make_problem(steps=4, batch=5)
    log_lrs = [torch.tensor(math.log(v), dtype=torch.float64, device=DEVICE)
               for v in (0.01, 0.03, 0.08)]
    grads = []
    for k in range(len(log_lrs)):
        a = GRADIENT_METHODS["unroll"](problem, images, log_lrs[k])
        b = GRADIENT_METHODS["lean"](problem, images, log_lrs[k])
        assert rel(b.grad_images, a.grad_images) < 1e-8
        assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8
        assert b.grad_log_lr.shape == log_lrs[k].shape
        grads.append(b.grad_log_lr.item())
    assert len(set(grads)) == 3  # each stage's lr gives its own gradient


def test_chunk_size_rules():
    problem, images = make_problem(name="ConvNet", shape=(3, 32, 32), classes=2, ipc=1,
                                   steps=1, batch=2, dtype=torch.float32)
    budget = matching.CUDA_CHUNK_PIXELS if DEVICE.startswith("cuda") else matching.CHUNK_PIXELS
    assert problem.chunk_size(1000, torch.Size([1000, 3, 32, 32])) == budget // (32 * 32)
    assert problem.chunk_size(10, torch.Size([10, 3, 32, 32])) == 10
    assert problem.chunk_size(10, torch.Size([10, 3, 128, 128])) >= 1
    # on a GPU the whole minibatch of config A (100 images of 32x32) is one call; 25 on a CPU
    assert problem.chunk_size(100, torch.Size([100, 3, 32, 32])) == \
        (100 if DEVICE.startswith("cuda") else 25)
    problem.chunk = 0
    assert problem.chunk_size(100, torch.Size([100, 3, 32, 32])) == 100
    problem.chunk = 7
    assert problem.chunk_size(100, torch.Size([100, 3, 32, 32])) == 7


def test_dsa_apply_is_batched_and_replayable():
    """DSA: one vectorised call per minibatch (no per-image loop), same draw -> same output."""
    from trajdistill import augment
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 8, 8)
    for group in augment.GROUPS:
        p = augment.sample(group, 6, 8, 8, generator=g)
        assert all(v.shape[0] == 6 for k, v in p.items()
                   if torch.is_tensor(v) and k != "size")
        assert torch.equal(augment.apply(x, p), augment.apply(x, p))


# ----------------------------------------------------------------------------- soft labels

def soft_problem(dtype=torch.float64, **kw):
    """The same problem with learnable label logits (N, classes) instead of class indices."""
    problem, images = make_problem(dtype=dtype, **kw)
    classes = int(problem.labels.max()) + 1
    g = torch.Generator().manual_seed(1)
    problem.labels = (3 * F.one_hot(problem.labels.cpu(), classes) +
                      torch.randn(len(problem.labels), classes, generator=g)).to(DEVICE, dtype)
    return problem, images


def test_soft_cross_entropy_is_the_issue_formula_and_one_hot_limit_is_hard_ce():
    """-sum(softmax(y) * log_softmax(f(x))) / batch; near-one-hot logits give the hard CE."""
    problem, images = soft_problem(steps=1, batch=12)
    theta = problem.start
    x, _ = problem.step_input(images, 0)
    out = problem.student(theta, x)
    y = problem.labels[problem.plan.batches[0]]
    expected = -(torch.softmax(y, 1) * torch.log_softmax(out, 1)).sum() / 12
    assert problem.step_loss(theta, images, 0).item() == pytest.approx(expected.item(), rel=1e-12)
    sharp = F.one_hot(y.argmax(1), y.shape[1]).to(y.dtype) * 60.0
    problem.labels = problem.labels.clone()
    problem.labels[problem.plan.batches[0]] = sharp
    hard = F.cross_entropy(out, y.argmax(1)).item()
    assert problem.step_loss(theta, images, 0).item() == pytest.approx(hard, rel=1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_soft_label_gradient_lean_equals_plain_float64(chunk):
    """dL/dY (and dL/dX, dL/dlog lr) of the lean walk = the plain unroll, float64, DSA on,
    minibatches smaller than the set."""
    problem, images = soft_problem(name="ConvNetW16", shape=(3, 16, 16), steps=5, batch=5,
                                   chunk=chunk)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    b = lean_unroll(problem, images, log_lr)
    assert a.grad_labels is not None and a.grad_labels.shape == problem.labels.shape
    assert a.grad_labels.abs().sum() > 0
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert rel(b.grad_labels, a.grad_labels) < 1e-8
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8


def test_soft_label_gradient_lean_equals_plain_float32_default_convnet():
    problem, images = soft_problem(name="ConvNet", shape=(3, 32, 32), classes=10, ipc=1,
                                   steps=3, batch=6, dtype=torch.float32, chunk=4)
    log_lr = torch.tensor(math.log(0.01), device=DEVICE)
    a, b = plain_unroll(problem, images, log_lr), lean_unroll(problem, images, log_lr)
    assert rel(b.grad_labels, a.grad_labels) < 1e-4
    assert rel(b.grad_images, a.grad_images) < 1e-4


def test_soft_label_gradient_matches_finite_differences():
    """The label gradient against central differences of the plain loss (independent check)."""
    problem, images = soft_problem(name="ConvNetW4", shape=(1, 8, 8), classes=3, ipc=2,
                                   steps=3, batch=4)
    log_lr = torch.tensor(math.log(0.1), dtype=torch.float64, device=DEVICE)
    res = lean_unroll(problem, images, log_lr)
    logits = problem.labels
    h = 1e-5
    for idx in [(0, 1), (4, 2)]:
        values = []
        for sign in (1, -1):
            problem.labels = logits.clone()
            problem.labels[idx] += sign * h
            values.append(plain_unroll(problem, images, log_lr).loss)
        fd = (values[0] - values[1]) / (2 * h)
        assert fd != 0
        assert res.grad_labels[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_hard_labels_have_no_label_gradient():
    problem, images = make_problem(steps=2, batch=5)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    assert plain_unroll(problem, images, log_lr).grad_labels is None
    assert lean_unroll(problem, images, log_lr).grad_labels is None


# ----------------------------------------------------------------------------- texture

@pytest.mark.parametrize("chunk", [None, 2, 0])
def test_lean_equals_plain_texture_float64(chunk):
    """Texture distillation (2x canvases, 2 windows per canvas, DSA on the windows): the
    same loss and gradients from both methods, float64."""
    spec = TextureSpec(canvas_size=2, canvas_samples=2)
    problem, canvases = make_problem(name="ConvNetW16", shape=(3, 8, 8), steps=4, batch=5,
                                     chunk=chunk, texture=spec)
    assert canvases.shape[-2:] == (16, 16)
    x, y = problem.step_input(canvases, 0)
    assert x.shape == (10, 3, 8, 8) and torch.equal(y[:5], y[5:])
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, canvases, log_lr)
    b = lean_unroll(problem, canvases, log_lr)
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8
    assert b.grad_images.shape == canvases.shape


def test_lean_equals_plain_texture_float32():
    spec = TextureSpec(canvas_size=2, canvas_samples=1)
    problem, canvases = make_problem(name="ConvNet", shape=(3, 16, 16), classes=5, ipc=1, steps=3,
                                     batch=5, dtype=torch.float32, chunk=3, texture=spec)
    log_lr = torch.tensor(math.log(0.01), device=DEVICE)
    a, b = plain_unroll(problem, canvases, log_lr), lean_unroll(problem, canvases, log_lr)
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert rel(b.grad_images, a.grad_images) < 1e-4
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-4


def test_texture_gradient_matches_finite_differences_and_only_touches_seen_pixels():
    """One window per step, no DSA: a canvas pixel outside every window of the plan gets no
    gradient; a pixel inside one gets the finite-difference gradient."""
    spec = TextureSpec(canvas_size=2, canvas_samples=1)
    problem, canvases = make_problem(name="ConvNetW4", shape=(1, 8, 8), classes=2, ipc=1,
                                     steps=2, batch=2, strategy=None, texture=spec)
    seen = torch.zeros(canvases.shape, dtype=torch.bool)
    for i, b in enumerate(problem.plan.batches):
        for k, canvas in enumerate(b.tolist()):
            dy, dx = problem.plan.shifts[i][0, k].tolist()
            rows = [(r - dy) % 16 for r in range(8)]
            cols = [(c - dx) % 16 for c in range(8)]
            for r in rows:
                seen[canvas, :, r, cols] = True
    log_lr = torch.tensor(math.log(0.1), dtype=torch.float64, device=DEVICE)
    res = lean_unroll(problem, canvases, log_lr)
    seen = seen.to(DEVICE)
    assert (res.grad_images[~seen] == 0).all() and (~seen).any()
    idx = tuple(seen.nonzero()[0].tolist())
    h = 1e-5
    xp, xm = canvases.clone(), canvases.clone()
    xp[idx] += h
    xm[idx] -= h
    fd = (plain_unroll(problem, xp, log_lr).loss - plain_unroll(problem, xm, log_lr).loss) / (2 * h)
    assert res.grad_images[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


# ----------------------------------------------------------------------------- torch.compile

def _inductor_graphs() -> int:
    """Graphs inductor compiled or loaded from its cache in this process so far."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["fxgraph_cache_hit"] + counters["inductor"]["fxgraph_cache_miss"]


@pytest.mark.compile
def test_compiled_lean_equals_plain_float64():
    """MatchProblem.compile (torch.compile'd torch.func gradient and HVP per chunk): the same
    loss, dL/dX, dL/dlog lr and dL/dY as the plain unroll, and the same held-out loss, float64,
    soft labels, DSA on. One chunk shape (batch 4, chunks of 2): two graphs to compile, about
    a minute on 2 busy cores with a cold inductor cache, seconds with a warm one."""
    problem, images = soft_problem(name="ConvNetW4", shape=(3, 8, 8), classes=3, ipc=4,
                                   steps=3, batch=4, chunk=2)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    problem.compile = True
    graphs = _inductor_graphs()
    b = lean_unroll(problem, images, log_lr)
    held = matching_loss(problem, images, log_lr.exp())
    assert _inductor_graphs() >= graphs + 2   # really compiled, not a silent eager fallback
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert held == pytest.approx(a.loss, rel=1e-12)
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8
    assert rel(b.grad_labels, a.grad_labels) < 1e-8


def test_a_failing_compile_falls_back_to_the_eager_steps(monkeypatch):
    """Where torch.compile fails (here: a compiler that raises, as inductor does without a C++
    compiler), one warning says so and the walk computes the eager gradient, number for
    number; later calls do not try again."""
    from trajdistill import kernels

    calls = []

    class Broken:
        def grad(self, *args):
            calls.append("grad")
            raise RuntimeError("InductorError: no working C++ compiler found\nmore lines")

        hvp = grad

    monkeypatch.setattr(kernels, "compiled_steps", lambda student: Broken())
    monkeypatch.setattr(kernels.COMPILED, "failed", False)
    problem, images = make_problem(steps=3, batch=4, chunk=2)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    eager = lean_unroll(problem, images, log_lr)
    problem.compile = True
    assert problem.kernel is kernels.COMPILED
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InductorError: "
                      r"no working C\+\+ compiler found\); the steps run eagerly") as caught:
        fallen = lean_unroll(problem, images, log_lr)
        held = matching_loss(problem, images, log_lr.exp())
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    assert calls == ["grad"]  # tried once
    assert fallen.loss == eager.loss and torch.equal(fallen.grad_images, eager.grad_images)
    assert torch.equal(fallen.grad_log_lr, eager.grad_log_lr)
    assert held == pytest.approx(eager.loss, rel=1e-12)


@pytest.mark.compile
@pytest.mark.skipif(os.environ.get("TRAJDISTILL_SLOW_TESTS") != "1",
                    reason="another minute of compilation with a cold inductor cache; "
                    "TRAJDISTILL_SLOW_TESTS=1 runs it")
def test_compiled_lean_equals_plain_float32_smooth_convnet():
    """Hard labels (the default), float32, 3x32x32, the ConvNet with sigmoid activations: 1e-4,
    as the eager walk. Not the ReLU ConvNet: there the compiled graph's float32 rounding (1e-6,
    another summation order than eager's) can put a pre-activation lying within rounding of 0
    on the other side of the kink, and one flipped ReLU changes the gradient by about
    1/sqrt(activations): measured 5.6e-4 on this problem with ReLUs (step 2, one ReLU input of
    7.8e-7; moving that one input across 0 in float64 gives the same 5.6e-4, and the compiled
    float32 gradient agrees with that float64 one to 1e-6). Float64 leaves no such ties."""
    problem, images = make_problem(name="ConvNetAS", shape=(3, 32, 32), classes=10, ipc=1,
                                   steps=3, batch=5, dtype=torch.float32, chunk=5)
    log_lr = torch.tensor(math.log(0.01), device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    problem.compile = True
    graphs = _inductor_graphs()
    b = lean_unroll(problem, images, log_lr)
    assert _inductor_graphs() >= graphs + 2
    assert b.grad_labels is None
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert rel(b.grad_images, a.grad_images) < 1e-4
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-4


# ----------------------------------------------------------------------------- the hybrid

@pytest.mark.parametrize("keep", [1, 3, 5, 9])
def test_hybrid_equals_plain_float64(keep):
    """keep_steps (--gradient_memory): the last `keep` steps unrolled with their graphs, the
    rest walked lean; soft labels and DSA on, 5 steps, chunks of 2. 5 and 9: all kept."""
    problem, images = soft_problem(name="ConvNetW16", shape=(3, 16, 16), steps=5, batch=5,
                                   chunk=2)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    problem.keep_steps = keep
    b = lean_unroll(problem, images, log_lr)
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8
    assert rel(b.grad_labels, a.grad_labels) < 1e-8


def test_hybrid_equals_plain_with_batch_norm_and_hard_labels_float64():
    problem, images = make_problem(name="ConvNetBN", shape=(3, 8, 8), steps=4, batch=5)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = plain_unroll(problem, images, log_lr)
    problem.keep_steps = 2
    b = lean_unroll(problem, images, log_lr)
    assert b.grad_labels is None
    assert rel(b.grad_images, a.grad_images) < 1e-8
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-8


def test_step_graph_bytes_counts_what_one_kept_step_holds():
    """The saved tensors of one step with its graph: at least the step's input and first
    conv layer's output (both saved for backward), growing with the minibatch, and the
    same count when measured twice."""
    small, x = make_problem(name="ConvNetW16", shape=(3, 16, 16), classes=4, ipc=4, steps=1,
                            batch=4, dtype=torch.float32)
    large, _ = make_problem(name="ConvNetW16", shape=(3, 16, 16), classes=4, ipc=4, steps=1,
                            batch=16, dtype=torch.float32)
    lr = torch.tensor(0.01, device=DEVICE)
    b4, b16 = matching.step_graph_bytes(small, x, lr), matching.step_graph_bytes(large, x, lr)
    first_layer = 4 * 16 * 16 * 16 * 4  # batch x width x H x W x float32
    assert b4 >= first_layer + 4 * 3 * 16 * 16 * 4
    assert b16 > 3 * b4 - 2 * small.start.numel() * 4 * 4  # activations scale with batch
    assert matching.step_graph_bytes(small, x, lr) == b4


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """cuda_graphs on the CPU: a stand-in for the CUDA graph replays the recorded call into the
    same output tensors, as a graph does, and `cuda_graphs=True` problems use it."""
    from trajdistill import cuda_graphs

    class Replay:
        def __init__(self, call, out):
            self.call, self.out = call, out

        def replay(self):
            fresh = self.call()
            pairs = [(self.out, fresh)] if torch.is_tensor(fresh) else zip(self.out, fresh)
            for old, new in pairs:
                if old is not None:
                    old.copy_(new)

    def stand_in(call, device, pool):
        out = call()
        return Replay(call, out), out

    monkeypatch.setattr(cuda_graphs, "record", stand_in)
    monkeypatch.setattr(MatchProblem, "graphed", property(lambda self: self.cuda_graphs))
    return cuda_graphs


def test_recorded_steps_read_every_input_from_their_buffers(stand_in_graphs):
    """cuda_graphs' bookkeeping, on the CPU, through the stand-in: the walk through replays
    must equal the eager walk for a second call with other images, start, labels and plan: an
    input that did not reach the recording's buffers would replay the first call's numbers.
    (The CUDA graphs themselves: tests/test_cuda.py.)"""
    cuda_graphs = stand_in_graphs
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    problem, images = soft_problem(steps=4, batch=5, seed=3, strategy="crop")  # batches 5, 2
    replayed = dataclasses.replace(problem, cuda_graphs=True)
    first = lean_unroll(replayed, images, log_lr)
    expected = lean_unroll(problem, images, log_lr)
    assert rel(first.grad_images, expected.grad_images) < 1e-12
    other, images2 = soft_problem(steps=4, batch=5, seed=4, strategy="crop")  # all new but
    other.student = problem.student  # ... the network: replays of the same recordings
    other.labels = other.labels.flip(0)  # soft_problem's logits do not depend on the seed
    other_replayed = dataclasses.replace(other, cuda_graphs=True)
    graphs = cuda_graphs.graphs_of(problem.student)
    recorded = graphs.recorded
    second = lean_unroll(other_replayed, images2, log_lr)
    expected = lean_unroll(other, images2, log_lr)
    assert graphs.recorded == recorded == 4  # (grad, hvp) x (5, 2): no new recording
    assert second.loss == pytest.approx(expected.loss, rel=1e-12)
    for got, want in [(second.grad_images, expected.grad_images),
                      (second.grad_log_lr, expected.grad_log_lr),
                      (second.grad_labels, expected.grad_labels)]:
        assert rel(got, want) < 1e-12
    assert matching_loss(other_replayed, images2, log_lr.exp()) == pytest.approx(
        matching_loss(other, images2, log_lr.exp()), rel=1e-12)
    other_replayed.keep_steps = 2  # the hybrid: the walked steps replay, the kept tail is eager
    hybrid = lean_unroll(other_replayed, images2, log_lr)
    assert rel(hybrid.grad_images, expected.grad_images) < 1e-10
    assert rel(hybrid.grad_labels, expected.grad_labels) < 1e-10


# ----------------------------------------------------------------------------- bf16 autocast

def as_float32(problem: MatchProblem, images: torch.Tensor):
    """The same problem (network, start, target, soft labels, images, plan) cast to float32."""
    import copy
    student = FlatModel.wrap(copy.deepcopy(problem.student.module).float())
    labels = problem.labels.float() if matching.soft_labels(problem.labels) else problem.labels
    return (dataclasses.replace(problem, student=student, start=problem.start.float(),
                                target=problem.target.float(), labels=labels), images.float())


@pytest.mark.parametrize("method", [lean_unroll, plain_unroll])
def test_bf16_autocast_moves_the_gradient_by_bfloat16_rounding_and_no_more(method):
    """--autocast bf16: the student's forward passes in bfloat16 (unit roundoff 2^-8 = 3.9e-3),
    everything else float32. On the smooth (sigmoid) ConvNet, where float32 itself stays 1e-6
    from float64 (no ReLU to flip), the bf16 gradient must sit a few roundoffs from float64:
    above 2e-3 (the autocast took effect) and below 3e-2 (measured ~1e-2 on three seeds, for
    the lean walk and the plain unroll alike), with the loss unchanged to 1e-5."""
    p64, x64 = make_problem(name="ConvNetAS", shape=(3, 32, 32), classes=10, ipc=1, steps=3,
                            batch=5, chunk=5)
    log_lr = torch.tensor(math.log(0.01), dtype=torch.float64, device=DEVICE)
    ref = plain_unroll(p64, x64, log_lr)
    p32, x32 = as_float32(p64, x64)
    f32 = method(p32, x32, log_lr.float())
    pbf = dataclasses.replace(p32, autocast=torch.bfloat16)
    bf16 = method(pbf, x32, log_lr.float())
    assert pbf.network(p32.start, x32[:2]).dtype == torch.float32  # the loss is taken in float32
    assert rel(f32.grad_images, ref.grad_images) < 1e-4
    assert 2e-3 < rel(bf16.grad_images, ref.grad_images) < 3e-2
    assert rel(bf16.grad_log_lr, ref.grad_log_lr) < 3e-2
    cos = F.cosine_similarity(bf16.grad_images.double().flatten(), ref.grad_images.flatten(), 0)
    assert cos > 0.999
    assert bf16.loss == pytest.approx(ref.loss, rel=1e-5)
    assert bf16.grad_images.dtype == torch.float32


def test_bf16_autocast_leaves_float64_problems_alone():
    """Autocast casts float32 only: a float64 problem computes the float64 gradient, so the
    exactness tests above hold whatever the flag."""
    problem, images = make_problem(name="ConvNetW16", shape=(3, 16, 16), steps=3, batch=5)
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, device=DEVICE)
    a = lean_unroll(problem, images, log_lr)
    b = lean_unroll(dataclasses.replace(problem, autocast=torch.bfloat16), images, log_lr)
    assert rel(b.grad_images, a.grad_images) < 1e-12
    assert rel(b.grad_log_lr, a.grad_log_lr) < 1e-12


def test_recordings_are_kept_apart_by_autocast(stand_in_graphs):
    """A float32 walk and a bf16-autocast walk on the same network replay recordings of their
    own (the autocast dtype is part of a recording's key): each graphed walk equals its eager
    twin, and the two differ."""
    p64, x64 = make_problem(name="ConvNetW16", shape=(3, 16, 16), steps=3, batch=5)
    problem, images = as_float32(p64, x64)
    log_lr = torch.tensor(math.log(0.05), device=DEVICE)
    bf16 = dataclasses.replace(problem, autocast=torch.bfloat16)
    graphs = stand_in_graphs.graphs_of(problem.student)
    graphed, counts = [], []
    for p in (problem, bf16):
        graphed.append(lean_unroll(dataclasses.replace(p, cuda_graphs=True), images, log_lr))
        counts.append(graphs.recorded)
    assert counts[1] == 2 * counts[0] > 0  # the same shapes again, recorded anew for bf16
    eager = [lean_unroll(p, images, log_lr) for p in (problem, bf16)]
    for got, want in zip(graphed, eager):
        assert rel(got.grad_images, want.grad_images) < 1e-6
    assert rel(eager[1].grad_images, eager[0].grad_images) > 1e-3


def test_plain_unroll_is_sgd_on_the_network_module():
    """The reference itself, checked independently of step_input / step_loss (which every
    identity above shares): the network as a torch.nn.Module trained by torch.optim.SGD on the
    plan's minibatches and augmentation draws must end where plain_unroll's student ends, and
    plain_unroll's gradients must be the central differences of that independent loss."""
    import copy

    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    from trajdistill import augment

    problem, images = make_problem(name="ConvNetW8", shape=(3, 8, 8), classes=3, ipc=2,
                                   steps=4, batch=4)
    plan = problem.plan

    def sgd_loss(imgs: torch.Tensor, lr: float) -> float:
        net = copy.deepcopy(problem.student.module)
        vector_to_parameters(problem.start.clone(), net.parameters())
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        for idx, aug in zip(plan.batches, plan.augs):
            x = imgs[idx.to(imgs.device)]
            if aug is not None:
                x = augment.apply(x, {k: augment.to_like(t, x) for k, t in aug.items()})
            opt.zero_grad()
            F.cross_entropy(net(x), problem.labels[idx.to(imgs.device)]).backward()
            opt.step()
        theta = parameters_to_vector(net.parameters()).detach()
        return float((theta - problem.target).pow(2).sum()
                     / (problem.start - problem.target).pow(2).sum())

    lr = 0.1
    ours = plain_unroll(problem, images, torch.tensor(math.log(lr), dtype=torch.float64,
                                                      device=DEVICE))
    assert ours.loss == pytest.approx(sgd_loss(images, lr), rel=1e-10)
    h = 1e-5
    fd = (sgd_loss(images, lr * math.exp(h)) - sgd_loss(images, lr * math.exp(-h))) / (2 * h)
    assert ours.grad_log_lr.item() == pytest.approx(fd, rel=1e-6)
    for pixel in [(0, 0, 3, 4), (5, 2, 1, 6)]:
        up, down = images.clone(), images.clone()
        up[pixel] += h
        down[pixel] -= h
        fd = (sgd_loss(up, lr) - sgd_loss(down, lr)) / (2 * h)
        assert fd != 0
        assert ours.grad_images[pixel].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)
