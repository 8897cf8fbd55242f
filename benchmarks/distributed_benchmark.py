"""Distillation throughput on K processes (torchrun, torch.distributed): config A on 1 and 2.

    python benchmarks/distributed_benchmark.py --work /tmp/distbench            # CPU, gloo
    python benchmarks/distributed_benchmark.py --work /tmp/distbench --device cuda --ks 1

Config A of step_benchmark.py on real data: the CIFAR-10 subset of ../shared/data, ConvNet
(width 128, depth 3, instance norm), 10 images per class, syn_steps 20, batch_syn 100, DSA,
whole STM iterations (held-out loss + lean gradient + update) through the real command line
(`torchrun --nproc_per_node=K -m trajdistill.cli distill ...`). Every K matches the same
meta-batch of --slots trajectories per iteration, so the work per iteration is the same and
only its sharing changes. Each process gets --threads threads (default 1: on CPU the K
processes then use K cores).

Seconds per iteration: the median of the `seconds` that metrics.jsonl logs for every
iteration after the first (warm-up). One JSON line per K, then one with the scaling ratio
(iterations per second at the largest K over those at K = 1); --out FILE appends them too.
The experts (2 x 2 epochs) are trained once into --work and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"
DATA = ["--dataset", "CIFAR10", "--model", "ConvNet"]
CONFIG_A = ["--ipc", "10", "--syn_steps", "20", "--batch_syn", "100", "--expert_epochs", "1",
            "--max_start_epoch", "1"]


def cli(k: int | None) -> list[str]:
    if k is None:
        return [sys.executable, "-m", "trajdistill.cli"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={k}", "-m", "trajdistill.cli"]


def env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def experts(work: Path, data_path: str, device: str) -> Path:
    buffers = work / "buffers"
    if not (buffers / "CIFAR10" / "ConvNet" / "expert_001.pt").exists():
        subprocess.run(cli(None) + ["buffer", *DATA, "--data_path", data_path, "--train_epochs",
                                    "2", "--num_experts", "2", "--device", device,
                                    "--buffer_path", str(buffers), "--quiet"],
                       env=env(os.cpu_count() or 1), check=True)
    return buffers


def run_k(k: int, a, buffers: Path) -> dict:
    run = Path(a.work) / f"run-K{k}-M{a.slots}-{int(time.time())}"
    t0 = time.perf_counter()
    subprocess.run(cli(k) + ["distill", *DATA, *CONFIG_A, "--data_path", a.data_path,
                             "--device", a.device, "--buffer_path", str(buffers),
                             "--num_trajectories", str(a.slots), "--Iteration", str(a.iterations),
                             "--eval_it", "0", "--run_dir", str(run), "--quiet"],
                   env=env(a.threads), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    seconds = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").open()]
    per_it = statistics.median(seconds[1:] if len(seconds) > 1 else seconds)
    return {"config": "A", "K": k, "num_trajectories": a.slots, "device": a.device,
            "threads_per_process": a.threads, "iterations": len(seconds),
            "seconds_per_iteration": round(per_it, 3),
            "iterations_per_second": round(1 / per_it, 5),
            "seconds_all": [round(s, 3) for s in seconds], "wall_seconds": round(wall, 1),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="folder for the experts and the runs")
    ap.add_argument("--data_path", default=str(CIFAR))
    ap.add_argument("--ks", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--slots", type=int, default=2, help="--num_trajectories (M) of every run")
    ap.add_argument("--iterations", type=int, default=3, help="iterations per run (1st: warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    a = ap.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    buffers = experts(Path(a.work), a.data_path, a.device)
    lines = [run_k(int(k), a, buffers) for k in a.ks.split(",")]
    if len(lines) > 1:
        lines.append({"scaling": round(lines[-1]["iterations_per_second"]
                                       / lines[0]["iterations_per_second"], 3),
                      "from_K": lines[0]["K"], "to_K": lines[-1]["K"],
                      "num_trajectories": a.slots, "device": a.device})
    for line in lines:
        print(json.dumps(line), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
