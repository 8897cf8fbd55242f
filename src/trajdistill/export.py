"""Export a distilled set for people who do not use this package.

    trajdistill export RUN_DIR/synthetic_best.pt OUT_DIR

OUT_DIR/
  images/<k>_<class>/<i>.png   every synthetic image in pixel space (ZCA inverted), clipped at
                               2.5 std and stretched exactly as in the report's grid
  grid.png                     all of them, one row per class
  synthetic.pt                 images (network input space), labels, soft_labels (the learned
                               label logits of a soft-label set, else None), lrs, pixels, classes,
                               preprocess (mean/std/ZCA), data identity, the evaluation
                               protocol; plain tensors and data: torch.load(weights_only=True).
                               Also a valid trajdistill synthetic set (`trajdistill evaluate --syn`).
  metadata.json, README.txt    what it is and how to train a network on it

    trajdistill export --format ddranking RUN_DIR/synthetic_best.pt OUT_DIR

OUT_DIR/ as DD-Ranking's evaluators take a set (docs/ddranking.md; its demo scripts load
images.pt, labels.pt and lr.pt and pass them to compute_metrics):
  images.pt                    (classes x ipc, C, H, W) float32, sorted by class, in the input
                               space of its get_dataset: normalised with its mean/std of the
                               dataset, or whitened as its use_zca whitens (kornia's ZCA, eps
                               0.1, on un-normalised [0,1] images: this package's ZCA too)
  hard_labels.pt               (classes x ipc,) int64: the class of each image
  labels.pt                    soft-label sets only: (classes x ipc, classes) float32 logits
                               (its soft_label_mode 'S'; its losses take softmax(logits / T))
  lr.pt                        the learned lr as a 0-d float64 tensor (syn_lr), one-lr sets only
  image_folder/<c:05d>/<i:05d>.png  the same images in [0,1] pixel space, 8 bits (its image_path
                               form, read by ImageFolder with ToTensor + Normalize(mean, std))
  ddranking_config.json        its Config.from_file settings for this set (its protocol)
  metadata.json, README.txt    the space, the order (original index of every row), the lr(s)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from . import ddranking as ddr
from .errors import ConfigError
from .evaluate import EvalConfig, lr_schedule
from .io import FileFormatError, atomic_save, load_json, safe_load, write_json
from .display import CLIP_STD, synthetic_display, synthetic_grid, to_uint8_hwc
from .synthetic import FORMAT, SyntheticSet

EXPORT_FORMAT = "trajdistill.export/1"
DDRANKING_FORMAT = "trajdistill.export.ddranking/1"
EXPORT_FORMATS = ("trajdistill", "ddranking")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "class"


def evaluation_protocol(syn: SyntheticSet, cfg: EvalConfig | None = None) -> dict:
    """How the set is meant to be evaluated (algorithm.md section 6), as plain data."""
    cfg = cfg or EvalConfig()
    schedule = lr_schedule(syn.lrs, cfg.epoch_eval_train, syn.syn_steps)
    changes = [(0, schedule[0])] + [(e, lr) for e, lr in enumerate(schedule) if e and lr != schedule[e - 1]]
    return {"model": syn.model, "optimizer": "SGD", "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_train,
            "augmentation": cfg.dsa_strategy if cfg.dsa else None, "epochs": len(schedule),
            "lr_changes": [[e, lr] for e, lr in changes],
            "lr_rule": ("one lr: epoch_eval_train epochs, x0.1 from half way" if len(syn.lrs) == 1 else
                        "lr list: k = max(syn_steps, 500 // len) epochs each, then 500 epochs at the "
                        "last lr x0.1"),
            "num_eval": cfg.num_eval}


def export_synthetic(syn_path: str | Path, out_dir: str | Path, cfg: EvalConfig | None = None) -> Path:
    """Write OUT_DIR as described in the module docstring; returns OUT_DIR."""
    syn = SyntheticSet.load(syn_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(syn.data.get("classes") or [str(i) for i in range(int(syn.labels.max()) + 1)])
    shown = synthetic_display(syn)
    files = []
    counts: dict[int, int] = {}
    for i, (img, y) in enumerate(zip(shown, syn.labels.tolist())):
        k = counts.get(y, 0)
        counts[y] = k + 1
        rel = Path("images") / f"{y:03d}_{_slug(classes[y])}" / f"{k:03d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8_hwc(img)).save(out / rel)
        entry = {"file": str(rel), "label": y, "class": classes[y], "index": i}
        if syn.soft_labels is not None:
            entry["label_distribution"] = [round(float(p), 6) for p in
                                           torch.softmax(syn.soft_labels[i].float(), 0)]
        files.append(entry)
    grid, ipc = synthetic_grid(syn, len(classes))
    grid.save(out / "grid.png")
    protocol = evaluation_protocol(syn, cfg)
    blob = {"format": FORMAT, "export_format": EXPORT_FORMAT,
            "images": syn.images.detach().cpu().float(), "labels": syn.labels.cpu().long(),
            "soft_labels": (syn.soft_labels.detach().cpu().float()
                            if syn.soft_labels is not None else None),
            "lrs": [float(v) for v in syn.lrs], "pixels": syn.pixels().float(),
            "classes": classes, "preprocess": syn.preprocess.state_dict(), "data": syn.data,
            "model": syn.model, "syn_steps": syn.syn_steps, "meta": syn.meta,
            "evaluation": protocol}
    atomic_save(blob, out / "synthetic.pt")
    meta = {"format": EXPORT_FORMAT, "source": str(syn_path), "dataset": syn.data.get("dataset"),
            "classes": classes, "images_per_class": ipc, "image_shape": list(syn.images.shape[1:]),
            "zca": syn.preprocess.zca is not None, "normalisation": {"mean": list(syn.preprocess.mean),
                                                                    "std": list(syn.preprocess.std)},
            "learned_lrs": blob["lrs"], "soft_labels": syn.soft_labels is not None, "model": syn.model, "syn_steps": syn.syn_steps,
            "distillation": syn.meta, "evaluation": protocol, "files": files,
            "png_display": f"pixel space{' (ZCA inverted)' if syn.preprocess.zca is not None else ''}, "
                           f"clipped at mean ± {CLIP_STD} std of the set, stretched to [0,255] per image"}
    write_json(out / "metadata.json", meta)
    (out / "README.txt").write_text(_readme(meta))
    return out


def load_export(path: str | Path) -> dict:
    """The exported tensor file as a plain dict (weights_only: no code runs)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _loss_text(meta: dict) -> str:
    if meta["soft_labels"]:
        return ("soft cross-entropy on the learned labels\n"
                "(-sum(softmax(soft_labels) * log_softmax(output)) / batch)")
    return "cross-entropy on the labels"


