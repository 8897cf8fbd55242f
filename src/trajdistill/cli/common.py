"""What the subcommands share: the one-line-error parser, the data, training and
evaluation flags, how defaults, presets and flags merge, and loading the data."""
from __future__ import annotations

import argparse

import torch

from .. import flags as kinds
from ..errors import ConfigError
from ..evaluate import EVAL_MODES
from ..presets import preset


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: no usage dump, a pointer to --help instead."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=kinds.non_empty,
                   help="dataset name (CIFAR10, CIFAR100, ImageNet, Tiny, MNIST, "
                   "FashionMNIST, GZoo2, GZoo2_aug, digits) or an image-folder path")
    p.add_argument("--data_path", type=kinds.non_empty, help="where the dataset's files are")
    p.add_argument("--subset", type=kinds.non_empty, help="ImageNet subset (imagenette, imagewoof, ...)")
    add_folder_flags(p)
    p.add_argument("--zca", action="store_true", default=None, help="ZCA-whiten (CIFAR)")
    p.add_argument("--device", type=kinds.device, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=kinds.seed, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Data options passed to the loader when given (image folders, ImageNet subsets, and a flat
# folder of images + a labels CSV); the loader refuses those it does not take.
DATA_OPTIONS = ("res", "crop", "labels", "id_column", "label_column", "classes", "class_names",
                "test_fraction")


def add_folder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--res", type=kinds.positive_int, help="image side: resize and centre-crop to RES "
                   "(image folders, ImageNet subsets, labelled folders)")
    p.add_argument("--crop", choices=["center", "center-half"],
                   help="with --res: center (shorter side to RES, central square; default) or "
                   "center-half (the central half, as the Galaxy Zoo cut-outs)")
    p.add_argument("--labels", help="labels CSV of a flat image folder (images named by id)")
    p.add_argument("--id_column", help="--labels column with the image id (file name stem)")
    p.add_argument("--label_column", help="--labels column with the class")
    p.add_argument("--classes", help="labels to keep, ',' between classes, '+' merges: 0,1+2,3")
    p.add_argument("--class_names", help="names of the kept classes, comma-separated")
    p.add_argument("--test_fraction", type=kinds.fraction,
                   help="a folder without a test split (labelled, class folders only, train/ "
                   "only): the seeded, stratified test share (default 0.2)")


def add_train_flags(p: argparse.ArgumentParser, no_aug: bool = True) -> None:
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


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval_mode", choices=EVAL_MODES, default=None,
                   help="S, M, W, D, A, P, N or C (model pools)")
    p.add_argument("--num_eval", type=kinds.positive_int, default=None)
    p.add_argument("--epoch_eval_train", type=kinds.positive_int, default=None)


def resolve(args: argparse.Namespace, defaults: dict, table: dict | None = None,
            no_aug_is_no_dsa: bool = True) -> dict:
    """defaults < preset < explicit flags."""
    merged = dict(defaults)
    if table is not None and getattr(args, "preset", None):
        merged.update(preset(args.preset, table))
    merged.update({k: v for k, v in vars(args).items() if v is not None and k != "func"})
    if no_aug_is_no_dsa and merged.get("no_aug"):
        merged["dsa"] = False
    if not merged.get("device"):
        merged["device"] = default_device()
    return merged


def load_splits(o: dict):
    from ..data import load_dataset
    if not o.get("dataset"):
        raise ConfigError("--dataset is required (or a --preset that names one)")
    opts = {"subset": o["subset"]} if o.get("subset") else {}
    opts.update({k: o[k] for k in DATA_OPTIONS if o.get(k) is not None})
    return load_dataset(o["dataset"], o.get("data_path"), zca=bool(o.get("zca")), **opts)


def lr_or_learned(text: str):
    return "learned" if text == "learned" else kinds.positive_float(text)


def lr_or_auto(text: str):
    return "auto" if text == "auto" else kinds.positive_float(text)


def given_strategy(o: dict) -> dict:
    """EvalConfig's dsa_strategy when --dsa_strategy was given (checked here, not mid-training)."""
    from ..augment import parse_strategy
    if not o.get("dsa_strategy"):
        return {}
    try:
        parse_strategy(o["dsa_strategy"])
    except ValueError as e:
        raise ConfigError(f"--dsa_strategy: {e}") from None
    return {"dsa_strategy": o["dsa_strategy"]}
