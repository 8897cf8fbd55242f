"""The reference STM code's `distill.py` flags, accepted as users paste them.

What each one means there, and what it does here:
- `--method stage-MTT`: the reference's name for STM (`original-MTT` is the same here).
- `--fix_lr_teacher`: the synthetic lr is never updated (here: `--learn_lr False`).
- `--algorithm global-lr|independent-lr`: one synthetic lr, or one per stage (here: `--lr_mode`).
- `--list`: the reference's other spelling of `--lr_teacher`.
- `--no_aug [True]`: no augmentation in the unrolled student only; evaluation keeps DSA.
  (The reference parses it with `type=bool`, so any word switches it on; here True/False.)
- `--max_files N`: read N of the expert files. A reference file holds 10 experts (its
  buffer.py's `--save_interval`) and `--max_experts M` of each, so N files mean 10 N
  experts, or N M with `--max_experts`; here every expert has a file of its own and the
  run uses that many experts.
- `--texture --canvas_size K --canvas_samples S`: texture distillation (texture.py).
- `--cuda_gpu N`: the GPU to use (here: `--device cuda:N`; a note and the CPU without CUDA).
- `--load_all`, `--force_save`, `--lr_init`, `--batch_real`: nothing to do here (experts
  are read one file at a time anyway; image grids are always saved; the reference never
  reads `--lr_init`; real data is not batched here): accepted with a one-line note.
"""
from __future__ import annotations

import argparse
import sys

# experts per replay_buffer_N.pt file of the reference buffer.py (its --save_interval default)
REFERENCE_EXPERTS_PER_FILE = 10

LR_MODES = ("global-lr", "independent-lr")

_NO_MEANING = {
    "load_all": "experts are read one file at a time here, all of them are used",
    "force_save": "the synthetic images and their grids are always saved here",
    "lr_init": "the reference never reads it; the initial synthetic lr is --lr_teacher",
    "batch_real": "real images are not batched during distillation here",
}


def add_reference_flags(p: argparse.ArgumentParser) -> None:
    from .flags import boolean, non_negative_int, positive_int
    g = p.add_argument_group("flags of the reference STM distill.py")
    g.add_argument("--fix_lr_teacher", action="store_true", default=None,
                   help="never update the synthetic lr (same as --learn_lr False)")
    g.add_argument("--algorithm", choices=LR_MODES,
                   help="global-lr or independent-lr (same as --lr_mode)")
    g.add_argument("--no_aug", nargs="?", const=True, type=boolean, default=None,
                   help="True: no augmentation in the unrolled student; evaluation keeps DSA "
                   "(as the reference; --dsa False switches both off)")
    g.add_argument("--max_files", type=positive_int,
                   help=f"use the experts of N reference files: {REFERENCE_EXPERTS_PER_FILE} N "
                   "experts, or N x --max_experts")
    g.add_argument("--texture", action="store_true", default=None,
                   help="distill textures: each synthetic image is a toroidal canvas, seen "
                   "through random image-sized windows (not with --zca)")
    g.add_argument("--canvas_size", type=positive_int,
                   help="texture canvas side in image sides (default 2)")
    g.add_argument("--canvas_samples", type=positive_int,
                   help="texture windows per canvas per step (default 1)")
    g.add_argument("--cuda_gpu", type=non_negative_int, help="GPU index (same as --device cuda:N)")
    g.add_argument("--load_all", action="store_true", default=None, help="accepted; no effect here")
    g.add_argument("--force_save", action="store_true", default=None, help="accepted; no effect here")
    g.add_argument("--lr_init", type=float, help="accepted; no effect here (unused by the reference)")
    g.add_argument("--batch_real", type=int, help="accepted; no effect here")


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def translate(o: dict, cuda_available: bool, explicit_device: bool) -> dict:
    """Turn the reference flags of a resolved option dict into this package's settings."""
    o = dict(o)
    for name, why in _NO_MEANING.items():
        if o.pop(name, None) not in (None, False):
            note(f"--{name} has no effect here ({why})")
    if o.pop("fix_lr_teacher", None):
        o["learn_lr"] = False
    algorithm = o.pop("algorithm", None)
    if algorithm is not None:
        if algorithm in LR_MODES:
            o["lr_mode"] = algorithm
        else:
            note(f"--algorithm {algorithm} is not one of {', '.join(LR_MODES)}; ignored")
    max_files = o.pop("max_files", None)
    if max_files is not None:
        o["max_experts"] = max_files * (o.get("max_experts") or REFERENCE_EXPERTS_PER_FILE)
    gpu = o.pop("cuda_gpu", None)
    if gpu is not None and explicit_device:
        note(f"--cuda_gpu {gpu} ignored: --device {o.get('device')} was given")
    elif gpu is not None:
        if cuda_available:
            o["device"] = f"cuda:{gpu}"
        else:
            note(f"--cuda_gpu {gpu} ignored: this PyTorch has no CUDA device; running on "
                 f"{o.get('device') or 'cpu'}")
    return o