def _readme(meta: dict) -> str:
    p = meta["evaluation"]
    zca = ("The images are ZCA-whitened: train on `images` as they are (the network input space);\n"
           "`pixels` holds them back in [0,1] pixel space (unclipped) for looking at.\n"
           if meta["zca"] else
           "`images` are normalised with the per-channel mean/std below; `pixels` are in [0,1].\n")
    return f"""Distilled dataset: {meta['images_per_class']} synthetic image(s) per class of {meta['dataset']}
({len(meta['classes'])} classes, images {meta['image_shape']}), learned by trajectory matching
(trajdistill; distillation: {json.dumps(meta['distillation'])}).

Files
  images/<k>_<class>/<i>.png  each image for looking at: {meta['png_display']}
  grid.png                    all images, one row per class
  synthetic.pt                torch.load(path, weights_only=True) -> dict with
                              images (N,C,H,W float, network input space), labels (N,),
                              soft_labels (N,classes logits, or None: see below),
                              lrs (learned step size(s)), pixels, classes, preprocess
                              (mean, std, zca), evaluation (the protocol below)
  metadata.json               the same facts as JSON

{zca}Normalisation: mean {meta['normalisation']['mean']}, std {meta['normalisation']['std']}
(test images must go through the same transform{', ZCA included' if meta['zca'] else ''}).

Evaluation protocol used for the reported accuracies: train a fresh {p['model']} from scratch on
these images with SGD (momentum {p['momentum']}, weight decay {p['weight_decay']}, batch
{p['batch_size']}), augmentation {p['augmentation']}, {_loss_text(meta)}, for
{p['epochs']} epochs with the learning rate changing at [epoch, lr] = {p['lr_changes']}
({p['lr_rule']}); test on the real test set; report mean ± std over {p['num_eval']} networks.
Learned lr(s): {meta['learned_lrs']}.

With trajdistill installed:  trajdistill evaluate --syn synthetic.pt --dataset {meta['dataset']} --data_path ...
"""


