"""The validation split: a fixed subset of the training images on which the evaluation
networks are tested beside the test set, so that the "best" synthetic set is chosen without
looking at the test set.

The evaluation networks train on the synthetic set only, so these images are unseen by them.
Real initialisation (`--pix_init real` / `correct` / `kmeans`) never copies a validation image into the
set. The experts, trained beforehand by `trajdistill buffer` on the whole training set and
shared between runs, are left as they are (docs/methods.md, 'Choosing the best set').
"""
from __future__ import annotations

import torch

from .errors import ConfigError

VAL_FRACTION = 0.1
VAL_CAP = 5000
VAL_SEED = 0  # the same validation images for every run on the same data


def default_val_size(num_train: int, num_classes: int) -> int:
    """10 % of the training set, at most 5,000, at least one image per class."""
    return max(num_classes, min(VAL_CAP, round(VAL_FRACTION * num_train)))


def validation_indices(labels: torch.Tensor, num_classes: int, size: int,
                       seed: int = VAL_SEED) -> torch.Tensor:
    """`size` training indices, sorted: one random image of every class that has one, then
    the rest drawn uniformly from the remaining images (so the split follows the class mix)."""
    if size == 0:
        return torch.zeros(0, dtype=torch.long)
    if not num_classes <= size <= len(labels):
        raise ConfigError(f"--val_size must be 0 or in [{num_classes} (one per class), "
                          f"{len(labels)} (the training set)], got {size}")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members):
            chosen[members[torch.randint(len(members), (1,), generator=gen)]] = True
    rest = torch.nonzero(~chosen).flatten()
    extra = size - int(chosen.sum())
    chosen[rest[torch.randperm(len(rest), generator=gen)[:extra]]] = True
    return torch.nonzero(chosen).flatten()


def default_validation_indices(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The training indices of the default validation split: those a `distill` run with the
    default --val_size sets aside."""
    return validation_indices(labels, num_classes, default_val_size(len(labels), num_classes))


def default_validation(labels: torch.Tensor, images: torch.Tensor, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels of the default validation split: the same images a
    `distill` run with the default --val_size sets aside (so its synthetic set never copied
    them)."""
    idx = default_validation_indices(labels, num_classes)
    return images[idx], labels[idx]
