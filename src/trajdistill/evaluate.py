"""The evaluation protocol (algorithm.md section 6); the baselines are in baselines.py.

A set (synthetic, or a baseline's real images) is judged by training `num_eval` fresh
networks on it from scratch and testing them on the real test set: mean and standard
deviation of accuracy, per-class accuracy and the summed confusion matrix.

Randomness, per evaluation network k (seed s_k = seed * 7919 + k):
- its initialisation: `torch.manual_seed(s_k)` then `build_model` (the same draws whether
  the networks are built one at a time or all together);
- its minibatch order and augmentation draws: one `torch.Generator` seeded with s_k, used
  for the epoch's permutation and then every batch's DSA draws, in that order.
So the K networks of the batched trainer (one vmapped step over stacked parameters) see
exactly the initialisations, batches and augmentations of the one-at-a-time trainer; the
two differ only in floating-point summation order (tested in tests/test_evaluate.py).
"""
from __future__ import annotations

import math
import numbers
import statistics
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from . import augment as dsa
from . import progress as progress_out
from .augment import DEFAULT_STRATEGY
from .data.base import DatasetSplits
from .distributed import SINGLE, Comm
from .errors import ConfigError
from .flags import check_config
from .models import FlatModel, build_model
from .texture import TextureSpec
from .training import (TestResult, confusion_result, set_loss, targets_weights, test_network,
                       to_input, train_epoch)

BATCHED_CHOICES = ("auto", "on", "off")


@dataclass
class EvalConfig:
    num_eval: int = 5
    epoch_eval_train: int = 1000
    batch_train: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    device: str = "cpu"
    seed: int = 0
    # train the num_eval networks together (vmap over stacked parameters): "on", "off", or
    # "auto" = on for GPUs, off on CPU. Measured on CPU (benchmarks/eval_benchmark.py, 5
    # networks, 1 thread): batched/sequential speed 1.04x at 10 images (digits, CIFAR-10
    # ConvNet), 0.81x (digits) and 0.68x (CIFAR-10) at 100 images -> off. On GPUs, where
    # small-batch training is kernel-launch bound, batching is expected to win; not measured
    # here (no GPU): run the benchmark with --device cuda to check.
    batched: str = "auto"
    # texture sets (texture.py): train on canvas_samples random windows of each canvas per
    # batch, as the reference's texture evaluation; the test set is used as it is
    texture: TextureSpec | None = None


# the ranges of the evaluate/baseline flags, for EvalConfig built in Python
EVAL_RANGES = {"num_eval": (1, True), "epoch_eval_train": (1, True), "batch_train": (1, True),
               "momentum": (0, True), "weight_decay": (0, True), "seed": (0, True)}


def network_seed(seed: int, k: int) -> int:
    """The seed of evaluation network k (initialisation, batch order and augmentation)."""
    return seed * 7919 + k


