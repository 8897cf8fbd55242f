"""Command line: a thin shell over the Python API.

    trajdistill buffer   --dataset=CIFAR10 --model=ConvNet --train_epochs=50 --num_experts=10 --zca
    trajdistill distill  --dataset=CIFAR10 --ipc=1 --syn_steps=50 --expert_epochs=1 ...
    trajdistill evaluate --syn RUN_DIR/synthetic_best.pt --dataset=CIFAR10 --data_path=...
    trajdistill baseline --kind random|mean|full --dataset=... --ipc=1
    trajdistill report   RUN_DIR
    trajdistill gzoo2 build --catalog ... --images ... --out ...
    trajdistill demo

The flags of the seed documents are accepted as written there (`--Iteration`, `--lr_teacher`,
`--buffer_path`, ...). `--preset NAME` fills the published settings; explicit flags win.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import fields
from pathlib import Path

# OpenMP threads that busy-wait make a shared CPU many times slower (measured 3-6x on the
# lean step with another job running); passive waiting costs nothing measurable when alone.
# It must be set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from . import flags as kinds
from .distributed import init_from_env, shutdown
from .errors import ConfigError
from .defaults import derived, expert_model
from .distill_config import DistillConfig
from .experts import buffer_dir, data_folder, find_model
from .run_dir import RunDirectory
from .evaluate import EDGE_STEPS, EVAL_MODES
from .verdict import EVAL_LRS
from .precision import AUTOCAST_DTYPES, set_tf32, tf32_requested
from .host_memory import keep_freed_memory
from .presets import BUFFER_PRESETS, PRESETS, preset
from .reference_flags import add_reference_flags
from .reference_flags import translate as translate_reference_flags


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: no usage dump, a pointer to --help instead."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- shared flags

def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=kinds.non_empty,
                   help="dataset name (CIFAR10, CIFAR100, ImageNet, Tiny, MNIST, "
                   "FashionMNIST, GZoo2, GZoo2_aug, digits) or an image-folder path")
    p.add_argument("--data_path", type=kinds.non_empty, help="where the dataset's files are")
    p.add_argument("--subset", type=kinds.non_empty, help="ImageNet subset (imagenette, imagewoof, ...)")
    _add_folder_flags(p)
    p.add_argument("--zca", action="store_true", default=None, help="ZCA-whiten (CIFAR)")
    p.add_argument("--device", type=kinds.device, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=kinds.seed, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Data options passed to the loader when given (image folders, ImageNet subsets, and a flat
# folder of images + a labels CSV); the loader refuses those it does not take.
DATA_OPTIONS = ("res", "crop", "labels", "id_column", "label_column", "classes", "class_names",
                "test_fraction")


def _add_folder_flags(p: argparse.ArgumentParser) -> None:
    from .flags import fraction, positive_int
    p.add_argument("--res", type=positive_int, help="image side: resize and centre-crop to RES "
                   "(image folders, ImageNet subsets, labelled folders)")
    p.add_argument("--crop", choices=["center", "center-half"],
                   help="with --res: center (shorter side to RES, central square; default) or "
                   "center-half (the central half, as the Galaxy Zoo cut-outs)")
    p.add_argument("--labels", help="labels CSV of a flat image folder (images named by id)")
    p.add_argument("--id_column", help="--labels column with the image id (file name stem)")
    p.add_argument("--label_column", help="--labels column with the class")
    p.add_argument("--classes", help="labels to keep, ',' between classes, '+' merges: 0,1+2,3")
    p.add_argument("--class_names", help="names of the kept classes, comma-separated")
    p.add_argument("--test_fraction", type=fraction,
                   help="a folder without a test split (labelled, class folders only, train/ "
                   "only): the seeded, stratified test share (default 0.2)")


def _add_train_flags(p: argparse.ArgumentParser, no_aug: bool = True) -> None:
    p.add_argument("--model", type=kinds.non_empty, help="network (ConvNet, ConvNetD4W32, "
                   "ResNet18, ...; default derived from the resolution: ConvNetW32 at 32 px, "
                   "ConvNetD4W32 at 64, ConvNetD5W32 at 128; distill: the buffer's)")
    p.add_argument("--dsa", type=kinds.boolean, default=None, help="differentiable augmentation (True/False)")
    p.add_argument("--dsa_strategy", type=kinds.dsa_strategy, default=None, help="DSA groups joined by _, or galaxy: full "
                   "turns and both flips (default derived: galaxy where the class means show the "
                   "data has no up, else color_crop_cutout_flip_scale_rotate; distill: the buffer's)")
    if no_aug:  # distill has its own --no_aug: the reference's, for the unrolled student only
        p.add_argument("--no_aug", action="store_true", default=None, help="same as --dsa False")
    p.add_argument("--batch_train", type=kinds.positive_int, default=None,
                   help="minibatch (buffer: derived, at least 32 steps an epoch within 32-256; "
                   "evaluation networks: 256)")


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval_mode", choices=EVAL_MODES, default=None,
                   help="S, M, W, D, A, P, N or C (model pools)")
    p.add_argument("--num_eval", type=kinds.positive_int, default=None)
    p.add_argument("--epoch_eval_train", type=kinds.positive_int, default=None)


def _resolve(args: argparse.Namespace, defaults: dict, table: dict | None = None,
             no_aug_is_no_dsa: bool = True) -> dict:
    """defaults < preset < explicit flags."""
    merged = dict(defaults)
    if table is not None and getattr(args, "preset", None):
        merged.update(preset(args.preset, table))
    merged.update({k: v for k, v in vars(args).items() if v is not None and k != "func"})
    if no_aug_is_no_dsa and merged.get("no_aug"):
        merged["dsa"] = False
    if not merged.get("device"):
        merged["device"] = _default_device()
    return merged


def _load_splits(o: dict):
    from .data import load_dataset
    if not o.get("dataset"):
        raise ConfigError("--dataset is required (or a --preset that names one)")
    opts = {"subset": o["subset"]} if o.get("subset") else {}
    opts.update({k: o[k] for k in DATA_OPTIONS if o.get(k) is not None})
    return load_dataset(o["dataset"], o.get("data_path"), zca=bool(o.get("zca")), **opts)


# ----------------------------------------------------------------------------- buffer

BUFFER_PATH = "./buffers"


def _buffer_defaults() -> dict:
    """ExpertConfig's own defaults (--model and --batch_train: None, derived from the data)."""
    from .experts import ExpertConfig
    d = ExpertConfig()
    return {"train_epochs": d.train_epochs, "num_experts": d.num_experts,
            "lr_teacher": [d.lr_teacher], "mom": d.mom, "l2": d.l2, "dsa": d.dsa,
            "decay": d.decay, "seed": d.seed, "buffer_path": BUFFER_PATH}


