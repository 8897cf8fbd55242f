"""Expert trajectories (algorithm.md section 1): training, and the trajectory store.

A buffer directory holds
    buffer.json         what produced the experts (dataset identity, model, hyper-parameters)
    preprocess.pt       the exact input transform (mean/std, ZCA) the experts were trained with
    expert_000.pt ...   one file per expert: {"trajectory": (E+1, P) float32, "meta": json}
Files are written to a temporary name and renamed, so a killed job never leaves a
half-written trajectory behind, and a re-run resumes at the first missing expert.
Everything is read with `torch.load(weights_only=True)`: no code runs on load.

The store is one concept here: where a buffer lives (`buffer_dir`, `data_folder`, and
`find_model` for a distillation that names no model), opening it for a dataset and refusing it
unless it was made from exactly that data (`open_buffer`), and reading its trajectories.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .data.base import DatasetSplits, Preprocess
from .defaults import derive_experts
from .errors import TrajdistillError
from .flags import check_config
from . import progress as progress_out
from .io import atomic_save, load_json, safe_load, write_json
from .models import FlatModel, build_model
from . import orientation
from .training import class_weights, test_network, train_epoch


class BufferError(TrajdistillError):
    """A trajectory store that is missing, damaged, or made for something else."""


@dataclass
class ExpertConfig:
    model: str | None = None            # None: derived from the resolution (defaults.py)
    train_epochs: int = 50
    num_experts: int = 10
    lr_teacher: float = 0.01
    mom: float = 0.0
    l2: float = 0.0
    batch_train: int | None = None      # None: derived from the training set's size
    dsa: bool = True
    dsa_strategy: str | None = None     # None: derived from the class means (orientation.py)
    decay: bool = False
    seed: int = 0
    device: str = "cpu"
    # the settings that were derived, {field: {"value", "from"}} (filled by `resolve`)
    derived: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The hyper-parameters that make two buffers interchangeable (device excluded)."""
        d = asdict(self)
        for key in ("device", "num_experts", "derived"):
            d.pop(key)
        return d

    def resolve(self, splits: DatasetSplits) -> "ExpertConfig":
        """A copy with the settings left None derived from the data (defaults.py)."""
        asymmetry = orientation.measure(splits) if self.dsa_strategy is None else None
        made = derive_experts(splits.image_shape, len(splits.train), asdict(self), asymmetry)
        return replace(self, **{k: d["value"] for k, d in made.items()},
                       derived={**self.derived, **made})


# the ranges of the buffer command's flags, for ExpertConfig built in Python
EXPERT_RANGES = {"train_epochs": (1, True), "num_experts": (1, True), "lr_teacher": (0, False),
                 "mom": (0, True), "l2": (0, True), "batch_train": (1, True), "seed": (0, True)}


def buffer_identity(splits: DatasetSplits, cfg: ExpertConfig) -> dict:
    return {"data": splits.describe(), "expert": cfg.identity()}


# ----------------------------------------------------------------------------- training

