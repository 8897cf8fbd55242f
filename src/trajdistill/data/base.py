"""The in-memory dataset: uint8 images plus the metadata needed to turn them into inputs.

Images stay uint8 (N, C, H, W) — possibly a read-only memory map — so a 45,000-image
128 px set costs 2.2 GB, not 8.8. Normalisation (and ZCA) happen per batch on the
device through a `Preprocess`, which travels with experts and synthetic sets so that
evaluation always sees the same transform as training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import TrajdistillError
from .zca import ZCA


class DataError(TrajdistillError):
    """Bad input data: the message names the file, the field and what was expected."""


@dataclass
class Preprocess:
    """uint8 pixels -> network input: scale to [0,1], normalise per channel, optional ZCA."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: ZCA | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        c = x.shape[1]
        mean = torch.tensor(self.mean, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, c, 1, 1)
        x = (x - mean) / std
        return self.zca.whiten(x) if self.zca is not None else x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> pixels in [0,1] (unclipped), for showing synthetic images."""
        x = x.detach().float().cpu()
        if self.zca is not None:
            x = self.zca.unwhiten(x)
        c = x.shape[1]
        mean = torch.tensor(self.mean).view(1, c, 1, 1)
        std = torch.tensor(self.std).view(1, c, 1, 1)
        return x * std + mean

    def state_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std),
                "zca": self.zca.state_dict() if self.zca is not None else None}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Preprocess":
        zca = ZCA.from_state_dict(d["zca"]) if d.get("zca") is not None else None
        return cls(tuple(d["mean"]), tuple(d["std"]), zca)


@dataclass
class ImageDataset:
    """One split: uint8 images (N, C, H, W), int64 labels (N,), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"labels must have shape ({self.images.shape[0]},), "
                            f"got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def indices_of(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.labels == c).flatten()


@dataclass
class DatasetSplits:
    """What every loader returns: train and test splits plus the preprocessing to apply."""

    name: str
    train: ImageDataset
    test: ImageDataset
    preprocess: Preprocess
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def describe(self) -> dict:
        """The identity of the data an expert or a synthetic set was made from."""
        return {"dataset": self.name, "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "classes": list(self.classes),
                "zca": self.preprocess.zca is not None, **self.meta}


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0,1] scale.

    Chunked (memmap-friendly): a chunk of 256 images of 3x128x128 is 100 MB of float64.
    """
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, images.shape[0], chunk):
        x = torch.as_tensor(images[i:i + chunk]).to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean ** 2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
