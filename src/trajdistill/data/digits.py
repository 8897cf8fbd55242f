"""The embedded default dataset: scikit-learn's bundled handwritten digits (real scans).

1,797 images of 8x8 pixels with 17 grey levels, 10 classes; shipped inside scikit-learn,
so the demo needs no download. Split 80/20 per class with a fixed seed.
"""
from __future__ import annotations

import torch

from .base import DatasetSplits, ImageDataset, Preprocess, channel_stats


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).to(torch.uint8)
    images = images.unsqueeze(1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    classes = [str(c) for c in range(10)]
    train = ImageDataset(images[train_idx].contiguous(), labels[train_idx], classes)
    test = ImageDataset(images[test_idx].contiguous(), labels[test_idx], classes)
    mean, std = channel_stats(train.images)
    return DatasetSplits("digits", train, test, Preprocess(mean, std))
