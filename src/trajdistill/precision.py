"""How exact the arithmetic is: float32 exact by default; TF32 and bfloat16 only when asked.

PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa) by default. The
gradient tests hold the lean walk to the plain unroll at 1e-4 in float32; TF32 moves a
gradient by about 1e-3 (tests/test_cuda.py measures it), so the tool turns it off unless
TRAJDISTILL_TF32=1. On a CPU neither setting changes anything.

`distill --autocast bf16` runs the student's forward passes of the matching under
torch.autocast in bfloat16 (`MatchProblem.autocast`, `AUTOCAST_DTYPES`), on a CPU or a GPU:
faster where the hardware has bfloat16 arithmetic, and inexact (benchmarks/precision_drift.py
measures how far the gradient moves). Off by default.
"""
from __future__ import annotations

import os

import torch

from .errors import ConfigError

# --autocast: the name a user gives, and the dtype of torch.autocast (None: no autocast)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16}


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