def _eval_defaults(**more) -> dict:
    """EvalConfig's own defaults, under the command line's names."""
    from .evaluate import EvalConfig
    d = EvalConfig()
    return {"eval_mode": DistillConfig.eval_mode, "num_eval": d.num_eval,
            "epoch_eval_train": d.epoch_eval_train, "dsa": d.dsa, "batch_train": d.batch_train,
            "seed": d.seed, "eval_batched": d.batched, **more}


def cmd_buffer(args) -> None:
    from .experts import ExpertConfig, train_experts
    o = _resolve(args, _buffer_defaults(), BUFFER_PRESETS)
    if len(o["lr_teacher"]) != 1:
        raise ConfigError(f"--lr_teacher: experts train with one lr, got {len(o['lr_teacher'])}")
    splits = _load_splits(o)
    comm, device = init_from_env(o["device"])  # torchrun: each rank trains its share
    rank, world = comm.rank, comm.world
    cfg = ExpertConfig(model=o.get("model"), train_epochs=o["train_epochs"],
                       num_experts=o["num_experts"], lr_teacher=float(o["lr_teacher"][0]),
                       mom=o["mom"], l2=o["l2"], batch_train=o.get("batch_train"), dsa=o["dsa"],
                       dsa_strategy=_strategy(o).get("dsa_strategy"),
                       decay=o["decay"], seed=o["seed"], device=device).resolve(splits)
    out = buffer_dir(o["buffer_path"], o["dataset"], cfg.model, bool(o.get("zca")), o.get("subset"),
                     o.get("res"))
    if rank == 0 and cfg.derived:
        for name, d in cfg.derived.items():
            print(f"derived --{name} {d['value']}: {d['from']}", file=sys.stderr)
    store = train_experts(splits, cfg, out, rank=rank, world_size=world, progress=not o.get("quiet"))
    shutdown(comm)
    if rank == 0:
        accs = [store.summary(i)["test_accuracy"] for i in store.indices()]
        print(f"{len(accs)} experts in {out}; test accuracy "
              f"{100 * sum(accs) / len(accs):.2f} % (mean)")


# ----------------------------------------------------------------------------- distill

def cmd_distill(args) -> None:
    from .distill import DistillConfig, Distiller, open_buffer
    if args.resume:
        return _resume_distill(args)
    o = _resolve(args, {"buffer_path": BUFFER_PATH}, PRESETS,
                 no_aug_is_no_dsa=False)
    o = translate_reference_flags(o, torch.cuda.is_available(), explicit_device=bool(args.device))
    splits = _load_splits(o)
    comm, o["device"] = init_from_env(o["device"])  # torchrun: the ranks share the meta-batch
    model_from = None
    if not o.get("model"):  # the buffer's model: derived, or the one buffer there is
        folder = data_folder(o["buffer_path"], o["dataset"], bool(o.get("zca")), o.get("subset"),
                             o.get("res"))
        o["model"], model_from = find_model(folder, expert_model(splits.image_shape))
    bdir = buffer_dir(o["buffer_path"], o["dataset"], o["model"], bool(o.get("zca")), o.get("subset"),
                      o.get("res"))
    store = open_buffer(bdir, splits)
    names = {f.name for f in fields(DistillConfig)}
    kw = {k: v for k, v in o.items() if k in names}
    if "Iteration" in o:
        kw["iterations"] = o["Iteration"]
    if model_from:
        kw["derived"] = {"model": derived(o["model"], model_from)}
    cfg = DistillConfig(**kw)
    run_dir = Path(o.get("run_dir") or Path("runs") / (
        o.get("wandb_name") or f"{Path(o['dataset']).name}-{cfg.method}-ipc{cfg.ipc}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}"))
    if comm.is_main and RunDirectory(run_dir).holds_run():
        raise ConfigError(f"{run_dir} already holds a run; continue it with "
                         f"`distill --resume {run_dir}` or choose another --run_dir")
    source = {"dataset": o["dataset"], "data_path": o.get("data_path"), "zca": bool(o.get("zca")),
              "subset": o.get("subset"), "buffer_dir": str(bdir),
              **{k: o[k] for k in DATA_OPTIONS if o.get(k) is not None}}
    distiller = Distiller(cfg, splits, store, run_dir, progress=not o.get("quiet"), source=source,
                          comm=comm)
    _finish(distiller, splits)


