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
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from .evaluate import EvalConfig, lr_schedule
from .io import atomic_save, write_json
from .display import CLIP_STD, synthetic_display, synthetic_grid, to_uint8_hwc
from .synthetic import FORMAT, SyntheticSet

EXPORT_FORMAT = "trajdistill.export/1"


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
