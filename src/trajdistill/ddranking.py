"""DD-Ranking's yardstick (NUS-HPC-AI-Lab/DD-Ranking, PyPI `ddranking` 0.2.0): its scores,
and its protocol measured with this package's evaluation code (evaluate.py). docs/ddranking.md
says where each rule comes from and where this protocol differs from its code.

The scores, as its docs define them (doc/introduction.md), accuracies as fractions:
    HLR   = acc(real, hard) - acc(syn, hard)                      hard-label recovery
    IOR   = acc(syn, own evaluation) - acc(random real, the same)  improvement over random
    alpha = w IOR - (1 - w) HLR                                    w = lrs_lambda, 0.5
    beta  = gamma (acc(syn, aug) - acc(rdm, aug)) + (1 - gamma) (acc(syn, no aug) - acc(rdm, no aug))
    LRS, ARS = (e^alpha - e^-1) / (e - e^-1) x 100 %, and the same of beta: [-1, 1] -> [0, 100]
Each is computed per evaluation round and then averaged over the rounds (mean and population
std), as its compute_metrics does (ddranking/metrics/{hard_label,soft_label,aug_robust}.py).

Round k (seed s = seed + k for its networks and its random draw):
- real, hard: the whole training set, class labels, no augmentation, lr REAL_LR for
  REAL_EPOCHS epochs (x0.1 half way); or the accuracy the user gives (its cache of them);
- syn, hard: the set with class labels and augmentation, at the learned lr for a hard-label
  set (its LabelRobustScoreHard passes syn_lr) and the lr grid for a soft-label set (its
  LabelRobustScoreSoft searches it);
- syn / random, own: the method's evaluation, augmentation on (and off, for ARS): learned
  soft labels at the learned lr, or class labels as above; a fresh random real set of the
  same size per round, on the lr grid, labelled as the set is (a soft-label set's random
  images get the logits of the expert that labelled the set: its teacher);
- lr grid: one network per lr, the best test accuracy of the round (its hyper-parameter search).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from .augment import DEFAULT_STRATEGY
from .data.base import DatasetSplits
from .defaults import expert_depth
from .errors import ConfigError
from .baselines import random_real
from .evaluate import EvalConfig, evaluate_set
from .io import FileFormatError
from .records import require
from .synthetic import SyntheticSet

FORMAT = "trajdistill.ddranking/1"
RESULTS_FILE = "ddranking.json"

# its protocol (ddranking/metrics/*.py, configs/Demo_LRS_Hard_Label.yaml, the docs' examples)
LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)   # _hyper_param_search_for_*: lr_list
EPOCHS = 1000                              # num_epochs; StepLR step_size 500 = x0.1 half way
BATCH = 256                                # syn_batch_size
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
LAMBDA = 0.5                               # lrs_lambda, ars_lambda: both parts weigh the same
# REAL_DATA_TRAINING_CONFIG["CIFAR10-ConvNet-3"] (utils/train_and_eval.py): SGD lr 0.01,
# 200 epochs, StepLR step 100, no augmentation
REAL_LR, REAL_EPOCHS = 0.01, 200

# its dataset names and the normalisation its get_dataset applies (utils/data.py)
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SUBSETS = {"imagenette": "ImageNette", "imagewoof": "ImageWoof", "imagemeow": "ImageMeow",
           "imagesquawk": "ImageSquawk", "imagefruit": "ImageFruit", "imageyellow": "ImageYellow"}


def dataset_name(data: dict) -> str | None:
    """DD-Ranking's name of the data a set was distilled from; None where it has none."""
    name = str(data.get("dataset", "")).lower()
    if name in ("cifar10", "cifar100"):
        return name.upper()
    if name == "tiny":
        return "TinyImageNet"
    if name == "imagenet":
        subset = str(data.get("subset") or "").lower()
        return SUBSETS.get(subset) if subset else "ImageNet1K"
    return None


