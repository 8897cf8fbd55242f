"""The evaluation protocol (algorithm.md section 6) and the baselines.

A set (synthetic, or a baseline's real images) is judged by training `num_eval` fresh
networks on it from scratch and testing them on the real test set: mean and standard
deviation of accuracy, per-class accuracy and the summed confusion matrix.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .augment import DEFAULT_STRATEGY
from .data.base import DatasetSplits
from .models import build_model
from .training import class_weights, confusion_result, test_network, train_epoch


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


def lr_schedule(lrs: list[float], epochs: int, syn_steps: int) -> list[float]:
    """The learning rate of every training epoch.

    One lr: `epochs` epochs, x0.1 from half way (epoch epochs // 2) on.
    A list (independent-lr, one per stage): each lr for k = max(syn_steps, 500 // len)
    epochs in order, then 500 more epochs at the last lr x0.1 (`epochs` is ignored).
    """
    lrs = [float(v) for v in lrs]
    if len(lrs) == 1:
        half = epochs // 2
        return [lrs[0]] * half + [lrs[0] * 0.1] * (epochs - half)
    k = max(syn_steps, 500 // len(lrs))
    return [lr for lr in lrs for _ in range(k)] + [lrs[-1] * 0.1] * 500


def train_and_test(model: str, images: torch.Tensor, labels: torch.Tensor, splits: DatasetSplits,
                   schedule: list[float], cfg: EvalConfig, seed: int, progress: bool = False):
    """Train one fresh network on (images, labels) with the per-epoch lr schedule; test it."""
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c, h, w = splits.image_shape
    net = build_model(model, c, splits.num_classes, (h, w)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=schedule[0], momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    images = images.detach().cpu() if images.dtype != torch.uint8 else images
    weights = class_weights(labels, splits.num_classes)
    for lr in tqdm(schedule, desc=f"train {model}", leave=False, disable=not progress):
        for g in opt.param_groups:
            g["lr"] = lr
        train_epoch(net, images, labels, opt, batch_size=cfg.batch_train, device=device,
                    preprocess=splits.preprocess, dsa_strategy=cfg.dsa_strategy if cfg.dsa else None,
                    weights=weights, generator=gen)
    return test_network(net, splits.test.images, splits.test.labels, splits.num_classes,
                        device=device, preprocess=splits.preprocess)


def evaluate_set(images: torch.Tensor, labels: torch.Tensor, splits: DatasetSplits,
                 lrs: list[float], models: list[str], cfg: EvalConfig, syn_steps: int = 0,
                 progress: bool = True) -> dict:
    """Evaluate a set on each model: {model: {mean, std, accuracies, per_class, confusion}}."""
    schedule = lr_schedule(lrs, cfg.epoch_eval_train, syn_steps)
    out = {}
    for model in models:
        results = [train_and_test(model, images, labels, splits, schedule, cfg,
                                  seed=cfg.seed * 7919 + k, progress=progress)
                   for k in tqdm(range(cfg.num_eval), desc=f"evaluate {model}", leave=False,
                                 disable=not progress)]
        out[model] = summarise(results)
    return out


def summarise(results) -> dict:
    accs = [r.accuracy for r in results]
    confusion = torch.tensor([r.confusion for r in results]).sum(0)
    pooled = confusion_result(confusion)
    return {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "accuracies": accs, "per_class": pooled.per_class, "confusion": pooled.confusion}


# ----------------------------------------------------------------------------- baselines

def random_real(splits: DatasetSplits, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real training images of every class (uint8)."""
    gen = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(splits.num_classes):
        members = splits.train.indices_of(c)
        if len(members) < ipc:
            raise ValueError(f"class {splits.classes[c]!r} has {len(members)} training images, "
                             f"fewer than ipc={ipc}")
        idx.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
    idx = torch.cat(idx)
    return splits.train.images[idx], splits.train.labels[idx]


def class_means(splits: DatasetSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per class: the mean of its training images, in network input space."""
    means = []
    for c in range(splits.num_classes):
        members = splits.train.indices_of(c)
        total = None
        for chunk in members.split(4096):
            x = splits.preprocess(splits.train.images[chunk]).sum(0)
            total = x if total is None else total + x
        means.append(total / max(len(members), 1))
    return torch.stack(means), torch.arange(splits.num_classes)


# ----------------------------------------------------------------------------- model pools

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
        raise ValueError(f"unknown --eval_mode {mode!r}; known: {', '.join(pools)}")
    return pools[mode]
