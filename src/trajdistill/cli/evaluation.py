"""`trajdistill evaluate` and `trajdistill baseline`: train fresh networks on a set (a
distilled one, random real images, the class means or everything) and test them, at the lr
chosen on validation by default."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import flags as kinds
from ..defaults import expert_model
from ..distill_config import DistillConfig
from ..distributed import init_from_env, shutdown
from ..errors import ConfigError
from ..evaluate import EDGE_STEPS
from ..verdict import EVAL_LRS
from .common import (add_data_flags, add_eval_flags, add_train_flags, given_strategy, load_splits,
                     lr_or_learned, resolve)
from .ddranking import add_ddranking_flags, evaluate_with_ddranking, refuse_ddranking_flags


def eval_defaults(**more) -> dict:
    """EvalConfig's own defaults, under the command line's names."""
    from ..evaluate import EvalConfig
    d = EvalConfig()
    return {"eval_mode": DistillConfig.eval_mode, "num_eval": d.num_eval,
            "epoch_eval_train": d.epoch_eval_train, "dsa": d.dsa, "batch_train": d.batch_train,
            "seed": d.seed, "eval_batched": d.batched, **more}


def cmd_evaluate(args) -> None:
    from dataclasses import replace

    from ..evaluate import EvalConfig, eval_pool, evaluate_set
    from ..synthetic import SyntheticSet
    o = resolve(args, eval_defaults())
    from ..texture import spec_of
    syn = SyntheticSet.load(o["syn"])
    texture = spec_of(syn.meta)  # a texture set: canvases, trained on through windows
    o.setdefault("dataset", syn.data.get("dataset"))
    if o.get("zca") and not syn.data.get("zca"):
        raise ConfigError(f"--zca: {o['syn']} was distilled without ZCA, and evaluation uses the "
                          "set's own transform; drop --zca")
    splits = load_splits({**o, "zca": syn.data.get("zca")})
    why = syn.mismatch(splits.image_shape, splits.classes)
    if why:
        raise ConfigError(f"--dataset {o['dataset']}: {why} ({o['syn']})")
    # the test set goes through the synthetic set's own transform (its ZCA included)
    splits = replace(splits, preprocess=syn.preprocess)
    if o.get("protocol") == "ddranking":
        return evaluate_with_ddranking(o, syn, splits)
    refuse_ddranking_flags(o)
    comm, device = init_from_env(o["device"])  # torchrun: networks shared out
    cfg = EvalConfig(num_eval=o["num_eval"], epoch_eval_train=o["epoch_eval_train"],
                     batch_train=o["batch_train"], dsa=o["dsa"], device=device, seed=o["seed"],
                     batched=o["eval_batched"], texture=texture,
                     **eval_strategy(o, splits, syn.meta.get("dsa_strategy")))
    # default: the lr chosen on validation among EVAL_LRS and the learned lr; --lr: a
    # hand-set lr (or per-stage list); --lr learned: the set's own lr(s), the reference's
    learned_only = o.get("lr") == ["learned"]
    if o.get("lr") and "learned" in o["lr"] and not learned_only:
        raise ConfigError(f"--lr learned stands alone (the set's own lrs), got {o['lr']}")
    lrs = syn.lrs if learned_only or not o.get("lr") else o["lr"]
    sweep = o.get("lr_sweep") or (None if o.get("lr") else list(EVAL_LRS))
    models = eval_pool(o["eval_mode"], syn.model)
    if sweep:
        learned = list(syn.lrs) if len(syn.lrs) == 1 else []  # competes with the swept lrs
        result = run_sweep(syn.images, syn.targets(), splits, sweep + learned,
                           models, cfg, syn.syn_steps, o, comm,
                           lr_given=bool(o.get("lr")) and bool(o.get("lr_sweep")))
    else:
        result = evaluate_set(syn.images, syn.targets(), splits, lrs, models, cfg,
                              syn.syn_steps, progress=not o.get("quiet"), comm=comm)
    if comm.is_main:
        if o.get("derived_note") and not o.get("quiet"):
            print(o["derived_note"], file=sys.stderr)
        if not sweep:
            print(f"trained with lr {', '.join(f'{v:g}' for v in lrs)} "
                  f"({'learned' if learned_only else 'set by --lr'})")
        print_results(result)
        if o.get("out"):
            Path(o["out"]).write_text(json.dumps({"lrs": list(lrs), **result}, indent=2))
    shutdown(comm)


def cmd_baseline(args) -> None:
    from ..baselines import class_means, random_draws
    from ..validation import default_validation_indices
    from ..evaluate import EvalConfig, eval_pool, evaluate_set
    # --epoch_eval_train: 1000, or 50 for the whole training set (its networks are dearer)
    o = resolve(args, eval_defaults(kind="random", ipc=1, epoch_eval_train=None))
    if args.ipc is not None and o["kind"] != "random":
        raise ConfigError(f"--ipc is for --kind random; --kind {o['kind']} uses "
                          f"{'one mean image' if o['kind'] == 'mean' else 'every image'} per class")
    splits = load_splits(o)
    draws = val_idx = None
    if o["kind"] == "random":  # each network its own draw, none from the validation split
        val_idx = default_validation_indices(splits.train.labels, splits.num_classes)
        draws = random_draws(splits, o["ipc"], o["seed"], o["num_eval"], exclude=val_idx)
        images, labels = draws[0]
    elif o["kind"] == "mean":
        images, labels = class_means(splits)
    elif o["kind"] == "full":
        images, labels = splits.train.images, splits.train.labels
    else:
        raise ConfigError(f"--kind must be random, mean or full, got {o['kind']!r}")
    epochs = o["epoch_eval_train"] or (50 if o["kind"] == "full" else EvalConfig.epoch_eval_train)
    comm, device = init_from_env(o["device"])  # torchrun: networks shared out
    cfg = EvalConfig(num_eval=o["num_eval"], epoch_eval_train=epochs, batch_train=o["batch_train"],
                     dsa=o["dsa"], device=device, seed=o["seed"], batched=o["eval_batched"],
                     **eval_strategy(o, splits, means=images if o["kind"] == "mean" else None))
    # the network of a distilled set of this data with default settings (defaults.py)
    models = eval_pool(o["eval_mode"], o.get("model") or expert_model(splits.image_shape))
    # default: the lr chosen on validation among EVAL_LRS (the whole training set, whose
    # networks are dearer, at 0.01); --lr: a hand-set lr
    sweep = o.get("lr_sweep") or (None if args.lr is not None or o["kind"] == "full"
                                  else list(EVAL_LRS))
    o["lr"] = 0.01 if args.lr is None else args.lr
    if sweep:
        result = run_sweep(images, labels, splits, sweep, models, cfg, 0, o, comm,
                           lr_given=args.lr is not None and bool(o.get("lr_sweep")), draws=draws,
                           val_idx=val_idx)
    else:
        result = evaluate_set(images, labels, splits, [o["lr"]], models, cfg,
                              progress=not o.get("quiet"), comm=comm, draws=draws)
    if comm.is_main:
        if o.get("derived_note") and not o.get("quiet"):
            print(o["derived_note"], file=sys.stderr)
        print_results(result)
        if o.get("out"):
            Path(o["out"]).write_text(json.dumps({"kind": o["kind"], "ipc": o["ipc"],
                                                  "lr": None if sweep else o["lr"],
                                                  "epochs": epochs,
                                                  "draws": len(draws) if draws else None,
                                                  **result}, indent=2))
    shutdown(comm)


def add_sweep_flag(p) -> None:
    p.add_argument("--lr_sweep", type=kinds.positive_float, nargs="+", metavar="LR",
                   help="train at each of these lrs and report the one whose networks do best "
                   "on the validation split (the images a distill run sets aside), not on the "
                   "test set")


def run_sweep(images, labels, splits, candidates, models, cfg, syn_steps, o, comm,
              lr_given: bool, draws=None, val_idx=None) -> dict:
    """The lr chosen on the default validation split among the candidates (the default grid
    is also looked past at its ends, EDGE_STEPS; an --lr_sweep list is tried as given);
    prints one line per lr. `draws`: one set per network (evaluate.evaluate_set); `val_idx`:
    the default split's indices where the caller has them already."""
    from ..evaluate import evaluate_sweep
    if lr_given:
        raise ConfigError("--lr and --lr_sweep: give one (--lr_sweep picks the lr itself)")
    from ..validation import default_validation_indices
    if val_idx is None:
        val_idx = default_validation_indices(splits.train.labels, splits.num_classes)
    val = splits.train.images[val_idx], splits.train.labels[val_idx]
    result = evaluate_sweep(images, labels, splits, candidates, models, cfg, val, syn_steps,
                            progress=not o.get("quiet"), comm=comm,
                            beyond=0 if o.get("lr_sweep") else EDGE_STEPS, draws=draws)
    if comm.is_main:
        for model, r in result.items():
            for e in r["sweep"]:
                print(f"{model} lr {e['lr']:g}: validation {100 * e['val_mean']:.2f} %, test "
                      f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f} %"
                      + ("  <- chosen" if e["lr"] == r["lr"] and "lrs" not in r else ""))
            if "lrs" in r:  # one draw per network, each at its own lr
                print(f"{model}: each network at the lr best for its own draw "
                      f"({', '.join(f'{v:g}' for v in r['lrs'])})")
    return result


