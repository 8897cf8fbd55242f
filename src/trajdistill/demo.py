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
from .evaluate import EvalConfig, evaluate_set
from .experts import ExpertConfig, train_experts
from .io import write_json
from .report import build_report


@dataclass
class DemoConfig:
    """The budget only: every distillation setting is the tool's default, derived from the
    data and the buffer (defaults.py), as a new user's run would be."""
    num_experts: int = 5
    train_epochs: int = 15
    ipc: int = 1
    iterations: int = 300
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

    ecfg = ExpertConfig(train_epochs=cfg.train_epochs, num_experts=cfg.num_experts, seed=cfg.seed,
                        device=cfg.device).resolve(splits)
    say(f"[demo] 1/4 training {cfg.num_experts} experts x {cfg.train_epochs} epochs ({ecfg.model}, "
        f"batch {ecfg.batch_train})")
    buffer_dir = run_dir / "buffer"
    train_experts(splits, ecfg, buffer_dir, progress=progress)
    store = open_buffer(buffer_dir, splits)
    expert_acc = [store.summary(i)["test_accuracy"] for i in store.indices()]

    say(f"[demo] 2/4 STM distillation, {cfg.ipc} image per class, {cfg.iterations} iterations, "
        "default settings; the start and the end evaluated, then the chosen set compared with "
        f"the class mean and random real images ({cfg.num_eval} fresh networks per set and lr)")
    dcfg = DistillConfig(ipc=cfg.ipc, iterations=cfg.iterations, eval_it=cfg.iterations,
                         num_eval=cfg.num_eval, epoch_eval_train=cfg.epoch_eval_train,
                         seed=cfg.seed, device=cfg.device, autocast=cfg.autocast)
    distiller = Distiller(dcfg, splits, store, run_dir, progress=progress)
    best = distiller.run()
    t_distilled = time.perf_counter()
    say(f"[demo] 3/4 evaluating the full training set ({cfg.num_eval} fresh networks)")
    final = json.loads((run_dir / "final.json").read_text())
    sets = final["sets"]
    model = final["model"]
    full = evaluate_set(splits.train.images, splits.train.labels, splits, [0.01], [model],
                        EvalConfig(num_eval=cfg.num_eval, epoch_eval_train=cfg.full_epochs,
                                   batch_train=ecfg.batch_train,  # the experts' (derived) batch
                                   device=cfg.device, seed=cfg.seed), 0, progress)[model]
    table = [{"name": _row_name(k, cfg.ipc, r.get("draws")),
              "n": cfg.num_eval, "mean": r["mean"], "std": r["std"], "val_mean": r["val_mean"],
              "val_std": r["val_std"], "lr": r["lr"]} for k, r in sets.items()]
    table.append({"name": f"full training set ({len(splits.train)} images)", "n": cfg.num_eval,
                  "mean": full["mean"], "std": full["std"], "lr": 0.01})
    seconds = time.perf_counter() - t_start
    learned = sets["distilled"].get("learned")
    summary = {"table": table, "expert_test_accuracy": expert_acc, "seconds": seconds,
               "distill_seconds": t_distilled - t_start, "learned_lr": distiller.lrs(),
               "final_stage_cap": getattr(distiller.schedule, "cap", None),
               "verdict": final["message"], "beats_all": final["beats_all"],
               "notes": (f"Embedded digits (8x8). Experts: {cfg.num_experts} x {cfg.train_epochs} "
                         f"epochs of {ecfg.model}, mean test accuracy "
                         f"{100 * sum(expert_acc) / len(expert_acc):.1f} %. Every set trained "
                         f"{cfg.epoch_eval_train} epochs at each lr of {final['eval_lrs']} (the "
                         "distilled set also at its learned lr) and reported at the lr chosen on "
                         "the validation split"
                         + (f"; at its learned lr {learned['lr']:.3g} the distilled set scores "
                            f"{100 * learned['mean']:.2f} % (the reference's protocol)"
                            if learned else "")
                         + f". The full set: {cfg.full_epochs} epochs at lr 0.01, batch "
                         f"{ecfg.batch_train} (the experts' settings). "
                         + ("Distillation's forward passes in bfloat16 (--autocast bf16). "
                            if cfg.autocast == "bf16" else "")
                         + f"Total wall time {seconds:.0f} s.")}
    write_json(run_dir / "results.json", {**summary, "best": best, "full": full})

    say("[demo] 4/4 report")
    html = build_report(run_dir, splits=splits)
    for row in table:
        say(f"  {row['name']:<34} {100 * row['mean']:6.2f} ± {100 * row['std']:.2f} % "
            f"(lr {row['lr']:.3g})")
    say(f"[demo] {final['message']}")
    say(f"[demo] done in {seconds:.0f} s; report: {html}")
    return summary


def _row_name(name: str, ipc: int, draws: int | None = None) -> str:
    """final.json's set names as the demo's table has them (random real: over `draws`
    draws, one per network, each at its own lr)."""
    if name == "distilled":
        return f"STM distilled, {ipc} img/class"
    if name == "class mean":
        return "class mean, 1 img/class"
    if name.startswith("random real"):
        return f"random real, {ipc} img/class" + (
            f", {draws} draw{'s' if draws != 1 else ''}" if draws else "")
    return name


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(run_demo()["table"], indent=2))