def _resume_distill(args) -> None:
    from .distill import Distiller, open_buffer
    run_dir = RunDirectory(args.resume)
    saved = run_dir.config()
    src = saved.get("source") or {}
    if not isinstance(src, dict) or not src.get("dataset") or not src.get("buffer_dir"):
        raise ConfigError(f"{run_dir.config_path} does not say which data and expert buffer "
                          "the run used ('source': dataset, buffer_dir)")
    splits = _load_splits(src)
    # --device moves a run (a GPU run onto the CPU, say); the result depends on the device
    # only through floating point
    comm, device = init_from_env(args.device or saved.get("device", "cpu"))
    store = open_buffer(src["buffer_dir"], splits)
    try:
        distiller = Distiller.resume(run_dir, splits, store, progress=not args.quiet,
                                     iterations=args.Iteration, comm=comm, device=device)
    except ConfigError as e:  # the run's own settings: name the file they came from
        if str(run_dir) in str(e):  # (already names its file, e.g. checkpoint.pt)
            raise
        raise ConfigError(f"{run_dir.config_path}: {e}") from None
    if args.Iteration is not None and args.Iteration <= distiller.iteration:
        raise ConfigError(f"--Iteration {args.Iteration}: {run_dir} is already at iteration "
                          f"{distiller.iteration}; give more to extend it")
    if comm.is_main:
        print(f"resuming {run_dir} at iteration {distiller.iteration}")
    _finish(distiller, splits)


def _finish(distiller, splits) -> None:
    from .report import build_report
    best = distiller.run()
    shutdown(distiller.comm)  # the other ranks are done: the report is rank 0's alone
    if distiller.comm.is_main:
        html = build_report(distiller.run_dir.path, splits=splits)
        print(f"{best_summary(best)}; run directory {distiller.run_dir}; report {html}")
        if best.get("verdict"):  # the last line: whether the set beats what it must beat
            print(best["verdict"])


def best_summary(best: dict) -> str:
    """The summary line's account of synthetic_best.pt: validation and test side by side."""
    if best.get("iteration") is None:
        return "best set: not evaluated"
    val = (f"validation {100 * best['val_accuracy']:.2f} %, "
           if best.get("val_accuracy") is not None else "")
    chosen = "validation" if best.get("selected_on", "test") == "val" else "test"
    return (f"best set (chosen on {chosen} accuracy) at iteration {best['iteration']}: "
            f"{val}test {100 * best['accuracy']:.2f} %")


def _lr_or_learned(text: str):
    from .flags import positive_float
    return "learned" if text == "learned" else positive_float(text)


def _lr_or_auto(text: str):
    from .flags import positive_float
    return "auto" if text == "auto" else positive_float(text)


class _OptionalPackage(argparse.Action):
    """A flag that turns on an optional package: refused at parse time if it is missing."""

    def __init__(self, *args, package: str, **kw):
        self.package = package
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from .tracking import TrackingError, require
        try:
            require(self.package)
        except TrackingError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, True)


