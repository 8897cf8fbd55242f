"""`trajdistill distill`: learn a synthetic set, or resume a run; the summary lines."""
from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

import torch

from .. import flags as kinds
from ..defaults import derived, expert_model
from ..distributed import init_from_env, shutdown
from ..errors import ConfigError
from ..experts import buffer_dir, data_folder, find_model
from ..precision import AUTOCAST_DTYPES
from ..presets import PRESETS
from ..reference_flags import add_reference_flags
from ..reference_flags import translate as translate_reference_flags
from ..run_dir import RunDirectory
from .buffer import BUFFER_PATH
from .common import (DATA_OPTIONS, add_data_flags, add_eval_flags, add_train_flags, load_splits,
                     lr_or_auto, resolve)


def cmd_distill(args) -> None:
    from ..distill import DistillConfig, Distiller, open_buffer
    if args.resume:
        return _resume_distill(args)
    o = resolve(args, {"buffer_path": BUFFER_PATH}, PRESETS, no_aug_is_no_dsa=False)
    o = translate_reference_flags(o, torch.cuda.is_available(), explicit_device=bool(args.device))
    splits = load_splits(o)
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
    from ..distill import Distiller, open_buffer
    run_dir = RunDirectory(args.resume)
    saved = run_dir.config()
    src = saved.get("source") or {}
    if not isinstance(src, dict) or not src.get("dataset") or not src.get("buffer_dir"):
        raise ConfigError(f"{run_dir.config_path} does not say which data and expert buffer "
                          "the run used ('source': dataset, buffer_dir)")
    splits = load_splits(src)
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
    from ..report import build_report
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


class _OptionalPackage(argparse.Action):
    """A flag that turns on an optional package: refused at parse time if it is missing."""

    def __init__(self, *args, package: str, **kw):
        self.package = package
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..tracking import TrackingError, require
        try:
            require(self.package)
        except TrackingError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, True)


def add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="learn a synthetic set by trajectory matching (STM or MTT)")
    add_data_flags(p)
    add_train_flags(p, no_aug=False)
    add_eval_flags(p)
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
    p.add_argument("--lr_teacher", "--list", dest="lr_teacher", type=lr_or_auto, nargs="+",
                   help="initial synthetic lr(s), or auto: derived from the buffer (the first "
                   "unrolled steps travel about as far as expert_epochs of an expert)")
    p.add_argument("--learn_lr", type=kinds.boolean, help="learn the synthetic lr (default True)")
    p.add_argument("--lr_mode", choices=["global-lr", "independent-lr"],
                   help="global-lr (default) or independent-lr")
    p.add_argument("--sample_method", choices=["cycle", "random"], help="cycle (default) or random")
    p.add_argument("--init_epoch", type=kinds.positive_int,
                   help="STM's first stage: start epochs [0, init_epoch) (default: derived, 1 at "
                   "1 image per class and with --lr_img given, else 0.04 x ipc of the start "
                   "epochs, at most 0.4)")
    p.add_argument("--sigma", type=kinds.positive_float, help="STM threshold (default 5)")
    p.add_argument("--min_duration", type=kinds.positive_int)
    p.add_argument("--max_duration", "--T_max", dest="max_duration", type=kinds.positive_int)
    p.add_argument("--pix_init", help="real, noise, correct (real images the expert "
                   "classifies correctly, DATM), kmeans (the real images nearest the centres of "
                   "a k-means clustering of each class in the expert's features), mean (the "
                   "class-mean image) or mean_noise (class mean plus noise); default derived: "
                   "mean at --ipc 1, kmeans above, real with the reference's SGD step")
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
    p.add_argument("--compile", nargs="?", const=True, type=kinds.auto_on_off,
                   metavar="auto|on|off",
                   help="run the lean gradient's and the held-out loss's steps through "
                   "torch.compile: same gradient (float64 1e-15), 1.15-1.3x faster on CPU, a "
                   "minute or two of compilation per process (seconds with a warm inductor "
                   "cache). auto (the default): on for a lean walk on a CPU whose unroll's graph "
                   "would be 1 GB or more, with a C++ compiler there; `--compile` alone: on")
    p.add_argument("--gradient_memory", type=kinds.non_negative_float, metavar="GB",
                   help="let the lean walk keep the graphs of its last unrolled steps in up to "
                   "this many GB (the unroll's speed where memory allows; 0, the default: "
                   "recompute every step). Same gradient either way")
    p.add_argument("--cuda_graphs", choices=["auto", "on", "off"],
                   help="replay the lean walk's steps (and the held-out loss's) as recorded CUDA "
                   "graphs: the same gradient, without the launch cost of hundreds of small "
                   "kernels per step (auto, the default: on with a CUDA device, unless --compile on)")
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
