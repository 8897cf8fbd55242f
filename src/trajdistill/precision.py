"""Float32 arithmetic on CUDA: exact by default, TF32 only when asked.

PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa) by default. The
gradient tests hold the lean walk to the plain unroll at 1e-4 in float32; TF32 moves a
gradient by about 1e-3 (tests/test_cuda.py measures it), so the tool turns it off unless
TRAJDISTILL_TF32=1. On a CPU neither setting changes anything.
"""
from __future__ import annotations

import os

import torch

from .errors import ConfigError


def tf32_requested() -> bool:
    """TRAJDISTILL_TF32: 1 lets CUDA's matrix units run float32 work in TF32; 0 or unset keeps
    float32 exact."""
    value = os.environ.get("TRAJDISTILL_TF32", "0").strip()
    if value not in ("0", "1"):
        raise ConfigError(f"TRAJDISTILL_TF32={value!r}: expected 0 (exact float32, the "
                          "default) or 1 (TF32 on CUDA)")
    return value == "1"


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matrix products, on or off."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
