"""The sets a distilled set must beat: random real training images and the class means.

Both are built from the training split only, so a comparison on validation or test images
sees nothing they were made from. Random real images are uint8 like the data (the
evaluation preprocesses them); class means are already in network input space (the
mean of the preprocessed images of each class), which is also where `--pix_init mean`
starts a distillation.
"""
from __future__ import annotations

import torch

from .data.base import DatasetSplits
from .errors import ConfigError
from .evaluate import network_seed


def random_real(splits: DatasetSplits, ipc: int, seed: int = 0,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real training images of every class (uint8), none of the training indices
    in `exclude` (the validation split: networks are chosen by their accuracy on it)."""
    gen = torch.Generator().manual_seed(seed)
    keep = None
    if exclude is not None and len(exclude):
        keep = torch.ones(len(splits.train.labels), dtype=torch.bool)
        keep[exclude] = False
    idx = []
    for c in range(splits.num_classes):
        members = splits.train.indices_of(c)
        if keep is not None:
            members = members[keep[members]]
        if len(members) < ipc:
            where = " outside the validation split" if keep is not None else ""
            raise ConfigError(f"class {splits.classes[c]!r} has {len(members)} training images"
                              f"{where}, fewer than --ipc {ipc}")
        idx.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
    idx = torch.cat(idx)
    return splits.train.images[idx], splits.train.labels[idx]


def random_draws(splits: DatasetSplits, ipc: int, seed: int, n: int,
                 exclude: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n independent draws of `random_real`, draw k with evaluation network k's seed
    (evaluate.network_seed: runs of seeds 0 and 1 share no draw): the random-real
    baseline is an expectation over draws, so each evaluation network trains on its own
    (one draw of 10 real images per class scored 71 % on EuroSAT river-vs-3 and another 80 %;
    two random images of Fashion-MNIST shirts-vs-tops 29 % with seed 1 and 65 % with seed 0)."""
    return [random_real(splits, ipc, network_seed(seed, k), exclude) for k in range(n)]


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
