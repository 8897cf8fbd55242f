"""On-disk cache of decoded image arrays, so an image folder is decoded once, not per run.

An entry is one `.npy` file of uint8 (N, C, H, W), named by a hash of what produced it:
every source file's path, size and modification time, plus the decoding options. Any
change to the files (added, removed, rewritten) or to the options gives a new key, so
a stale entry is never read; old entries are simply left behind (delete the folder to
reclaim space).

The cache lives in `$TRAJDISTILL_CACHE`, else `~/.cache/trajdistill` — never next to the
data, which may be read-only or shared. Entries are written to a temporary file and
renamed, so a crash or a concurrent run cannot leave a half-written entry under a valid
name. If the cache cannot be written the data is still returned, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import atomic_write

# Bump when the decoding itself changes, so entries made by older code are not reused.
CACHE_FORMAT = 2  # 2: images of more than 8 bits are scaled, not clipped (imagefolder.eight_bit)


def cache_dir() -> Path:
    """Where entries live: `$TRAJDISTILL_CACHE`, else `~/.cache/trajdistill`."""
    env = os.environ.get("TRAJDISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trajdistill"


def cache_key(files: Sequence[Path], options: dict) -> str:
    """Hash of (path, size, mtime) of every file, in order, plus the options."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "options": options}, sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"\n{os.path.abspath(f)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cached_images(tag: str, files: Sequence[Path], options: dict,
                  build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array `build()` makes from `files`, from the cache when nothing has changed.

    `tag` only makes entry names readable (e.g. "imagefolder-train"). The returned array
    is a copy-on-write memory map of the entry, so a large set is paged in lazily.
    """
    path = cache_dir() / f"{tag}-{cache_key(files, options)}.npy"
    cached = _read(path, len(files))
    if cached is not None:
        return cached
    images = build()
    _write(path, images)
    return images


def _read(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable cache entry {path}: {e}", stacklevel=3)
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n:
        warnings.warn(f"ignoring cache entry {path}: shape {arr.shape} {arr.dtype}, expected "
                      f"({n}, C, H, W) uint8", stacklevel=3)
        return None
    return arr


def _write(path: Path, images: np.ndarray) -> None:
    try:
        atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {path} ({e}); set "
                      "TRAJDISTILL_CACHE to a writable folder to avoid decoding every time",
                      stacklevel=3)
