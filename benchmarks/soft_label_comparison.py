"""Same-budget comparison of hard vs learnable soft labels (issue 10) on the real CIFAR-10
subset (../shared/data/cifar10-subset: 500 train / 100 test images per class), with one
buffer of experts shared by every run.

    OMP_NUM_THREADS=1 python benchmarks/soft_label_comparison.py --out results.jsonl \\
        --work /tmp/softcmp [--ipcs 10 1] [--iterations 300] ...

Cases, for every ipc: STM (its own stage schedule) and original-MTT with DATM's aligned
windows, each with hard labels and with soft labels (--label_init expert). Everything else
is the same in a pair: initial images (--pix_init real, same seed), syn_steps, batch_syn,
lrs, iterations, evaluation. synthetic_best.pt is chosen on the validation split; its test
accuracy is what is compared.

One JSON line per finished run (appended and flushed as soon as it ends, so a cut-short
benchmark keeps what it finished; cases already in --out are skipped on a rerun): the case,
the validation and test accuracy (mean ± std over the evaluation networks) of the chosen set,
its iteration, and the wall time. A first line records the experts.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.experts import ExpertConfig, train_experts

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def cases(ipcs: list[int]):
    for ipc in ipcs:
        for method in ("STM", "original-MTT"):
            for soft in (False, True):
                yield {"ipc": ipc, "method": method, "soft_labels": soft,
                       "name": f"ipc{ipc}-{'STM' if method == 'STM' else 'MTT-aligned'}-"
                               f"{'soft' if soft else 'hard'}"}


def batch_syn(case: dict, a: argparse.Namespace) -> int | None:
    """The --batch_syn value that goes with this case's ipc (None: the whole set)."""
    return a.batch_syn[a.ipcs.index(case["ipc"])] if a.batch_syn else None


def distill_config(case: dict, a: argparse.Namespace) -> DistillConfig:
    windows = ({"start_schedule": "aligned", "min_start_epoch": 0,
                "current_max_start_epoch": max(1, a.max_start_epoch // 2),
                "expansion_end_epoch": max(1, a.iterations // 2)}
               if case["method"] == "original-MTT" else {"init_epoch": 1, "min_duration": 20})
    return DistillConfig(method=case["method"], ipc=case["ipc"], syn_steps=a.syn_steps,
                         expert_epochs=a.expert_epochs, max_start_epoch=a.max_start_epoch,
                         lr_img=a.lr_img, lr_lr=a.lr_lr, lr_teacher=[a.lr_teacher],
                         pix_init="real", iterations=a.iterations, batch_syn=batch_syn(case, a),
                         eval_it=max(1, a.iterations // a.evals), num_eval=a.num_eval,
                         epoch_eval_train=a.epoch_eval_train, soft_labels=case["soft_labels"],
                         lr_y=a.lr_y, checkpoint_every=max(1, a.iterations // 4), seed=a.seed,
                         **windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="buffers and run directories go here")
    p.add_argument("--data_path", default=str(CIFAR))
    p.add_argument("--model", default="ConvNetW32", help="expert/student network")
    p.add_argument("--num_experts", type=int, default=3)
    p.add_argument("--train_epochs", type=int, default=10)
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 1])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--evals", type=int, default=3, help="evaluations per run (best on validation)")
    p.add_argument("--syn_steps", type=int, default=20)
    p.add_argument("--batch_syn", type=int, nargs="+", default=None,
                   help="minibatch of the unrolled student, one value per --ipcs entry "
                   "(default: the whole set)")
    p.add_argument("--expert_epochs", type=int, default=2)
    p.add_argument("--max_start_epoch", type=int, default=6)
    p.add_argument("--lr_img", type=float, default=1000)
    p.add_argument("--lr_lr", type=float, default=1e-5)
    p.add_argument("--lr_teacher", type=float, default=0.01)
    p.add_argument("--lr_y", type=float, default=2.0)
    p.add_argument("--num_eval", type=int, default=5)
    p.add_argument("--epoch_eval_train", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.batch_syn and len(a.batch_syn) != len(a.ipcs):
        p.error("--batch_syn needs one value per --ipcs entry")

    work, out = Path(a.work), Path(a.out)
    splits = load_dataset("CIFAR10", a.data_path, zca=True)
    buf = work / "buffer"
    t = time.perf_counter()
    train_experts(splits, ExpertConfig(model=a.model, train_epochs=a.train_epochs,
                                       num_experts=a.num_experts, seed=a.seed), buf, progress=False)
    store = open_buffer(buf, splits)
    done = {json.loads(l).get("case") for l in out.read_text().splitlines()} if out.exists() else set()
    with open(out, "a") as f:
        if "experts" not in done:
            accs = [store.summary(i)["test_accuracy"] for i in store.indices()]
            f.write(json.dumps({"case": "experts", "model": a.model, "num_experts": len(accs),
                                "train_epochs": a.train_epochs, "test_accuracy": accs,
                                "seconds": time.perf_counter() - t, "args": vars(a)}) + "\n")
            f.flush()
        for case in cases(a.ipcs):
            if case["name"] in done:
                continue
            cfg = distill_config(case, a)
            t = time.perf_counter()
            best = Distiller(cfg, splits, store, work / case["name"], progress=False).run()
            f.write(json.dumps({"case": case["name"], "ipc": case["ipc"], "method": case["method"],
                                "start_schedule": cfg.start_schedule,
                                "soft_labels": case["soft_labels"], "batch_syn": cfg.batch_syn,
                                "syn_steps": cfg.syn_steps, "iterations": cfg.iterations,
                                "val_mean": best.get("val_accuracy"), "val_std": best.get("val_std"),
                                "test_mean": best["accuracy"], "test_std": best["std"],
                                "best_iteration": best["iteration"], "num_eval": cfg.num_eval,
                                "seconds": time.perf_counter() - t}) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
