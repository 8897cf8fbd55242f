"""Time and peak memory of one distillation iteration, per configuration and gradient mode.

    python benchmarks/step_benchmark.py                      # everything (about 15-30 min on 2 cores)
    python benchmarks/step_benchmark.py --configs A,C --modes lean --repeats 5
    python benchmarks/step_benchmark.py --device cuda        # peak = torch.cuda.max_memory_allocated
    python benchmarks/step_benchmark.py --configs A,C --modes unroll,stm,stm_compiled

Prints one JSON line per (configuration, mode); --out FILE also appends them to FILE.

Configurations (ConvNet width 128, depth 3, instance norm, 3x32x32, 10 classes, DSA on):
    A   ipc 10, syn_steps 20, batch_syn 100       B10/B20/B40/B80  ipc 10, syn_steps 10/20/40/80,
    C   ipc 1,  syn_steps 50, batch_syn 10                          batch_syn 100 (B20 == A)
Modes:
    unroll  the plain autograd unroll (reference; memory grows with syn_steps)
    lean    the lean walk back (trajdistill.matching.lean_unroll, the default)
    stm     a whole STM iteration: held-out next-epoch loss (matching_loss, no graph) + the
            lean gradient + the image / lr SGD updates; `heldout_share` = held-out / total
    stm_unroll  a whole STM iteration with the plain unroll's gradient
    stm_auto    a whole STM iteration with `distill`'s default gradient (--gradient auto,
            trajdistill/gradient_choice.py): the plain unroll where its graph fits a quarter of
            the available memory on a CPU, else the lean walk (on CUDA: graphed), compiled
            (--compile auto) where it is a lean walk on a CPU whose unroll would keep 1 GB or
            more; `gradient` says which ran, `compile` whether compiled, `unroll_graph_gb` what
            the unroll would keep
    lean_hybrid, stm_hybrid       the same with --gradient_memory (--gradient-memory GB, default
            8): the last steps that fit keep their graphs (MatchProblem.keep_steps)
    lean_graphed, stm_graphed     the same with the steps replayed as recorded CUDA graphs
            (MatchProblem.cuda_graphs, trajdistill/cuda_graphs.py; CUDA only: the default of a
            distillation on CUDA); `warmup_seconds` includes the recordings
    lean_bf16, stm_bf16, lean_graphed_bf16, stm_graphed_bf16    the same with the student's
            forward passes in bfloat16 (MatchProblem.autocast, `distill --autocast bf16`:
            inexact, see precision_drift.py); `autocast` says which
    lean_compiled, stm_compiled   the same through torch.compile'd step functions
            (MatchProblem.compile, kernels.CompiledSteps); `compile_seconds` = the warm-up
            iteration (compilation of every graph + two steps), `fxgraph_cache` = inductor's
            FX graph cache hits / misses in that process (TORCHINDUCTOR_CACHE_DIR, default
            /tmp/torchinductor_$USER: a second process with a warm cache compiles faster)

After each configuration a summary line gives, from the same run, each other mode's seconds
per iteration over the plain unroll's (issue 13's in-run target: stm at most 0.5).

On CUDA float32 is exact (TF32 off, the tool's default) unless TRAJDISTILL_TF32=1; each line
says which (`tf32`).

Each (configuration, mode) runs in a fresh subprocess (`--one CONFIG MODE`), so its peak
resident memory (VmHWM, or ru_maxrss) is its own. The modes' order is rotated from one
configuration to the next, so that a slow period of a shared machine does not always hit the
same mode. Seconds per iteration: median of --repeats iterations after one warm-up iteration
(the warm-up runs min(syn_steps, 2) steps of the same shapes: it fills allocator and oneDNN
caches). Each line also gives the CPU seconds (user + sys) per iteration and the load average,
since wall time on a shared machine depends on the other processes. The children run with
OMP_WAIT_POLICY=PASSIVE unless it is set (--omp-wait-policy): with OpenMP's default spinning,
a machine shared with other busy processes made the small ops of a step up to 5x slower. Like
the command line they keep freed memory for reuse (trajdistill/host_memory.py; `malloc` says
so, `minor_faults` counts the process's page faults); TRAJDISTILL_MALLOC=default leaves
glibc's settings, to compare.

The plain unroll needs about 0.85 GB + 3.7 MB x syn_steps x batch_syn (the issue's
measurements): a (config, unroll) whose estimate exceeds --max-unroll-gb (default: 80 % of the
available memory) is not run and is reported as skipped, with the estimate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

from trajdistill import flags as kinds

CONFIGS = {  # name: (ipc, syn_steps, batch_syn)
    "A": (10, 20, 100),
    "B10": (10, 10, 100),
    "B20": (10, 20, 100),
    "B40": (10, 40, 100),
    "B80": (10, 80, 100),
    "C": (1, 50, 10),
}
DEFAULT_CONFIGS = ["A", "B10", "C", "B40", "B80"]  # B20 is A: the sweep is B10, A, B40, B80
MODES = ["unroll", "lean", "stm"]  # the default; the compiled modes are asked for by name
ALL_MODES = MODES + ["stm_unroll", "stm_auto", "lean_compiled", "stm_compiled", "lean_hybrid", "stm_hybrid",
                     "lean_graphed", "stm_graphed", "lean_bf16", "stm_bf16",
                     "lean_graphed_bf16", "stm_graphed_bf16"]
NUM_CLASSES, IMAGE = 10, (3, 32, 32)


def unroll_estimate_gb(syn_steps: int, batch_syn: int) -> float:
    return 0.85 + 0.0037 * syn_steps * batch_syn


def available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def peak_rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------- one child

def run_one(config: str, mode: str, repeats: int, device: str, threads: int, seed: int,
            chunk: int | None = None, steps_override: int | None = None,
            gradient_memory: float = 8.0) -> dict:
    import torch

    from trajdistill.augment import DEFAULT_STRATEGY
    from trajdistill.matching import (GRADIENT_METHODS, MatchProblem, matching_loss,
                                      kept_steps, plan_unroll)
    from trajdistill.models import FlatModel, build_model

    from trajdistill.precision import AUTOCAST_DTYPES, set_tf32, tf32_requested
    from trajdistill.host_memory import keep_freed_memory

    malloc = "keep" if keep_freed_memory() else "default"  # as the command line does
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    set_tf32(tf32_requested())  # as the command line does: exact float32 unless TRAJDISTILL_TF32=1
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    ipc, syn_steps, batch_syn = CONFIGS[config]
    syn_steps = steps_override or syn_steps
    n = NUM_CLASSES * ipc
    student = FlatModel.wrap(build_model("ConvNet", IMAGE[0], NUM_CLASSES, IMAGE[1:]).to(dev))
    start = student.flat_params()
    target = start + 0.01 * torch.randn_like(start)
    heldout_start = start + 0.01 * torch.randn_like(start)
    labels = torch.arange(NUM_CLASSES, device=dev).repeat_interleave(ipc)
    images = torch.randn(n, *IMAGE, device=dev).requires_grad_(True)
    log_lr = torch.tensor(math.log(0.01), device=dev).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=1000.0, momentum=0.5)
    opt_lr = torch.optim.SGD([log_lr], lr=0.01, momentum=0.5)
    gen = torch.Generator().manual_seed(seed)

    base, *variants = mode.split("_")
    compiled, hybrid, graphed = "compiled" in variants, "hybrid" in variants, "graphed" in variants
    autocast = "bf16" if "bf16" in variants else "off"
    kept: dict = {}  # hybrid modes: kept steps and one step's bytes, measured once

    def problem(steps: int, begin: torch.Tensor) -> MatchProblem:
        plan = plan_unroll(n, steps, batch_syn, IMAGE[1:], DEFAULT_STRATEGY, gen)
        p = MatchProblem(student, begin, target, labels, plan, chunk=chunk, compile=compiled,
                         cuda_graphs=graphed, autocast=AUTOCAST_DTYPES[autocast])
        if hybrid:
            if not kept:
                kept["steps"], kept["bytes"] = kept_steps(gradient_memory, syn_steps, p,
                                                          images, log_lr.detach().exp())
            p.keep_steps = kept["steps"]
        return p

    method = "unroll" if mode == "unroll" or "unroll" in variants else "lean"
    if "auto" in variants:  # distill's own rule (gradient_choice.py), on this problem
        from trajdistill.gradient_choice import MEMORY_SHARE, available_bytes
        from trajdistill.matching import step_graph_bytes
        need = step_graph_bytes(problem(1, start), images, log_lr.detach().exp()) * syn_steps
        free = available_bytes(dev)
        graphed = cuda
        method = ("unroll" if not cuda and free is not None and need <= MEMORY_SHARE * free
                  else "lean")
        # and --compile auto (gradient_choice.choose_compile): a large lean walk on a CPU
        from trajdistill.gradient_choice import COMPILE_FROM_BYTES, cxx_compiler
        compiled = (method == "lean" and not cuda and need >= COMPILE_FROM_BYTES
                    and cxx_compiler() is not None)
    grad_fn = GRADIENT_METHODS[method]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def iteration(steps: int) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        heldout = 0.0
        if base == "stm":
            matching_loss(problem(steps, heldout_start), images, log_lr.detach().exp())
            sync()
            heldout = time.perf_counter() - t0
        result = grad_fn(problem(steps, start), images, log_lr)
        opt_img.zero_grad(set_to_none=True)
        images.grad = result.grad_images
        opt_img.step()
        opt_lr.zero_grad(set_to_none=True)
        log_lr.grad = result.grad_log_lr.reshape(log_lr.shape)
        opt_lr.step()
        sync()
        return time.perf_counter() - t0, heldout

    w0 = time.perf_counter()
    iteration(min(syn_steps, 2))  # warm-up (with compiled modes: the compilation)
    warmup = time.perf_counter() - w0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, cpus, heldouts = [], [], []
    for _ in range(repeats):
        c0 = cpu_seconds()
        wall, heldout = iteration(syn_steps)
        cpus.append(cpu_seconds() - c0)
        walls.append(wall)
        heldouts.append(heldout)
    out = {"config": config, "mode": mode, "ipc": ipc, "syn_steps": syn_steps,
           "batch_syn": batch_syn, "device": str(dev), "threads": threads,
           "chunk": None if mode == "unroll" else  # images per network call (lean walk)
           MatchProblem(student, start, target, labels, None, chunk=chunk)
           .chunk_size(batch_syn, images.shape), "repeats": repeats, "seconds": round(statistics.median(walls), 3),
           "seconds_all": [round(w, 3) for w in walls],
           "cpu_seconds": round(statistics.median(cpus), 3), "autocast": autocast}
    out["warmup_seconds"] = round(warmup, 3)
    out["gradient"] = method
    out["malloc"] = malloc  # freed memory kept (host_memory.py) or glibc's defaults
    import resource
    out["minor_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # whole process
    if "auto" in variants:
        out["unroll_graph_gb"] = round(need / 2**30, 3)
    if cuda:
        out["tf32"] = torch.backends.cudnn.allow_tf32
    if "auto" in variants:
        out["compile"] = compiled
    if compiled:
        from torch._dynamo.utils import counters
        out["compile_seconds"] = round(warmup, 1)
        out["fxgraph_cache"] = {"hit": counters["inductor"]["fxgraph_cache_hit"],
                                "miss": counters["inductor"]["fxgraph_cache_miss"]}
    if hybrid:
        out.update(gradient_memory_gb=gradient_memory, keep_steps=kept["steps"],
                   step_graph_mb=round(kept["bytes"] / 2**20, 1))
    if base == "stm":
        out["heldout_seconds"] = round(statistics.median(heldouts), 3)
        out["heldout_share"] = round(sum(heldouts) / sum(walls), 3)
    if cuda:
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    out["peak_rss_gb"] = round(peak_rss_gb(), 3)
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    out["torch"] = torch.__version__
    return out


# ----------------------------------------------------------------------------- driver

def names_of(ap: argparse.ArgumentParser, kind: str, text: str, known) -> list[str]:
    """The names of a comma-separated flag, each one of `known` (else argparse's one-line
    error naming it)."""
    names = [name for name in text.split(",") if name]
    for name in names:
        if name not in known:
            ap.error(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    return names


def emit(line: dict, out) -> None:
    print(json.dumps(line), flush=True)
    if out:
        out.write(json.dumps(line) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {','.join(CONFIGS)}")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, from {','.join(ALL_MODES)}")
    ap.add_argument("--repeats", type=kinds.positive_int, default=5, help="timed iterations (median reported)")
    ap.add_argument("--unroll-repeats", type=kinds.positive_int, default=None,
                    help="timed iterations for the unroll mode of configs with syn_steps >= 40 "
                         "(default: --repeats)")
    ap.add_argument("--device", type=kinds.device, default="cpu")
    ap.add_argument("--threads", type=kinds.positive_int, default=2)
    ap.add_argument("--seed", type=kinds.seed, default=0)
    ap.add_argument("--max-unroll-gb", type=kinds.positive_float, default=None,
                    help="skip the unroll mode where its memory estimate exceeds this "
                         "(default: 80%% of MemAvailable; ignored on cuda)")
    ap.add_argument("--chunk", type=kinds.non_negative_int, default=None,
                    help="images per network call in the lean walk (default: automatic, 0: none)")
    ap.add_argument("--steps", type=kinds.positive_int, default=None,
                    help="override every config's syn_steps")
    ap.add_argument("--gradient-memory", type=kinds.non_negative_float, default=8.0,
                    help="GB of kept step graphs for the *_hybrid modes (--gradient_memory)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the children unless already set (PASSIVE: waiting "
                         "OpenMP threads sleep instead of spinning; on a shared machine spinning "
                         "threads made small ops up to 5x slower)")
    ap.add_argument("--out", type=kinds.output_file, default=None, help="also append the JSON lines to this file")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(*args.one, args.repeats, args.device, args.threads, args.seed,
                                 args.chunk, args.steps, args.gradient_memory)), flush=True)
        return 0

    configs = names_of(ap, "config", args.configs, CONFIGS)
    modes = names_of(ap, "mode", args.modes, ALL_MODES)
    if any("_graphed" in m for m in modes) and not args.device.startswith("cuda"):
        ap.error("the *_graphed modes record CUDA graphs: they need --device cuda")
    limit = args.max_unroll_gb if args.max_unroll_gb is not None else 0.8 * available_gb()
    out = open(args.out, "a") if args.out else None
    failed = 0
    for k, config in enumerate(configs):
        ipc, steps, batch = CONFIGS[config]
        order = modes[k % len(modes):] + modes[:k % len(modes)]  # rotate the order
        seconds = {}
        for mode in order:
            repeats = args.repeats
            if mode == "unroll" and steps >= 40 and args.unroll_repeats:
                repeats = args.unroll_repeats
            est = unroll_estimate_gb(steps, batch)
            if mode == "unroll" and not args.device.startswith("cuda") and est > limit:
                line = {"config": config, "mode": mode, "ipc": ipc, "syn_steps": steps,
                        "batch_syn": batch, "skipped": True,
                        "reason": f"estimated peak {est:.1f} GB > limit {limit:.1f} GB",
                        "estimated_peak_gb": round(est, 1)}
            else:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", config, mode,
                       "--repeats", str(repeats), "--device", args.device,
                       "--threads", str(args.threads), "--seed", str(args.seed)]
                if args.chunk is not None:
                    cmd += ["--chunk", str(args.chunk)]
                if args.steps:
                    cmd += ["--steps", str(args.steps)]
                cmd += ["--gradient-memory", str(args.gradient_memory)]
                env = dict(os.environ)
                env.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode == 0 and lines:
                    line = json.loads(lines[-1])
                else:
                    failed += 1
                    line = {"config": config, "mode": mode, "failed": True,
                            "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
            if "seconds" in line:
                seconds[mode] = line["seconds"]
            emit(line, out)
        if "unroll" in seconds and len(seconds) > 1:
            emit({"config": config, "summary": True, **{
                f"{m}_over_unroll": round(seconds[m] / seconds["unroll"], 3)
                for m in ALL_MODES[1:] if m in seconds}}, out)
    if out:
        out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
