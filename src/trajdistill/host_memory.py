"""Freed host memory stays in the process for the next step (glibc's malloc, Linux).

A distillation step allocates the same activations again and again, each tens of MB (a
100-image batch of 128 channels at 32 x 32 px is 52 MB). glibc serves every block above its
mmap threshold (at most 32 MB) with a fresh mmap and returns it on free, and it hands the top
of the heap back once more than the trim threshold is free, so each step's memory is zero-filled
page by page again by the kernel: 3.8 million minor page faults and 6.8 s of system time per STM
iteration at config A on one thread (docs/performance.md). Serving large blocks from the heap
(M_MMAP_MAX 0) and keeping up to 1 GB of freed heap (M_TRIM_THRESHOLD) reuses the pages
instead. The costs: memory is not handed back while the process runs, and the heap
fragments (PyTorch asks for 64-byte-aligned blocks, whose slack glibc frees as small chunks
that can sit between a freed block and the heap's top), so some pages are still new and the
peak grows: the plain unroll at config A 6.57 -> 7.49 GB, the lean walk 0.70 -> 0.72 GB, for
20 % and 5 % less CPU time (docs/performance.md).

`keep_freed_memory()` is called once by the command line at start-up; Python users may call it
too. Elsewhere (another libc, macOS, Windows) it does nothing. TRAJDISTILL_MALLOC=default
leaves glibc's own settings.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30   # freed heap kept before glibc trims it
TOP_PAD = 64 << 20     # the heap grows by this much beyond each request: fewer brk calls


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (see the module's docstring); True when it
    did, False on another platform or allocator, or with TRAJDISTILL_MALLOC=default."""
    if os.environ.get("TRAJDISTILL_MALLOC", "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: leave them be
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the order matters: no mmap first, then the heap's limits
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, TOP_PAD)))