def _add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="learn a synthetic set by trajectory matching (STM or MTT)")
    _add_data_flags(p)
    _add_train_flags(p, no_aug=False)
    _add_eval_flags(p)
    p.add_argument("--preset", type=kinds.non_empty,
                   help=f"published settings: {', '.join(sorted(PRESETS))}")
    p.add_argument("--method", help="STM (default; the reference's stage-MTT) or original-MTT")
    p.add_argument("--ipc", type=kinds.positive_int)
    p.add_argument("--syn_steps", type=kinds.positive_int)
    p.add_argument("--expert_epochs", type=kinds.positive_int)
    p.add_argument("--max_start_epoch", type=kinds.positive_int)
    p.add_argument("--lr_img", type=kinds.non_negative_float,
                   help="image lr (default derived: 0.01 with adam; alone it means the reference's "
                   "SGD, as in the reference)")
    p.add_argument("--lr_lr", type=kinds.non_negative_float)
    p.add_argument("--lr_teacher", "--list", dest="lr_teacher", type=_lr_or_auto, nargs="+",
                   help="initial synthetic lr(s), or auto: derived from the buffer (the first "
                   "unrolled steps travel about as far as expert_epochs of an expert)")
    p.add_argument("--learn_lr", type=kinds.boolean, help="learn the synthetic lr (default True)")
    p.add_argument("--lr_mode", choices=["global-lr", "independent-lr"],
                   help="global-lr (default) or independent-lr")
    p.add_argument("--sample_method", choices=["cycle", "random"], help="cycle (default) or random")
    p.add_argument("--init_epoch", type=kinds.positive_int)
    p.add_argument("--sigma", type=kinds.positive_float, help="STM threshold (default 5)")
    p.add_argument("--min_duration", type=kinds.positive_int)
    p.add_argument("--max_duration", "--T_max", dest="max_duration", type=kinds.positive_int)
    p.add_argument("--pix_init", help="real, noise, correct (real images the "
                   "expert classifies correctly, DATM), mean (the class-mean image) or mean_noise "
                   "(class mean plus noise); default derived: mean at --ipc 1, real above and "
                   "with the reference's SGD step")
    p.add_argument("--img_optimizer", choices=["sgd", "adam"], help="image optimiser: adam "
                   "(the derived default; --lr_img is the step per pixel, 0.01) or sgd (momentum "
                   "0.5, the reference's; implied by --lr_img alone, default lr 1000)")
    p.add_argument("--pace_lr_img", type=kinds.boolean, help="raise the image lr, at most 10x, "
                   "where the images move less than 0.2 of their norm by the end of the run "
                   "(default: on with the derived Adam lr, off when --lr_img is given)")
    p.add_argument("--loss_warn_it", type=kinds.non_negative_int, help="warn if the matching "
                   "loss has not fallen below 1 by this iteration (default 300; 0: never)")
    p.add_argument("--batch_syn", type=kinds.positive_int)
    p.add_argument("--num_trajectories", type=kinds.positive_int,
                   help="(expert, start epoch) pairs matched per iteration, their gradients "
                   "averaged into one update (default 1); under torchrun the ranks share them")
    p.add_argument("--Iteration", type=kinds.positive_int, help="iterations at most (STM default: "
                   "none before its own stop, see docs/methods.md 'When a run ends'; original-MTT: 5000)")
    p.add_argument("--eval_it", type=kinds.non_negative_int)
    p.add_argument("--gradient", choices=["auto", "lean", "unroll"],
                   help="the exact gradient's method: auto (default: the plain unroll where its "
                   "graph fits a quarter of the free memory, on CPUs; the lean walk elsewhere and "
                   "on CUDA), lean (memory of one step) or unroll (the reference's)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="run the lean gradient's and the held-out loss's steps through "
                   "torch.compile: same gradient (float64 1e-15), 1.1-1.3x faster on CPU, about a "
                   "minute of compilation per process (seconds with a warm inductor cache)")
    p.add_argument("--gradient_memory", type=kinds.non_negative_float, metavar="GB",
                   help="let the lean walk keep the graphs of its last unrolled steps in up to "
                   "this many GB (the unroll's speed where memory allows; 0, the default: "
                   "recompute every step). Same gradient either way")
    p.add_argument("--cuda_graphs", choices=["auto", "on", "off"],
                   help="replay the lean walk's steps (and the held-out loss's) as recorded CUDA "
                   "graphs: the same gradient, without the launch cost of hundreds of small "
                   "kernels per step (auto, the default: on with a CUDA device, unless --compile)")
    p.add_argument("--autocast", choices=list(AUTOCAST_DTYPES),
                   help="bf16: run the student's forward passes of the matching in bfloat16 "
                   "(torch.autocast; weights, gradients and loss stay float32): 1.2-1.4x faster "
                   "per step on a CPU with bfloat16 instructions, and inexact (the gradient moves "
                   "1.5-3.6x as far from float64 as float32's own; docs/performance.md). Default off")
    p.add_argument("--max_experts", type=kinds.positive_int)
    p.add_argument("--checkpoint_every", type=kinds.positive_int)
    p.add_argument("--max_failures", type=kinds.positive_int,
                   help="refused (non-finite or runaway) updates in a row before stopping")
    p.add_argument("--eval_batched", choices=["auto", "on", "off"],
                   help="train the evaluation networks together with vmap (auto: on CUDA only)")
    # learnable soft labels (DATM)
    p.add_argument("--soft_labels", action="store_true", default=None,
                   help="learn a label logit vector per image (trained with soft cross-entropy)")
    p.add_argument("--label_init", choices=["expert"],
                   help="initial logits: the final epoch of an expert on the initial images")
    p.add_argument("--lr_y", type=kinds.positive_float,
                   help="lr of the label logits (SGD, momentum 0.9; default 2)")
    p.add_argument("--loss_threshold", type=kinds.positive_float,
                   help="no update in an iteration whose normalised matching loss exceeds this "
                   "(DATM's threshold)")
    # difficulty-aligned start windows (DATM)
    p.add_argument("--start_schedule", choices=["method", "aligned"],
                   help="method (default): MTT's uniform draw / STM's stages; aligned: DATM's "
                   "window [min_start_epoch, upper), upper growing from current_max_start_epoch "
                   "(with STM: the first stage, widened by STM's test)")
    p.add_argument("--min_start_epoch", type=kinds.non_negative_int,
                   help="lowest start epoch (default 0; STM's cap counts from it)")
    p.add_argument("--current_max_start_epoch", type=kinds.positive_int,
                   help="aligned: the first window's upper end (default: half way)")
    p.add_argument("--expansion_end_epoch", type=kinds.positive_int,
                   help="aligned, original-MTT: iterations until the window reaches max_start_epoch "
                   "(default 1000)")
    # validation split (best-set selection without the test set)
    p.add_argument("--val_size", type=kinds.non_negative_int,
                   help="training images held out to validate evaluation networks (default 10 %% "
                   "of the training set, at most 5000; 0: none)")
    p.add_argument("--select_on", choices=["val", "test"],
                   help="choose synthetic_best.pt on validation (default) or test accuracy")
    p.add_argument("--final_eval", choices=["sweep", "off"],
                   help="at the end, compare the chosen set with its start, the class mean and "
                   "random real images on validation, each at its best lr of --eval_lrs "
                   "(sweep, the default; final.json and the report), or not (off)")
    p.add_argument("--eval_lrs", type=kinds.positive_float, nargs="+", metavar="LR",
                   help="the lrs of the final comparison (default 0.01 0.003 0.001 0.0003 "
                   "0.0001; a distilled set's learned lr competes too; a set that does best "
                   "at an end is also tried up to 2 grid steps past it)")
    p.add_argument("--resume", metavar="RUN_DIR", type=kinds.writable_dir,
                   help="continue a run from its last checkpoint "
                   "(its own settings; --Iteration may extend it)")
    p.add_argument("--buffer_path", type=kinds.non_empty)
    p.add_argument("--run_dir", type=kinds.output_dir)
    p.add_argument("--prev_iter", type=kinds.non_negative_int)
    p.add_argument("--load_syn_image", type=kinds.existing_file)
    p.add_argument("--wandb_name", type=kinds.non_empty, help="name of the run (directory under runs/)")
    p.add_argument("--wandb", nargs=0, action=_OptionalPackage, package="wandb",
                   help="log curves and images to Weights & Biases (optional package; "
                   "WANDB_MODE=offline works without an account)")
    p.add_argument("--tensorboard", nargs=0, action=_OptionalPackage, package="tensorboard",
                   help="log curves and images for TensorBoard under RUN_DIR/tensorboard "
                   "(optional package)")
    add_reference_flags(p)
    p.set_defaults(func=cmd_distill)


