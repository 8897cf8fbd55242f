"""What reading the expert trajectory costs an iteration (issue 13: "the per-iteration
trajectory load (memory-mapped)").

    python benchmarks/trajectory_load_benchmark.py                  # warm page cache
    python benchmarks/trajectory_load_benchmark.py --drop-caches    # first a cold read (root)
    python benchmarks/trajectory_load_benchmark.py --device cuda    # the rows copied to the GPU

An expert file of config A's size (ConvNet width 128, depth 3, 3x32x32, 10 classes: 320,010
parameters, 51 epochs, float32: 65 MB) is written once to --dir, then read as the distillation
reads it (`TrajectoryStore.load`: torch.load with mmap=True and weights_only=True, kept open per
expert) and the four rows an STM iteration takes (held-out start and target, matching start and
target) are moved to --device in float32 (`Distiller.problem`) and read once (on the CPU a
row stays a view of the mapped file until used). One JSON line per read: the
milliseconds to open the file and to move the four rows. --drop-caches empties the kernel's page
cache before the first read (root only), so that read comes from the disk, as an expert's first
use in a run does when the buffer is not cached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from trajdistill import flags as kinds

PARAMS, EPOCHS = 320_010, 50


def drop_page_cache() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    from trajdistill.io import atomic_save, safe_load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=kinds.output_dir, default="/tmp/trajdistill_load_bench")
    ap.add_argument("--device", type=kinds.device, default="cpu")
    ap.add_argument("--reads", type=kinds.positive_int, default=3)
    ap.add_argument("--drop-caches", action="store_true",
                    help="empty the page cache before the first read (needs root)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    path = os.path.join(args.dir, "expert_000.pt")
    if not os.path.exists(path):
        os.makedirs(args.dir, exist_ok=True)
        atomic_save({"trajectory": torch.randn(EPOCHS + 1, PARAMS), "meta": "{}"}, path)
    for k in range(args.reads):
        cold = k == 0 and args.drop_caches and drop_page_cache()
        t0 = time.perf_counter()
        trajectory = safe_load(path, mmap=True)["trajectory"]
        t1 = time.perf_counter()
        rows = [trajectory[e].to(device, torch.float32) for e in (10, 11, 20, 21)]
        for row in rows:  # on the CPU a row is a view of the mapped file: reading it faults it in
            row.sum().item()
        t2 = time.perf_counter()
        print(json.dumps({"read": k, "cold_page_cache": cold, "device": str(device),
                          "open_ms": round(1e3 * (t1 - t0), 2),
                          "four_rows_ms": round(1e3 * (t2 - t1), 2),
                          "row_mb": round(rows[0].numel() * 4 / 2**20, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
