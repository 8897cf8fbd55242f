"""What a distillation is asked to do (`DistillConfig`) and whether it can be done.

`resolve(cfg, splits, store)` returns a new, fully settled config: every default that depends
on the data and the expert buffer filled in (the derived lrs and start, max_start_epoch, the
validation split's size, the evaluation models, the STM iteration bound, the measured
`--lr_teacher auto`), and every setting that cannot work refused with one message naming the
flag: the same kinds and ranges the command line checks where it parses, for configurations
built in Python. Nothing changes a config after it: the caller's stays as it was, and
config.json holds exactly the resolved one that ran (resolving it again gives it back).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

from .augment import DEFAULT_STRATEGY
from .data.base import DatasetSplits
from .defaults import derive_distill, derive_init_epoch, derived
from .errors import ConfigError
from .evaluate import BATCHED_CHOICES, eval_pool
from .experts import TrajectoryStore
from .flags import check_config
from .initial import LABEL_INITS, PIX_INITS
from .matching import GRADIENT_METHODS
from .models import ModelError, build_model
from .precision import AUTOCAST_DTYPES
from .texture import TextureSpec
from .validation import default_val_size
from .verdict import EVAL_LRS, FINAL_EVALS

# galaxies (issue 14): --img_optimizer (initial images: see initial.py)
IMG_OPTIMIZERS = ("sgd", "adam")
START_SCHEDULES = ("method", "aligned")


@dataclass
class DistillConfig:
    method: str = "STM"                 # or "original-MTT"
    ipc: int = 1
    syn_steps: int = 20
    expert_epochs: int = 1
    max_start_epoch: int | None = None  # default: stored epochs - expert_epochs
    # None: derived from the data and the buffer (defaults.py; what was derived and from
    # what goes into `derived` and config.json). Explicit values keep the reference's meaning.
    lr_img: float | None = None         # adam: 0.01; sgd: 1000 (the reference)
    lr_lr: float = 0.01
    lr_teacher: list[float] | None = None  # auto (lr_auto.py); a number, or a list per stage
    learn_lr: bool = True
    lr_mode: str = "global-lr"          # or "independent-lr"
    sample_method: str = "cycle"        # or "random"
    init_epoch: int | None = None       # STM's first stage [0, init_epoch): derived from ipc
    sigma: float = 5.0
    min_duration: int = 20
    max_duration: int = 1000            # T_max
    pix_init: str | None = None         # mean at ipc 1, kmeans above; or real, noise, ...
    batch_syn: int | None = None        # default: the whole synthetic set
    iterations: int | None = None      # default: see `default_iterations`
    eval_it: int = 200
    eval_models: list[str] = field(default_factory=list)  # default: eval_mode's pool
    eval_mode: str = "S"                # the reference's pools (evaluate.eval_pool); S: the experts' model
    num_eval: int = 5
    epoch_eval_train: int = 1000
    batch_train: int = 256              # minibatch of the evaluation networks (as the reference)
    dsa: bool = True
    dsa_strategy: str | None = None     # None: the experts' (the buffer's), as they saw the data
    gradient: str = "auto"              # by memory (gradient_choice.py); or lean, or unroll
    compile: bool | None = None         # lean walk + held-out loss via torch.compile; None: auto
    # (gradient_choice.choose_compile: on for a large lean walk on a CPU; docs/performance.md)
    gradient_memory: float = 0.0        # GB of step graphs the lean walk may keep (the hybrid)
    cuda_graphs: str = "auto"           # lean walk's steps as CUDA graphs: auto (on CUDA)|on|off
    autocast: str = "off"               # bf16: the student's forward passes in bfloat16 (inexact)
    max_experts: int | None = None
    checkpoint_every: int = 50
    max_failures: int = 5               # consecutive non-finite iterations before giving up
    eval_batched: str = "auto"          # train the evaluation networks together: auto|on|off
    wandb: bool = False                 # optional Weights & Biases logging (offline works)
    tensorboard: bool = False           # optional TensorBoard logging
    wandb_name: str | None = None
    seed: int = 0
    device: str = "cpu"
    # trajectories matched per iteration (the meta-batch); their mean gradient makes one
    # update. Shared out over torchrun's ranks; the result depends on it, not on the ranks.
    num_trajectories: int = 1
    prev_iter: int = 0
    load_syn_image: str | None = None
    # learnable soft labels (DATM, issue 10): per-image label logits with their own optimiser
    soft_labels: bool = False
    label_init: str = "expert"          # the final epoch of an expert's logits on the images
    lr_y: float = 2.0                   # SGD momentum 0.9 on the logits (DATM CIFAR-10 ipc10)
    loss_threshold: float | None = None  # DATM: no update when the matching loss exceeds it
    # difficulty-aligned start windows (DATM, issue 10); see schedule.py and docs/methods.md
    start_schedule: str = "method"      # "method": MTT uniform / STM stages; "aligned": DATM
    min_start_epoch: int = 0            # lower end of every window (STM's cap counts from it)
    current_max_start_epoch: int | None = None  # aligned: the first upper end (default: middle)
    expansion_end_epoch: int = 1000     # aligned, MTT: iterations until upper = max_start_epoch
    # validation split and best-set selection (issue 10): see validation.py
    val_size: int | None = None         # None: 10 % of the training set (<= 5000); 0: none
    select_on: str = "val"              # synthetic_best.pt by validation ("val") or "test" accuracy
    # the end of a run (verdict.py): the chosen set against its start, the class mean and
    # random real images on validation, each at the best of eval_lrs (and its learned lr)
    final_eval: str = "sweep"           # or "off"
    eval_lrs: list[float] = field(default_factory=lambda: list(EVAL_LRS))
    # --- reference compatibility (the reference STM distill.py's --no_aug)
    no_aug: bool = False                # no augmentation in the unrolled student; eval keeps DSA
    # --- texture distillation (texture.py): toroidal canvases, random windows
    texture: bool = False
    canvas_size: int = 2                # canvas side / image side
    canvas_samples: int = 1             # windows per canvas per unrolled step

    @property
    def texture_spec(self) -> TextureSpec | None:
        return TextureSpec(self.canvas_size, self.canvas_samples) if self.texture else None
    # --- galaxies (issue 14): warn when nothing is being distilled ---
    loss_warn_it: int = 300             # warn if the loss has not fallen below 1 by then (0: off)
    # --- galaxies (issue 14): the image optimiser. sgd: SGD with momentum 0.5 (the reference),
    # lr_img multiplies the raw gradient; adam: lr_img is about the step per pixel and
    # iteration in normalised units, whatever the gradient's scale ---
    img_optimizer: str | None = None    # adam, unless --lr_img alone asks for the reference's SGD
    # raise a derived Adam image lr where the images move too little for the run (pacing.py)
    pace_lr_img: bool | None = None     # derived: on with the derived Adam lr, off otherwise
    # the settings that were derived, {field: {"value", "from"}} (filled by resolve)
    derived: dict = field(default_factory=dict)

    @property
    def stm(self) -> bool:
        return self.method.upper() == "STM"


# {field: (smallest allowed, whether the smallest itself is allowed)}: the ranges the command
# line checks, for configurations built in Python (torch.optim's own ValueError must never be
# what a user sees); flags.check_config also checks every int / float / bool field's kind.
_RANGES = {"ipc": (1, True), "syn_steps": (1, True), "expert_epochs": (1, True),
           "lr_img": (0, True), "lr_lr": (0, True), "sigma": (0, False), "min_duration": (1, True),
           "max_duration": (1, True), "iterations": (0, True), "eval_it": (0, True),
           "num_eval": (1, True), "epoch_eval_train": (1, True), "batch_train": (1, True),
           "checkpoint_every": (1, True), "max_failures": (1, True), "batch_syn": (1, True),
           "max_experts": (1, True), "prev_iter": (0, True), "num_trajectories": (1, True),
           "init_epoch": (1, True), "min_start_epoch": (0, True),
           "current_max_start_epoch": (1, True), "expansion_end_epoch": (1, True),
           "canvas_size": (1, True), "canvas_samples": (1, True), "loss_warn_it": (0, True),
           "seed": (0, True), "lr_y": (0, False), "loss_threshold": (0, False),
           "gradient_memory": (0, True)}
_FLAG_NAMES = {"iterations": "--Iteration"}


def _check_kinds(cfg: DistillConfig, splits: DatasetSplits) -> None:
    """What the command line's flag kinds check, for configurations built in Python: a 1.5
    for an int, "no" (truthy) for a bool, an lr of NaN, a device or model that does not exist
    would otherwise fail late (or run on garbage)."""
    check_config(cfg, _RANGES, _FLAG_NAMES)
    if cfg.sample_method not in ("cycle", "random"):
        raise ConfigError(f"--sample_method must be cycle or random, got {cfg.sample_method!r}")
    if str(cfg.eval_batched).lower() not in BATCHED_CHOICES:
        raise ConfigError(f"--eval_batched must be one of {', '.join(BATCHED_CHOICES)}, "
                          f"got {cfg.eval_batched!r}")
    if str(cfg.cuda_graphs).lower() not in BATCHED_CHOICES:
        raise ConfigError(f"--cuda_graphs must be one of {', '.join(BATCHED_CHOICES)}, "
                          f"got {cfg.cuda_graphs!r}")
    if cfg.autocast not in AUTOCAST_DTYPES:
        raise ConfigError(f"--autocast must be one of {', '.join(AUTOCAST_DTYPES)}, "
                          f"got {cfg.autocast!r}")
    c, h, w = splits.image_shape
    for name in cfg.eval_models:  # checked now, not at the first evaluation
        try:
            build_model(name, c, splits.num_classes, (h, w))
        except ModelError as e:
            raise ConfigError(f"evaluation model (--eval_mode): {e}") from None
    if cfg.lr_teacher != "auto" and not (isinstance(cfg.lr_teacher, (list, tuple)) and all(
            v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                            and math.isfinite(v)) for v in cfg.lr_teacher)):
        raise ConfigError(f"--lr_teacher must be a list of numbers or 'auto', got {cfg.lr_teacher!r}")


METHOD_NAMES = {"STM": "STM", "STAGE-MTT": "STM", "ORIGINAL-MTT": "original-MTT"}
MTT_ITERATIONS = 5000        # original-MTT's default --Iteration
REFERENCE_STM_ITERATIONS = 20001  # the reference lets a stage-MTT run go this far


def default_iterations(cfg: DistillConfig) -> int:
    """--Iteration when none is given.

    original-MTT has no stop of its own: 5000. STM ends by its own stop (fine-tuning's
    image lr decays below 50); its default must not cut a run before that. A run in which
    every stage runs to T_max without passing, then fine-tunes to the end, takes
        stages x (T_max + 10) + 50 x (decays until lr_img < 50)
    iterations (stages = max_start_epoch - min_start_epoch - init_epoch + 1; the test runs every 10
    held-out losses); a stage that passes only shortens this. The default is that bound,
    and never less than the reference's 20,001. (A run whose last stage keeps passing has
    no natural end: it stops at this bound.)
    """
    if not cfg.stm:
        return MTT_ITERATIONS
    if cfg.lr_img is None or cfg.img_optimizer is None:  # not derived yet: a derived copy
        cfg = derive(replace(cfg, derived=dict(cfg.derived)))
    first = cfg.init_epoch if cfg.init_epoch is not None else derive_init_epoch(cfg)["value"]
    stages = cfg.max_start_epoch - cfg.min_start_epoch - first + 1
    decays = 0
    lr = cfg.lr_img
    while lr >= stop_lr_img(cfg):
        lr *= 0.8
        decays += 1
    return max(REFERENCE_STM_ITERATIONS,
               cfg.prev_iter + stages * (cfg.max_duration + 10) + 50 * decays + 1)


def stop_lr_img(cfg: DistillConfig) -> float:
    """STM's fine-tuning stops when the image lr falls below this: the reference's 50 for
    SGD; for Adam, whose lr is ~1e-2 and not ~1e3, the same fraction (50 / 1000) of its start."""
    return 0.05 * cfg.lr_img if cfg.img_optimizer == "adam" else 50.0


def derive(cfg: DistillConfig) -> DistillConfig:
    """A copy with every field left None set to its derived default, and why (defaults.py)."""
    new = derive_distill(cfg)
    return replace(cfg, **{k: d["value"] for k, d in new.items()},
                   derived={**cfg.derived, **new})


# measures --lr_teacher auto for a settled config (initial.measure_teacher_lr)
TeacherLr = Callable[[DistillConfig, DatasetSplits, TrajectoryStore], float]
# chooses --gradient auto's method for a settled config: (method, why) (gradient_choice.choose)
GradientChoice = Callable[[DistillConfig, DatasetSplits, TrajectoryStore], tuple[str, str]]
# chooses --compile auto for a config whose gradient is settled: (on, why) (gradient_choice.choose_compile)
CompileChoice = Callable[[DistillConfig, DatasetSplits, TrajectoryStore], tuple[bool, str]]
GRADIENTS = ("auto", *GRADIENT_METHODS)


def resolve(cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore,
            teacher_lr: TeacherLr | None = None,
            gradient: GradientChoice | None = None,
            compile_choice: CompileChoice | None = None) -> DistillConfig:
    """A new config with every default filled from the data and the buffer; impossible
    settings refused with a clear message. `cfg` itself is not changed.

    Once everything else is settled, `--lr_teacher auto` is measured by `teacher_lr`
    (default: initial.measure_teacher_lr, on the images the run starts from) and `--gradient
    auto` chosen by `gradient` (default: gradient_choice.choose, by memory), then `--compile
    auto` by `compile_choice` for the method chosen (default: gradient_choice.choose_compile)."""
    if cfg.img_optimizer is not None and cfg.img_optimizer not in IMG_OPTIMIZERS:
        raise ConfigError(f"--img_optimizer must be sgd or adam, got {cfg.img_optimizer!r}")
    cfg = derive(copy.deepcopy(cfg))
    if cfg.dsa_strategy is None:
        cfg = replace(cfg, **_experts_augmentation(cfg, store))
    cfg = _settle(cfg, splits, store)
    if cfg.lr_teacher in ("auto", ["auto"]):
        cfg = _measured_lr(cfg, splits, store, teacher_lr)
    if cfg.gradient == "auto":
        if gradient is None:
            from .gradient_choice import choose as gradient
        method, why = gradient(cfg, splits, store)
        cfg = replace(cfg, gradient=method, derived={
            **cfg.derived, "gradient": derived(method, f"--gradient auto: {why}")})
    if cfg.compile is None:
        if compile_choice is None:
            from .gradient_choice import choose_compile as compile_choice
        on, why = compile_choice(cfg, splits, store)
        cfg = replace(cfg, compile=on, derived={
            **cfg.derived, "compile": derived(on, f"--compile auto: {why}")})
    return cfg


def _experts_augmentation(cfg: DistillConfig, store: TrajectoryStore) -> dict:
    """dsa_strategy and its `derived` entry: the augmentation the experts trained with (a
    buffer made before it was recorded, or without DSA: DSA's default)."""
    expert = store.identity.get("expert", {})
    strategy = expert.get("dsa_strategy") if expert.get("dsa", True) else None
    why = (f"the experts' augmentation (buffer {store.root})" if strategy else
           "DSA's default (the experts trained without augmentation)")
    strategy = strategy or DEFAULT_STRATEGY
    return {"dsa_strategy": strategy,
            "derived": {**cfg.derived, "dsa_strategy": derived(strategy, why)}}


def _measured_lr(cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore,
                 teacher_lr: TeacherLr | None) -> DistillConfig:
    if teacher_lr is None:
        from .initial import measure_teacher_lr as teacher_lr
    lr = teacher_lr(cfg, splits, store)
    how = cfg.derived.get("lr_teacher", {}).get("from", "--lr_teacher auto")
    return replace(cfg, lr_teacher=[lr] * _lr_count(cfg), derived={
        **cfg.derived, "lr_teacher": derived(
            [lr] * _lr_count(cfg), f"{how}: measured {lr:.4g}, the median over up to 3 experts "
            "x 5 start epochs")})


def _lr_count(cfg: DistillConfig) -> int:
    """How many synthetic lrs a run starts with: one per initial stage with STM's
    independent-lr, else one."""
    return cfg.init_epoch if (cfg.stm and cfg.lr_mode == "independent-lr") else 1


def _settle(cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore) -> DistillConfig:
    """Check `cfg` (a private copy) and fill what depends on the data and the buffer."""
    _check_kinds(cfg, splits)
    if str(cfg.method).upper() not in METHOD_NAMES:
        raise ConfigError(f"--method must be STM (stage-MTT) or original-MTT, got {cfg.method!r}")
    cfg.method = METHOD_NAMES[cfg.method.upper()]
    if cfg.gradient not in GRADIENTS:
        raise ConfigError(f"--gradient must be one of {', '.join(GRADIENTS)}, got {cfg.gradient!r}")
    if cfg.gradient_memory and cfg.gradient == "unroll":
        raise ConfigError("--gradient_memory sets how much of the lean walk keeps its graphs; "
                          f"--gradient {cfg.gradient} keeps them all: drop one of the two")
    if str(cfg.cuda_graphs).lower() == "on":
        if not str(cfg.device).startswith("cuda"):
            raise ConfigError(f"--cuda_graphs on needs a CUDA --device, got {cfg.device!r} "
                              "(auto turns them on wherever there is one)")
        if cfg.compile:
            raise ConfigError("--cuda_graphs on and --compile are two ways to run the lean walk's "
                              "steps: drop one of the two")
    if cfg.autocast != "off" and cfg.compile:
        raise ConfigError(f"--autocast {cfg.autocast} and --compile do not combine (the compiled "
                          "steps run in the problem's own dtype): drop one of the two")
    if cfg.lr_mode not in ("global-lr", "independent-lr"):
        raise ConfigError(f"--lr_mode must be global-lr or independent-lr, got {cfg.lr_mode!r}")
    if cfg.pix_init not in PIX_INITS:
        raise ConfigError(f"--pix_init must be one of {', '.join(PIX_INITS)}, got {cfg.pix_init!r}")
    if cfg.img_optimizer not in IMG_OPTIMIZERS:
        raise ConfigError(f"--img_optimizer must be sgd or adam, got {cfg.img_optimizer!r}")
    if cfg.label_init not in LABEL_INITS:
        raise ConfigError(f"--label_init must be one of {', '.join(LABEL_INITS)}, "
                          f"got {cfg.label_init!r}")
    epochs = store.num_epochs
    if cfg.expert_epochs >= epochs:
        raise ConfigError(f"--expert_epochs ({cfg.expert_epochs}) must be below the {epochs} epochs "
                          f"stored in {store.root}")
    if cfg.max_start_epoch is None:
        cfg.max_start_epoch = epochs - cfg.expert_epochs
    if cfg.max_start_epoch < 1 or cfg.max_start_epoch + cfg.expert_epochs > epochs:
        raise ConfigError(f"max_start_epoch ({cfg.max_start_epoch}) + expert_epochs "
                          f"({cfg.expert_epochs}) must be within the {epochs} epochs stored in "
                          f"{store.root} (and max_start_epoch >= 1)")
    _validate_windows(cfg)
    _validate_split(cfg, splits)
    n_lr = _lr_count(cfg)
    if cfg.lr_teacher in ("auto", ["auto"]):
        if cfg.texture:  # the rule needs whole images through the student, not canvases
            raise ConfigError("--lr_teacher auto does not work with --texture; give a number")
        return _validate_rest(cfg, splits, store)  # measured last, by `resolve`
    if "auto" in cfg.lr_teacher:
        raise ConfigError(f"--lr_teacher auto stands alone (one value), got {cfg.lr_teacher}")
    if len(cfg.lr_teacher) == 1 and n_lr > 1:
        cfg.lr_teacher = cfg.lr_teacher * n_lr
    if len(cfg.lr_teacher) != n_lr:
        raise ConfigError(f"--lr_teacher has {len(cfg.lr_teacher)} values; expected {n_lr} "
                          f"(one per initial stage with independent-lr, else one)")
    if any(v <= 0 for v in cfg.lr_teacher):
        raise ConfigError(f"--lr_teacher values must be positive, got {cfg.lr_teacher}")
    return _validate_rest(cfg, splits, store)


def _validate_rest(cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore) -> DistillConfig:
    counts = splits.train.class_counts()
    if cfg.pix_init in ("real", "correct", "kmeans") and min(counts) < cfg.ipc:
        c = counts.index(min(counts))
        raise ConfigError(f"--ipc {cfg.ipc} but class {splits.classes[c]!r} has only {counts[c]} "
                          "training images")
    _validate_texture(cfg, splits)
    if not cfg.eval_models:
        cfg.eval_models = eval_pool(cfg.eval_mode, store.model)
    if cfg.iterations is None:
        cfg.iterations = default_iterations(cfg)
    if cfg.prev_iter and cfg.prev_iter >= cfg.iterations:
        raise ConfigError(f"--prev_iter ({cfg.prev_iter}) must be below --Iteration "
                          f"({cfg.iterations}): the run would do nothing")
    return cfg


def _validate_windows(cfg: DistillConfig) -> None:
    """Start-epoch windows: --min_start_epoch for both methods, --start_schedule aligned."""
    if cfg.start_schedule not in START_SCHEDULES:
        raise ConfigError(f"--start_schedule must be one of {', '.join(START_SCHEDULES)}, "
                          f"got {cfg.start_schedule!r}")
    if not 0 <= cfg.min_start_epoch < cfg.max_start_epoch:
        raise ConfigError(f"--min_start_epoch ({cfg.min_start_epoch}) must be in "
                          f"[0, max_start_epoch={cfg.max_start_epoch})")
    if cfg.init_epoch is None and not cfg.stm:
        cfg.init_epoch = 1  # unused: original-MTT draws from its whole window
    elif cfg.init_epoch is None:  # STM's first stage
        first = derive_init_epoch(cfg)
        cfg.init_epoch = first["value"]
        if cfg.start_schedule != "aligned":  # aligned sets it from its window below
            cfg.derived = {**cfg.derived, "init_epoch": first}
    if cfg.start_schedule == "aligned":
        if cfg.current_max_start_epoch is None:
            cfg.current_max_start_epoch = max(cfg.min_start_epoch + 1,
                                              (cfg.min_start_epoch + cfg.max_start_epoch + 1) // 2)
        if not cfg.min_start_epoch < cfg.current_max_start_epoch <= cfg.max_start_epoch:
            raise ConfigError(f"--current_max_start_epoch ({cfg.current_max_start_epoch}) must be "
                              f"in (min_start_epoch={cfg.min_start_epoch}, "
                              f"max_start_epoch={cfg.max_start_epoch}]")
        if cfg.stm:  # STM's first stage is DATM's first window; its test then widens it
            cfg.init_epoch = cfg.current_max_start_epoch - cfg.min_start_epoch
    span = cfg.max_start_epoch - cfg.min_start_epoch
    if cfg.stm and not 1 <= cfg.init_epoch <= span:
        raise ConfigError(f"init_epoch ({cfg.init_epoch}) must be in [1, max_start_epoch - "
                          f"min_start_epoch = {span}]")


def _validate_split(cfg: DistillConfig, splits: DatasetSplits) -> None:
    """--val_size / --select_on: fill the default size and refuse what cannot work."""
    if cfg.select_on not in ("val", "test"):
        raise ConfigError(f"--select_on must be val or test, got {cfg.select_on!r}")
    if cfg.final_eval not in FINAL_EVALS:
        raise ConfigError(f"--final_eval must be one of {', '.join(FINAL_EVALS)}, "
                          f"got {cfg.final_eval!r}")
    if not cfg.eval_lrs or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v) and v > 0 for v in cfg.eval_lrs):
        raise ConfigError(f"--eval_lrs must be positive numbers, got {cfg.eval_lrs!r}")
    n, c = len(splits.train), splits.num_classes
    if cfg.val_size is None:
        cfg.val_size = default_val_size(n, c)
    if cfg.val_size and not c <= cfg.val_size < n:
        raise ConfigError(f"--val_size ({cfg.val_size}) must be 0 (no validation split) or in "
                          f"[{c} (one image per class), {n} (the training set))")
    if cfg.val_size == 0 and cfg.select_on == "val":
        raise ConfigError("--select_on val needs a validation split; give --val_size > 0 or "
                          "--select_on test")


def _validate_texture(cfg: DistillConfig, splits: DatasetSplits) -> None:
    """As the reference: texture with ZCA is refused, with real initialisation warned about."""
    if not cfg.texture:
        return
    if splits.preprocess.zca is not None:
        raise ConfigError("--texture cannot be used with --zca (as in the reference): drop one")
    if cfg.soft_labels:  # the expert labels whole images, not canvases
        raise ConfigError("--texture cannot be used with --soft_labels: drop one")
    if cfg.pix_init in ("real", "correct", "kmeans") and not cfg.load_syn_image:
        warnings.warn(f"--texture with --pix_init {cfg.pix_init}: each canvas starts as a grid "
                      "of real images, and smoothing out the edges between them takes a long time "
                      "(--pix_init noise avoids it)", stacklevel=3)
