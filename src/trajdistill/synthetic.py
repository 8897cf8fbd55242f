"""A distilled set as a file: images, labels, learned lr(s) and what is needed to use them.

Images are stored in network input space (normalised, and ZCA-whitened when the experts
were); the preprocess is stored with them so evaluation and display always use the same
transform the experts saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.base import Preprocess
from .io import FileFormatError, atomic_save, safe_load

FORMAT = "trajdistill.synthetic/1"


@dataclass
class SyntheticSet:
    images: torch.Tensor
    labels: torch.Tensor
    lrs: list[float]
    preprocess: Preprocess
    data: dict                     # identity of the real data (DatasetSplits.describe())
    model: str                     # architecture of the experts it was distilled from
    syn_steps: int = 0
    meta: dict = field(default_factory=dict)
    # learned label logits (N, classes) of a soft-label set; None: the hard `labels` are the
    # targets. `labels` always holds each image's class (the class it was initialised from).
    soft_labels: torch.Tensor | None = None

    def save(self, path: str | Path) -> None:
        atomic_save({"format": FORMAT, "images": self.images.detach().cpu().float(),
                     "labels": self.labels.cpu().long(), "lrs": [float(v) for v in self.lrs],
                     "preprocess": self.preprocess.state_dict(), "data": self.data,
                     "model": self.model, "syn_steps": self.syn_steps, "meta": self.meta,
                     "soft_labels": (self.soft_labels.detach().cpu().float()
                                     if self.soft_labels is not None else None)}, path)

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        try:
            blob = safe_load(path)
        except FileFormatError as e:
            raise FileFormatError(f"{e}; expected a trajdistill synthetic-set file "
                                  "(RUN_DIR/synthetic_best.pt)") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise FileFormatError(f"{path}: not a trajdistill synthetic set (format {FORMAT!r})")
        _check_fields(path, blob)
        images, labels = blob["images"], blob["labels"]
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise FileFormatError(f"{path}: images {tuple(images.shape)} and labels "
                                  f"{tuple(labels.shape)} do not match")
        if not images.is_floating_point() or not torch.isfinite(images).all():
            raise FileFormatError(f"{path}: the images are not all finite floating-point values "
                                  "(a damaged set)")
        soft = blob.get("soft_labels")
        if soft is not None and (not isinstance(soft, torch.Tensor) or soft.ndim != 2
                                 or soft.shape[0] != images.shape[0] or not soft.is_floating_point()):
            raise FileFormatError(f"{path}: soft labels {tuple(getattr(soft, 'shape', ()))} are not "
                                  f"one float logit vector per image ({images.shape[0]} images)")
        try:
            preprocess = Preprocess.from_state_dict(blob["preprocess"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FileFormatError(f"{path}: unreadable 'preprocess' (mean/std/zca): "
                                  f"{type(e).__name__}: {e}") from None
        return cls(images, labels, list(blob["lrs"]), preprocess, blob["data"], blob["model"],
                   blob.get("syn_steps", 0), blob.get("meta", {}), soft)

    def targets(self) -> torch.Tensor:
        """What networks trained on this set learn: the label logits, or the class indices."""
        return self.soft_labels if self.soft_labels is not None else self.labels

    def mismatch(self, image_shape, classes: list[str]) -> str | None:
        """Why this set does not fit data of `image_shape` and `classes` (the data it is
        evaluated on or shown beside); None when it fits."""
        shape, mine = list(self.data.get("image_shape") or []), self.data.get("classes")
        if shape == list(image_shape) and mine == list(classes):
            return None
        return (f"gives {list(image_shape)} images of classes {list(classes)}, but the set was "
                f"distilled from {self.data.get('dataset')} {shape} images of classes {mine}")

    def pixels(self) -> torch.Tensor:
        """Images back in [0,1] pixel space (ZCA inverted), unclipped."""
        return self.preprocess.inverse(self.images)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# field -> (what it must be, test); a file that breaks one is damaged or not ours
_FIELDS = {
    "images": ("an image tensor (N, C, H, W)", lambda v: isinstance(v, torch.Tensor)),
    "labels": ("an integer label tensor (N,)", lambda v: isinstance(v, torch.Tensor)
               and not v.is_floating_point() and v.dtype != torch.bool),
    "lrs": ("a non-empty list of positive finite learning rates",
            lambda v: isinstance(v, (list, tuple)) and len(v) > 0
            and all(_number(x) and math.isfinite(x) and x > 0 for x in v)),
    "preprocess": ("a dict (mean, std, zca)", lambda v: isinstance(v, dict)),
    "data": ("a dict (the real data's identity)", lambda v: isinstance(v, dict)),
    "model": ("a model name", lambda v: isinstance(v, str) and bool(v)),
    "syn_steps": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool)
                  and v >= 0),
    "meta": ("a dict", lambda v: isinstance(v, dict)),
}
_OPTIONAL = ("syn_steps", "meta")


def _check_fields(path, blob: dict) -> None:
    for name, (what, ok) in _FIELDS.items():
        if name not in blob:
            if name in _OPTIONAL:
                continue
            raise FileFormatError(f"{path}: a trajdistill synthetic set without {name!r} "
                                  "(damaged, or written by another program)")
        if not ok(blob[name]):
            shown = blob[name] if not isinstance(blob[name], torch.Tensor) else \
                f"a {blob[name].dtype} tensor"
            raise FileFormatError(f"{path}: {name!r} should be {what}, got {shown!r}"[:300])
