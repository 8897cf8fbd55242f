"""Where the learnables start: the initial synthetic images (`--pix_init`,
`--load_syn_image`), the first soft-label logits (`--label_init expert`) and the initial
synthetic lr of `--lr_teacher auto`.

- real: ipc random training images per class (never a validation image);
- correct: the same, but images that the labelling expert classifies correctly come first
  (DATM's samples_predicted_correctly);
- kmeans: the ipc training images of each class nearest the centres of a k-means clustering
  of the class in the labelling expert's features (representatives.py), so the start covers
  the class's modes;
- noise: standard normal pixels (in network input units);
- mean / mean_noise (galaxies, issue 14): every image starts as its class mean, so a run
  starts from that baseline; mean_noise adds MEAN_NOISE_STD Gaussian noise (a tenth of the
  data's std) so that the ipc copies of a class differ;
- with --texture, a canvas is canvas_size^2 images of its class tiled (real, mean).
All draws come from one generator seeded with the run's seed, so every rank of a torchrun
job starts from the same set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .data.base import DatasetSplits
from .errors import ConfigError
from .baselines import class_means
from .experts import TrajectoryStore
from .io import safe_load
from .lr_auto import auto_lr, spread
from .models import FlatModel, build_model
from .representatives import representatives
from .texture import real_canvases
from .validation import validation_indices

PIX_INITS = ("real", "noise", "correct", "kmeans", "mean", "mean_noise")
LABEL_INITS = ("expert",)
MEAN_NOISE_STD = 0.1


@dataclass
class Labeller:
    """DATM's labeller: the final epoch of the first expert, run through the student network."""

    student: FlatModel
    theta: torch.Tensor
    device: torch.device

    @classmethod
    def of(cls, student: FlatModel, store: TrajectoryStore, experts: list[int],
           device: torch.device) -> "Labeller":
        return cls(student, store.load(experts[0])[-1].to(device, torch.float32), device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits it gives (network-space) images, 256 at a time."""
        return torch.cat([self.student(self.theta, x.to(self.device)) for x in images.split(256)])

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What its last layer classifies: the input of the network's last linear layer, one
        row per (network-space) image, on the CPU."""
        head = [m for m in self.student.module.modules() if isinstance(m, torch.nn.Linear)][-1]
        seen = []
        hook = head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].cpu()))
        try:
            self.logits(images)
        finally:
            hook.remove()
        return torch.cat(seen).flatten(1)


def syn_shape(cfg, splits: DatasetSplits) -> tuple[int, int, int]:
    """Shape of one synthetic image: the data's, or a canvas of it with --texture."""
    spec = cfg.texture_spec
    return spec.canvas_shape(splits.image_shape) if spec else tuple(splits.image_shape)


