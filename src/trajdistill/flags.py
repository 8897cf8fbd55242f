"""Argument kinds for the command line: every flag is checked where it is parsed.

Each function is an argparse `type=`: it turns the text into a value or raises
`argparse.ArgumentTypeError` with what was expected, and argparse names the flag:
    error: argument --ipc: expected a positive integer, got '0'
"""
from __future__ import annotations

import argparse
import math
import numbers
import tempfile
from dataclasses import fields
from pathlib import Path


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def boolean(text: str) -> bool:
    """True/False, 1/0, yes/no (any case), as the reference's boolean flags take them."""
    if str(text).lower() in ("true", "1", "yes"):
        return True
    if str(text).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def auto_on_off(text: str) -> bool | None:
    """auto, on or off (any case) as None, True, False: None leaves the setting to be derived."""
    value = {"auto": None, "on": True, "off": False}.get(str(text).lower(), "bad")
    if value == "bad":
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


SEED_LIMIT = 2 ** 32  # seeds are multiplied into per-expert / per-network seeds within 64 bits


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32)."""
    value = _number(text, int, f"an integer from 0 to {SEED_LIMIT - 1}")
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_LIMIT - 1}, "
                                         f"got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in the open interval (0, 1)."""
    value = _number(text, float, "a number between 0 and 1")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected a file, got a directory: {text}")
    return text


def existing_dir(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a directory, got a file: {text}")
    return text


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def existing_path(text: str) -> str:
    """A file or a directory that exists (dataset locations can be either)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return text


def _cannot_write(folder: Path) -> str | None:
    """None when a file can be created in `folder` (tried: a nameless temporary file, gone at
    once), else why not. Permissions alone do not tell (root, read-only mounts, /proc)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def output_file(text: str) -> str:
    """A file to write: not a directory, in a directory that exists and takes new files."""
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name to write, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist")
    why = _cannot_write(path.parent)
    if why:
        raise argparse.ArgumentTypeError(f"cannot write in the folder of {text} ({why})")
    return text


def writable_dir(text: str) -> str:
    """A folder that exists and takes new files (a run directory to continue or report on)."""
    existing_dir(text)
    why = _cannot_write(Path(text))
    if why:
        raise argparse.ArgumentTypeError(f"cannot write in {text} ({why})")
    return text


def output_dir(text: str) -> str:
    """A folder to write into: one that exists, or one that can be created (its nearest
    existing parent is a folder that takes new files)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty string")
    path = existing = Path(text)
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise argparse.ArgumentTypeError(f"expected a folder, got a file: {text}")
        raise argparse.ArgumentTypeError(f"cannot create {text}: {existing} is not a folder")
    why = _cannot_write(existing)
    if why:
        raise argparse.ArgumentTypeError(f"cannot write in {existing} ({why})")
    return text


def device(text: str) -> str:
    """cpu, cuda, cuda:N or mps, and only one this PyTorch can use."""
    why = device_problem(text)
    if why:
        raise argparse.ArgumentTypeError(why)
    return text


def device_problem(text) -> str | None:
    """Why `text` is not a device this PyTorch can use, or None (also for Python configs)."""
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        return f"expected cpu, cuda, cuda:N or mps, got {text!r}"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
            return f"{text!r} is not available: this PyTorch ({torch.__version__}) has {build}; use cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"{text!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            return f"{text!r} is not available on this machine; use cpu"
    elif dev.type != "cpu":
        return f"expected cpu, cuda, cuda:N or mps, got {text!r}"
    return None


def dsa_strategy(text: str) -> str:
    """Augmentation groups joined by '_' (color_crop_cutout_flip_scale_rotate)."""
    from .augment import parse_strategy
    try:
        parse_strategy(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# ----------------------------------------------------------------------------- Python configs

def check_config(cfg, ranges: dict[str, tuple[float, bool]],
                 flag_names: dict[str, str] | None = None) -> None:
    """The kinds above for a config dataclass built in Python (DistillConfig, ExpertConfig,
    EvalConfig): int, float and bool fields hold such values (finite; an `X | None` field may
    also be None), `ranges` = {field: (lowest, whether the lowest itself is allowed)}, a seed
    is below SEED_LIMIT, a device exists, a DSA strategy parses. Raises ConfigError naming the
    flag (`flag_names` where it is not --<field>), before torch.optim or torch.device sees
    the value."""
    from .errors import ConfigError
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        flag = (flag_names or {}).get(f.name, f"--{f.name}")
        if kind.endswith(" | None"):
            if value is None:
                continue
            kind = kind[:-len(" | None")]
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{flag} must be True or False, got {value!r}")
        if kind == "int" and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            raise ConfigError(f"{flag} must be an integer, got {value!r}")
        if kind == "float" and (not isinstance(value, numbers.Real) or isinstance(value, bool)
                                or not math.isfinite(value)):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        if f.name in ranges:
            low, inclusive = ranges[f.name]
            if value < low or (value == low and not inclusive):
                raise ConfigError(f"{flag} must be {'>=' if inclusive else '>'} {low}, got {value!r}")
    if getattr(cfg, "seed", 0) >= SEED_LIMIT:
        raise ConfigError(f"--seed must be below {SEED_LIMIT}, got {cfg.seed}")
    if hasattr(cfg, "device") and device_problem(cfg.device):
        raise ConfigError(f"--device: {device_problem(cfg.device)}")
    if getattr(cfg, "dsa_strategy", None) is not None:  # None: derived later
        from .augment import parse_strategy
        try:
            parse_strategy(cfg.dsa_strategy)
        except ValueError as e:
            raise ConfigError(f"--dsa_strategy: {e}") from None
