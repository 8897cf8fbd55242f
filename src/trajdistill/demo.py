"""The main job on the embedded default data (scikit-learn's handwritten digits):
experts -> STM distillation at 1 image per class -> evaluation with baselines -> report.

Sized to finish in a few minutes on 2 CPU cores; every number it prints is measured.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import load_dataset
from .distill import DistillConfig, Distiller, open_buffer
from .evaluate import EvalConfig, class_means, evaluate_set, random_real
from .experts import ExpertConfig, train_experts
from .io import write_json
from .report import build_report


@dataclass
class DemoConfig:
    model: str = "ConvNetD2"      # 8x8 digits: two pooling blocks leave 2x2 features
    num_experts: int = 5
    train_epochs: int = 15
    lr_teacher: float = 0.01
    ipc: int = 1
    syn_steps: int = 10
    iterations: int = 300
    lr_img: float = 100.0
    lr_lr: float = 0.01
    num_eval: int = 5
    epoch_eval_train: int = 300
    full_epochs: int = 15
    seed: int = 0
    device: str = "cpu"
    autocast: str = "off"         # bf16: the distillation's forward passes in bfloat16


def run_demo(run_dir: str | Path = "runs/demo", cfg: DemoConfig | None = None,
             progress: bool = True) -> dict:
    cfg = cfg or DemoConfig()
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    splits = load_dataset("digits")
    say = print if progress else (lambda *a, **k: None)
    say(f"[demo] data: {len(splits.train)} train / {len(splits.test)} test digits, "
        f"{splits.num_classes} classes, {splits.image_shape}")

    say(f"[demo] 1/4 training {cfg.num_experts} experts x {cfg.train_epochs} epochs ({cfg.model})")
    ecfg = ExpertConfig(model=cfg.model, train_epochs=cfg.train_epochs, num_experts=cfg.num_experts,
                        lr_teacher=cfg.lr_teacher, seed=cfg.seed, device=cfg.device)
    buffer_dir = run_dir / "buffer"
    train_experts(splits, ecfg, buffer_dir, progress=progress)
    store = open_buffer(buffer_dir, splits)
    expert_acc = [store.summary(i)["test_accuracy"] for i in store.indices()]

    say(f"[demo] 2/4 STM distillation, {cfg.ipc} image per class, {cfg.iterations} iterations")
    dcfg = DistillConfig(method="STM", ipc=cfg.ipc, syn_steps=cfg.syn_steps,
                         iterations=cfg.iterations, lr_img=cfg.lr_img, lr_lr=cfg.lr_lr,
                         lr_teacher=[cfg.lr_teacher], eval_it=0, num_eval=cfg.num_eval,
                         epoch_eval_train=cfg.epoch_eval_train, seed=cfg.seed, device=cfg.device,
                         autocast=cfg.autocast,
                         # no evaluation during the run (eval_it=0) means no set is selected:
                         # no validation split, so every training image may initialise the set
                         val_size=0, select_on="test")
    distiller = Distiller(dcfg, splits, store, run_dir, progress=progress)
    distiller.run()
    t_distilled = time.perf_counter()

    say(f"[demo] 3/4 evaluating: {cfg.num_eval} fresh networks per set")
    ev = EvalConfig(num_eval=cfg.num_eval, epoch_eval_train=cfg.epoch_eval_train,
                    device=cfg.device, seed=cfg.seed)
    models = [cfg.model]
    syn = distiller.synthetic_set()
    syn.save(run_dir / "synthetic_best.pt")
    results = {
        f"STM distilled, {cfg.ipc} img/class": evaluate_set(syn.images, syn.targets(), splits, syn.lrs,
                                                            models, ev, cfg.syn_steps, progress),
        f"random real, {cfg.ipc} img/class": evaluate_set(*random_real(splits, cfg.ipc, cfg.seed),
                                                          splits, [0.01], models, ev, 0, progress),
        "class mean, 1 img/class": evaluate_set(*class_means(splits), splits, [0.01], models, ev, 0,
                                                progress),
        "full training set": evaluate_set(splits.train.images, splits.train.labels, splits, [0.01],
                                          models, EvalConfig(num_eval=cfg.num_eval,
                                                             epoch_eval_train=cfg.full_epochs,
                                                             device=cfg.device, seed=cfg.seed),
                                          0, progress),
    }
    table = [{"name": name, "n": cfg.num_eval, **{k: r[cfg.model][k] for k in ("mean", "std")}}
             for name, r in results.items()]
    seconds = time.perf_counter() - t_start
    summary = {"table": table, "confusion": results[table[0]["name"]][cfg.model]["confusion"],
               "expert_test_accuracy": expert_acc, "seconds": seconds,
               "distill_seconds": t_distilled - t_start, "learned_lr": syn.lrs,
               "final_stage_cap": getattr(distiller.schedule, "cap", None),
               "notes": (f"Embedded digits (8x8). Experts: {cfg.num_experts} x {cfg.train_epochs} "
                         f"epochs, mean test accuracy {100 * sum(expert_acc) / len(expert_acc):.1f} %. "
                         f"Synthetic and baseline sets trained for {cfg.epoch_eval_train} epochs, the "
                         f"full set for {cfg.full_epochs}. "
                         + ("Distillation's forward passes in bfloat16 (--autocast bf16). "
                            if cfg.autocast == "bf16" else "")
                         + f"Total wall time {seconds:.0f} s.")}
    write_json(run_dir / "results.json", {**summary, "details": results})

    say("[demo] 4/4 report")
    html = build_report(run_dir, splits=splits)
    for row in table:
        say(f"  {row['name']:<28} {100 * row['mean']:6.2f} ± {100 * row['std']:.2f} %")
    say(f"[demo] done in {seconds:.0f} s; report: {html}")
    return summary


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(run_demo()["table"], indent=2))
