"""The C allocator's treatment of large blocks on Linux (glibc), set once per process.

A distillation step allocates and frees the same large activations again and again (at
config A each is 52 MB). glibc serves every block above its mmap threshold (at most 32 MB,
however it adapts) with a fresh mmap and returns it with munmap when freed, so the next
step's identical block page-faults its way in again: measured at config A (1 thread, the
plain unroll, issue 23), 466k minor faults per step, 18 of 47 CPU seconds per iteration in
the kernel. `keep_large_blocks()` serves large blocks from the heap and stops glibc from
trimming the heap below TRIM_KEEP, so freed blocks are reused from the process's heap
instead: 23k faults per step, 32 CPU seconds. (glibc caps the mmap threshold itself at 32 MB
on 64-bit systems, so the way to keep larger blocks is to let no block be mmapped:
M_MMAP_MAX 0; files torch maps itself, such as a memory-mapped dataset, are not malloc's.)

The price is memory: freed blocks stay with the process. Everything a run frees it allocates
again in the next step, so the peak is about the same; benchmarks/step_benchmark.py reports
the peak resident memory with and without (`--malloc`). TRAJDISTILL_MALLOC=default keeps
glibc's own behaviour. Elsewhere (macOS, Windows, musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_KEEP = 1 << 31     # up to 2 GiB of freed heap stays with the process


def keep_large_blocks() -> bool:
    """Set glibc's thresholds (module docstring); whether they were set. A no-op where
    TRAJDISTILL_MALLOC=default, off Linux, or without glibc's mallopt."""
    if os.environ.get("TRAJDISTILL_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_KEEP))
