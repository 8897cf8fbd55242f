"""The distillation loop: owns the learnable state, optimisers, schedule, checkpoints, logs.

One iteration (algorithm.md sections 2-3): draw the meta-batch's `num_trajectories` slots
(an expert and a start epoch each; meta_batch.py), and for each of this process's slots
measure STM's held-out next-epoch loss (no graph) and compute the matching gradient with
the chosen method (`lean` by default, `unroll` as reference); average losses and gradients
over the slots (one all-reduce across torchrun's ranks; distributed.py), step the images,
the lr(s) and the soft labels, feed the stage machine the mean held-out loss, log one JSON
line. Every rank holds the same state and takes the same decisions; rank 0 alone writes.
"""
from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from . import progress as progress_out
from .augment import DEFAULT_STRATEGY, parse_strategy
from .data.base import DatasetSplits
from .distributed import SINGLE, Comm
from .errors import ConfigError, TrajdistillError
from .evaluate import EvalConfig, class_means, evaluate_set
from .experts import BufferError, TrajectoryStore
from .lr_auto import auto_lr, spread
from .io import atomic_save, atomic_write_text, load_json, read_jsonl, safe_load, write_json
from .matching import GRADIENT_METHODS, MatchProblem, matching_loss, plan_unroll
from .meta_batch import Combined, Slot, SlotResult, combine, draw_slots
from .models import FlatModel, build_model
from .schedule import AlignedStart, StageMachine, UniformStart
from .synthetic import SyntheticSet
from .texture import TextureSpec, real_canvases
from .tracking import Tracker
from .validation import default_val_size, validation_indices


# galaxies (issue 14): --img_optimizer, and the noise of --pix_init mean_noise (class mean +
# MEAN_NOISE_STD Gaussian noise in normalised input units, a tenth of the data's std, so that
# ipc > 1 copies differ; --pix_init mean starts every image at its class mean, so a run
# starts from that baseline)
IMG_OPTIMIZERS = ("sgd", "adam")
MEAN_NOISE_STD = 0.1


class DivergenceError(TrajdistillError, RuntimeError):
    """Repeated non-finite losses, gradients or lrs: the run stops instead of saving NaNs."""


# /2: every random draw of an iteration comes from (seed, iteration, slot) (meta_batch.py),
# so the checkpoint no longer holds an expert cursor or generator states; a /1 checkpoint
# still loads (those entries are ignored, so its continuation draws differently).
CHECKPOINT_FORMAT = "trajdistill.checkpoint/2"
READABLE_FORMATS = ("trajdistill.checkpoint/1", CHECKPOINT_FORMAT)
# An lr update that multiplies or divides the synthetic lr by more than this in one step is
# refused like a non-finite one: it is the first step of a divergence (a finite 7e12 lr is
# followed by NaNs), not learning.
MAX_LR_FACTOR = 10.0
# Likewise an image update ten times larger than the images themselves (in norm): a first
# matching loss far above 1 gives such steps (7e4 on the digits reproduction), and the set they
# leave is noise that no later step repairs. Healthy runs stay near or below 1 (the demo's
# first steps: 1.1).
MAX_IMAGE_STEP = 10.0
# correct: real images an expert classifies correctly (soft labels, issue 10); mean /
# mean_noise: see MEAN_NOISE_STD
PIX_INITS = ("real", "noise", "correct", "mean", "mean_noise")
LABEL_INITS = ("expert",)
START_SCHEDULES = ("method", "aligned")


@dataclass
class DistillConfig:
    method: str = "STM"                 # or "original-MTT"
    ipc: int = 1
    syn_steps: int = 20
    expert_epochs: int = 1
    max_start_epoch: int | None = None  # default: stored epochs - expert_epochs
    lr_img: float = 1000.0
    lr_lr: float = 0.01
    lr_teacher: list[float] = field(default_factory=lambda: [0.01])
    learn_lr: bool = True
    lr_mode: str = "global-lr"          # or "independent-lr"
    sample_method: str = "cycle"        # or "random"
    init_epoch: int = 1
    sigma: float = 5.0
    min_duration: int = 20
    max_duration: int = 1000            # T_max
    pix_init: str = "real"              # or "noise"
    batch_syn: int | None = None        # default: the whole synthetic set
    iterations: int | None = None      # default: see `default_iterations`
    eval_it: int = 200
    eval_models: list[str] = field(default_factory=list)  # default: the experts' model
    num_eval: int = 5
    epoch_eval_train: int = 1000
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    gradient: str = "lean"              # or "unroll"
    compile: bool = False               # lean walk + held-out loss via torch.compile (README, speed)
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
    # difficulty-aligned start windows (DATM, issue 10); see schedule.py and README
    start_schedule: str = "method"      # "method": MTT uniform / STM stages; "aligned": DATM
    min_start_epoch: int = 0            # lower end of every window (STM's cap counts from it)
    current_max_start_epoch: int | None = None  # aligned: the first upper end (default: middle)
    expansion_end_epoch: int = 1000     # aligned, MTT: iterations until upper = max_start_epoch
    # validation split and best-set selection (issue 10): see validation.py
    val_size: int | None = None         # None: 10 % of the training set (<= 5000); 0: none
    select_on: str = "val"              # synthetic_best.pt by validation ("val") or "test" accuracy
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
    img_optimizer: str = "sgd"

    @property
    def stm(self) -> bool:
        return self.method.upper() == "STM"


