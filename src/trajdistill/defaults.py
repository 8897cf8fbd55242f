"""Defaults derived from the data and the expert buffer (issue 21).

The reference ships one table of hand-tuned settings per dataset. Here a setting the user
does not give is derived from what the run can see, so that naming only the data, the
resolution, ipc and a budget works on data nobody tuned for:

experts (`trajdistill buffer`)
- the network: a ConvNet deep enough to pool the image down to about 4 pixels (depth 3 at
  32 px, 4 at 64, 5 at 128, as MTT deepens it for Tiny ImageNet and ImageNet; at least 2),
  EXPERT_WIDTH channels wide;
- the minibatch: the largest power of two (32 to 256) that still gives every epoch at least
  MIN_STEPS_PER_EPOCH SGD steps, so that an epoch of 1,500 images trains as much as an epoch
  of 50,000 (an epoch is not a budget that carries from one data set size to another);
- the augmentation: DSA's default, or the `galaxy` strategy (any rotation, both flips) where
  the class means show the data has no up (orientation.py).

distillation (`trajdistill distill`)
- the image optimiser: Adam at 0.01, a step per pixel bounded in normalised units whatever
  the gradient's scale (SGD at the reference's 1000 drifts several times the images' norm on
  data it was not tuned for, or diverges);
- the initial images: the class mean at 1 image per class (the run starts from the baseline
  it must beat), real images at more, and with the reference's SGD step its real start;
- the pace of the image step: a derived Adam lr is raised, never lowered, when the images move
  less than pacing.py's pace (0.2 of their norm by the end of the run, along sqrt(t));
- STM's first stage: start epochs [0, init_epoch) with init_epoch a share of the start epochs
  that grows with ipc (0.04 x ipc, at most 0.4; 1 at 1 image per class), as MTT's published
  windows do (CIFAR-10: 2 of 50 epochs at 1 per class, 20 at 10); the reference's 1 with its
  SGD image step;
- the synthetic lr: `--lr_teacher auto` (lr_auto.py: syn_steps student steps travel as far as
  the expert did);
- the model: the buffer's (found under --buffer_path, see experts.find_model);
- the augmentation: the experts' (the buffer's `dsa_strategy`).

An explicit flag keeps the reference's meaning (`--lr_img 1000` alone still means SGD, as in
the reference), and presets give the published settings explicitly. Each derived value and
what it was derived from is kept in `DistillConfig.derived` / buffer.json, written to
config.json, printed once, and shown in the report.
"""
from __future__ import annotations

import math

from .augment import DEFAULT_STRATEGY
from .orientation import strategy_for

EXPERT_WIDTH = 32
MIN_STEPS_PER_EPOCH = 32
BATCH_RANGE = (32, 256)
ADAM_LR_IMG = 0.01           # per pixel and iteration, in units of the data's std
SGD_LR_IMG = 1000.0          # the reference's
REFERENCE_LR_TEACHER = 0.01  # where auto cannot be used (texture canvases)
WINDOW_SHARE_PER_IPC = 0.04  # STM's first stage: this share of the start epochs per image per class
WINDOW_MAX_SHARE = 0.4       # ... and never more than this share


def derived(value, reason: str) -> dict:
    """One derived setting as config.json records it."""
    return {"value": value, "from": reason}


def expert_depth(image_shape) -> int:
    """ConvNet blocks (each halves the side) that bring the image to about 4 pixels: round(
    log2(side)) - 2, within [2, 5]. 28 px grey images count as 32 (the first convolution pads
    them to 32, models.py)."""
    side = min(image_shape[-2:])
    return min(5, max(2, round(math.log2(side)) - 2))


def expert_model(image_shape) -> str:
    depth = expert_depth(image_shape)
    return f"ConvNetW{EXPERT_WIDTH}" if depth == 3 else f"ConvNetD{depth}W{EXPERT_WIDTH}"


def expert_batch(num_train: int) -> int:
    """The largest power of two in BATCH_RANGE with >= MIN_STEPS_PER_EPOCH steps an epoch."""
    low, high = BATCH_RANGE
    batch = low
    while batch * 2 <= high and num_train // (batch * 2) >= MIN_STEPS_PER_EPOCH:
        batch *= 2
    return batch


