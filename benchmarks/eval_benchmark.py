"""Evaluation speed: K networks trained one at a time vs together (vmap over stacked params).

    OMP_NUM_THREADS=1 python benchmarks/eval_benchmark.py [--device cuda] [--repeats 3]

One JSON line per case: the median wall time of each way over `repeats` runs (same seeds,
so both train exactly the same networks), their ratio, and whether the accuracies agree.
Cases: the embedded digits (ConvNetD2, 8x8) and the real CIFAR-10 subset
(../shared/data/cifar10-subset, ConvNet depth 3 width 128, 32x32) at 1 and 10 images
per class, 5 evaluation networks, a short schedule (the cost per epoch is what matters).

Measured (2-core CPU shared with other jobs, OMP_NUM_THREADS=1, torch 2.13, 10 epochs,
3 repeats; `python benchmarks/eval_benchmark.py`):

    case            ipc  sequential  batched  speedup  same accuracies
    digits            1     0.93 s    0.89 s    1.04x  yes
    digits           10     5.48 s    6.74 s    0.81x  yes
    cifar10-subset    1    24.7 s    23.7 s     1.04x  4 of 5 (1 test image apart in the 5th)
    cifar10-subset   10    70.4 s   103.7 s     0.68x  3 of 5 (the others 1 test image apart)

So on CPU the batched trainer is at best even and loses as the set grows: `--eval_batched
auto` keeps it off on CPU and on for CUDA devices (not measured here: no GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from trajdistill.data import load_dataset
from trajdistill.baselines import random_real
from trajdistill.evaluate import (EvalConfig, lr_schedule, network_seed, train_and_test,
                                  train_and_test_batched)
from trajdistill.precision import set_tf32, tf32_requested

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def measure(name, splits, model, ipc, epochs, num_eval, device, repeats):
    images, labels = random_real(splits, ipc, seed=0)
    cfg = EvalConfig(num_eval=num_eval, epoch_eval_train=epochs, device=device)
    schedule = lr_schedule([0.01], epochs, 0)
    seeds = [network_seed(0, k) for k in range(num_eval)]
    times = {"sequential": [], "batched": []}
    accs = {}
    for _ in range(repeats):
        for way in ("sequential", "batched"):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            if way == "sequential":
                res = [train_and_test(model, images, labels, splits, schedule, cfg, s) for s in seeds]
            else:
                res = train_and_test_batched(model, images, labels, splits, schedule, cfg, seeds)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[way].append(time.perf_counter() - t)
            accs[way] = [round(r.accuracy, 4) for r in res]
    seq, bat = statistics.median(times["sequential"]), statistics.median(times["batched"])
    return {"case": name, "model": model, "ipc": ipc, "images": len(labels), "epochs": epochs,
            "num_eval": num_eval, "device": device, "threads": torch.get_num_threads(),
            "repeats": repeats, "sequential_s": round(seq, 3), "batched_s": round(bat, 3),
            "speedup": round(seq / bat, 3), "accuracies_sequential": accs["sequential"],
            "accuracies_batched": accs["batched"],
            "same_accuracy": accs["sequential"] == accs["batched"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num_eval", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10],
                    help="images per class of each case (50 takes ~6x as long as 10)")
    args = ap.parse_args()
    set_tf32(tf32_requested())  # as the command line does: exact float32 unless TRAJDISTILL_TF32=1
    digits = load_dataset("digits")
    cases = [("digits", digits, "ConvNetD2", ipc) for ipc in args.ipc]
    if CIFAR.exists():
        cifar = load_dataset("CIFAR10", CIFAR)
        cases += [("cifar10-subset", cifar, "ConvNet", ipc) for ipc in args.ipc]
    for name, splits, model, ipc in cases:
        print(json.dumps(measure(name, splits, model, ipc, args.epochs, args.num_eval,
                                 args.device, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
