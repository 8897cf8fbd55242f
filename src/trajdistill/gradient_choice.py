"""`--gradient auto` (the default): which exact gradient a run computes, chosen by memory.

Both methods give the same gradient (tests/test_matching.py: 1e-8 in float64); they differ
in time and memory (docs/performance.md):
- `unroll`, the plain autograd unroll, keeps every unrolled step's graph: memory grows with
  syn_steps, and on a CPU it is the faster of the two (the lean walk recomputes each step's
  forward and backward pass on the way back);
- `lean`, the walk back, keeps one step's graph: memory flat in syn_steps. On a GPU its
  steps replay as CUDA graphs, which makes it the faster one there.
So: the lean walk where its CUDA graphs run, or where --compile or --gradient_memory ask for
it; elsewhere the plain unroll when its whole graph (one step's saved tensors, measured, times
syn_steps) fits MEMORY_SHARE of the memory available now, and the lean walk when it does not.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from . import cuda_graphs
from .data.base import DatasetSplits
from .experts import TrajectoryStore
from .initial import run_student, syn_shape
from .matching import MatchProblem, plan_unroll, step_graph_bytes
from .models import FlatModel

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