# ----------------------------------------------------------------------------- DD-Ranking

def export_ddranking(syn_path: str | Path, out_dir: str | Path) -> Path:
    """Write OUT_DIR in DD-Ranking's layout (module docstring); returns OUT_DIR."""
    from .texture import spec_of
    syn = SyntheticSet.load(syn_path)
    if spec_of(syn.meta) is not None:
        raise ConfigError(f"--format ddranking: {syn_path} is a texture set (canvases seen "
                          "through windows); DD-Ranking evaluates whole images of the data's size")
    classes = list(syn.data.get("classes") or [str(i) for i in range(int(syn.labels.max()) + 1)])
    counts = torch.bincount(syn.labels, minlength=len(classes))
    if not bool((counts == counts[0]).all()):
        raise ConfigError(f"--format ddranking: DD-Ranking takes the same number of images of "
                          f"every class; {syn_path} holds {counts.tolist()}")
    order = torch.sort(syn.labels, stable=True).indices  # its hard labels are class-sorted
    images, space = ddranking_images(syn)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(images[order].contiguous(), out / "images.pt")
    atomic_save(syn.labels[order].long().contiguous(), out / "hard_labels.pt")
    if syn.soft_labels is not None:
        atomic_save(syn.soft_labels.detach()[order].cpu().float().contiguous(), out / "labels.pt")
    if len(syn.lrs) == 1:  # its syn_lr is one number
        atomic_save(torch.tensor(float(syn.lrs[0]), dtype=torch.float64), out / "lr.pt")
    _image_folder(syn.pixels()[order], syn.labels[order], out / "image_folder")
    name = ddr.dataset_name(syn.data)
    meta = {"format": DDRANKING_FORMAT, "source": str(syn_path), "dataset": syn.data.get("dataset"),
            "ddranking_dataset": name, "classes": classes, "ipc": int(counts[0]),
            "image_shape": list(syn.images.shape[1:]), **space, "order": order.tolist(),
            "learned_lrs": [float(v) for v in syn.lrs], "soft_labels": syn.soft_labels is not None,
            "ddranking_model": ddr.ddranking_model_name(ddr.protocol_model(syn.images.shape[1:]))}
    write_json(out / "metadata.json", meta)
    write_json(out / "ddranking_config.json", ddranking_config(meta))
    (out / "README.txt").write_text(_ddranking_readme(meta))
    return out


def ddranking_images(syn: SyntheticSet) -> tuple[torch.Tensor, dict]:
    """The set's images in DD-Ranking's input space and a description of that space. A ZCA
    set is already there: this package whitens as its get_dataset with use_zca does (kornia's
    ZCA, eps 0.1, fitted on the [0,1] training images without normalisation: data/zca_apply.py).
    Otherwise its normalisation of the dataset (CIFAR, Tiny, ImageNet: the set's own, so the very
    tensors of the set); data it does not know keeps the set's own mean/std."""
    if syn.preprocess.zca is not None:
        return syn.images.detach().cpu().float(), {
            "space": "ZCA-whitened [0,1] pixels (kornia ZCAWhitening, eps 0.1, fitted on the "
                     "un-normalised training images: its get_dataset with use_zca)",
            "use_zca": True, "mean": None, "std": None}
    name = ddr.dataset_name(syn.data)
    mean, std = ddr.normalisation(name) or (tuple(syn.preprocess.mean), tuple(syn.preprocess.std))
    space = {"space": "[0,1] pixels normalised per channel: (x - mean) / std", "use_zca": False,
             "mean": list(mean), "std": list(std)}
    own = (torch.tensor(syn.preprocess.mean), torch.tensor(syn.preprocess.std))
    if torch.equal(own[0], torch.tensor(mean)) and torch.equal(own[1], torch.tensor(std)):
        return syn.images.detach().cpu().float(), space
    c = syn.images.shape[1]  # the same pixels under its normalisation
    return (syn.pixels() - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1), space


