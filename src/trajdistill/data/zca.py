"""ZCA whitening (algorithm.md section 5), fitted on the training images, invertible.

Matches the reference (kornia's ZCAWhitening with eps=0.1): with the covariance
C = U diag(S) U^T of the flattened, mean-centred images, whiten with
W = U diag(1/sqrt(S + eps)) U^T, and unwhiten with W^-1 = U diag(sqrt(S + eps)) U^T.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ZCA:
    mean: torch.Tensor       # (D,)
    transform: torch.Tensor  # (D, D)
    inverse: torch.Tensor    # (D, D)

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 0.1, chunk: int = 4096) -> "ZCA":
        """x: (N, C, H, W) float images (already normalised). Accumulated in float64 chunks."""
        n = x.shape[0]
        d = x[0].numel()
        total = torch.zeros(d, dtype=torch.float64)
        for i in range(0, n, chunk):
            total += x[i:i + chunk].reshape(-1, d).double().sum(0)
        mean = total / n
        cov = torch.zeros(d, d, dtype=torch.float64)
        for i in range(0, n, chunk):
            xc = x[i:i + chunk].reshape(-1, d).double() - mean
            cov += xc.T @ xc
        cov /= n - 1
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0)
        transform = (u * (1.0 / torch.sqrt(s + eps))) @ u.T
        inverse = (u * torch.sqrt(s + eps)) @ u.T
        return cls(mean.float(), transform.float(), inverse.float())

    def _on(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The matrix on x's device and dtype, moved once (it is 37 MB for CIFAR)."""
        cache = self.__dict__.setdefault("_moved", {})
        key = (name, x.device, x.dtype)
        if key not in cache:
            cache[key] = getattr(self, name).to(x.device, x.dtype)
        return cache[key]

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return ((flat - self._on("mean", x)) @ self._on("transform", x)).reshape(x.shape)

    def unwhiten(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self._on("inverse", x) + self._on("mean", x)).reshape(x.shape)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "transform": self.transform, "inverse": self.inverse}

    @classmethod
    def from_state_dict(cls, d: dict) -> "ZCA":
        return cls(d["mean"], d["transform"], d["inverse"])