# ----------------------------------------------------------------------------- evaluate / baseline

def cmd_evaluate(args) -> None:
    from dataclasses import replace

    from .evaluate import EvalConfig, eval_pool, evaluate_set
    from .synthetic import SyntheticSet
    o = _resolve(args, _eval_defaults())
    from .texture import spec_of
    syn = SyntheticSet.load(o["syn"])
    texture = spec_of(syn.meta)  # a texture set: canvases, trained on through windows
    o.setdefault("dataset", syn.data.get("dataset"))
    if o.get("zca") and not syn.data.get("zca"):
        raise ConfigError(f"--zca: {o['syn']} was distilled without ZCA, and evaluation uses the "
                          "set's own transform; drop --zca")
    splits = _load_splits({**o, "zca": syn.data.get("zca")})
    why = syn.mismatch(splits.image_shape, splits.classes)
    if why:
        raise ConfigError(f"--dataset {o['dataset']}: {why} ({o['syn']})")
    # the test set goes through the synthetic set's own transform (its ZCA included)
    splits = replace(splits, preprocess=syn.preprocess)
    if o.get("protocol") == "ddranking":
        return _evaluate_ddranking(o, syn, splits)
    _refuse_ddranking_flags(o)
    comm, device = init_from_env(o["device"])  # torchrun: networks shared out
    cfg = EvalConfig(num_eval=o["num_eval"], epoch_eval_train=o["epoch_eval_train"],
                     batch_train=o["batch_train"], dsa=o["dsa"], device=device, seed=o["seed"],
                     batched=o["eval_batched"], texture=texture,
                     **_eval_strategy(o, splits, syn.meta.get("dsa_strategy")))
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
        result = _sweep(syn.images, syn.targets(), splits, sweep + learned,
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
        _print_results(result)
        if o.get("out"):
            Path(o["out"]).write_text(json.dumps({"lrs": list(lrs), **result}, indent=2))
    shutdown(comm)


DDRANKING_ONLY = ("real_accuracy", "real_epochs", "teacher", "lrs_lambda", "ars_lambda")


def _refuse_ddranking_flags(o: dict) -> None:
    given = [f"--{k}" for k in DDRANKING_ONLY if o.get(k) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: for --protocol ddranking only")


def _evaluate_ddranking(o: dict, syn, splits) -> None:
    """--protocol ddranking: DD-Ranking's scores of the set (ddranking.py), written to
    --out or ddranking.json beside the set; a run directory's report is rebuilt with them."""
    from . import ddranking as ddr
    from .io import write_json
    from .texture import spec_of
    if spec_of(syn.meta) is not None:
        raise ConfigError(f"--protocol ddranking: {o['syn']} is a texture set (canvases); "
                          "DD-Ranking evaluates whole images of the data's size")
    for flag in ("eval_mode", "lr_sweep"):  # the default pool, S, is one network: its own
        if o.get(flag) is not None and (flag != "eval_mode" or o["eval_mode"] != "S"):
            raise ConfigError(f"--{flag}: --protocol ddranking fixes its network and lr grid; drop it")
    lr = o.get("lr") or ["learned"]
    if len(lr) != 1:
        raise ConfigError(f"--lr: DD-Ranking trains at one lr (its syn_lr), got {len(lr)}")
    if o.get("dsa") is False:
        raise ConfigError("--dsa False: DD-Ranking's scores compare with and without "
                          "augmentation themselves; drop it")
    cfg = ddr.DDRankingConfig(
        num_eval=o["num_eval"], epochs=o["epoch_eval_train"], batch=o["batch_train"],
        syn_lr=None if lr == ["learned"] else lr[0],
        lrs_lambda=ddr.LAMBDA if o.get("lrs_lambda") is None else o["lrs_lambda"],
        ars_lambda=ddr.LAMBDA if o.get("ars_lambda") is None else o["ars_lambda"],
        real_accuracy=None if o.get("real_accuracy") is None else o["real_accuracy"] / 100,
        real_epochs=o.get("real_epochs") or ddr.REAL_EPOCHS, device=o["device"], seed=o["seed"],
        **_strategy(o))
    cfg.check()
    syn_dir = Path(o["syn"]).parent
    teacher = None
    if syn.soft_labels is not None:
        teacher = ddr.buffer_teacher(o.get("teacher") or _run_buffer(syn_dir), splits, o["device"])
    result = ddr.evaluate_ddranking(syn, splits, cfg, teacher, progress=not o.get("quiet"),
                                    say=None if o.get("quiet") else print)
    result["set"] = str(o["syn"])
    out = Path(o.get("out") or syn_dir / ddr.RESULTS_FILE)
    write_json(out, result)
    print("\n".join(ddr.summary_lines(result)))
    print(f"results: {out}")
    if out.parent == syn_dir and (syn_dir / "config.json").exists():  # a run directory
        from .report import build_report
        print(f"report: {build_report(syn_dir)}")


def _run_buffer(run_dir: Path) -> str:
    """The expert buffer a run directory's set was distilled from (config.json's source)."""
    from .io import load_json
    config = run_dir / "config.json"
    source = load_json(config).get("source") if config.exists() else None
    if not isinstance(source, dict) or not source.get("buffer_dir"):
        raise ConfigError("--teacher: a soft-label set is compared with random real images "
                          "labelled by the expert that labelled it; give its expert buffer")
    return source["buffer_dir"]


def cmd_baseline(args) -> None:
    from .baselines import class_means, random_real
    from .evaluate import EvalConfig, eval_pool, evaluate_set
    # --epoch_eval_train: 1000, or 50 for the whole training set (its networks are dearer)
    o = _resolve(args, _eval_defaults(kind="random", ipc=1, epoch_eval_train=None))
    if args.ipc is not None and o["kind"] != "random":
        raise ConfigError(f"--ipc is for --kind random; --kind {o['kind']} uses "
                          f"{'one mean image' if o['kind'] == 'mean' else 'every image'} per class")
    splits = _load_splits(o)
    if o["kind"] == "random":
        images, labels = random_real(splits, o["ipc"], o["seed"])
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
                     **_eval_strategy(o, splits))
    # the network of a distilled set of this data with default settings (defaults.py)
    models = eval_pool(o["eval_mode"], o.get("model") or expert_model(splits.image_shape))
    # default: the lr chosen on validation among EVAL_LRS (the whole training set, whose
    # networks are dearer, at 0.01); --lr: a hand-set lr
    sweep = o.get("lr_sweep") or (None if args.lr is not None or o["kind"] == "full"
                                  else list(EVAL_LRS))
    o["lr"] = 0.01 if args.lr is None else args.lr
    if sweep:
        result = _sweep(images, labels, splits, sweep, models, cfg, 0, o, comm,
                        lr_given=args.lr is not None and bool(o.get("lr_sweep")))
    else:
        result = evaluate_set(images, labels, splits, [o["lr"]], models, cfg,
                              progress=not o.get("quiet"), comm=comm)
    if comm.is_main:
        if o.get("derived_note") and not o.get("quiet"):
            print(o["derived_note"], file=sys.stderr)
        _print_results(result)
        if o.get("out"):
            Path(o["out"]).write_text(json.dumps({"kind": o["kind"], "ipc": o["ipc"],
                                                  "lr": None if sweep else o["lr"],
                                                  "epochs": epochs, **result}, indent=2))
    shutdown(comm)


def _add_ddranking_flags(p) -> None:
    p.add_argument("--protocol", choices=["trajdistill", "ddranking"],
                   help="trajdistill (default): this package's protocol; ddranking: "
                   "DD-Ranking's scores LRS (HLR, IOR) and ARS under its protocol, written to "
                   "ddranking.json beside the set (docs/ddranking.md)")
    p.add_argument("--real_accuracy", type=kinds.positive_float, metavar="PERCENT",
                   help="ddranking: the whole training set's hard-label accuracy, if known "
                   "(DD-Ranking's cache); default: measured every round")
    p.add_argument("--real_epochs", type=kinds.positive_int,
                   help="ddranking: epochs of the whole-training-set networks (default 200)")
    p.add_argument("--teacher", type=kinds.existing_dir, metavar="BUFFER_DIR",
                   help="ddranking, soft-label sets: the expert buffer whose first expert "
                   "labels the random real images (default: the run's own buffer)")
    p.add_argument("--lrs_lambda", type=kinds.non_negative_float,
                   help="ddranking: the weight w of IOR against HLR in LRS (default 0.5)")
    p.add_argument("--ars_lambda", type=kinds.non_negative_float,
                   help="ddranking: the weight of the gain with augmentation in ARS (default 0.5)")


def _add_sweep_flag(p) -> None:
    p.add_argument("--lr_sweep", type=kinds.positive_float, nargs="+", metavar="LR",
                   help="train at each of these lrs and report the one whose networks do best "
                   "on the validation split (the images a distill run sets aside), not on the "
                   "test set")


def _sweep(images, labels, splits, candidates, models, cfg, syn_steps, o, comm,
           lr_given: bool) -> dict:
    """The lr chosen on the default validation split among the candidates (the default grid
    is also looked past at its ends, EDGE_STEPS; an --lr_sweep list is tried as given);
    prints one line per lr."""
    from .evaluate import evaluate_sweep
    if lr_given:
        raise ConfigError("--lr and --lr_sweep: give one (--lr_sweep picks the lr itself)")
    from .validation import default_validation
    val = default_validation(splits.train.labels, splits.train.images, splits.num_classes)
    result = evaluate_sweep(images, labels, splits, candidates, models, cfg, val, syn_steps,
                            progress=not o.get("quiet"), comm=comm,
                            beyond=0 if o.get("lr_sweep") else EDGE_STEPS)
    if comm.is_main:
        for model, r in result.items():
            for e in r["sweep"]:
                print(f"{model} lr {e['lr']:g}: validation {100 * e['val_mean']:.2f} %, test "
                      f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f} %"
                      + ("  <- chosen" if e["lr"] == r["lr"] else ""))
    return result