def _image_folder(pixels: torch.Tensor, labels: torch.Tensor, root: Path) -> None:
    """ImageFolder layout: one folder per class, named so that their sorted order is the
    class order (as its random-data folders: <class:05d>/<i:05d>)."""
    counts: dict[int, int] = {}
    for img, y in zip(pixels, labels.tolist()):
        k = counts.get(y, 0)
        counts[y] = k + 1
        path = root / f"{y:05d}" / f"{k:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = (img.clamp(0, 1) * 255).round().byte()
        mode = "L" if arr.shape[0] == 1 else "RGB"
        Image.fromarray(arr[0].numpy() if mode == "L" else arr.permute(1, 2, 0).numpy(), mode).save(path)


def ddranking_config(meta: dict) -> dict:
    """Settings for its Config.from_file (JSON is accepted): its protocol for this set, the
    keys of its LabelRobustScoreHard/Soft and AugmentationRobustScore."""
    from .augment import (BRIGHTNESS, CONTRAST, CROP_RATIO, CUTOUT_RATIO, FLIP_PROB,
                          ROTATE_DEGREES, SATURATION, SCALE_RATIO)
    soft = meta["soft_labels"]
    return {
        "dataset": meta["ddranking_dataset"] or meta["dataset"], "real_data_path": "./dataset/",
        "ipc": meta["ipc"], "im_size": meta["image_shape"][1:], "model_name": meta["ddranking_model"],
        "use_torchvision": False, "stu_use_torchvision": False, "tea_use_torchvision": False,
        "teacher_dir": "./teacher_models", "teacher_model_names": [meta["ddranking_model"]],
        "data_aug_func": "dsa",
        "aug_params": {"flip": FLIP_PROB, "rotate": ROTATE_DEGREES, "saturation": SATURATION,
                       "brightness": BRIGHTNESS, "contrast": CONTRAST, "scale": SCALE_RATIO,
                       "crop": CROP_RATIO, "cutout": CUTOUT_RATIO},
        "use_zca": meta["use_zca"], "custom_val_trans": None,
        # for image_folder/ (image_path=...): its ImageFolder reads [0,1] pixels; a ZCA set's
        # whitening is no torchvision transform, so its folder is for looking at only
        "custom_train_trans": None if meta["use_zca"] else [
            {"name": "ToTensor"}, {"name": "Normalize", "args": {"mean": meta["mean"], "std": meta["std"]}}],
        "label_type": "soft" if soft else "hard", "soft_label_mode": "S",
        "soft_label_criterion": "sce", "loss_fn_kwargs": {"temperature": 1.0, "scale_loss": False},
        "optimizer": "sgd", "lr_scheduler": "step", "step_size": ddr.EPOCHS // 2,
        "weight_decay": ddr.WEIGHT_DECAY, "momentum": ddr.MOMENTUM, "num_eval": 5,
        "num_epochs": ddr.EPOCHS, "syn_batch_size": ddr.BATCH, "real_batch_size": ddr.BATCH,
        "batch_size": ddr.BATCH, "num_workers": 4, "device": "cuda", "dist": False,
        "eval_full_data": True, "random_data_format": "tensor",
        "random_data_path": "./random_data", "save_path": "./results/ddranking_scores.csv"}