def lr_schedule(lrs: list[float], epochs: int, syn_steps: int) -> list[float]:
    """The learning rate of every training epoch.

    One lr: `epochs` epochs, x0.1 from half way (epoch epochs // 2) on.
    A list (independent-lr, one per stage): each lr for k = max(syn_steps, 500 // len)
    epochs in order, then 500 more epochs at the last lr x0.1 (`epochs` is ignored).
    """
    if not lrs or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                          and math.isfinite(v) and v > 0 for v in lrs):
        raise ConfigError(f"--lr: expected one or more positive finite learning rates, got {lrs!r}")
    lrs = [float(v) for v in lrs]
    if len(lrs) == 1:
        half = epochs // 2
        return [lrs[0]] * half + [lrs[0] * 0.1] * (epochs - half)
    k = max(syn_steps, 500 // len(lrs))
    return [lr for lr in lrs for _ in range(k)] + [lrs[-1] * 0.1] * 500


# ----------------------------------------------------------------------------- one network

def _build(model: str, splits: DatasetSplits, seed: int, device) -> nn.Module:
    torch.manual_seed(seed)
    c, h, w = splits.image_shape
    return build_model(model, c, splits.num_classes, (h, w)).to(device)


def _train_images(images: torch.Tensor) -> torch.Tensor:
    return images.detach().cpu() if images.dtype != torch.uint8 else images


def _test(net: nn.Module, splits: DatasetSplits, device, val=None):
    """Test a trained network on the test set and, when given, on the validation images
    (uint8 training images and their labels)."""
    result = test_network(net, splits.test.images, splits.test.labels, splits.num_classes,
                          device=device, preprocess=splits.preprocess)
    if val is not None:
        result.val_accuracy = test_network(net, val[0], val[1], splits.num_classes, device=device,
                                           preprocess=splits.preprocess).accuracy
    return result


def train_and_test(model: str, images: torch.Tensor, labels: torch.Tensor, splits: DatasetSplits,
                   schedule: list[float], cfg: EvalConfig, seed: int, progress: bool = False,
                   val=None):
    """Train one fresh network on (images, labels) with the per-epoch lr schedule; test it."""
    device = torch.device(cfg.device)
    net = _build(model, splits, seed, device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=schedule[0], momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    images = _train_images(images)
    weights = targets_weights(labels, splits.num_classes)
    for lr in progress_out.bar(schedule, desc=f"train {model}", enabled=progress, unit="epochs"):
        for g in opt.param_groups:
            g["lr"] = lr
        train_epoch(net, images, labels, opt, batch_size=cfg.batch_train, device=device,
                    preprocess=splits.preprocess, dsa_strategy=cfg.dsa_strategy if cfg.dsa else None,
                    weights=weights, generator=gen, texture=cfg.texture)
    return _test(net, splits, device, val)


# ----------------------------------------------------------------------------- K networks at once

def batchable(model: str, splits: DatasetSplits) -> bool:
    """Whether `model` can be trained vmapped: no buffers (batch-norm running statistics)."""
    c, h, w = splits.image_shape
    with torch.device("meta"):
        net = build_model(model, c, splits.num_classes, (h, w))
    return FlatModel.wrap(net).batch_independent and not any(True for _ in net.buffers())


def use_batched(model: str, splits: DatasetSplits, cfg: EvalConfig) -> bool:
    """Resolve cfg.batched for one model: "off", "on" (where the model allows), or "auto"."""
    mode = str(cfg.batched).lower()
    if mode not in BATCHED_CHOICES:
        raise ConfigError(f"--eval_batched must be one of {', '.join(BATCHED_CHOICES)}, got {cfg.batched!r}")
    if mode == "off" or cfg.num_eval < 2 or cfg.texture is not None:  # texture: one at a time
        return False
    ok = batchable(model, splits)
    if mode == "on":
        if not ok:
            warnings.warn(f"{model} has batch-norm running statistics; its evaluation networks "
                          "are trained one at a time", stacklevel=2)
        return ok
    return ok and torch.device(cfg.device).type == "cuda"


def train_and_test_batched(model: str, images: torch.Tensor, labels: torch.Tensor,
                           splits: DatasetSplits, schedule: list[float], cfg: EvalConfig,
                           seeds: list[int], progress: bool = False, val=None) -> list:
    """Train len(seeds) networks together: one vmapped forward/backward over stacked
    parameters per step, each network with its own batch order and augmentation draws
    (exactly those `train_and_test` would use for the same seed); test each."""
    device = torch.device(cfg.device)
    nets = [_build(model, splits, s, device) for s in seeds]
    base = nets[0]
    names = [n for n, _ in base.named_parameters()]
    stacked = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets])
               .clone().requires_grad_(True) for n in names}
    opt = torch.optim.SGD(list(stacked.values()), lr=schedule[0], momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    images = _train_images(images)
    weights = targets_weights(labels, splits.num_classes)
    weights = weights.to(device) if weights is not None else None
    strategy = cfg.dsa_strategy if cfg.dsa else None
    n, bs = images.shape[0], cfg.batch_train

    def loss_one(params, x, y):
        return set_loss(functional_call(base, params, (x,)), y, weights)

    losses = vmap(loss_one)
    base.train()
    for lr in progress_out.bar(schedule, desc=f"train {len(seeds)} x {model}", enabled=progress,
                              unit="epochs"):
        for g in opt.param_groups:
            g["lr"] = lr
        orders = [torch.randperm(n, generator=g) for g in gens]
        for start in range(0, n, bs):
            xs, ys = [], []
            for order, g in zip(orders, gens):
                idx = order[start:start + bs]
                x = to_input(images[idx], splits.preprocess, device)
                xs.append(dsa.augment(x, strategy, generator=g) if strategy else x)
                ys.append(labels[idx])
            loss = losses(stacked, torch.stack(xs), torch.stack(ys).to(device)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    results = []
    for k, net in enumerate(nets):
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(stacked[name][k])
        results.append(_test(net, splits, device, val))
    return results


# ----------------------------------------------------------------------------- a set

def evaluate_set(images: torch.Tensor, labels: torch.Tensor, splits: DatasetSplits,
                 lrs: list[float], models: list[str], cfg: EvalConfig, syn_steps: int = 0,
                 progress: bool = True, val=None, comm: Comm = SINGLE,
                 draws: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 keep_each: bool = False) -> dict:
    """Evaluate a set on each model: {model: {mean, std, accuracies, per_class, confusion}}
    (test set), plus val_mean, val_std, val_accuracies when validation images
    `val` = (uint8 images, labels) are given. With `draws` (a baseline that is an expectation
    over random draws, baselines.random_draws) network k trains on draws[k % len(draws)]
    instead of (images, labels). `keep_each`: also each network's confusion matrix
    ("confusions"), so that a sweep can pick each network's own lr (evaluate_sweep).

    Under torchrun the num_eval networks of each model are shared out over the ranks
    (network k on rank k mod K; its seed is its own, whichever rank trains it) and the
    results gathered in network order, so every rank returns what one process would."""
    schedule = lr_schedule(lrs, cfg.epoch_eval_train, syn_steps)
    check_config(cfg, EVAL_RANGES)
    seeds = [network_seed(cfg.seed, k) for k in range(cfg.num_eval)]
    mine = comm.my_share(len(seeds))
    progress = progress and comm.is_main
    out = {}
    for model in models:
        here = f" ({len(mine)} of {len(seeds)} networks on this rank)" if comm.active else ""
        with progress_out.bar(desc=f"evaluate {model}{here}", total=len(mine), enabled=progress,
                              report=True, unit="networks") as bar:
            if draws is None and use_batched(model, splits, cfg) and len(mine) > 1:
                results = train_and_test_batched(model, images, labels, splits, schedule, cfg,
                                                 [seeds[k] for k in mine], progress=progress,
                                                 val=val)
                bar.update(len(mine))
            else:
                results = []
                for k in mine:
                    x, y = (images, labels) if draws is None else draws[k % len(draws)]
                    results.append(train_and_test(model, x, y, splits, schedule, cfg,
                                                  seed=seeds[k], progress=progress, val=val))
                    bar.update()
            gathered = dict(kv for share in comm.all_gather_object(list(zip(mine, results)))
                            for kv in share)
            out[model] = summarise([gathered[k] for k in range(len(seeds))], keep_each)
            bar.set_postfix(accuracy=f"{100 * out[model]['mean']:.2f} %")
    return out


# how far a sweep may go past an end of its grid when a set does best there (in steps of the
# grid's own mean spacing): gz1's sets chose the grid's lowest lr, the digits' class mean its
# highest (docs/defaults.md); the grid is a guess, not a bound on the answer
EDGE_STEPS = 2


def evaluate_sweep(images: torch.Tensor, labels: torch.Tensor, splits: DatasetSplits,
                   candidates: list[float], models: list[str], cfg: EvalConfig, val,
                   syn_steps: int = 0, progress: bool = True, comm: Comm = SINGLE,
                   beyond: int = 0,
                   draws: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
    """`--lr_sweep`: evaluate a set at each candidate lr (one lr, the default schedule) and
    keep, per model, the lr whose networks score best on the validation images `val`; the
    test set only reports. While a model does best at the smallest or largest lr tried, up
    to `beyond` more lrs are tried past that end, each one mean grid step further
    (`edge_lr`). {model: {the chosen lr's evaluate_set result, lr, sweep: [{lr, val_mean,
    mean, std} per lr tried, largest lr first]}}.

    With `draws` (network k trains on draws[k], evaluate_set) each network keeps the lr that
    scores best on validation for its own draw, as a distilled set's networks keep the lr
    best for that set: one lr shared by all draws sank to the grid's bottom, where some draw
    trained badly at any other, and understated random real images by up to 16 points
    (docs/defaults-history.md). The result is then the networks' figures at their own lrs,
    `lrs` each network's lr and `lr` their median; `sweep` still averages every lr over the
    networks."""
    if val is None or len(val[1]) == 0:
        raise ConfigError("--lr_sweep chooses the lr on the validation split, and this dataset "
                          "leaves none")
    grid = sorted(set(candidates), reverse=True)
    each = draws is not None

    def run(lr):
        return evaluate_set(images, labels, splits, [lr], models, cfg, syn_steps,
                            progress=progress, val=val, comm=comm, draws=draws, keep_each=each)

    def best(model, k=None):  # a tie goes to the larger lr; k: network k's own choice
        def score(lr):
            r = runs[lr][model]
            return r["val_mean"] if k is None else r["val_accuracies"][k]
        return max(sorted(runs, reverse=True), key=score)

    def choices(model) -> list[float]:
        return [best(model, k) for k in range(cfg.num_eval)] if each else [best(model)]

    runs = {lr: run(lr) for lr in grid}
    for _ in range(beyond):
        more = {edge_lr(grid, sorted(runs), b) for m in models for b in choices(m)} - {None}
        if not more:
            break
        runs.update({lr: run(lr) for lr in sorted(more, reverse=True)})
    tried = sorted(runs, reverse=True)
    out = {}
    for model in models:
        sweep = [{"lr": lr, "val_mean": runs[lr][model]["val_mean"],
                  "mean": runs[lr][model]["mean"], "std": runs[lr][model]["std"]} for lr in tried]
        if each:
            lrs = choices(model)
            own = summarise([network_result(runs[lr][model], k) for k, lr in enumerate(lrs)])
            out[model] = {**own, "lr": sorted(lrs)[len(lrs) // 2], "lrs": lrs, "sweep": sweep}
        else:
            chosen = best(model)
            out[model] = {**runs[chosen][model], "lr": chosen, "sweep": sweep}
    return out


def edge_lr(grid: list[float], tried: list[float], best: float) -> float | None:
    """The next lr past an end of `tried` when `best` is that end, one step of the grid's
    mean ratio (geometric) beyond it; None when `best` lies inside or the grid has one lr."""
    if len(grid) < 2:
        return None
    step = (max(grid) / min(grid)) ** (1 / (len(grid) - 1))
    if best == max(tried):
        return best * step
    if best == min(tried):
        return best / step
    return None


def summarise(results, keep_each: bool = False) -> dict:
    accs = [r.accuracy for r in results]
    confusion = torch.tensor([r.confusion for r in results]).sum(0)
    pooled = confusion_result(confusion)
    out = {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
           "accuracies": accs, "per_class": pooled.per_class, "confusion": pooled.confusion}
    vals = [r.val_accuracy for r in results if r.val_accuracy is not None]
    if vals:
        out.update(val_mean=statistics.fmean(vals),
                   val_std=statistics.pstdev(vals) if len(vals) > 1 else 0.0, val_accuracies=vals)
    if keep_each:
        out["confusions"] = [r.confusion for r in results]
    return out


def network_result(result: dict, k: int) -> TestResult:
    """Network k's own figures from a `keep_each` result of evaluate_set."""
    one = confusion_result(torch.tensor(result["confusions"][k]))
    if "val_accuracies" in result:
        one.val_accuracy = result["val_accuracies"][k]
    return one


# ----------------------------------------------------------------------------- model pools

# the reference's --eval_mode letters
EVAL_MODES = ("S", "C", "M", "W", "D", "A", "P", "N")


def eval_pool(mode: str, model: str) -> list[str]:
    """The evaluation architectures of the reference's --eval_mode letters."""
    pools = {
        "S": [model],
        "C": [model] if model == "ConvNet" else [model, "ConvNet"],
        "M": ["ConvNet", "AlexNet", "VGG11", "ResNet18_AP", "ResNet18"],
        "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
        "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
        "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL"],
        "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
        "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"],
    }
    if mode not in pools:
        raise ConfigError(f"unknown --eval_mode {mode!r}; known: {', '.join(pools)}")
    return pools[mode]