def normalisation(name: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel mean and std its get_dataset normalises dataset `name` with."""
    if name is None:
        return None
    return CIFAR_STATS if name.startswith("CIFAR") else IMAGENET_STATS


def protocol_model(image_shape) -> str:
    """Its evaluation network for images of this shape, by this package's name: ConvNet-3
    (width 128, instance norm, average pooling) up to 32 px, ConvNet-4 at 64, ConvNet-5 at 128,
    ResNet-18-BN at ImageNet-1K's 224."""
    if min(image_shape[-2:]) >= 224:
        return "ResNet18BN"
    depth = max(3, expert_depth(image_shape))
    return "ConvNet" if depth == 3 else f"ConvNetD{depth}"


def ddranking_model_name(model: str) -> str:
    """Its name (build_model) of this package's protocol network."""
    if model == "ResNet18BN":
        return "ResNet-18-BN"
    return "ConvNet-3" if model == "ConvNet" else f"ConvNet-{model[len('ConvNetD'):]}"


# ----------------------------------------------------------------------------- the scores

def normalised(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1) x 100: a weighted difference of accuracies in [-1, 1] as a
    score in [0, 100] %; 0 difference gives 100 / (1 + e) = 26.89 %."""
    return (math.exp(x) - math.exp(-1)) / (math.exp(1) - math.exp(-1)) * 100


def lrs(real_hard: float, syn_hard: float, syn_own: float, rdm_own: float,
        w: float = LAMBDA) -> dict:
    """One round's label-robust score and its parts (accuracies as fractions)."""
    hlr, ior = real_hard - syn_hard, syn_own - rdm_own
    alpha = w * ior - (1 - w) * hlr
    return {"HLR": hlr, "IOR": ior, "alpha": alpha, "LRS": normalised(alpha)}


def ars(syn_aug: float, rdm_aug: float, syn_naug: float, rdm_naug: float,
        gamma: float = LAMBDA) -> dict:
    """One round's augmentation-robust score and its parts (accuracies as fractions)."""
    with_aug, without_aug = syn_aug - rdm_aug, syn_naug - rdm_naug
    beta = gamma * with_aug + (1 - gamma) * without_aug
    return {"aug_gain": with_aug, "no_aug_gain": without_aug, "beta": beta, "ARS": normalised(beta)}


def over_rounds(rounds: list[dict], keys) -> dict:
    """{key: {mean, std}} over the rounds: numpy's mean and (population) std, as it reports."""
    return {k: {"mean": statistics.fmean(r[k] for r in rounds),
                "std": statistics.pstdev([r[k] for r in rounds])} for k in keys}


SCORES = ("LRS", "HLR", "IOR", "alpha", "ARS", "aug_gain", "no_aug_gain", "beta")
ACCURACIES = ("real_hard", "syn_hard", "syn_aug", "rdm_aug", "syn_naug", "rdm_naug")


# ----------------------------------------------------------------------------- the protocol

@dataclass
class DDRankingConfig:
    num_eval: int = 5                       # rounds
    epochs: int = EPOCHS
    batch: int = BATCH
    lr_grid: tuple[float, ...] = LR_GRID
    syn_lr: float | None = None             # None: the set's learned lr (the grid for a list)
    lrs_lambda: float = LAMBDA
    ars_lambda: float = LAMBDA
    real_accuracy: float | None = None      # a known acc(real, hard) as a fraction: no training
    real_epochs: int = REAL_EPOCHS
    dsa_strategy: str = DEFAULT_STRATEGY
    device: str = "cpu"
    seed: int = 0

    def check(self) -> None:
        for flag, v in (("--lrs_lambda", self.lrs_lambda), ("--ars_lambda", self.ars_lambda)):
            if not 0 <= v <= 1:
                raise ConfigError(f"{flag} weighs two parts: expected a number in [0, 1], got {v!r}")
        if self.real_accuracy is not None and not 0 < self.real_accuracy <= 1:
            raise ConfigError("--real_accuracy: expected a percentage in (0, 100], got "
                              f"{100 * self.real_accuracy:g}")
        if self.syn_lr is not None and not (math.isfinite(self.syn_lr) and self.syn_lr > 0):
            raise ConfigError(f"--lr: expected a positive learning rate, got {self.syn_lr!r}")

    def eval_config(self, dsa: bool, seed: int, epochs: int | None = None) -> EvalConfig:
        """One network (seed `seed`) per call of evaluate_set: its evaluation rounds."""
        return EvalConfig(num_eval=1, epoch_eval_train=epochs or self.epochs, batch_train=self.batch,
                          momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, dsa=dsa,
                          dsa_strategy=self.dsa_strategy, device=self.device, seed=seed,
                          batched="off")


@dataclass
class Measure:
    """How a round measures an accuracy: fresh networks of the protocol's model through
    evaluate_set, on the data `splits` (seen through the set's own transform)."""
    splits: DatasetSplits
    model: str
    cfg: DDRankingConfig
    progress: bool = False

    def accuracy(self, images, targets, lrs, dsa: bool, seed: int,
                 epochs: int | None = None) -> tuple[float, float]:
        """The best test accuracy of one network per lr (the first best, as its search keeps
        `acc > best_acc`) and that lr."""
        ecfg = self.cfg.eval_config(dsa, seed, epochs)
        accs = [evaluate_set(images, targets, self.splits, [lr], [self.model], ecfg,
                             progress=self.progress)[self.model]["mean"] for lr in lrs]
        best = max(range(len(lrs)), key=accs.__getitem__)
        return accs[best], lrs[best]


def syn_lrs(syn: SyntheticSet, cfg: DDRankingConfig) -> list[float] | None:
    """The lr the set is evaluated at: --lr, else its one learned lr; None: use the grid (a
    per-stage lr list has no single lr to give its evaluator)."""
    if cfg.syn_lr is not None:
        return [cfg.syn_lr]
    return [float(syn.lrs[0])] if len(syn.lrs) == 1 else None


def run_round(k: int, syn: SyntheticSet, measure: Measure, teacher=None) -> dict:
    """Round k's accuracies and scores (module docstring)."""
    cfg, splits = measure.cfg, measure.splits
    s = cfg.seed + k
    own_lrs = syn_lrs(syn, cfg) or list(cfg.lr_grid)
    grid = list(cfg.lr_grid)
    soft = syn.soft_labels is not None
    r: dict = {"round": k, "seed": s}
    if cfg.real_accuracy is not None:
        r["real_hard"] = cfg.real_accuracy
    else:
        r["real_hard"], _ = measure.accuracy(splits.train.images, splits.train.labels, [REAL_LR],
                                             False, s, epochs=cfg.real_epochs)
    rdm, rdm_labels = random_real(splits, len(syn.labels) // splits.num_classes, seed=s)
    rdm_targets = teacher(splits.preprocess(rdm)) if soft else rdm_labels
    r["syn_aug"], r["syn_lr"] = measure.accuracy(syn.images, syn.targets(), own_lrs, True, s)
    r["rdm_aug"], r["rdm_aug_lr"] = measure.accuracy(rdm, rdm_targets, grid, True, s)
    r["syn_naug"], _ = measure.accuracy(syn.images, syn.targets(), own_lrs, False, s)
    r["rdm_naug"], r["rdm_naug_lr"] = measure.accuracy(rdm, rdm_targets, grid, False, s)
    if soft:  # its soft-label evaluator searches the hard-label run's lr
        r["syn_hard"], r["syn_hard_lr"] = measure.accuracy(syn.images, syn.labels, grid, True, s)
    else:  # the same run as the method's own evaluation
        r["syn_hard"], r["syn_hard_lr"] = r["syn_aug"], r["syn_lr"]
    r.update(lrs(r["real_hard"], r["syn_hard"], r["syn_aug"], r["rdm_aug"], cfg.lrs_lambda))
    r.update(ars(r["syn_aug"], r["rdm_aug"], r["syn_naug"], r["rdm_naug"], cfg.ars_lambda))
    return r


def buffer_teacher(buffer_dir: str | Path, splits: DatasetSplits, device: str = "cpu"):
    """The labeller of a soft-label set (initial.Labeller: the last epoch of the buffer's
    first expert) as images -> logits: DD-Ranking's teacher for the random real images."""
    from .experts import open_buffer
    from .initial import Labeller
    from .models import FlatModel, build_model
    store = open_buffer(buffer_dir, splits)
    c, h, w = splits.image_shape
    student = FlatModel.wrap(build_model(store.model, c, splits.num_classes, (h, w)).to(device))
    labeller = Labeller.of(student, store, store.indices(), torch.device(device))
    return lambda images: labeller.logits(images).cpu()


def evaluate_ddranking(syn: SyntheticSet, splits: DatasetSplits, cfg: DDRankingConfig,
                       teacher=None, progress: bool = False, say=None) -> dict:
    """Every round of the protocol and their summary: the record ddranking.json holds.
    `splits` must carry the set's own transform; `teacher(images) -> logits` labels the
    random real images of a soft-label set."""
    cfg.check()
    if syn.soft_labels is not None and teacher is None:
        raise ConfigError("--teacher: a soft-label set is compared with random real images "
                          "labelled by a teacher; give the expert buffer that labelled it")
    ipc, rest = divmod(len(syn.labels), splits.num_classes)
    counts = torch.bincount(syn.labels, minlength=splits.num_classes)
    if rest or not bool((counts == ipc).all()):
        raise ConfigError(f"DD-Ranking compares with {ipc or 1} random real image(s) per class: "
                          f"the set must hold the same number of every class, it holds "
                          f"{counts.tolist()}")
    model = protocol_model(splits.image_shape)
    measure = Measure(splits, model, cfg, progress)
    rounds = []
    for k in range(cfg.num_eval):
        rounds.append(run_round(k, syn, measure, teacher))
        if say:
            say(f"round {k + 1}/{cfg.num_eval}: " + round_line(rounds[-1]))
    return {"format": FORMAT, "model": model, "ddranking_model": ddranking_model_name(model),
            "dataset": splits.name, "ddranking_dataset": dataset_name(splits.describe()),
            "ipc": ipc, "labels": "soft" if syn.soft_labels is not None else "hard",
            "learned_lrs": [float(v) for v in syn.lrs], "syn_lr": (syn_lrs(syn, cfg) or [None])[0],
            "protocol": protocol(cfg), "differences": differences(cfg, syn),
            "rounds": rounds, "scores": over_rounds(rounds, SCORES),
            "accuracies": over_rounds(rounds, ACCURACIES)}


def protocol(cfg: DDRankingConfig) -> dict:
    """The settings a results file was measured with, as plain data."""
    return {"rounds": cfg.num_eval, "epochs": cfg.epochs, "lr_step": "x0.1 at half the epochs",
            "batch": cfg.batch, "optimizer": "SGD", "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY, "lr_grid": list(cfg.lr_grid),
            "augmentation": cfg.dsa_strategy, "lrs_lambda": cfg.lrs_lambda,
            "ars_lambda": cfg.ars_lambda,
            "real": ({"given": cfg.real_accuracy} if cfg.real_accuracy is not None else
                     {"lr": REAL_LR, "epochs": cfg.real_epochs, "augmentation": None})}


def differences(cfg: DDRankingConfig, syn: SyntheticSet) -> list[str]:
    """Where this measurement departs from DD-Ranking's own evaluator (docs/ddranking.md)."""
    out = ["accuracy is read once, after the last epoch; DD-Ranking reads the best of the test "
           "evaluations every 10 epochs (hard labels) or 20 (soft labels, ARS), which can only "
           "be higher",
           "the lr grid is searched on the test accuracy, as DD-Ranking does (this package's own "
           "protocol chooses on validation images)",
           "ARS is measured under the LRS protocol (SGD, x0.1 half way): DD-Ranking's "
           "AugmentationRobustScore gives its step schedule no step size (an assertion fails) "
           "and its ARS configuration trains with AdamW and a cosine schedule"]
    if cfg.real_accuracy is None:
        out.append(f"acc(real, hard): {cfg.real_epochs} epochs at lr {REAL_LR}, x0.1 half way; "
                   "DD-Ranking's code steps its lr every 100 epochs for num_epochs epochs")
    if syn_lrs(syn, cfg) is None:
        out.append("the set learned one lr per stage; its own evaluation searches the lr grid")
    if cfg.epochs != EPOCHS or cfg.real_epochs != REAL_EPOCHS or cfg.lr_grid != LR_GRID:
        out.append("epochs or lr grid changed from DD-Ranking's: not comparable with its "
                   "leaderboard")
    return out


def round_line(r: dict) -> str:
    return (f"LRS {r['LRS']:.2f} (HLR {100 * r['HLR']:.2f}, IOR {100 * r['IOR']:.2f}), "
            f"ARS {r['ARS']:.2f}")


def summary_lines(result: dict) -> list[str]:
    """The scores and the accuracies behind them, as the command line prints them."""
    s, a = result["scores"], result["accuracies"]

    def pct(d, scale=100):
        return f"{scale * d['mean']:.2f} ± {scale * d['std']:.2f}"
    return [f"DD-Ranking protocol ({result['ddranking_model']}, {result['protocol']['rounds']} "
            f"rounds, {result['labels']} labels):",
            f"  LRS {pct(s['LRS'], 1)}  (HLR {pct(s['HLR'])} %, IOR {pct(s['IOR'])} %)",
            f"  ARS {pct(s['ARS'], 1)}  (gain over random with augmentation {pct(s['aug_gain'])} "
            f"%, without {pct(s['no_aug_gain'])} %)",
            "  accuracy (%): " + ", ".join(f"{k} {pct(a[k])}" for k in ACCURACIES)]


# ----------------------------------------------------------------------------- the results file

def checked_results(blob, path: Path) -> dict:
    """ddranking.json as the report reads it: its scores and accuracies, each mean and std."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not a DD-Ranking results file (format {FORMAT!r})")
    require(blob, str(path), {"scores": "an object", "accuracies": "an object",
                              "protocol": "an object"})
    for part, keys in (("scores", SCORES), ("accuracies", ACCURACIES)):
        for k in keys:
            entry = blob[part].get(k)
            if not isinstance(entry, dict):
                raise FileFormatError(f"{path}: {part}.{k} should be an object, got {entry!r}")
            require(entry, f"{path}, {part}.{k}", {"mean": "a number", "std": "a number"})
    return blob

