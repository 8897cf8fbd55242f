"""Galaxy distillation helpers: --pix_init mean / mean_noise, --lr_teacher auto, the
stuck-loss warning; on the embedded digits with tiny experts (fast), checked against
independent computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer
from trajdistill.initial import MEAN_NOISE_STD
from trajdistill.baselines import class_means
from trajdistill.lr_auto import auto_lr, spread
from trajdistill.models import FlatModel, build_model


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), tmp_path_factory.mktemp("galaxy")


def test_pix_init_mean_starts_at_the_class_means_and_mean_noise_near_them(setup):
    splits, store, root = setup
    means = class_means(splits)[0]
    d = Distiller(DistillConfig(ipc=2, pix_init="mean", eval_it=0), splits, store, root / "m",
                  progress=False)
    assert torch.allclose(d.learnables.images.detach(), means.repeat_interleave(2, 0))
    assert d.learnables.labels.tolist() == [c for c in range(10) for _ in range(2)]
    d = Distiller(DistillConfig(ipc=2, pix_init="mean_noise", eval_it=0), splits, store,
                  root / "n", progress=False)
    noise = d.learnables.images.detach() - means.repeat_interleave(2, 0)
    assert noise.std().item() == pytest.approx(MEAN_NOISE_STD, rel=0.1)
    assert not torch.equal(d.learnables.images[0], d.learnables.images[1])  # ipc copies differ
    with pytest.raises(ConfigError, match="--pix_init must be one of real, noise, correct, kmeans, mean, mean_noise"):
        Distiller(DistillConfig(pix_init="median"), splits, store, root / "x", progress=False)


def plain_gradient_norm(model_name, theta, images, labels, shape):
    """||dCE/dtheta|| with an ordinary nn.Module (its parameters set from theta)."""
    net = build_model(model_name, shape[0], 10, shape[1:])
    torch.nn.utils.vector_to_parameters(theta, net.parameters())
    net.zero_grad()
    F.cross_entropy(net(images), labels).backward()
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.parameters()))


def test_auto_lr_makes_the_first_steps_travel_one_expert_span(setup):
    splits, store, root = setup
    shape = splits.image_shape
    student = FlatModel.wrap(build_model("ConvNetD2", shape[0], 10, shape[1:]))
    images = class_means(splits)[0]
    labels = torch.arange(10)
    t = store.load(store.indices()[0])
    lr = auto_lr(student, [t], [1], 1, images, labels, syn_steps=7)
    g = plain_gradient_norm("ConvNetD2", t[1].float(), images, labels, shape)
    # 7 steps of lr * |g| cover the expert's epoch 1 -> 2
    assert 7 * lr * g == pytest.approx(float((t[2] - t[1]).norm()), rel=1e-4)
    # several spans: the median of the per-span values
    spans = [auto_lr(student, [traj], [e], 1, images, labels, 7)
             for traj in (t, store.load(store.indices()[1])) for e in (0, 1)]
    both = auto_lr(student, [t, store.load(store.indices()[1])], [0, 1], 1, images, labels, 7)
    assert both == pytest.approx((sorted(spans)[1] + sorted(spans)[2]) / 2)
    assert spread(0, 9, 5) == [0, 2, 4, 7, 9] and spread(0, 2, 5) == [0, 1, 2]


def test_distiller_resolves_lr_teacher_auto_from_its_buffer(setup):
    splits, store, root = setup
    cfg = DistillConfig(ipc=1, syn_steps=5, pix_init="mean", lr_teacher=["auto"], eval_it=0,
                        max_start_epoch=2)
    d = Distiller(cfg, splits, store, root / "auto", progress=False)
    shape = splits.image_shape
    student = FlatModel.wrap(build_model("ConvNetD2", shape[0], 10, shape[1:]))
    want = auto_lr(student, [store.load(i) for i in store.indices()], [0], 1,
                   class_means(splits)[0], torch.arange(10), 5)  # STM: window [0, init_epoch=1)
    assert d.lrs() == pytest.approx([want], rel=1e-5) and d.cfg.lr_teacher == pytest.approx([want])
    with pytest.raises(ConfigError, match="auto stands alone"):
        Distiller(DistillConfig(lr_teacher=["auto", 0.1]), splits, store, root / "y", progress=False)


def test_warning_when_the_loss_never_fell_below_one(setup, capsys):
    splits, store, root = setup
    d = Distiller(DistillConfig(eval_it=0, loss_warn_it=3), splits, store, root / "w",
                  progress=False)
    records = [{"it": i, "loss": v} for i, v in enumerate([1.4, 1.02, 1.1, 0.5])]
    for r in records:
        d.guard.warn_if_stuck(r)
    assert "not fallen below 1 (lowest 1.020)" in records[2]["warning"]
    assert "warning" not in records[0] and "warning" not in records[3]
    d = Distiller(DistillConfig(eval_it=0, loss_warn_it=3), splits, store, root / "w2",
                  progress=False)
    records = [{"it": i, "loss": v} for i, v in enumerate([1.4, 0.98, 1.1])]
    for r in records:
        d.guard.warn_if_stuck(r)
    assert not any("warning" in r for r in records)  # it fell below 1 once: learning
