"""Streaming output: .npy files written row by row, and exact statistics on the way.

Images are appended in row order to a temporary .npy (sequential writes, hashed as they
go) that is renamed into place when complete, so a reader never sees a partial array.
Mean, std and class means come from integer sums over the same uint8 rows: exact,
independent of chunking, and no second pass over a 2 GB array.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np


class NpyWriter:
    """Append rows of a C-ordered array of known shape to `final`, via a temporary file."""

    def __init__(self, final: Path, dtype, shape: tuple[int, ...]):
        self.final, self.dtype, self.shape = Path(final), np.dtype(dtype), tuple(shape)
        self.tmp = self.final.with_name(self.final.name[:-4] + ".tmp.npy")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": self.shape})
        self.sha = hashlib.sha256(header.getvalue())
        self.f = open(self.tmp, "wb")
        self.f.write(header.getvalue())
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.shape[1:] == self.shape[1:], (rows.shape, self.shape)
        data = rows.tobytes()
        self.f.write(data)
        self.sha.update(data)
        self.rows += rows.shape[0]

    def commit(self) -> dict:
        """Close, check the row count, rename into place; returns shape, dtype, sha256."""
        if self.rows != self.shape[0]:
            self.abort()
            raise RuntimeError(f"{self.final}: wrote {self.rows} rows, expected {self.shape[0]}")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        return {"shape": list(self.shape), "dtype": str(self.dtype), "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def save_npy(final: Path, arr: np.ndarray) -> dict:
    w = NpyWriter(final, arr.dtype, arr.shape)
    w.write(arr)
    return w.commit()


class PixelStats:
    """Per-channel mean/std and per-class mean images of uint8 (N, C, H, W) rows."""

    def __init__(self, num_classes: int, shape: tuple[int, int, int]):
        self.s1 = np.zeros(shape[0], np.int64)
        self.s2 = np.zeros(shape[0], np.int64)
        self.class_sum = np.zeros((num_classes,) + tuple(shape), np.int64)
        self.count = np.zeros(num_classes, np.int64)

    def add(self, rows: np.ndarray, c: int) -> None:
        sq = rows.astype(np.uint16) ** 2  # 255^2 fits in uint16
        self.s1 += rows.sum(axis=(0, 2, 3), dtype=np.int64)
        self.s2 += sq.sum(axis=(0, 2, 3), dtype=np.int64)
        self.class_sum[c] += rows.sum(axis=0, dtype=np.int64)
        self.count[c] += rows.shape[0]

    def mean_std(self) -> tuple[list[float], list[float]]:
        """In [0, 1] units, population std; exact integer arithmetic until the last step."""
        n = int(self.count.sum()) * self.class_sum.shape[2] * self.class_sum.shape[3]
        mean, std = [], []
        for s1, s2 in zip(self.s1.tolist(), self.s2.tolist()):
            mean.append(s1 / (n * 255))
            std.append(((s2 * n - s1 * s1) / (n * n * 255 * 255)) ** 0.5)
        return mean, std

    def class_means(self) -> np.ndarray:
        """(K, C, H, W) float32 in [0, 1]; NaN for a class without images."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.class_sum / (self.count[:, None, None, None] * 255.0)).astype(np.float32)