# (field, flag, smallest allowed, whether the smallest itself is allowed): the same ranges
# the command line checks, for configurations built in Python (torch.optim's own ValueError
# must never be what a user sees).
_RANGES = [("ipc", "--ipc", 1, True), ("syn_steps", "--syn_steps", 1, True),
           ("expert_epochs", "--expert_epochs", 1, True), ("lr_img", "--lr_img", 0, True),
           ("lr_lr", "--lr_lr", 0, True), ("sigma", "--sigma", 0, False),
           ("min_duration", "--min_duration", 1, True), ("max_duration", "--max_duration", 1, True),
           ("iterations", "--Iteration", 0, True), ("eval_it", "--eval_it", 0, True),
           ("num_eval", "--num_eval", 1, True), ("epoch_eval_train", "--epoch_eval_train", 1, True),
           ("checkpoint_every", "--checkpoint_every", 1, True),
           ("max_failures", "--max_failures", 1, True), ("batch_syn", "--batch_syn", 1, True),
           ("max_experts", "--max_experts", 1, True), ("prev_iter", "--prev_iter", 0, True),
           ("num_trajectories", "--num_trajectories", 1, True)]


def _check_ranges(cfg: DistillConfig) -> None:
    for name, flag, low, inclusive in _RANGES:
        value = getattr(cfg, name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{flag} must be a number {bound}, got {value!r}")


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
    stages = cfg.max_start_epoch - cfg.min_start_epoch - cfg.init_epoch + 1
    decays = 0
    lr = cfg.lr_img
    while lr >= 50.0:
        lr *= 0.8
        decays += 1
    return max(REFERENCE_STM_ITERATIONS,
               cfg.prev_iter + stages * (cfg.max_duration + 10) + 50 * decays + 1)


def validate(cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore) -> DistillConfig:
    """Fill defaults from the buffer and refuse impossible settings with a clear message."""
    _check_ranges(cfg)
    if str(cfg.method).upper() not in METHOD_NAMES:
        raise ConfigError(f"--method must be STM (stage-MTT) or original-MTT, got {cfg.method!r}")
    cfg.method = METHOD_NAMES[cfg.method.upper()]
    if cfg.gradient not in GRADIENT_METHODS:
        raise ConfigError(f"--gradient must be one of {sorted(GRADIENT_METHODS)}, got {cfg.gradient!r}")
    if cfg.lr_mode not in ("global-lr", "independent-lr"):
        raise ConfigError(f"--lr_mode must be global-lr or independent-lr, got {cfg.lr_mode!r}")
    if cfg.pix_init not in PIX_INITS:
        raise ConfigError(f"--pix_init must be one of {', '.join(PIX_INITS)}, got {cfg.pix_init!r}")
    if cfg.img_optimizer not in IMG_OPTIMIZERS:
        raise ConfigError(f"--img_optimizer must be sgd or adam, got {cfg.img_optimizer!r}")
    try:
        parse_strategy(cfg.dsa_strategy)
    except ValueError as e:
        raise ConfigError(f"--dsa_strategy: {e}") from None
    if cfg.label_init not in LABEL_INITS:
        raise ConfigError(f"--label_init must be one of {', '.join(LABEL_INITS)}, "
                          f"got {cfg.label_init!r}")
    if cfg.lr_y <= 0:
        raise ConfigError(f"--lr_y must be positive, got {cfg.lr_y}")
    if cfg.loss_threshold is not None and cfg.loss_threshold <= 0:
        raise ConfigError(f"--loss_threshold must be positive, got {cfg.loss_threshold}")
    epochs = store.num_epochs
    if cfg.max_start_epoch is None:
        cfg.max_start_epoch = epochs - cfg.expert_epochs
    if cfg.max_start_epoch < 1 or cfg.max_start_epoch + cfg.expert_epochs > epochs:
        raise ConfigError(f"max_start_epoch ({cfg.max_start_epoch}) + expert_epochs "
                          f"({cfg.expert_epochs}) must be within the {epochs} epochs stored in "
                          f"{store.root} (and max_start_epoch >= 1)")
    _validate_windows(cfg)
    _validate_split(cfg, splits)
    n_lr = cfg.init_epoch if (cfg.stm and cfg.lr_mode == "independent-lr") else 1
    if cfg.lr_teacher in ("auto", ["auto"]):
        if cfg.texture:  # the rule needs whole images through the student, not canvases
            raise ConfigError("--lr_teacher auto does not work with --texture; give a number")
        return _validate_rest(cfg, splits, store)  # Distiller resolves it from the buffer
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
    if cfg.pix_init in ("real", "correct") and min(counts) < cfg.ipc:
        c = counts.index(min(counts))
        raise ConfigError(f"--ipc {cfg.ipc} but class {splits.classes[c]!r} has only {counts[c]} "
                          "training images")
    _validate_texture(cfg, splits)
    if not cfg.eval_models:
        cfg.eval_models = [store.model]
    if cfg.iterations is None:
        cfg.iterations = default_iterations(cfg)
    return cfg


def _validate_windows(cfg: DistillConfig) -> None:
    """Start-epoch windows: --min_start_epoch for both methods, --start_schedule aligned."""
    if cfg.start_schedule not in START_SCHEDULES:
        raise ConfigError(f"--start_schedule must be one of {', '.join(START_SCHEDULES)}, "
                          f"got {cfg.start_schedule!r}")
    if not 0 <= cfg.min_start_epoch < cfg.max_start_epoch:
        raise ConfigError(f"--min_start_epoch ({cfg.min_start_epoch}) must be in "
                          f"[0, max_start_epoch={cfg.max_start_epoch})")
    if cfg.start_schedule == "aligned":
        if cfg.current_max_start_epoch is None:
            cfg.current_max_start_epoch = max(cfg.min_start_epoch + 1,
                                              (cfg.min_start_epoch + cfg.max_start_epoch + 1) // 2)
        if not cfg.min_start_epoch < cfg.current_max_start_epoch <= cfg.max_start_epoch:
            raise ConfigError(f"--current_max_start_epoch ({cfg.current_max_start_epoch}) must be "
                              f"in (min_start_epoch={cfg.min_start_epoch}, "
                              f"max_start_epoch={cfg.max_start_epoch}]")
        if cfg.expansion_end_epoch < 1:
            raise ConfigError(f"--expansion_end_epoch must be >= 1, got {cfg.expansion_end_epoch}")
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
    if cfg.canvas_size < 1 or cfg.canvas_samples < 1:
        raise ConfigError(f"--canvas_size and --canvas_samples must be >= 1, got "
                          f"{cfg.canvas_size} and {cfg.canvas_samples}")
    if splits.preprocess.zca is not None:
        raise ConfigError("--texture cannot be used with --zca (as in the reference): drop one")
    if cfg.soft_labels:  # the expert labels whole images, not canvases
        raise ConfigError("--texture cannot be used with --soft_labels: drop one")
    if cfg.pix_init in ("real", "correct") and not cfg.load_syn_image:
        warnings.warn("--texture with --pix_init real: each canvas starts as a grid of real "
                      "images, and smoothing out the edges between them takes a long time "
                      "(--pix_init noise avoids it)", stacklevel=3)


def open_buffer(buffer_dir: str | Path, splits: DatasetSplits) -> TrajectoryStore:
    """Open a trajectory store and refuse it unless it was made from this exact data."""
    store = TrajectoryStore.open(buffer_dir)
    store.check_data(splits.describe())
    mine, theirs = splits.preprocess.state_dict(), store.preprocess.state_dict()
    if not _same_preprocess(mine, theirs):
        raise BufferError(f"expert buffer {store.root} was trained with another input "
                          "normalisation/ZCA than this data gives; rebuild the buffer or pass the "
                          "same --zca and data")
    if not store.indices():
        raise BufferError(f"expert buffer {store.root} holds no finished expert yet")
    return store


class _Discard:
    """The log files of ranks other than 0: they write nothing."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _truncate_jsonl(path: Path, keep) -> None:
    """Keep the records a resumed run has not redone (a line cut by a kill ends the file)."""
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r)))


def _slot_record(slots: list[Slot], matched: Combined) -> dict:
    """What metrics.jsonl says of the meta-batch: one slot's expert and start epoch as
    before, or every slot's; loss_epoch_<e> is the mean loss of the slots that started at e."""
    if len(slots) == 1:
        out = {"expert": slots[0].expert, "start_epoch": slots[0].start_epoch}
    else:
        out = {"slots": [{"expert": s.expert, "start_epoch": s.start_epoch, "loss": loss}
                         for s, loss in zip(slots, matched.losses)]}
        if matched.heldouts is not None:
            out["heldouts"] = matched.heldouts
    for e in sorted({s.start_epoch for s in slots}):
        losses = [loss for s, loss in zip(slots, matched.losses) if s.start_epoch == e]
        out[f"loss_epoch_{e}"] = sum(losses) / len(losses)
    return out


def _non_finite(result: Combined) -> str | None:
    if not math.isfinite(result.loss):
        return f"non-finite matching loss ({result.loss})"
    if result.heldout is not None and not math.isfinite(result.heldout):
        return f"non-finite held-out loss ({result.heldout})"
    if not torch.isfinite(result.grad_images).all():
        return "non-finite image gradient"
    if not all(torch.isfinite(g).all() for g in result.grad_log_lrs):
        return "non-finite lr gradient"
    if result.grad_labels is not None and not torch.isfinite(result.grad_labels).all():
        return "non-finite label gradient"
    return None


def _same_preprocess(a: dict, b: dict) -> bool:
    if not (torch.allclose(torch.tensor(a["mean"]), torch.tensor(b["mean"]), atol=1e-5)
            and torch.allclose(torch.tensor(a["std"]), torch.tensor(b["std"]), atol=1e-5)):
        return False
    if (a["zca"] is None) != (b["zca"] is None):
        return False
    return a["zca"] is None or torch.allclose(a["zca"]["transform"], b["zca"]["transform"], atol=1e-4)


class Distiller:
    """Learnable state + loop. `run()` distills; `state_dict()` is everything to resume."""

    def __init__(self, cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore,
                 run_dir: str | Path, progress: bool = True, source: dict | None = None,
                 comm: Comm = SINGLE):
        self.comm = comm  # torchrun's ranks (distributed.py); SINGLE: this process alone
        self.cfg = validate(cfg, splits, store)
        self.source = source or {}  # where data and buffer came from (for --resume)
        self.splits, self.store, self.progress = splits, store, progress and comm.is_main
        self.run_dir = Path(run_dir)
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the initial images' draws
        c, h, w = splits.image_shape
        self.student = FlatModel.wrap(build_model(store.model, c, splits.num_classes, (h, w))
                                      .to(self.device))
        experts = store.indices()
        self.experts = experts[:cfg.max_experts] if cfg.max_experts else experts
        self.val_idx = validation_indices(splits.train.labels, splits.num_classes, cfg.val_size)
        self.labels = torch.arange(splits.num_classes).repeat_interleave(cfg.ipc).to(self.device)
        self.loaded_logits = None  # soft labels of a --load_syn_image set, if it has them
        self.images = self._initial_images().to(self.device).requires_grad_(True)
        if cfg.lr_teacher in ("auto", ["auto"]):
            cfg.lr_teacher = [self._auto_lr()] * (cfg.init_epoch if (
                cfg.stm and cfg.lr_mode == "independent-lr") else 1)
            self._note(f"--lr_teacher auto: {cfg.lr_teacher[0]:.4g}")
        self.log_lrs = [torch.tensor(math.log(v), device=self.device, requires_grad=True)
                        for v in cfg.lr_teacher]
        self.opt_img = (torch.optim.Adam([self.images], lr=cfg.lr_img) if cfg.img_optimizer == "adam"
                        else torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5))
        self.opt_lrs = [self._lr_optimizer(p) for p in self.log_lrs]
        # soft labels: learnable logits (N, classes); None keeps the hard class labels
        self.label_logits = self.opt_labels = None
        if cfg.soft_labels:
            start = (self.loaded_logits if self.loaded_logits is not None
                     else self._expert_logits(self.images.detach()))
            self.label_logits = start.to(self.device).clone().requires_grad_(True)
            self.opt_labels = torch.optim.SGD([self.label_logits], lr=cfg.lr_y, momentum=0.9)
        self.schedule = self._start_schedule()
        self.iteration = cfg.prev_iter
        self.best = {"accuracy": -1.0, "iteration": None}
        self.failures = 0  # consecutive iterations whose update was refused as non-finite
        self.last_failure = ""
        self.first_loss: float | None = None  # of this process: > 1 means a likely divergence
        self.grad_fn = GRADIENT_METHODS[cfg.gradient]
        if comm.active:  # every rank starts from rank 0's state (identical by construction)
            self.load_state_dict(comm.broadcast_object(self.state_dict()), "rank 0's state")
            if cfg.num_trajectories < comm.world:
                self._note(f"note: --num_trajectories {cfg.num_trajectories} < {comm.world} "
                           f"processes: {comm.world - cfg.num_trajectories} rank(s) idle while "
                           "matching; give --num_trajectories a multiple of the process count")

    def _note(self, text: str) -> None:
        """One line on stderr, from rank 0 only."""
        if self.comm.is_main:
            progress_out.note(text)

    def _start_schedule(self):
        """STM's stage machine (window from min_start_epoch), DATM's aligned window, or
        MTT's uniform draw."""
        cfg = self.cfg
        if cfg.stm:
            return StageMachine(cfg.max_start_epoch, cfg.init_epoch, cfg.sigma, cfg.min_duration,
                                cfg.max_duration, sample_method=cfg.sample_method,
                                lr_img=cfg.lr_img, min_start_epoch=cfg.min_start_epoch,
                                # adam's lr is ~1e-2, not ~1e3: stop fine-tuning at the
                                # reference's fraction (50 / 1000) of the start lr
                                stop_lr_img=(0.05 * cfg.lr_img if cfg.img_optimizer == "adam"
                                             else 50.0))
        if cfg.start_schedule == "aligned":
            return AlignedStart(cfg.min_start_epoch, cfg.current_max_start_epoch,
                                cfg.max_start_epoch, cfg.expansion_end_epoch)
        return UniformStart(cfg.max_start_epoch, cfg.min_start_epoch)

    # ------------------------------------------------------------------ state
    def _initial_images(self) -> torch.Tensor:
        cfg, splits = self.cfg, self.splits
        if cfg.load_syn_image:
            # a synthetic-set file of ours, or a bare image tensor as the seed's images_N.pt
            blob = safe_load(cfg.load_syn_image)
            images = blob["images"] if isinstance(blob, dict) and "images" in blob else blob
            want = (splits.num_classes * cfg.ipc, *self._syn_shape())
            if not isinstance(images, torch.Tensor) or tuple(images.shape) != want:
                raise ConfigError(f"{cfg.load_syn_image}: expected an image tensor of shape {want}")
            if isinstance(blob, dict) and blob.get("soft_labels") is not None:
                self.loaded_logits = blob["soft_labels"].float()  # continue with its labels
            return images.float().clone()
        if cfg.pix_init == "noise":
            return torch.randn(splits.num_classes * cfg.ipc, *self._syn_shape(), generator=self.gen)
        per_image = cfg.canvas_size ** 2 if cfg.texture else 1  # a canvas: k x k real images
        if cfg.pix_init in ("mean", "mean_noise"):
            means = class_means(splits)[0].repeat_interleave(cfg.ipc * per_image, 0)
            means = real_canvases(means, cfg.canvas_size) if cfg.texture else means
            if cfg.pix_init == "mean_noise":
                means = means + MEAN_NOISE_STD * torch.randn(means.shape, generator=self.gen)
            return means
        picks = []
        in_val = torch.zeros(len(splits.train), dtype=torch.bool)
        in_val[self.val_idx] = True
        for c in range(splits.num_classes):
            members = splits.train.indices_of(c)
            members = members[~in_val[members]]  # no validation image is copied into the set
            if len(members) < cfg.ipc:
                raise ConfigError(f"ipc={cfg.ipc} but class {splits.classes[c]!r} has only "
                                  f"{len(members)} training images outside the validation split "
                                  f"(--val_size {cfg.val_size})")
            members = members[torch.randperm(len(members), generator=self.gen)]
            if cfg.pix_init == "correct":
                members = self._classified_correctly(members, c)
            picks.append(members.repeat(per_image)[:cfg.ipc * per_image])
        images = splits.preprocess(splits.train.images[torch.cat(picks)])
        return real_canvases(images, cfg.canvas_size) if cfg.texture else images

    def _syn_shape(self) -> tuple[int, int, int]:
        """Shape of one synthetic image: the data's, or a canvas of it with --texture."""
        spec = self.cfg.texture_spec
        return spec.canvas_shape(self.splits.image_shape) if spec else tuple(self.splits.image_shape)

    def _auto_lr(self) -> float:
        """lr_auto.auto_lr over 3 experts and up to 5 epochs of the first sampling window."""
        cfg = self.cfg
        first = cfg.min_start_epoch
        if cfg.stm:
            last = first + cfg.init_epoch - 1
        elif cfg.start_schedule == "aligned":
            last = cfg.current_max_start_epoch - 1
        else:
            last = cfg.max_start_epoch - 1
        trajectories = [self.store.load(i) for i in self.experts[:3]]
        return auto_lr(self.student, trajectories, spread(first, last, 5), cfg.expert_epochs,
                       self.images.detach(), self.labels, cfg.syn_steps)

    def _final_expert(self) -> torch.Tensor:
        """The final-epoch parameters of the first expert: DATM's labeller."""
        return self.store.load(self.experts[0])[-1].to(self.device, torch.float32)

    @torch.no_grad()
    def _expert_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits the final epoch of an expert gives (network-space) images."""
        theta = self._final_expert()
        return torch.cat([self.student(theta, x.to(self.device)) for x in images.split(256)])

    def _classified_correctly(self, members: torch.Tensor, c: int) -> torch.Tensor:
        """DATM's samples_predicted_correctly: members of class c (in the given order) that
        the expert classifies as c come first; only the first max(256, 10 ipc) are looked at
        (enough to find ipc of them without a pass over the whole class)."""
        looked, rest = members[:max(256, 10 * self.cfg.ipc)], members[max(256, 10 * self.cfg.ipc):]
        pred = self._expert_logits(self.splits.preprocess(self.splits.train.images[looked]))
        right = pred.argmax(1).cpu() == c
        if int(right.sum()) < self.cfg.ipc:
            self._note(f"--pix_init correct: the expert classifies only "
                              f"{int(right.sum())} of {len(looked)} images of class "
                              f"{self.splits.classes[c]!r} correctly; misclassified ones fill "
                              "the rest")
        return torch.cat([looked[right], looked[~right], rest])

    def _lr_optimizer(self, p: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([p], lr=self.cfg.lr_lr, momentum=0.5)

    def lrs(self) -> list[float]:
        return [float(p.detach().exp()) for p in self.log_lrs]

    def _learnables(self) -> list[tuple[str, torch.Tensor, torch.optim.Optimizer]]:
        """Everything the matching gradient updates, each with its optimiser: the images,
        the log lr(s) and, with soft labels, the label logits."""
        out = [("images", self.images, self.opt_img)]
        out += [(f"lr {k}", p, o) for k, (p, o) in enumerate(zip(self.log_lrs, self.opt_lrs))]
        if self.label_logits is not None:
            out.append(("label logits", self.label_logits, self.opt_labels))
        return out

    def targets(self) -> torch.Tensor:
        """What the synthetic images are trained towards: label logits, or class indices."""
        return (self.label_logits if self.label_logits is not None else self.labels).detach()

    def synthetic_set(self) -> SyntheticSet:
        soft = self.label_logits.detach().cpu().clone() if self.label_logits is not None else None
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.cpu(), self.lrs(),
                            self.splits.preprocess, self.splits.describe(), self.store.model,
                            self.cfg.syn_steps, {"iteration": self.iteration,
                                                 "method": self.cfg.method,
                                                 "lr_mode": self.cfg.lr_mode,
                                                 **self._texture_meta()},
                            soft_labels=soft)

    def _texture_meta(self) -> dict:
        spec = self.cfg.texture_spec
        return {"texture": {"canvas_size": spec.canvas_size,
                            "canvas_samples": spec.canvas_samples}} if spec else {}

    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "iteration": self.iteration, "images": self.images.detach().cpu(),
                "log_lrs": [p.detach().cpu() for p in self.log_lrs],
                "opt_img": self.opt_img.state_dict(), "opt_lrs": [o.state_dict() for o in self.opt_lrs],
                "schedule": self.schedule.state_dict(),
                "best": dict(self.best), "failures": self.failures,
                "label_logits": (self.label_logits.detach().cpu()
                                 if self.label_logits is not None else None),
                "opt_labels": self.opt_labels.state_dict() if self.opt_labels is not None else None}

    def load_state_dict(self, s: dict, source: str = "checkpoint") -> None:
        if not isinstance(s, dict) or s.get("format") not in READABLE_FORMATS:
            raise ConfigError(f"{source}: not a trajdistill distillation checkpoint")
        if tuple(s["images"].shape) != tuple(self.images.shape):
            raise ConfigError(f"{source}: images of shape {tuple(s['images'].shape)}, but this run "
                              f"needs {tuple(self.images.shape)}")
        if (s.get("label_logits") is None) != (self.label_logits is None):
            raise ConfigError(f"{source}: saved {'with' if s.get('label_logits') is not None else 'without'}"
                              " soft labels, but this run is configured the other way")
        self.iteration = s["iteration"]
        with torch.no_grad():
            self.images.copy_(s["images"].to(self.device))
            if self.label_logits is not None:
                self.label_logits.copy_(s["label_logits"].to(self.device))
        if self.opt_labels is not None:
            self.opt_labels.load_state_dict(s["opt_labels"])
        self.log_lrs = [v.to(self.device).clone().requires_grad_(True) for v in s["log_lrs"]]
        self.opt_img.load_state_dict(s["opt_img"])
        self.opt_lrs = [self._lr_optimizer(p) for p in self.log_lrs]
        for o, st in zip(self.opt_lrs, s["opt_lrs"]):
            o.load_state_dict(st)
        self.schedule.load_state_dict(s["schedule"])
        self.best = dict(s["best"])
        self.failures = s.get("failures", 0)

    @classmethod
    def resume(cls, run_dir: str | Path, splits: DatasetSplits, store: TrajectoryStore,
               progress: bool = True, iterations: int | None = None,
               comm: Comm = SINGLE, device: str | None = None) -> "Distiller":
        """Continue a run from its last checkpoint; logs are cut back to that point.
        Under torchrun rank 0 reads the run directory and sends it to the other ranks."""
        run_dir = Path(run_dir)
        saved = comm.broadcast_object(load_json(run_dir / "config.json") if comm.is_main else None)
        names = {f.name for f in fields(DistillConfig)}
        cfg = DistillConfig(**{k: v for k, v in saved.items() if k in names})
        if iterations is not None:
            cfg.iterations = iterations
        if device is not None:  # torchrun on CUDA: this rank's own GPU
            cfg.device = device
        d = cls(cfg, splits, store, run_dir, progress, source=saved.get("source"), comm=comm)
        ckpt = run_dir / "checkpoint.pt"
        state = comm.broadcast_object(safe_load(ckpt) if comm.is_main and ckpt.exists() else None)
        if state is not None:
            d.load_state_dict(state, str(ckpt))
        else:
            d._note(f"{ckpt} not written yet: starting {run_dir} from the beginning")
        if comm.is_main:
            _truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r.get("it", -1) < d.iteration)
            _truncate_jsonl(run_dir / "evals.jsonl", lambda r: r.get("it", -1) <= d.iteration)
        return d

    # ------------------------------------------------------------------ one iteration
    def _problem(self, trajectory: torch.Tensor, start_epoch: int,
                 generator: torch.Generator) -> MatchProblem:
        cfg = self.cfg
        start = trajectory[start_epoch].to(self.device, torch.float32)
        target = trajectory[start_epoch + cfg.expert_epochs].to(self.device, torch.float32)
        n = self.images.shape[0]
        plan = plan_unroll(n, cfg.syn_steps, cfg.batch_syn or n, self.splits.image_shape[1:],
                           cfg.dsa_strategy if cfg.dsa and not cfg.no_aug else None, generator,
                           texture_spec=cfg.texture_spec)
        return MatchProblem(self.student, start, target, self.targets(), plan, compile=cfg.compile)

    def _lr_index(self, start_epoch: int) -> int:
        """independent-lr: the lr of the start epoch's stage; global-lr: the one lr."""
        if self.cfg.lr_mode != "independent-lr":
            return 0
        return min(start_epoch - self.cfg.min_start_epoch, len(self.log_lrs) - 1)

    def _match_slot(self, slot: Slot, heldout: bool) -> SlotResult:
        """One trajectory of the meta-batch: STM's held-out loss (no graph; the plan drawn
        first) and the matching loss and gradients from the slot's start epoch."""
        trajectory = self.store.load(slot.expert)
        held, t0 = None, time.perf_counter()
        if heldout:
            held = matching_loss(self._problem(trajectory, self.schedule.heldout_epoch,
                                               slot.generator),
                                 self.images, self.log_lrs[-1].detach().exp())
        k = self._lr_index(slot.start_epoch)
        result = self.grad_fn(self._problem(trajectory, slot.start_epoch, slot.generator),
                              self.images, self.log_lrs[k])
        return SlotResult(slot.index, result, held, k,
                          heldout_seconds=(time.perf_counter() - t0) if heldout else 0.0)

    def step(self) -> dict:
        cfg, sched = self.cfg, self.schedule
        t0 = time.perf_counter()
        slots = draw_slots(sched, self.experts, cfg.seed, self.iteration, cfg.num_trajectories)
        heldout = cfg.stm and sched.needs_heldout
        parts = [self._match_slot(slots[m], heldout) for m in self.comm.my_share(len(slots))]
        matched = combine(parts, len(slots), len(self.log_lrs), self.images, self.label_logits,
                          heldout, self.comm)
        record = {"it": self.iteration, **_slot_record(slots, matched)}
        if heldout:  # this rank's share
            record["heldout_seconds"] = sum(p.heldout_seconds for p in parts)
        record["loss"] = matched.loss
        self._warn_first_loss(matched.loss)
        trouble = _non_finite(matched)
        if not trouble and not self._above_threshold(matched.loss, record):
            trouble = self._apply_guarded(matched)
        if trouble:
            return self._refuse(record, trouble, t0)
        self.failures = 0

        if heldout:
            event = sched.record(matched.heldout)
            record.update({k: v for k, v in asdict(event).items() if v is not None})
            if event.level_up and cfg.lr_mode == "independent-lr":
                self._add_stage_lr()
            if self.progress and (event.level_up or event.fine_tuning_started):
                what = "fine-tuning starts" if event.fine_tuning_started else "next stage"
                self._note(f"it {self.iteration}: {what}, stage cap {event.cap}, "
                           f"loss {matched.loss:.4g}, lr(s) " + ", ".join(f"{v:.3g}" for v in self.lrs()))
        if cfg.stm:
            lr_img = sched.after_update()
            for g in self.opt_img.param_groups:
                g["lr"] = lr_img
            record.update(cap=sched.cap, fine_tuning=sched.fine_tuning, lr_img=lr_img,
                          finished=sched.finished)
        record["lrs"] = self.lrs()
        record["seconds"] = time.perf_counter() - t0
        self.iteration += 1
        return record

    def _apply_guarded(self, result: Combined) -> str | None:
        """Apply the update; if it leaves non-finite values or an lr that jumped by more than
        MAX_LR_FACTOR, put every learnable and its optimiser back as they were."""
        saved = [(t.detach().clone(), copy.deepcopy(o.state_dict())) for _, t, o in self._learnables()]
        log_lrs_before = [float(p.detach()) for p in self.log_lrs]
        self._apply(result)
        images_before = next(v for (name, _, _), (v, _) in zip(self._learnables(), saved)
                             if name == "images")
        trouble = self._bad_update(images_before, log_lrs_before)
        if trouble:
            with torch.no_grad():
                for (_, t, o), (value, state) in zip(self._learnables(), saved):
                    t.copy_(value)
                    o.load_state_dict(state)
        return trouble

    def _bad_update(self, images_before: torch.Tensor, log_lrs_before: list[float]) -> str | None:
        bad = [name for name, t, _ in self._learnables() if not torch.isfinite(t).all()]
        if bad:
            return "the update made " + ", ".join(bad) + " non-finite"
        step = float((self.images.detach() - images_before).norm() / images_before.norm())
        if step > MAX_IMAGE_STEP:
            return (f"the image update is {step:.3g} times the images' own norm (more than "
                    f"{MAX_IMAGE_STEP:g}); lower --lr_img (now {self.cfg.lr_img:g})")
        for k, (old, p) in enumerate(zip(log_lrs_before, self.log_lrs)):
            new = float(p.detach())
            if abs(new - old) > math.log(MAX_LR_FACTOR):  # in log space: exp() may over/underflow
                return (f"the update would change lr {k} from {math.exp(old):.3g} to "
                        f"{math.exp(min(new, 700)):.3g} in one step "
                        f"(more than {MAX_LR_FACTOR:g}x); lower --lr_lr (now {self.cfg.lr_lr:g})")
        return None

    def _warn_first_loss(self, loss: float) -> None:
        """A first matching loss above 1: the student overshoots the expert's target."""
        if self.first_loss is not None or not math.isfinite(loss):
            return
        self.first_loss = loss
        if loss > 1:
            self._note(
                f"warning: the first matching loss is {loss:.3g} (> 1: the student overshoots the "
                f"expert's target, which can diverge); if it does, lower --lr_teacher (now "
                f"{self.cfg.lr_teacher[0]:g}) or --syn_steps (now {self.cfg.syn_steps}), or raise "
                f"--expert_epochs (now {self.cfg.expert_epochs})")

    def _above_threshold(self, loss: float, record: dict) -> bool:
        """--loss_threshold: an iteration whose normalised matching loss exceeds it makes no
        update (logged as `skipped`); the schedule still advances."""
        T = self.cfg.loss_threshold
        if T is None or loss <= T:
            return False
        record["skipped"] = f"matching loss {loss:.4g} above --loss_threshold {T:g}"
        return True

    def _refuse(self, record: dict, reason: str, t0: float) -> dict:
        """No update this iteration; the last good state stays. Too many in a row: stop."""
        self.failures += 1
        self.last_failure = reason
        record.update(diverged=reason, failures=self.failures, lrs=self.lrs(),
                      seconds=time.perf_counter() - t0)
        self.iteration += 1
        self._note(f"it {record['it']}: {reason}; update skipped, last good state kept "
                          f"({self.failures}/{self.cfg.max_failures})")
        return record

    def _check_divergence(self) -> None:
        if self.failures >= self.cfg.max_failures:
            self.checkpoint()  # the state is the last good one: every bad update was refused
            raise DivergenceError(
                f"distillation diverged: {self.failures} iterations in a row with refused "
                f"updates (last: {self.last_failure}). The last good state is in "
                f"{self.run_dir / 'checkpoint.pt'}; try a smaller --lr_img or --lr_lr, or "
                f"--learn_lr False" + self._first_loss_hint() + ".")

    def _first_loss_hint(self) -> str:
        if self.first_loss is None or self.first_loss <= 1:
            return ""
        return (f"; the first matching loss was {self.first_loss:.3g} (> 1): lower --lr_teacher "
                f"or --syn_steps, or raise --expert_epochs")

    def _apply(self, result: Combined) -> None:
        """One optimiser step with the meta-batch's mean gradients; an lr no slot used
        this iteration is not stepped (its momentum would move it with a zero gradient)."""
        self.opt_img.zero_grad(set_to_none=True)
        self.images.grad = result.grad_images.to(self.images.dtype)
        self.opt_img.step()
        if self.cfg.learn_lr:
            for p, o, g, used in zip(self.log_lrs, self.opt_lrs, result.grad_log_lrs,
                                     result.lr_used):
                if used:
                    o.zero_grad(set_to_none=True)
                    p.grad = g.reshape(p.shape).to(p.dtype)
                    o.step()
        if self.label_logits is not None:
            self.opt_labels.zero_grad(set_to_none=True)
            self.label_logits.grad = result.grad_labels.to(self.label_logits.dtype)
            self.opt_labels.step()

    def _add_stage_lr(self) -> None:
        """independent-lr: the new stage's lr starts as a copy of the previous one's."""
        p = self.log_lrs[-1].detach().clone().requires_grad_(True)
        self.log_lrs.append(p)
        self.opt_lrs.append(self._lr_optimizer(p))
        for o in self.opt_lrs:
            for g in o.param_groups:
                g["lr"] = self.cfg.lr_lr * self.schedule.cap

    # ------------------------------------------------------------------ evaluation & files
    def evaluate(self) -> dict:
        cfg = self.cfg
        ecfg = EvalConfig(num_eval=cfg.num_eval, epoch_eval_train=cfg.epoch_eval_train,
                          dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy, device=cfg.device,
                          seed=cfg.seed, batched=cfg.eval_batched, texture=cfg.texture_spec)
        val = ((self.splits.train.images[self.val_idx], self.splits.train.labels[self.val_idx])
               if len(self.val_idx) else None)
        return evaluate_set(self.images.detach().cpu(), self.targets().cpu(), self.splits, self.lrs(),
                            cfg.eval_models, ecfg, syn_steps=cfg.syn_steps, progress=self.progress,
                            val=val, comm=self.comm)

    def checkpoint(self) -> None:
        if self.comm.is_main:
            atomic_save(self.state_dict(), self.run_dir / "checkpoint.pt")
            self.synthetic_set().save(self.run_dir / "synthetic_last.pt")

    def run(self) -> dict:
        """Distill to the end; rank 0 writes the run directory, the other ranks compute."""
        cfg, main = self.cfg, self.comm.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", {**asdict(cfg), "source": self.source})
        self.tracker = (Tracker.open(self.run_dir, asdict(cfg), wandb=cfg.wandb,
                                     tensorboard=cfg.tensorboard, name=cfg.wandb_name)
                        if main else Tracker())
        metrics = open(self.run_dir / "metrics.jsonl", "a") if main else _Discard()
        evals = open(self.run_dir / "evals.jsonl", "a") if main else _Discard()
        bar = progress_out.bar(range(self.iteration, cfg.iterations), desc="distill",
                               enabled=self.progress, report=True)
        try:
            for _ in bar:
                record = self.step()
                self._warn_if_stuck(record)
                metrics.write(json.dumps(record) + "\n")
                self.tracker.log(record, record["it"])
                self._check_divergence()
                bar.set_postfix(loss=f"{record['loss']:.3f}", cap=record.get("cap", "-"))
                done = record.get("finished", False) or self.iteration >= cfg.iterations
                if cfg.eval_it and (self.iteration % cfg.eval_it == 0 or done):
                    self._evaluate_and_log(evals)
                if done or self.iteration % cfg.checkpoint_every == 0:
                    metrics.flush()
                    self.checkpoint()
                if done:
                    break
        finally:
            metrics.close()
            evals.close()
            self.tracker.close()
        self.checkpoint()
        return self.best

    def _warn_if_stuck(self, record: dict) -> None:
        """At iteration loss_warn_it: if the loss never fell below 1, nothing is distilled yet.

        A matching loss >= 1 means the student ends no closer to the expert's target than
        it started; the user should learn that before hours pass.
        """
        self.min_loss = min(getattr(self, "min_loss", math.inf), record.get("loss", math.inf))
        if not self.cfg.loss_warn_it or record["it"] + 1 != self.cfg.loss_warn_it:
            return
        if self.min_loss >= 1:
            msg = (f"warning: after {self.cfg.loss_warn_it} iterations the matching loss has not "
                   f"fallen below 1 (lowest {self.min_loss:.3f}): nothing is being distilled. "
                   "Try --lr_teacher auto, a smaller --lr_img, --pix_init mean, or other experts.")
            record["warning"] = msg
            self._note(msg)

    def _evaluate_and_log(self, evals) -> None:
        result = self.evaluate()
        main = result[self.cfg.eval_models[0]]
        key = "val_mean" if self.cfg.select_on == "val" else "mean"
        evals.write(json.dumps({"it": self.iteration, "lrs": self.lrs(),
                                "selected_on": self.cfg.select_on, **result}) + "\n")
        evals.flush()
        self.tracker.log_eval(result, self.iteration)
        if self.comm.is_main:
            self.tracker.log_images(self.synthetic_set(), self.iteration, self.splits.classes)
        self._note(f"it {self.iteration}: " + ", ".join(
            f"{m} " + (f"val {100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f} %, "
                       if "val_mean" in r else "") +
            f"test {100 * r['mean']:.2f} ± {100 * r['std']:.2f} %" for m, r in result.items()))
        if main[key] > self.best.get("selected", self.best["accuracy"]):
            self.best = {"selected": main[key], "selected_on": self.cfg.select_on,
                         "accuracy": main["mean"], "std": main["std"],
                         "val_accuracy": main.get("val_mean"), "val_std": main.get("val_std"),
                         "iteration": self.iteration}
            if self.comm.is_main:
                self.synthetic_set().save(self.run_dir / "synthetic_best.pt")
