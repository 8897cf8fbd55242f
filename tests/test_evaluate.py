"""Evaluation protocol: the lr schedules, the model pools, batched == sequential training,
and a known-good small real set far above chance."""
import pytest
import torch

from trajdistill.data import load_dataset
from trajdistill.baselines import random_real
from trajdistill.evaluate import (EvalConfig, batchable, eval_pool, evaluate_set, lr_schedule,
                                  network_seed, train_and_test,
                                  train_and_test_batched, use_batched)
from trajdistill.models import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ----------------------------------------------------------------------------- lr schedules

def test_single_lr_is_divided_by_ten_from_half_way():
    assert lr_schedule([0.5], 10, 0) == [0.5] * 5 + [pytest.approx(0.05)] * 5
    s = lr_schedule([0.2], 7, 30)  # odd: epochs 0,1,2 at lr, 3..6 at lr/10; syn_steps unused
    assert len(s) == 7 and s[:3] == [0.2] * 3 and s[3:] == [pytest.approx(0.02)] * 4
    s = lr_schedule([0.01], 1000, 50)
    assert len(s) == 1000 and s[499] == 0.01 and s[500] == pytest.approx(0.001)


def test_lr_list_each_lr_k_epochs_then_500_at_the_last_over_ten():
    # 3 lrs, syn_steps 20: k = max(20, 500 // 3 = 166) = 166
    s = lr_schedule([0.03, 0.02, 0.01], 1000, 20)
    assert len(s) == 3 * 166 + 500 == 998
    assert s[0] == s[165] == 0.03 and s[166] == s[331] == 0.02 and s[332] == s[497] == 0.01
    assert all(v == pytest.approx(0.001) for v in s[498:])
    # 20 lrs, syn_steps 50: 500 // 20 = 25 < 50, so k = 50 -> 1000 + 500 epochs
    lrs = [0.001 * (i + 1) for i in range(20)]
    s = lr_schedule(lrs, 1000, 50)
    assert len(s) == 20 * 50 + 500
    assert [s[50 * i] for i in range(20)] == lrs and [s[50 * i + 49] for i in range(20)] == lrs
    assert s[1000] == pytest.approx(0.002) and s[-1] == pytest.approx(0.002)
    # epoch_eval_train is ignored for a list
    assert lr_schedule([0.1, 0.2], 7, 0) == lr_schedule([0.1, 0.2], 5000, 0)
    with pytest.raises(ValueError):
        lr_schedule([], 10, 0)


# ----------------------------------------------------------------------------- model pools

def _parts(name: str) -> tuple[set[str], int, int]:
    """(module kinds, conv layers, parameters) of a network for CIFAR-sized input."""
    net = build_model(name, 3, 10, (32, 32))
    kinds = {type(m).__name__ for m in net.modules()}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    return kinds, convs, sum(p.numel() for p in net.parameters())


def test_eval_pools_vary_what_their_letter_names():
    """The reference's --eval_mode letters: S the set's own network, C it and ConvNet, and
    each other letter a family that differs in one thing: width, depth, activation, pooling,
    normalisation (read off the built networks), or architecture."""
    assert eval_pool("S", "ConvNetD4") == ["ConvNetD4"]
    assert eval_pool("C", "ConvNet") == ["ConvNet"]
    assert eval_pool("C", "ResNet18") == ["ResNet18", "ConvNet"]
    widths = [_parts(n)[2] for n in eval_pool("W", "ConvNet")]
    assert len(widths) >= 3 and widths == sorted(set(widths))          # wider and wider
    assert [_parts(n)[1] for n in eval_pool("D", "ConvNet")] == [1, 2, 3, 4]
    acts = [_parts(n)[0] & {"Sigmoid", "ReLU", "LeakyReLU"} for n in eval_pool("A", "ConvNet")]
    assert all(len(a) == 1 for a in acts) and len({frozenset(a) for a in acts}) == len(acts)
    pools = [_parts(n)[0] & {"MaxPool2d", "AvgPool2d"} for n in eval_pool("P", "ConvNet")]
    assert set(map(frozenset, pools)) == {frozenset(), frozenset({"MaxPool2d"}),
                                          frozenset({"AvgPool2d"})}
    norms = [_parts(n)[0] & {"BatchNorm2d", "LayerNorm", "GroupNorm"} for n in eval_pool("N", "ConvNet")]
    assert frozenset() in map(frozenset, norms) and len(norms) >= 4  # with and without
    archs = {type(build_model(n, 3, 10, (32, 32))).__name__ for n in eval_pool("M", "ConvNet")}
    assert len(archs) >= 4                                            # different architectures
    with pytest.raises(ValueError, match="unknown --eval_mode"):
        eval_pool("X", "ConvNet")