def _strategy(o: dict) -> dict:
    """EvalConfig's dsa_strategy when --dsa_strategy was given (checked here, not mid-training)."""
    from .augment import parse_strategy
    from .distill import ConfigError
    if not o.get("dsa_strategy"):
        return {}
    try:
        parse_strategy(o["dsa_strategy"])
    except ValueError as e:
        raise ConfigError(f"--dsa_strategy: {e}") from None
    return {"dsa_strategy": o["dsa_strategy"]}


def _eval_strategy(o: dict, splits, recorded: str | None = None) -> dict:
    """The evaluation's augmentation: --dsa_strategy if given, else the one a set records
    (its distillation's), else the one a distillation of this data derives (orientation.py;
    why goes into o["derived_note"], printed with the results)."""
    given = _strategy(o)
    if given or not o.get("dsa", True):
        return given
    if recorded:
        return {"dsa_strategy": recorded}
    from .orientation import strategy_of
    strategy, why = strategy_of(splits)
    o["derived_note"] = f"derived --dsa_strategy {strategy}: {why}"
    return {"dsa_strategy": strategy}


def _print_results(result: dict) -> None:
    for model, r in result.items():
        chosen = f" at lr {r['lr']:g} (chosen on validation)" if "sweep" in r else ""
        print(f"{model}: {100 * r['mean']:.2f} ± {100 * r['std']:.2f} % over {len(r['accuracies'])} "
              f"networks{chosen}; per class: " + ", ".join(f"{100 * a:.1f}" for a in r["per_class"]))