def initial_images(cfg, splits: DatasetSplits, val_idx: torch.Tensor, gen: torch.Generator,
                   labeller: Callable[[], Labeller], note: Callable[[str], None]
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The initial images (network input space) and, for a loaded soft-label set, its logits."""
    if cfg.load_syn_image:
        return _loaded(cfg, splits)
    n = splits.num_classes * cfg.ipc
    if cfg.pix_init == "noise":
        return torch.randn(n, *syn_shape(cfg, splits), generator=gen), None
    per_image = cfg.canvas_size ** 2 if cfg.texture else 1  # a canvas: k x k images
    if cfg.pix_init in ("mean", "mean_noise"):
        means = class_means(splits)[0].repeat_interleave(cfg.ipc * per_image, 0)
        means = real_canvases(means, cfg.canvas_size) if cfg.texture else means
        if cfg.pix_init == "mean_noise":
            means = means + MEAN_NOISE_STD * torch.randn(means.shape, generator=gen)
        return means, None
    picks = [_real_picks(cfg, splits, c, val_idx, gen, labeller, note, cfg.ipc * per_image)
             .repeat(per_image)[:cfg.ipc * per_image] for c in range(splits.num_classes)]
    images = splits.preprocess(splits.train.images[torch.cat(picks)])
    return (real_canvases(images, cfg.canvas_size) if cfg.texture else images), None


def _loaded(cfg, splits: DatasetSplits) -> tuple[torch.Tensor, torch.Tensor | None]:
    """--load_syn_image: a synthetic-set file of ours, or a bare image tensor such as the
    seed's images_N.pt; a soft-label set continues with its logits."""
    blob = safe_load(cfg.load_syn_image)
    images = blob["images"] if isinstance(blob, dict) and "images" in blob else blob
    want = (splits.num_classes * cfg.ipc, *syn_shape(cfg, splits))
    if not isinstance(images, torch.Tensor) or tuple(images.shape) != want:
        raise ConfigError(f"{cfg.load_syn_image}: expected an image tensor of shape {want}")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ConfigError(f"{cfg.load_syn_image}: the images are not all finite numbers")
    logits = None
    if isinstance(blob, dict) and blob.get("soft_labels") is not None:
        logits = blob["soft_labels"].float()
    return images.float().clone(), logits


def _real_picks(cfg, splits: DatasetSplits, c: int, val_idx: torch.Tensor,
                gen: torch.Generator, labeller: Callable[[], Labeller],
                note: Callable[[str], None], wanted: int) -> torch.Tensor:
    """Training images of class c in random order, none from the validation split; with
    pix_init correct, those the labeller classifies correctly first; with kmeans, the `wanted`
    representatives of the class."""
    in_val = torch.zeros(len(splits.train), dtype=torch.bool)
    in_val[val_idx] = True
    members = splits.train.indices_of(c)
    members = members[~in_val[members]]  # no validation image is copied into the set
    if len(members) < cfg.ipc:
        raise ConfigError(f"ipc={cfg.ipc} but class {splits.classes[c]!r} has only "
                          f"{len(members)} training images outside the validation split "
                          f"(--val_size {cfg.val_size})")
    if cfg.pix_init == "kmeans":
        return representatives(
            members, lambda i: labeller().features(splits.preprocess(splits.train.images[i])),
            wanted, gen)
    members = members[torch.randperm(len(members), generator=gen)]
    if cfg.pix_init != "correct":
        return members
    # only the first max(256, 10 ipc) are looked at: enough to find ipc correct ones
    # without a pass over the whole class
    looked, rest = members[:max(256, 10 * cfg.ipc)], members[max(256, 10 * cfg.ipc):]
    right = labeller().logits(splits.preprocess(splits.train.images[looked])).argmax(1).cpu() == c
    if int(right.sum()) < cfg.ipc:
        note(f"--pix_init correct: the expert classifies only {int(right.sum())} of {len(looked)} "
             f"images of class {splits.classes[c]!r} correctly; misclassified ones fill the rest")
    return torch.cat([looked[right], looked[~right], rest])


def auto_teacher_lr(cfg, store: TrajectoryStore, experts: list[int], student: FlatModel,
                    images: torch.Tensor, labels: torch.Tensor) -> float:
    """--lr_teacher auto: lr_auto.auto_lr over 3 experts and up to 5 start epochs of the
    first sampling window (STM's first stage, DATM's first window, or MTT's whole range)."""
    first = cfg.min_start_epoch
    if cfg.stm:
        last = first + cfg.init_epoch - 1
    elif cfg.start_schedule == "aligned":
        last = cfg.current_max_start_epoch - 1
    else:
        last = cfg.max_start_epoch - 1
    trajectories = [store.load(i) for i in experts[:3]]
    return auto_lr(student, trajectories, spread(first, last, 5), cfg.expert_epochs,
                   images.detach(), labels, cfg.syn_steps)


def run_student(cfg, splits: DatasetSplits, store: TrajectoryStore) -> FlatModel:
    """The run's student network (the buffer's model) on the run's device. Its initial weights
    draw from the global RNG: a measurement made before the run builds it under fork_rng."""
    c, h, w = splits.image_shape
    return FlatModel.wrap(build_model(store.model, c, splits.num_classes, (h, w))
                          .to(torch.device(cfg.device)))


class RunStudent:
    """The run's student, built once by whoever needs it first: the start-up measurements
    (--lr_teacher auto, --gradient auto) or the Distiller. Built outside any forked RNG, so
    the global RNG advances once, as when the Distiller built it after them (they draw
    nothing else from it, and only its architecture matters to them: every use runs it at
    explicit weights)."""

    def __init__(self, splits: DatasetSplits, store: TrajectoryStore):
        self.splits, self.store = splits, store
        self.student: FlatModel | None = None

    def __call__(self, cfg) -> FlatModel:
        if self.student is None:
            self.student = run_student(cfg, self.splits, self.store)
        return self.student


class RunStart:
    """The run's initial images (and a loaded set's label logits), drawn once by whoever needs
    them first: the start-up measurement of --lr_teacher auto or the Distiller. A k-means start
    runs an expert over every class and clusters it, seconds to minutes on a large set, so it is
    not drawn twice. What the drawing says (--pix_init correct's notes) is kept in `notes` for
    the run to say: the measurement itself says nothing. The start depends only on the settings
    in `_key`; a config that differs there draws afresh."""

    def __init__(self, splits: DatasetSplits, store: TrajectoryStore, student: RunStudent):
        self.splits, self.store, self.student = splits, store, student
        self.labeller: Labeller | None = None
        self.notes: list[str] = []
        self._key, self._start = None, None

    @staticmethod
    def _key_of(cfg) -> tuple:
        return (cfg.seed, cfg.ipc, cfg.pix_init, cfg.val_size, cfg.max_experts, cfg.device,
                cfg.load_syn_image, cfg.texture, cfg.canvas_size)

    def labeller_of(self, cfg) -> Labeller:
        """The first expert's final epoch through the run's student, loaded once."""
        if self.labeller is None:
            self.labeller = Labeller.of(self.student(cfg), self.store, run_experts(cfg, self.store),
                                        torch.device(cfg.device))
        return self.labeller

    def __call__(self, cfg) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._start is None or self._key != self._key_of(cfg):
            if self._key is not None:  # another expert subset or device: another labeller
                self.labeller = None
            self.notes = []
            val_idx = validation_indices(self.splits.train.labels, self.splits.num_classes,
                                         cfg.val_size)
            self._start = initial_images(cfg, self.splits, val_idx,
                                         torch.Generator().manual_seed(cfg.seed),
                                         lambda: self.labeller_of(cfg), self.notes.append)
            self._key = self._key_of(cfg)
        return self._start


def run_experts(cfg, store: TrajectoryStore) -> list[int]:
    """The experts a run draws from: the buffer's, the first --max_experts of them."""
    experts = store.indices()
    return experts[:cfg.max_experts] if cfg.max_experts else experts


def measure_teacher_lr(cfg, splits: DatasetSplits, store: TrajectoryStore,
                       start: RunStart | None = None) -> float:
    """--lr_teacher auto for a settled config, on the images the run will start from (the
    same seed draws the same set), with the run's student: both from `start` (made here when
    not given). The global RNG is left as it was: building the student here must not change
    what the run draws later."""
    if start is not None:
        start.student(cfg)  # the run's own student is built outside the fork (RunStudent)
    with torch.random.fork_rng(devices=[]):
        start = RunStart(splits, store, RunStudent(splits, store)) if start is None else start
        device = torch.device(cfg.device)
        images, _ = start(cfg)
        labels = torch.arange(splits.num_classes).repeat_interleave(cfg.ipc).to(device)
        return auto_teacher_lr(cfg, store, run_experts(cfg, store), start.student(cfg),
                               images.to(device), labels)
