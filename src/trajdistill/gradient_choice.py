"""`--gradient auto` (the default): which exact gradient a run computes, chosen by memory.

Both methods give the same gradient (tests/test_matching.py: 1e-8 in float64); they differ
in time and memory (docs/performance.md):
- `unroll`, the plain autograd unroll, keeps every unrolled step's graph: memory grows with
  syn_steps, and on a CPU it is the faster of the two (the lean walk recomputes each step's
  forward and backward pass on the way back);
- `lean`, the walk back, keeps one step's graph: memory flat in syn_steps. On a GPU its
  steps replay as CUDA graphs, which makes it the faster one there.
So: the lean walk where its CUDA graphs run, or where --compile on or --gradient_memory ask
for it; elsewhere the plain unroll when its whole graph (one step's saved tensors, measured, times
syn_steps) fits MEMORY_SHARE of the memory available now, and the lean walk when it does not.

`--compile auto` (the default) then runs a lean walk on a CPU through torch.compile where the
problem is large (the unroll's graph at least COMPILE_FROM_BYTES): its steps are 1.15-1.3x
faster there, and the minute or two of compiling is a few percent of such a run. Elsewhere
(the unroll, which a compiled graph cannot differentiate twice; CUDA, where CUDA graphs
replay the steps; small problems) it stays off. A failing compilation falls back to the
eager steps with one warning (kernels.Compiled).
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

import torch

from . import cuda_graphs
from .data.base import DatasetSplits
from .experts import TrajectoryStore
from .initial import run_student, syn_shape
from .matching import MatchProblem, plan_unroll, step_graph_bytes
from .models import FlatModel

COMPILE_FROM_BYTES = 2**30  # the unroll's graph from which compiling the lean walk pays: at
# config A (5.6 GB) an STM iteration takes 25-30 s on 2 cores, 200 of them over an hour
MEMORY_SHARE = 0.25  # of the memory available when the run starts: data, evaluation and the
# rest of the process keep the other three quarters


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this run on `device`: the GPU's free memory, or the machine's available
    RAM (Linux /proc/meminfo, else the free physical pages); None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def unroll_bytes(cfg, splits: DatasetSplits, store: TrajectoryStore,
                 student: FlatModel | None = None) -> int:
    """The plain unroll's graph for this run: one step's saved tensors (measured on the run's
    network, `student` or one built here, and minibatch shapes) times syn_steps. The global
    RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        device = torch.device(cfg.device)
        student = run_student(cfg, splits, store) if student is None else student
        n = splits.num_classes * cfg.ipc
        images = torch.zeros(n, *syn_shape(cfg, splits), device=device)
        labels = (torch.zeros(n, splits.num_classes, device=device) if cfg.soft_labels else
                  torch.arange(splits.num_classes, device=device).repeat_interleave(cfg.ipc))
        plan = plan_unroll(n, 1, cfg.batch_syn or n, splits.image_shape[1:],
                           cfg.dsa_strategy if cfg.dsa and not cfg.no_aug else None,
                           torch.Generator().manual_seed(0), texture_spec=cfg.texture_spec)
        theta = store.load(store.indices()[0])[cfg.min_start_epoch].to(device, torch.float32)
        problem = MatchProblem(student, theta, theta, labels, plan)
        lr = torch.tensor(0.01, device=device)  # the graph's size does not depend on it
        return step_graph_bytes(problem, images, lr) * cfg.syn_steps


def choose(cfg, splits: DatasetSplits, store: TrajectoryStore,
           student: Callable[[], FlatModel] | None = None) -> tuple[str, str]:
    """(method, why) for a settled config whose --gradient is auto; `student` gives the run's
    network when the memory has to be measured (default: one built for the measurement)."""
    if cfg.gradient_memory:
        return "lean", "--gradient_memory keeps part of the lean walk's graphs"
    if cfg.compile:
        return "lean", "--compile runs the lean walk's steps"
    device = torch.device(cfg.device)
    if cuda_graphs.wanted(cfg.cuda_graphs, device.type, cfg.compile) and not cfg.texture:
        return "lean", "on CUDA the lean walk's steps replay as CUDA graphs (the faster method there)"
    need = unroll_bytes(cfg, splits, store, student() if student is not None else None)
    free = available_bytes(device)
    gb = lambda b: f"{b / 2**30:.3g} GB"  # noqa: E731
    if free is None:
        return "lean", f"the free memory cannot be read; the unroll would keep {gb(need)}"
    budget = MEMORY_SHARE * free
    if need <= budget:
        return "unroll", (f"the plain unroll's graph ({cfg.syn_steps} steps, {gb(need)}) fits "
                          f"{MEMORY_SHARE:g} of the {gb(free)} available ({gb(budget)}); "
                          "the faster method on this device")
    return "lean", (f"the plain unroll's graph ({cfg.syn_steps} steps, {gb(need)}) exceeds "
                    f"{MEMORY_SHARE:g} of the {gb(free)} available ({gb(budget)}): the lean "
                    "walk keeps one step's graph")


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build the CPU kernels with: $CXX where set (None if it
    is not an executable), else the first of g++, c++, clang++ on PATH; None when there is
    none."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((path for path in map(shutil.which, ("g++", "c++", "clang++")) if path), None)


def choose_compile(cfg, splits: DatasetSplits, store: TrajectoryStore,
                   student: Callable[[], FlatModel] | None = None) -> tuple[bool, str]:
    """(on, why) for a settled config whose --compile is auto and whose gradient method is
    settled; `student` gives the run's network (default: one built here)."""
    if cfg.gradient != "lean":
        return False, "the plain unroll runs (a compiled graph cannot be differentiated twice)"
    if torch.device(cfg.device).type != "cpu":
        return False, "compiled steps were measured on CPUs only (CUDA replays CUDA graphs)"
    if cfg.autocast != "off" or cfg.texture:
        return False, "--autocast and --texture keep the eager steps"
    net = student() if student is not None else run_student(cfg, splits, store)
    if not net.batch_independent:
        return False, "the network has batch statistics, which torch.func cannot trace"
    if cxx_compiler() is None:
        return False, "no C++ compiler for inductor ($CXX, g++, c++ or clang++)"
    need = unroll_bytes(cfg, splits, store, net)
    size = f"the unroll's graph would be {need / 2**30:.3g} GB"
    if need < COMPILE_FROM_BYTES:
        return False, (f"a small problem ({size}, under {COMPILE_FROM_BYTES / 2**30:g} GB): a "
                       "minute of compiling would not pay back")
    return True, (f"a large lean walk on a CPU ({size}): compiled steps are 1.15-1.3x faster, "
                  "after a minute or two of compiling (seconds with a warm inductor cache)")
