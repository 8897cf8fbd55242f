"""Safe, atomic files.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed
over the target: a kill at any moment leaves either the old file or the new one.
Reads of tensors use `torch.load(weights_only=True)`, which refuses pickled code.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import TrajdistillError


class FileFormatError(TrajdistillError):
    """A file that cannot be read as what it should be; the message names the file."""


def atomic_write(path: str | Path, write) -> None:
    """Call write(binary file) on a temporary file beside path, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path: str | Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode()
    atomic_write(Path(path), lambda f: f.write(data))


def write_json(path: str | Path, obj) -> None:
    data = json.dumps(obj, indent=2, default=_json_default).encode()
    atomic_write(Path(path), lambda f: f.write(data))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log; a line cut by a kill ends it (what precedes is good)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict):
                raise FileFormatError(f"{path}, line {number}: expected a JSON object (one record "
                                      f"per line), got {_json_kind(record)}")
            out.append(record)
    return out


def load_json(path: str | Path) -> dict:
    """A JSON file holding one object (every JSON file the package writes is one)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FileFormatError(f"{path}: expected a JSON object {{...}}, got {_json_kind(obj)}")
    return obj


def _json_kind(obj) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(obj), type(obj).__name__)


def safe_load(path: str | Path, mmap: bool = False):
    """torch.load without code execution; damaged or foreign files get a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: file not found")
    if path.is_dir():
        raise FileFormatError(f"{path}: a directory, not a tensor file")
    if not _looks_like_torch_file(path):
        raise FileFormatError(f"{path}: not a tensor file (torch.save writes a zip archive or a "
                              "pickle; this is neither)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise FileFormatError(f"{path}: damaged or truncated tensor file "
                                  f"({str(e).splitlines()[0]})") from None
        raise FileFormatError(f"{path}: refused to load — it holds objects other than tensors "
                              f"and plain data, which could run code") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, KeyError,
            ValueError) as e:
        # torch's readers fail in many ways on a cut or foreign file; none of them is a bug here
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise FileFormatError(f"{path}: damaged or truncated tensor file ({first})") from None


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80 ..)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