# ----------------------------------------------------------------------------- report / demo

RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "synthetic_best.pt", "synthetic_last.pt")


def cmd_report(args) -> None:
    from .report import build_report
    if not any((Path(args.run_dir) / name).is_file() for name in RUN_FILES):
        raise ConfigError(f"{args.run_dir} is not a run directory: it holds none of "
                          f"{', '.join(RUN_FILES)}")
    splits = None
    if args.dataset:
        from .synthetic import SyntheticSet
        run = Path(args.run_dir)
        found = [run / n for n in ("synthetic_best.pt", "synthetic_last.pt") if (run / n).exists()]
        syn = SyntheticSet.load(found[0]) if found else None
        zca = args.zca if args.zca is not None or syn is None else bool(syn.data.get("zca"))
        splits = _load_splits({"dataset": args.dataset, "data_path": args.data_path,
                               "subset": args.subset, "zca": zca,
                               **{k: getattr(args, k) for k in DATA_OPTIONS}})
        why = syn.mismatch(splits.image_shape, splits.classes) if syn is not None else None
        if why:
            raise ConfigError(f"--dataset {args.dataset}: {why} ({found[0]})")
    print(build_report(args.run_dir, splits=splits))


def cmd_export(args) -> None:
    from .export import export_ddranking, export_synthetic
    if args.format == "ddranking":
        out = export_ddranking(args.syn, args.out_dir)
        print(f"exported {args.syn} to {out} for DD-Ranking (images.pt, hard_labels.pt, "
              "labels.pt for soft labels, lr.pt, image_folder/, ddranking_config.json, "
              "metadata.json, README.txt)")
        return
    out = export_synthetic(args.syn, args.out_dir)
    print(f"exported {args.syn} to {out} (images/, grid.png, synthetic.pt, metadata.json, README.txt)")


