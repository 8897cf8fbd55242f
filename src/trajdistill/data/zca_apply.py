"""Attach a ZCA whitening fitted on the training split to a DatasetSplits."""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import DatasetSplits, Preprocess
from .zca import ZCA


def with_zca(splits: DatasetSplits, eps: float = 0.1) -> DatasetSplits:
    # The reference whitens [0,1] pixels without per-channel normalisation.
    plain = Preprocess(mean=(0.0,) * splits.image_shape[0], std=(1.0,) * splits.image_shape[0])
    chunks = [plain(splits.train.images[i:i + 4096]) for i in range(0, len(splits.train), 4096)]
    zca = ZCA.fit(torch.cat(chunks), eps=eps)
    return replace(splits, preprocess=Preprocess(plain.mean, plain.std, zca))
