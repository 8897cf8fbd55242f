"""Galaxy distillation against its baselines on gz1 (issue 14), one JSON line per row.

    OMP_NUM_THREADS=1 python benchmarks/galaxy_experiment.py --buffer BUFFER_DIR \
        --rows mean random default best --out /work/bench-galaxies/gz1-32.jsonl

The data are ../shared/data/gz1 with elliptical / spiral / edge-on (--classes 0,1+2,3) at
--res px (central half). BUFFER_DIR holds experts made from exactly that data (see
README, "Galaxies"). Every row is evaluated the same way: --num_eval fresh networks of the
experts' model, --eval_epochs epochs, the galaxy DSA strategy, mean +- std of test accuracy.
A distillation row runs --iterations iterations and is evaluated on its last images with
its learned lr; baselines use --baseline_lr (`mean_autolr`: the class mean at the auto lr);
`saved:ROW@LR` evaluates the saved last images of an earlier row ROW at the fixed lr LR.

--eval_lrs L1 L2 ...: every row is evaluated at each of these lrs (a distilled row also at its
learned lr), the networks tested on the validation split too (trajdistill.validation: 10 % of
the training images, never copied into a distilled set); the row reports the test accuracy
at the lr with the best validation accuracy (`lr`, `acc`, `std`) and every lr's figures
(`sweep`). So each row gets its own tuned lr, chosen without the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.baselines import class_means, random_real
from trajdistill.evaluate import EvalConfig, evaluate_set, evaluate_sweep
from trajdistill.synthetic import SyntheticSet
from trajdistill.validation import default_validation

GZ1 = dict(labels="gz1_labels.csv", id_column="OBJID", label_column="CLASS", classes="0,1+2,3",
           class_names="elliptical,spiral,edge-on", crop="center-half")

# Distillation rows: DistillConfig overrides on top of COMMON.
COMMON = dict(syn_steps=20, dsa_strategy="galaxy", eval_it=0, checkpoint_every=10**9)
ROWS = {
    "default": dict(),                                              # the tool's defaults
    "default_mtt": dict(method="original-MTT"),
    "auto": dict(lr_teacher=["auto"]),
    "mean_auto": dict(pix_init="mean", lr_teacher=["auto"]),
    "mean_auto_lr100": dict(pix_init="mean", lr_teacher=["auto"], lr_img=100.0),
    "mean_auto_lr10": dict(pix_init="mean", lr_teacher=["auto"], lr_img=10.0),
    "mean_auto_adam": dict(pix_init="mean", lr_teacher=["auto"], img_optimizer="adam",
                           lr_img=0.01),
    "mean_auto_adam_mtt": dict(pix_init="mean", lr_teacher=["auto"], img_optimizer="adam",
                               lr_img=0.01, method="original-MTT"),
    "real_auto_adam": dict(lr_teacher=["auto"], img_optimizer="adam", lr_img=0.01),
    "mean_auto_adam_soft": dict(pix_init="mean", lr_teacher=["auto"], img_optimizer="adam",
                                lr_img=0.01, soft_labels=True),
    "real_auto_adam_soft": dict(lr_teacher=["auto"], img_optimizer="adam", lr_img=0.01,
                                soft_labels=True),
}


def evaluate(images, labels, splits, lrs, model, args, syn_steps=0):
    """Test accuracy at lrs; with --eval_lrs, at the best of them on the validation split."""
    cfg = EvalConfig(num_eval=args.num_eval, epoch_eval_train=args.eval_epochs,
                     dsa_strategy="galaxy", seed=args.seed)
    if not args.eval_lrs:
        r = evaluate_set(images, labels, splits, lrs, [model], cfg, syn_steps,
                         progress=False)[model]
        return {"acc": r["mean"], "std": r["std"], "accuracies": r["accuracies"],
                "per_class": r["per_class"]}
    learned = list(lrs) if len(lrs) == 1 else []  # a set's own lr competes too
    r = evaluate_sweep(images, labels, splits, args.eval_lrs + learned, [model], cfg, args.val,
                       syn_steps, progress=False)[model]
    for e in r["sweep"]:
        print(f"  lr {e['lr']:.3g}: val {100 * e['val_mean']:.2f}  test {100 * e['mean']:.2f} "
              f"± {100 * e['std']:.2f}", flush=True)
    return {"lr_eval": r["lr"], "acc": r["mean"], "std": r["std"], "val": r["val_mean"],
            "accuracies": r["accuracies"], "per_class": r["per_class"], "sweep": r["sweep"]}


def run_row(name, splits, store, args, out_dir):
    t0 = time.time()
    if name.startswith("saved:"):  # saved:ROW@LR: a distilled row's last images at another lr
        row, lr = name[len("saved:"):].split("@")
        syn = SyntheticSet.load(out_dir / f"{row}.pt")
        return {"row": name, "lr": float(lr), **evaluate(syn.images, syn.labels, splits,
                                                         [float(lr)], store.model, args),
                "seconds": time.time() - t0}
    if name in ("mean", "random", "full", "mean_autolr"):
        if name == "random":
            images, labels = random_real(splits, args.ipc, args.seed)
        elif name == "full":
            images, labels = splits.train.images, splits.train.labels
        else:
            images, labels = class_means(splits)
        lr = args.baseline_lr
        if name == "mean_autolr":  # the class mean trained with the lr the auto rule gives it
            d = Distiller(DistillConfig(ipc=1, pix_init="mean", lr_teacher=["auto"], **COMMON),
                          splits, store, out_dir / name, progress=False)
            lr = d.lrs()[0]
        kw = {}
        if name == "full":
            kw = {"epochs": args.full_epochs}
        a = argparse.Namespace(**{**vars(args), "eval_epochs": kw.get("epochs", args.eval_epochs)})
        return {"row": name, "lr": lr, **evaluate(images, labels, splits, [lr], store.model, a),
                "seconds": time.time() - t0}
    cfg = DistillConfig(ipc=args.ipc, iterations=args.iterations, seed=args.seed,
                        **{**COMMON, **ROWS[name]})
    d = Distiller(cfg, splits, store, out_dir / name, progress=False)
    start = d.learnables.images.detach().clone()
    lr0 = d.lrs()
    losses = []
    d.run_dir.path.mkdir(parents=True, exist_ok=True)
    for _ in range(args.iterations):
        rec = d.step()
        losses.append(rec.get("loss"))
    images = d.learnables.images.detach().cpu()
    drift = float((images - start).norm() / start.norm())
    res = evaluate(images, d.learnables.labels.cpu(), splits, d.lrs(), store.model, args, cfg.syn_steps)
    d.synthetic_set().save(out_dir / f"{name}.pt")
    first, last = losses[:20], losses[-50:]
    return {"row": name, "settings": ROWS[name], "iterations": args.iterations, "lr_start": lr0,
            "lr_end": d.lrs(), "loss_first20": sum(first) / len(first),
            "loss_last50": sum(last) / len(last), "loss_min": min(losses), "drift": drift,
            **res, "seconds": time.time() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--buffer", required=True)
    p.add_argument("--data", default="../shared/data/gz1")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--rows", nargs="+", default=["mean", "random", "default", "mean_auto"])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--num_eval", type=int, default=5)
    p.add_argument("--eval_epochs", type=int, default=500)
    p.add_argument("--full_epochs", type=int, default=20)
    p.add_argument("--baseline_lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_lrs", type=float, nargs="*", default=[],
                   help="evaluate each row at these lrs, pick by validation accuracy")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/galaxy-experiment")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    splits = load_dataset(args.data, res=args.res, **GZ1)
    store = open_buffer(args.buffer, splits)
    args.val = default_validation(splits.train.labels, splits.train.images, splits.num_classes)
    experts = [store.summary(i)["test_accuracy"] for i in store.indices()]
    for name in args.rows:
        if name not in ROWS and name not in ("mean", "random", "full", "mean_autolr") \
                and not name.startswith("saved:"):
            sys.exit(f"unknown row {name!r}")
        r = run_row(name, splits, store, args, Path(args.work))
        r.update(res=args.res, ipc=args.ipc, model=store.model, experts=experts,
                 expert_epochs_stored=store.num_epochs, num_eval=args.num_eval,
                 eval_epochs=args.eval_epochs, seed=args.seed)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{name}: {100 * r['acc']:.2f} ± {100 * r['std']:.2f} %  "
              + (f"(eval lr {r['lr_eval']:.3g} by validation) " if "lr_eval" in r else "")
              + (f"loss {r['loss_first20']:.3f} -> {r['loss_last50']:.3f} drift {r['drift']:.2f} "
                 f"lr {r['lr_start'][0]:.3g} -> {r['lr_end'][0]:.3g}" if "drift" in r else "")
              + f" ({r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