def cmd_demo(args) -> None:
    from .demo import DemoConfig, run_demo
    cfg = DemoConfig(device=args.device or "cpu", autocast=args.autocast)
    if args.iterations:
        cfg.iterations = args.iterations
    run_demo(args.run_dir, cfg, progress=not args.quiet)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trajdistill", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("buffer", help="train expert trajectories")
    _add_data_flags(p)
    _add_train_flags(p)
    p.add_argument("--preset", type=kinds.non_empty,
                   help=f"expert settings: {', '.join(sorted(BUFFER_PRESETS))}")
    d = _buffer_defaults()
    p.add_argument("--train_epochs", type=kinds.positive_int,
                   help=f"epochs of each expert's trajectory (default {d['train_epochs']})")
    p.add_argument("--num_experts", type=kinds.positive_int,
                   help=f"experts to train (default {d['num_experts']}); a re-run adds the missing ones")
    p.add_argument("--lr_teacher", type=kinds.positive_float, nargs="+",
                   help=f"the experts' SGD lr (default {d['lr_teacher'][0]})")
    p.add_argument("--mom", type=kinds.non_negative_float,
                   help=f"the experts' SGD momentum (default {d['mom']})")
    p.add_argument("--l2", type=kinds.non_negative_float,
                   help=f"the experts' weight decay (default {d['l2']})")
    p.add_argument("--decay", action="store_true", default=None,
                   help="divide the experts' lr by 10 just past half-way through training")
    p.add_argument("--buffer_path", type=kinds.output_dir,
                   help=f"where buffers go: BUFFER_PATH/DATASET/MODEL (default {BUFFER_PATH})")
    p.set_defaults(func=cmd_buffer)

    _add_distill_parser(sub)

    p = sub.add_parser("evaluate", help="train fresh networks on a synthetic set, test on real data")
    p.add_argument("--syn", required=True, type=kinds.existing_file,
                   help="a synthetic set file (synthetic_best.pt)")
    _add_data_flags(p)
    _add_eval_flags(p)
    p.add_argument("--dsa", type=kinds.boolean, default=None)
    p.add_argument("--dsa_strategy", type=kinds.dsa_strategy, default=None,
                   help="DSA groups, or galaxy (see distill)")
    p.add_argument("--batch_train", type=kinds.positive_int)
    p.add_argument("--out", type=kinds.output_file, help="write the results as JSON here")
    p.add_argument("--eval_batched", choices=["auto", "on", "off"],
                   help="train the num_eval networks together (vmap); auto: on CUDA only")
    p.add_argument("--lr", type=_lr_or_learned, nargs="+",
                   help="train with this lr instead of choosing it on validation (the default: "
                   "the best of 0.01 0.003 0.001 0.0003 0.0001 and the learned lr); several "
                   "values are a per-stage list, scheduled as an independent-lr set's; "
                   "'learned': the set's own lr(s), the reference's protocol")
    _add_sweep_flag(p)
    _add_ddranking_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="random real images, class means, or the full set")
    p.add_argument("--kind", choices=["random", "mean", "full"])
    p.add_argument("--ipc", type=kinds.positive_int)
    p.add_argument("--lr", type=kinds.positive_float,
                   help="train at this lr (default: the one of 0.01 0.003 0.001 0.0003 0.0001 "
                   "that does best on the validation split; --kind full: 0.01)")
    _add_data_flags(p)
    _add_train_flags(p)
    _add_eval_flags(p)
    p.add_argument("--eval_batched", choices=["auto", "on", "off"],
                   help="train the num_eval networks together (vmap); auto: on CUDA only")
    p.add_argument("--out", type=kinds.output_file, help="write the results as JSON here")
    _add_sweep_flag(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("report", help="(re)build the report of a run directory")
    p.add_argument("run_dir", type=kinds.writable_dir)
    p.add_argument("--dataset", type=kinds.non_empty,
                   help="the run's dataset: adds synthetic vs class mean vs real images")
    p.add_argument("--data_path", type=kinds.non_empty)
    p.add_argument("--subset", type=kinds.non_empty)
    _add_folder_flags(p)
    p.add_argument("--zca", action="store_true", default=None,
                   help="(default: as the synthetic set was made)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a distilled set as PNGs per class + a tensor file + README")
    p.add_argument("syn", type=kinds.existing_file,
                   help="a synthetic set file (RUN_DIR/synthetic_best.pt)")
    p.add_argument("out_dir", type=kinds.output_dir)
    p.add_argument("--format", choices=["trajdistill", "ddranking"], default="trajdistill",
                   help="trajdistill (default): PNGs, synthetic.pt, README; ddranking: the "
                   "tensors DD-Ranking's evaluators take (docs/ddranking.md)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits, in minutes")
    p.add_argument("--run_dir", type=kinds.output_dir, default="runs/demo")
    p.add_argument("--iterations", type=kinds.positive_int)
    p.add_argument("--device", type=kinds.device, default=None)
    p.add_argument("--autocast", choices=list(AUTOCAST_DTYPES), default="off",
                   help="bf16: the distillation's forward passes in bfloat16 (see distill --help)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    try:
        from .gzoo2.cli import add_gzoo2_parser
    except ImportError:  # the Galaxy Zoo builder is optional at import time
        add_gzoo2_parser = None
    if add_gzoo2_parser is not None:
        add_gzoo2_parser(sub)
    return parser


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's refusal (a plain
    RuntimeError whose message says so): a limit of the machine, not a bug."""
    return (isinstance(e, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(e) or "out of memory" in str(e).lower())


def main(argv: list[str] | None = None) -> int:
    """Run a command. Errors the user can fix (the package's own types) print one line and
    return 2; Ctrl-C prints one line and returns 130; anything else is a bug and keeps its
    traceback."""
    from .errors import TrajdistillError
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # each step's large blocks reuse pages instead of new ones (host_memory.py)
    try:
        set_tf32(tf32_requested())
        args.func(args)
    except TrajdistillError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise  # a bug: keep its traceback
        asked = re.search(r"allocate (\d+) bytes", str(e))
        what = f" ({int(asked.group(1)) / 2**30:.3g} GiB asked for)" if asked else ""
        print(f"error: out of memory{what}: the settings ask for more memory than this device "
              "has; lower --ipc, --batch_syn, --res, --canvas_size or --num_eval, or use a "
              "larger device", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        # leave at once: seen under pytest (about 1 run in 4), the interpreter's own shutdown
        # after a caught Ctrl-C could still end the process by SIGINT (status -2, not 130)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
