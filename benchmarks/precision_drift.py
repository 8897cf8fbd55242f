"""How far the matching gradient moves from float64 at each arithmetic precision.

    python benchmarks/precision_drift.py                          # configs A and C, fp32 and bf16
    python benchmarks/precision_drift.py --configs C --precisions fp32,bf16 --device cuda
    python benchmarks/precision_drift.py --device cuda --precisions fp32,tf32,bf16

The problem is step_benchmark.py's (ConvNet width 128, depth 3, instance norm, 3x32x32,
10 classes, DSA on, random images, the expert's target 0.01 away from the start), built once
in float64 and cast: every precision sees the same start, target, images and plan. The
reference is the lean walk in float64, which equals the plain autograd unroll to 1e-8
(tests/test_matching.py; the float64 unroll of config A would need about 14 GB). Precisions:

    fp32   float32 throughout (the tool's default)
    bf16   float32 with the student's forward passes under torch.autocast(bfloat16)
           (`distill --autocast bf16`)
    tf32   float32 with TF32 convolutions and matrix products (CUDA only, TRAJDISTILL_TF32=1)

One JSON line per (config, precision): the loss, the relative error of dL/dX and dL/dlog(lr)
against float64 (||g - g64|| / ||g64||), the cosine of dL/dX with float64's, and the seconds of
the gradient. Float32's own drift is large (about 1e-2: README, --compile): a ReLU input within
rounding of 0 switches side. A precision's drift is best read against fp32's in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from trajdistill import flags as kinds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_benchmark import CONFIGS, IMAGE, NUM_CLASSES, names_of  # noqa: E402

PRECISIONS = ["fp32", "bf16", "tf32"]


def problem_in(dtype: torch.dtype, config: str, seed: int, device: torch.device, autocast=None):
    """The config's matching problem in `dtype`, the same numbers whatever the dtype."""
    from trajdistill.augment import DEFAULT_STRATEGY
    from trajdistill.matching import MatchProblem, plan_unroll
    from trajdistill.models import FlatModel, build_model

    ipc, syn_steps, batch_syn = CONFIGS[config]
    n = NUM_CLASSES * ipc
    torch.manual_seed(seed)
    net = build_model("ConvNet", IMAGE[0], NUM_CLASSES, IMAGE[1:]).double()
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *IMAGE, generator=gen, dtype=torch.float64)
    start = FlatModel.wrap(net).flat_params()
    student = FlatModel.wrap(net.to(device, dtype))
    target = start + 0.01 * torch.randn(start.shape, generator=gen, dtype=torch.float64)
    plan = plan_unroll(n, syn_steps, batch_syn, IMAGE[1:], DEFAULT_STRATEGY, gen)
    labels = torch.arange(NUM_CLASSES, device=device).repeat_interleave(ipc)
    problem = MatchProblem(student, start.to(device, dtype), target.to(device, dtype), labels,
                           plan, autocast=autocast)
    log_lr = torch.tensor(math.log(0.01), dtype=dtype, device=device)
    return problem, images.to(device, dtype), log_lr


def measure(config: str, precisions: list[str], seed: int, device: torch.device):
    from trajdistill.matching import lean_unroll
    from trajdistill.precision import set_tf32

    def gradient(dtype, autocast=None):
        problem, images, log_lr = problem_in(dtype, config, seed, device, autocast)
        t0 = time.perf_counter()
        result = lean_unroll(problem, images, log_lr)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - t0

    set_tf32(False)
    ref, seconds64 = gradient(torch.float64)
    yield {"config": config, "precision": "fp64", "loss": ref.loss, "seconds": round(seconds64, 3)}
    gx64, glr64 = ref.grad_images.flatten(), ref.grad_log_lr.double()
    for name in precisions:
        set_tf32(name == "tf32")
        result, seconds = gradient(torch.float32, torch.bfloat16 if name == "bf16" else None)
        set_tf32(False)
        gx = result.grad_images.flatten().double().to(gx64.device)
        glr = result.grad_log_lr.double().to(glr64.device)
        yield {"config": config, "precision": name, "loss": result.loss,
               "loss_rel": abs(result.loss - ref.loss) / abs(ref.loss),
               "grad_images_rel": float((gx - gx64).norm() / gx64.norm()),
               "grad_log_lr_rel": float((glr - glr64).abs().max() / glr64.abs().max()),
               "grad_images_cos": float(torch.nn.functional.cosine_similarity(gx, gx64, dim=0)),
               "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="A,C", help=f"comma-separated, from {','.join(CONFIGS)}")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help=f"comma-separated, from {','.join(PRECISIONS)} (tf32: CUDA only)")
    ap.add_argument("--device", type=kinds.device, default="cpu")
    ap.add_argument("--threads", type=kinds.positive_int, default=2)
    ap.add_argument("--seed", type=kinds.seed, default=0)
    ap.add_argument("--out", type=kinds.output_file, default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    configs = names_of(ap, "config", args.configs, CONFIGS)
    precisions = names_of(ap, "precision", args.precisions, PRECISIONS)
    if "tf32" in precisions and not args.device.startswith("cuda"):
        ap.error("--precisions tf32 needs --device cuda (TF32 is a CUDA setting)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = open(args.out, "a") if args.out else None
    for config in configs:
        for line in measure(config, precisions, args.seed, device):
            line.update(device=str(device), torch=torch.__version__)
            print(json.dumps(line), flush=True)
            if out:
                out.write(json.dumps(line) + "\n")
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