def eval_strategy(o: dict, splits, recorded: str | None = None, means=None) -> dict:
    """The evaluation's augmentation: --dsa_strategy if given, else the one a set records
    (its distillation's), else the one a distillation of this data derives (orientation.py,
    from the class means: `means` where they are at hand; why goes into o["derived_note"],
    printed with the results)."""
    given = given_strategy(o)
    if given or not o.get("dsa", True):
        return given
    if recorded:
        return {"dsa_strategy": recorded}
    from ..orientation import strategy_of
    strategy, why = strategy_of(splits, means)
    o["derived_note"] = f"derived --dsa_strategy {strategy}: {why}"
    return {"dsa_strategy": strategy}


def print_results(result: dict) -> None:
    for model, r in result.items():
        chosen = f" at lr {r['lr']:g} (chosen on validation)" if "sweep" in r else ""
        print(f"{model}: {100 * r['mean']:.2f} ± {100 * r['std']:.2f} % over {len(r['accuracies'])} "
              f"networks{chosen}; per class: " + ", ".join(f"{100 * a:.1f}" for a in r["per_class"]))


def add_evaluate_parser(sub) -> None:
    """The `evaluate` subcommand and its flags."""
    p = sub.add_parser("evaluate", help="train fresh networks on a synthetic set, test on real data")
    p.add_argument("--syn", required=True, type=kinds.existing_file,
                   help="a synthetic set file (synthetic_best.pt)")
    add_data_flags(p)
    add_eval_flags(p)
    p.add_argument("--dsa", type=kinds.boolean, default=None)
    p.add_argument("--dsa_strategy", type=kinds.dsa_strategy, default=None,
                   help="DSA groups, or galaxy (see distill)")
    p.add_argument("--batch_train", type=kinds.positive_int)
    p.add_argument("--out", type=kinds.output_file, help="write the results as JSON here")
    p.add_argument("--eval_batched", choices=["auto", "on", "off"],
                   help="train the num_eval networks together (vmap); auto: on CUDA only")
    p.add_argument("--lr", type=lr_or_learned, nargs="+",
                   help="train with this lr instead of choosing it on validation (the default: "
                   "the best of 0.01 0.003 0.001 0.0003 0.0001 and the learned lr); several "
                   "values are a per-stage list, scheduled as an independent-lr set's; "
                   "'learned': the set's own lr(s), the reference's protocol")
    add_sweep_flag(p)
    add_ddranking_flags(p)
    p.set_defaults(func=cmd_evaluate)


def add_baseline_parser(sub) -> None:
    """The `baseline` subcommand and its flags."""
    p = sub.add_parser("baseline", help="random real images, class means, or the full set")
    p.add_argument("--kind", choices=["random", "mean", "full"],
                   help="random (default): --ipc random real training images per class, each "
                   "evaluation network its own draw (and, by default, its own lr chosen on "
                   "validation), none from the validation split; mean: one mean image per "
                   "class; full: every image")
    p.add_argument("--ipc", type=kinds.positive_int)
    p.add_argument("--lr", type=kinds.positive_float,
                   help="train at this lr (default: the one of 0.01 0.003 0.001 0.0003 0.0001 "
                   "that does best on the validation split; --kind full: 0.01)")
    add_data_flags(p)
    add_train_flags(p)
    add_eval_flags(p)
    p.add_argument("--eval_batched", choices=["auto", "on", "off"],
                   help="train the num_eval networks together (vmap); auto: on CUDA only")
    p.add_argument("--out", type=kinds.output_file, help="write the results as JSON here")
    add_sweep_flag(p)
    p.set_defaults(func=cmd_baseline)