@pytest.mark.parametrize("mode", list("MWDAPN"))
def test_every_pool_model_builds_and_classifies_cifar_sized_images(mode):
    for name in eval_pool(mode, "ConvNet"):
        with torch.device("meta"):  # shapes only: no memory, no compute
            net = build_model(name, 3, 10, (32, 32))
            out = net(torch.empty(2, 3, 32, 32))
        assert out.shape == (2, 10), name


def test_which_models_train_batched(digits):
    splits = digits
    assert batchable("ConvNetD2", splits) and batchable("ResNet18", splits)  # instance norm
    assert not batchable("ConvNetBN", splits) and not batchable("ResNet18BN", splits)
    cpu = EvalConfig(num_eval=3, device="cpu")
    assert not use_batched("ConvNetD2", splits, cpu)                       # auto: CPU -> off
    assert use_batched("ConvNetD2", splits, EvalConfig(num_eval=3, batched="on"))
    assert not use_batched("ConvNetD2", splits, EvalConfig(num_eval=1, batched="on"))
    with pytest.warns(UserWarning, match="one at a time"):
        assert not use_batched("ConvNetBN", splits, EvalConfig(num_eval=3, batched="on"))
    with pytest.raises(ValueError, match="eval_batched"):
        use_batched("ConvNetD2", splits, EvalConfig(batched="sometimes"))


# ----------------------------------------------------------------------------- batched == sequential

def test_batched_and_sequential_training_give_the_same_networks(digits):
    """Same seeds -> same initialisations, batch orders and DSA draws per network; only the
    floating-point summation order differs (grouped vs single convolutions)."""
    images, labels = random_real(digits, 6, seed=3)          # 60 images, 2 batches of 32 + 28
    cfg = EvalConfig(num_eval=3, epoch_eval_train=12, batch_train=32, seed=4)
    schedule = lr_schedule([0.02], cfg.epoch_eval_train, 0)
    seeds = [network_seed(cfg.seed, k) for k in range(cfg.num_eval)]
    seq = [train_and_test("ConvNetD2", images, labels, digits, schedule, cfg, s) for s in seeds]
    bat = train_and_test_batched("ConvNetD2", images, labels, digits, schedule, cfg, seeds)
    n_test = len(digits.test)
    for a, b in zip(seq, bat):
        # a borderline test image may flip under float reordering; allow one
        assert abs(a.accuracy - b.accuracy) <= 1 / n_test + 1e-9, (a.accuracy, b.accuracy)
        flips = sum(abs(x - y) for ra, rb in zip(a.confusion, b.confusion) for x, y in zip(ra, rb))
        assert flips <= 2
    assert len({r.accuracy for r in seq}) > 1  # the networks really differ from each other
    # and evaluate_set picks the way by cfg.batched; both give the same summary
    on = evaluate_set(images, labels, digits, [0.02], ["ConvNetD2"],
                      EvalConfig(num_eval=3, epoch_eval_train=12, batch_train=32, seed=4, batched="on"),
                      progress=False)["ConvNetD2"]
    assert on["accuracies"] == pytest.approx([r.accuracy for r in bat], abs=1e-9)


# ----------------------------------------------------------------------------- a known-good set

def test_a_known_good_small_real_set_is_far_above_chance(digits):
    """5 real digits per class (50 images), 40 epochs: measured 88.9 / 87.2 % (chance 10 %)."""
    images, labels = random_real(digits, 5, seed=0)
    r = evaluate_set(images, labels, digits, [0.01], ["ConvNetD2"],
                     EvalConfig(num_eval=2, epoch_eval_train=40), progress=False)["ConvNetD2"]
    assert r["mean"] > 0.7, r["accuracies"]
    assert len(r["accuracies"]) == 2 and r["std"] >= 0
    cm = torch.tensor(r["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 2 * len(digits.test)
    assert r["per_class"] == pytest.approx((cm.diag() / cm.sum(1)).tolist())
    assert min(r["per_class"]) > 0.3
