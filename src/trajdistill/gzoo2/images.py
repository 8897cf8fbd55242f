"""Cut-out files -> uint8 (3, size, size) arrays, and finding each galaxy's file.

Preprocessing (algorithm.md section 7): optionally rotate the whole cut-out about its
centre (bilinear), keep the central half, resize with area interpolation (PIL BOX),
channel-first, rows top to bottom as in the file (true orientation, no transpose).
Rotating before cropping matters: the central half of a 424 px cut-out stays inside
the rotated image for every angle, so no black corners enter the crop.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.base import DataError
from ..data.imagefolder import _half_box, central_half


def decode(data: bytes) -> Image.Image:
    """Decode fully (a truncated JPEG only fails on load) and convert to RGB."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def rotated_central_half(img: Image.Image, angle: float) -> Image.Image:
    """central_half(img.rotate(angle, BILINEAR)) computed for the kept pixels only.

    The affine matrix is PIL's own for rotate() about the image centre, shifted by the
    crop offset, so the pixels are the same (checked bit for bit on the real cut-outs in
    the tests) at a quarter of the cost.
    """
    w, h = img.size
    left, top, cw, ch = _half_box(w, h)
    cx, cy = w / 2, h / 2
    t = -math.radians(angle)
    a, b = round(math.cos(t), 15), round(math.sin(t), 15)  # as Image.rotate rounds them
    d, e = round(-math.sin(t), 15), round(math.cos(t), 15)
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return img.transform((cw, ch), Image.Transform.AFFINE,
                         (a, b, c + a * left + b * top, d, e, f + d * left + e * top),
                         resample=Image.Resampling.BILINEAR)


def to_array(img: Image.Image, size: int, angle: float = 0.0) -> np.ndarray:
    """One cut-out -> uint8 (3, size, size); `angle` in degrees, counter-clockwise."""
    img = rotated_central_half(img, angle) if angle % 360 else central_half(img)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def augmented(img: Image.Image, size: int, angles: list[float]) -> np.ndarray:
    """(len(angles), 3, size, size): the same cut-out at each rotation angle."""
    return np.stack([to_array(img, size, a) for a in angles])


@dataclass
class Found:
    objid: int
    path: Path | None
    sha256: str | None = None
    reason: str | None = None  # why no usable image: missing / not in mapping / unreadable

    @property
    def ok(self) -> bool:
        return self.reason is None


class ImageSource:
    """Where a galaxy's cut-out lives: `<objid>.jpg`, or `<asset_id>.jpg` via the mapping."""

    def __init__(self, images: str | Path, mapping: dict[int, list[tuple[str, str]]] | None = None):
        self.dir = Path(images)
        self.mapping = mapping

    def candidates(self, objid: int, sample: str | None = None) -> list[Path]:
        if self.mapping is None:
            return [self.dir / f"{objid}.jpg"]
        rows = self.mapping.get(objid, [])
        # An object can have several archive images: prefer the catalog's own sample.
        rows = sorted(rows, key=lambda r: r[0] != sample) if sample else rows
        return [self.dir / f"{asset}.jpg" for _, asset in rows]

    def find(self, objid: int, sample: str | None = None) -> Found:
        """The first candidate file that exists and decodes, with its checksum."""
        paths = self.candidates(objid, sample)
        if not paths:
            return Found(objid, None, reason="not in the mapping table")
        reasons = []
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                reasons.append(f"missing file {path.name}")
                continue
            except OSError as e:
                reasons.append(f"unreadable file {path.name}: {e}")
                continue
            try:
                decode(data)
            except Exception as e:  # PIL raises several types for corrupt files
                reasons.append(f"unreadable file {path.name}: {type(e).__name__}: {e}")
                continue
            return Found(objid, path, hashlib.sha256(data).hexdigest())
        return Found(objid, None, reason="; ".join(reasons))

    def load(self, found: Found) -> Image.Image:
        """Decode a file found earlier, checking it has not changed since."""
        try:
            data = found.path.read_bytes()
            if hashlib.sha256(data).hexdigest() == found.sha256:
                return decode(data)
        except OSError as e:
            raise DataError(f"{found.path}: unreadable on the second read ({e})") from None
        raise DataError(f"{found.path} changed during the build; run it again")