def load_ddranking_export(out_dir: str | Path) -> dict:
    """A DD-Ranking export read back (weights_only): images, hard_labels, soft_labels (None
    for a hard-label set), lr (None for a per-stage lr list) and metadata, checked against
    each other. `images[inverse(order)]` is the set in its original order."""
    out = Path(out_dir)
    meta = load_json(out / "metadata.json")
    if meta.get("format") != DDRANKING_FORMAT:
        raise FileFormatError(f"{out / 'metadata.json'}: not a DD-Ranking export "
                              f"(format {DDRANKING_FORMAT!r})")
    images, hard = safe_load(out / "images.pt"), safe_load(out / "hard_labels.pt")
    soft = safe_load(out / "labels.pt") if meta.get("soft_labels") else None
    lr = safe_load(out / "lr.pt") if (out / "lr.pt").exists() else None
    n = len(meta.get("order") or [])
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] == n
            and images.is_floating_point()):
        raise FileFormatError(f"{out / 'images.pt'}: expected ({n}, C, H, W) float images, got "
                              f"{getattr(images, 'shape', type(images).__name__)}")
    if not (isinstance(hard, torch.Tensor) and hard.dtype == torch.int64 and hard.shape == (n,)
            and bool((hard[1:] >= hard[:-1]).all())):
        raise FileFormatError(f"{out / 'hard_labels.pt'}: expected {n} class-sorted int64 labels")
    if soft is not None and not (isinstance(soft, torch.Tensor) and soft.shape == (n, len(meta["classes"]))):
        raise FileFormatError(f"{out / 'labels.pt'}: expected ({n}, {len(meta['classes'])}) logits")
    if lr is not None and not (isinstance(lr, torch.Tensor) and lr.ndim == 0):
        raise FileFormatError(f"{out / 'lr.pt'}: expected one learning rate (a 0-d tensor)")
    return {"images": images, "hard_labels": hard, "soft_labels": soft,
            "lr": float(lr) if lr is not None else None, "metadata": meta}


def _ddranking_readme(meta: dict) -> str:
    metric = "LabelRobustScoreSoft" if meta["soft_labels"] else "LabelRobustScoreHard"
    labels = "soft_labels=torch.load('labels.pt'), " if meta["soft_labels"] else \
        "hard_labels=torch.load('hard_labels.pt'), "
    lr = "syn_lr=torch.load('lr.pt')" if meta["learned_lrs"] and len(meta["learned_lrs"]) == 1 else \
        "syn_lr=None  # one lr per stage: let it search its lr grid"
    known = ("" if meta["ddranking_dataset"] else
             f"\nDD-Ranking has no dataset {meta['dataset']!r}: its get_dataset would need it added.\n")
    return f"""A distilled set of {meta['dataset']} ({meta['ipc']} image(s) per class, {len(meta['classes'])} classes)
in the layout DD-Ranking (github.com/NUS-HPC-AI-Lab/DD-Ranking, pip install ddranking) evaluates.
{known}
images.pt       {[len(meta['order'])] + meta['image_shape']} float32, sorted by class; space: {meta['space']}
                mean {meta['mean']}, std {meta['std']}, use_zca {meta['use_zca']}
hard_labels.pt  the class of every row (its default: class-sorted, ipc per class)
labels.pt       {'the learned soft labels (logits), one row per image' if meta['soft_labels'] else '(absent: a hard-label set)'}
lr.pt           the learned lr(s): {meta['learned_lrs']}
image_folder/   the same images as 8-bit PNGs in [0,1] pixel space (image_path=...; the config's
                custom_train_trans is ToTensor + Normalize(mean, std); not for a ZCA set)
ddranking_config.json  its settings for this set (DSA, ConvNet, 1000 epochs, SGD, step at 500)

    import torch
    from ddranking.config import Config
    from ddranking.metrics import {metric}, AugmentationRobustScore
    config = Config.from_file("ddranking_config.json")   # set real_data_path first
    scores = {metric}(config).compute_metrics(
        image_tensor=torch.load("images.pt"), {labels}{lr})

metadata.json's "order" gives each row's index in the original synthetic set.
"""