def train_expert(splits: DatasetSplits, cfg: ExpertConfig, index: int,
                 progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Train one expert; returns its trajectory (E+1, P) and a summary of how it did."""
    cfg = cfg.resolve(splits)
    device = torch.device(cfg.device)
    seed = cfg.seed * 100_003 + index
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c, h, w = splits.image_shape
    net = build_model(cfg.model, c, splits.num_classes, (h, w)).to(device)
    flat = FlatModel.wrap(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_teacher, momentum=cfg.mom,
                          weight_decay=cfg.l2)
    weights = class_weights(splits.train.labels, splits.num_classes)
    # torch.cat copies: each snapshot is independent of the live parameters (on CPU too)
    snapshots = [flat.flat_params().cpu().clone()]
    epochs = progress_out.bar(range(cfg.train_epochs), desc=f"expert {index}", enabled=progress)
    for epoch in epochs:
        if cfg.decay and epoch == cfg.train_epochs // 2 + 1:
            for g in opt.param_groups:
                g["lr"] *= 0.1
        loss, acc = train_epoch(net, splits.train.images, splits.train.labels, opt,
                                batch_size=cfg.batch_train, device=device,
                                preprocess=splits.preprocess,
                                dsa_strategy=cfg.dsa_strategy if cfg.dsa else None,
                                weights=weights, generator=gen)
        snapshots.append(flat.flat_params().cpu().clone())
        epochs.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
    test = test_network(net, splits.test.images, splits.test.labels, splits.num_classes,
                        device=device, preprocess=splits.preprocess)
    train = test_network(net, splits.train.images, splits.train.labels, splits.num_classes,
                         device=device, preprocess=splits.preprocess)
    summary = {"index": index, "seed": seed, "train_accuracy": train.accuracy,
               "test_accuracy": test.accuracy, "test_per_class": test.per_class,
               "test_confusion": test.confusion}
    return torch.stack(snapshots), summary


def train_experts(splits: DatasetSplits, cfg: ExpertConfig, buffer_dir: str | Path,
                  rank: int = 0, world_size: int = 1, progress: bool = True) -> "TrajectoryStore":
    """Train cfg.num_experts experts into buffer_dir, skipping those already stored.

    Under torchrun each rank trains the experts i with i % world_size == rank.
    """
    cfg = cfg.resolve(splits)
    check_config(cfg, EXPERT_RANGES)
    store = TrajectoryStore.create(buffer_dir, buffer_identity(splits, cfg), splits.preprocess,
                                   derived=cfg.derived)
    todo = [i for i in range(cfg.num_experts) if i % world_size == rank and not store.has(i)]
    for i in progress_out.bar(todo, desc="experts", enabled=progress, report=True, unit="experts"):
        traj, summary = train_expert(splits, cfg, i, progress=progress)
        store.save(i, traj, summary)
        if progress:
            progress_out.note(f"expert {i}: train acc {summary['train_accuracy']:.4f}, "
                              f"test acc {summary['test_accuracy']:.4f}")
    return store


# ----------------------------------------------------------------------------- the store

@dataclass
class TrajectoryStore:
    root: Path
    identity: dict
    preprocess: Preprocess
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, root: str | Path, identity: dict, preprocess: Preprocess,
               derived: dict | None = None) -> "TrajectoryStore":
        """Open (or start) a buffer for this identity; refuse one made for something else.
        `derived` (which settings were derived, and from what) is recorded beside the
        identity in buffer.json; two buffers of the same identity are interchangeable
        whether a setting was derived or given."""
        root = Path(root)
        if (root / "buffer.json").exists():
            store = cls.open(root)
            store.check(identity)
            return store
        root.mkdir(parents=True, exist_ok=True)
        atomic_save(preprocess.state_dict(), root / "preprocess.pt")
        write_json(root / "buffer.json", {**identity, **({"derived": derived} if derived else {})})
        return cls(root, identity, preprocess)

    @classmethod
    def open(cls, root: str | Path) -> "TrajectoryStore":
        root = Path(root)
        meta = root / "buffer.json"
        if not meta.exists():
            raise BufferError(f"no expert buffer at {root} (missing {meta.name}); "
                              "train experts first with `trajdistill buffer`")
        identity = load_json(meta)
        preprocess = Preprocess.from_state_dict(safe_load(root / "preprocess.pt"))
        return cls(root, identity, preprocess)

    def path(self, i: int) -> Path:
        return self.root / f"expert_{i:03d}.pt"

    def has(self, i: int) -> bool:
        return self.path(i).exists()

    def indices(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.root.glob("expert_[0-9]*.pt"))

    def save(self, i: int, trajectory: torch.Tensor, summary: dict) -> None:
        atomic_save({"trajectory": trajectory.float().contiguous(),
                     "meta": json.dumps(summary)}, self.path(i))

    def load(self, i: int) -> torch.Tensor:
        """(E+1, P) float32 trajectory, memory-mapped."""
        if i not in self._cache:
            blob = safe_load(self.path(i), mmap=True)
            traj = blob.get("trajectory") if isinstance(blob, dict) else None
            if not isinstance(traj, torch.Tensor) or traj.ndim != 2:
                raise BufferError(f"{self.path(i)}: no (epochs+1, params) 'trajectory' tensor")
            self._cache[i] = traj
        return self._cache[i]

    def summary(self, i: int) -> dict:
        return json.loads(safe_load(self.path(i), mmap=True)["meta"])

    @property
    def num_epochs(self) -> int:
        return self.identity["expert"]["train_epochs"]

    @property
    def model(self) -> str:
        return self.identity["expert"]["model"]

    def check(self, expected: dict) -> None:
        """Refuse a buffer whose data or expert settings differ from what is expected."""
        problems = _differences({k: v for k, v in self.identity.items() if k != "derived"},
                                expected)
        if problems:
            raise BufferError(f"expert buffer {self.root} was made for something else:\n  "
                              + "\n  ".join(problems) + "\n  (give another --buffer_path, "
                              "or remove that folder to train it afresh)")

    def check_data(self, data_identity: dict) -> None:
        problems = _differences(self.identity["data"], data_identity, prefix="data.")
        if problems:
            raise BufferError(f"expert buffer {self.root} was made from other data:\n  "
                              + "\n  ".join(problems))


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


def _same_preprocess(a: dict, b: dict) -> bool:
    if not (torch.allclose(torch.tensor(a["mean"]), torch.tensor(b["mean"]), atol=1e-5)
            and torch.allclose(torch.tensor(a["std"]), torch.tensor(b["std"]), atol=1e-5)):
        return False
    if (a["zca"] is None) != (b["zca"] is None):
        return False
    return a["zca"] is None or torch.allclose(a["zca"]["transform"], b["zca"]["transform"], atol=1e-4)


def _differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, prefix + key + ".")
        elif a != b:
            out.append(f"{prefix}{key}: buffer has {a!r}, expected {b!r}")
    return out



# ----------------------------------------------------------------------------- where stores live

def buffer_dir(buffer_path: str | Path, dataset: str, model: str, zca: bool, subset: str | None,
               res: int | None = None) -> Path:
    """Where experts live: <buffer_path>/<dataset>[-<subset>][-<res>px][-zca]/<model>
    (as the reference, plus the side when --res chose it)."""
    return data_folder(buffer_path, dataset, zca, subset, res) / model


def data_folder(buffer_path: str | Path, dataset: str, zca: bool, subset: str | None,
                res: int | None = None) -> Path:
    """The folder that holds one data set's buffers, one sub-folder per expert model."""
    name = (Path(dataset).name + (f"-{subset}" if subset else "") + (f"-{res}px" if res else "")
            + ("-zca" if zca else ""))
    return Path(buffer_path) / name


def find_model(folder: Path, derived_model: str) -> tuple[str, str]:
    """The expert model of a distillation that names none, from the buffers present in
    `folder`: the derived model's buffer, else the only one there, else the reference's
    ConvNet. Returns (model, why); a folder with none of these names the derived model (its
    absence is reported when the store is opened)."""
    present = sorted(p.parent.name for p in folder.glob("*/buffer.json"))
    if derived_model in present:
        return derived_model, f"the buffer {folder / derived_model} (the derived expert model)"
    if len(present) == 1:
        return present[0], f"the only buffer in {folder}"
    if "ConvNet" in present:
        return "ConvNet", f"the reference's model, among the buffers {', '.join(present)} in {folder}"
    if present:
        raise BufferError(f"{folder} holds buffers of several models ({', '.join(present)}) and "
                          f"none of the derived {derived_model}: name one with --model")
    return derived_model, "the derived expert model for this data (defaults.py)"