def derive_experts(image_shape, num_train: int, given: dict,
                   asymmetry: dict | None = None) -> dict:
    """{setting: derived(value, reason)} for the expert settings absent from `given`.
    `asymmetry`: the class means' orientation.asymmetries, needed when dsa_strategy is."""
    out = {}
    side = min(image_shape[-2:])
    if given.get("model") is None:
        depth = expert_depth(image_shape)
        out["model"] = derived(expert_model(image_shape),
                               f"{side} px images: {depth} pooling blocks bring them to about "
                               f"{max(1, side >> depth)} px; width {EXPERT_WIDTH}")
    if given.get("batch_train") is None:
        batch = expert_batch(num_train)
        out["batch_train"] = derived(batch, f"{num_train} training images: {num_train // batch} "
                                     f"SGD steps an epoch (at least {MIN_STEPS_PER_EPOCH} where "
                                     f"the batch can be >= {BATCH_RANGE[0]})")
    if given.get("dsa_strategy") is None:
        if asymmetry is None:
            raise ValueError("derive_experts: the class means' asymmetry is needed to derive "
                             "dsa_strategy")
        out["dsa_strategy"] = derived(*strategy_for(asymmetry, DEFAULT_STRATEGY))
    return out


def derive_distill(cfg) -> dict:
    """{field: derived(value, reason)} for the DistillConfig fields left None (the caller
    sets them). lr_teacher 'auto' is measured later, from the initial images."""
    out = {}
    if cfg.img_optimizer is None:
        out["img_optimizer"] = (
            derived("sgd", "--lr_img given without --img_optimizer: SGD, the reference's meaning")
            if cfg.lr_img is not None or cfg.texture else
            derived("adam", "a step per pixel bounded in normalised units, whatever the "
                    "gradient's scale"))
    optimiser = cfg.img_optimizer or out["img_optimizer"]["value"]
    if cfg.lr_img is None:
        out["lr_img"] = (derived(ADAM_LR_IMG, "Adam: 1 % of the data's std per pixel and "
                                 "iteration") if optimiser == "adam" else
                         derived(SGD_LR_IMG, "SGD: the reference's image lr"))
    if cfg.pace_lr_img is None:
        out["pace_lr_img"] = (
            derived(True, "the derived Adam step: raised where the images move too little for "
                    "the run's length (pacing.py)") if optimiser == "adam" and cfg.lr_img is None
            else derived(False, "an image lr was given: kept as given") if cfg.lr_img is not None
            else derived(False, "SGD's step is the reference's: kept"))
    if cfg.pix_init is None:
        out["pix_init"] = (
            derived("real", "texture canvases start as tiled real images (the reference)")
            if cfg.texture else
            derived("real", "the reference's SGD image step: the reference's real start")
            if optimiser == "sgd" else
            derived("mean", "1 image per class: the class mean, the baseline the set must beat")
            if cfg.ipc == 1 else
            derived("kmeans", f"{cfg.ipc} images per class: the real images nearest the "
                    "centres of a k-means clustering of each class in the first expert's "
                    "features (representatives.py)"))
    if cfg.lr_teacher is None:
        out["lr_teacher"] = (
            derived([REFERENCE_LR_TEACHER], "texture canvases: the reference's lr (auto needs "
                    "whole images)") if cfg.texture else
            derived(["auto"], "auto: syn_steps student steps travel as far as the expert "
                    "did (lr_auto.py)"))
    return out


def first_window(ipc: int, start_epochs: int) -> int:
    """STM's first stage [0, init_epoch): 1 at 1 image per class (the published value), else
    round(0.04 x ipc x start_epochs), at most 0.4 of them, at least 1. MTT's windows grow with
    ipc alike: on CIFAR-10's 50-epoch buffers it matches up to start epoch 2 at 1 per class, 20
    at 10 (this rule: 20) and 40 at 50 (this rule: 20). STM widens its window by its own test,
    but in a run of a few hundred iterations only by a few epochs (docs/defaults.md)."""
    if ipc == 1:
        return 1
    share = min(WINDOW_SHARE_PER_IPC * ipc, WINDOW_MAX_SHARE)
    return max(1, min(round(share * start_epochs), start_epochs))


def derive_init_epoch(cfg) -> dict:
    """derived(init_epoch, reason) for an STM config whose image optimiser and start-epoch
    range (max_start_epoch, min_start_epoch) are settled."""
    span = cfg.max_start_epoch - cfg.min_start_epoch
    if cfg.img_optimizer == "sgd":
        return derived(1, "the reference's SGD image step: the reference's first stage [0, 1)")
    k = first_window(cfg.ipc, span)
    if cfg.ipc == 1:
        return derived(k, "1 image per class: STM's published first stage [0, 1)")
    return derived(k, f"{cfg.ipc} images per class: {k} of the {span} start epochs "
                   f"(0.04 x ipc of them, at most 0.4), as MTT's window grows with ipc")
