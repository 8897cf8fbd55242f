"""Evaluation during a distillation run and the final comparison at its end.

During the run (every --eval_it iterations, and at the start): the current synthetic set is
evaluated on the run's evaluation models (evaluate.py), the record goes to evals.jsonl
(records.py), and the set becomes the best one when the one rule (records.replaces) says it
takes the place of the best so far. At the end: the chosen set against its start, the class mean
and random real images, each at its best lr on validation (verdict.py), written to final.json.

Plain functions over explicit arguments (the resolved config, the data, the synthetic set,
the run directory, the ranks): the Distiller calls them and holds no evaluation logic of its
own. Every rank evaluates its share of the networks; rank 0 alone writes and speaks.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import progress as progress_out
from . import verdict
from . import pacing
from .data.base import DatasetSplits
from .distill_config import DistillConfig
from .distributed import SINGLE, Comm
from .evaluate import EvalConfig, evaluate_set
from .experts import TrajectoryStore
from .records import eval_record, replaces, selection
from .run_dir import Log, RunDirectory
from .synthetic import SyntheticSet
from .tracking import Tracker

def eval_config(cfg: DistillConfig) -> EvalConfig:
    """The evaluation protocol of a distillation run, from its resolved config."""
    return EvalConfig(num_eval=cfg.num_eval, epoch_eval_train=cfg.epoch_eval_train,
                      batch_train=cfg.batch_train,
                      dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy, device=cfg.device,
                      seed=cfg.seed, batched=cfg.eval_batched, texture=cfg.texture_spec)


def validation_set(splits: DatasetSplits, val_idx: torch.Tensor):
    """The validation images and labels (validation.py's split of the training set), or
    None when the run has none."""
    return ((splits.train.images[val_idx], splits.train.labels[val_idx])
            if len(val_idx) else None)


def evaluate(cfg: DistillConfig, splits: DatasetSplits, syn: SyntheticSet, val,
             comm: Comm = SINGLE, progress: bool = False) -> dict:
    """The set on every evaluation model: {model: evaluate_set's figures}."""
    return evaluate_set(syn.images, syn.targets(), splits, syn.lrs, cfg.eval_models,
                        eval_config(cfg), syn_steps=cfg.syn_steps, progress=progress, val=val,
                        comm=comm)


def log_evaluation(evals: Log, tracker: Tracker, cfg: DistillConfig, splits: DatasetSplits,
                   syn: SyntheticSet, iteration: int, result: dict, comm: Comm = SINGLE) -> dict:
    """Write one evaluation: its evals.jsonl record (flushed: a killed run keeps it), the
    trackers' curves and images, one line on stderr. Returns the record."""
    record = eval_record(iteration, list(syn.lrs), cfg.select_on, result)
    evals.write(record)
    evals.flush()
    tracker.log_eval(result, iteration)
    if comm.is_main:
        tracker.log_images(syn, iteration, splits.classes)
    _note(comm, f"it {iteration}: " + ", ".join(
        f"{m} " + (f"val {100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f} %, "
                   if "val_mean" in r else "") +
        f"test {100 * r['mean']:.2f} ± {100 * r['std']:.2f} %" for m, r in result.items()))
    return record


def improved_best(best: dict, record: dict, cfg: DistillConfig) -> dict | None:
    """The run's new best when this evaluation takes its place by the one rule
    (records.replaces: a higher score, or against the run's start, its first evaluation, no
    more than one standard error below it), else None. The state keeps the best's per-network
    selection accuracies, so a resumed run decides as an uninterrupted one would (a checkpoint
    from before they were kept has none: the strict rule)."""
    mine = selection(record)
    if best.get("iteration") is not None:
        held = {"it": best["iteration"], "score": best.get("selected", best["accuracy"]),
                "accuracies": best.get("selection_accuracies", [])}
        if not replaces(mine, held, best_is_start=best.get("is_start", False)):
            return None
    main = record[cfg.eval_models[0]]
    return {"selected": mine["score"], "selected_on": cfg.select_on,
            "accuracy": main["mean"], "std": main["std"],
            "val_accuracy": main.get("val_mean"), "val_std": main.get("val_std"),
            "iteration": record["it"], "selection_accuracies": mine["accuracies"],
            "is_start": best.get("iteration") is None}


def final_comparison(cfg: DistillConfig, splits: DatasetSplits, current: SyntheticSet,
                     initial: torch.Tensor | None, run_dir: RunDirectory, has_best: bool, val,
                     expert_accuracy: Callable[[], float | None], comm: Comm = SINGLE,
                     progress: bool = False, val_idx: torch.Tensor | None = None) -> dict | None:
    """The chosen set (synthetic_best.pt when the run chose one, else `current`) against its
    start (`initial`; None for a loaded set), the class mean and random real images, each at
    its lr chosen on validation (verdict.py; random real images are drawn outside the
    validation split, `val_idx`); written to final.json. None when the run
    evaluates nothing (--eval_it 0), has no validation split, or --final_eval off (and for
    texture sets: canvases are not images of the baselines' kind), and on ranks other than 0."""
    if cfg.final_eval == "off" or not cfg.eval_it or val is None or cfg.texture:
        return None
    chosen = (run_dir.best() if comm.is_main and has_best else None) or current
    chosen = comm.broadcast_object(chosen) if comm.active else chosen
    sets = verdict.contenders(chosen, initial, splits, cfg.ipc, cfg.pix_init, cfg.seed,
                              cfg.eval_lrs, draws=cfg.num_eval, exclude=val_idx)
    _note(comm, f"final comparison on validation: {', '.join(s.name for s in sets)}, each at "
                f"the best of {len(cfg.eval_lrs)} lrs (--final_eval off skips it)")
    model = cfg.eval_models[0]
    results = verdict.compare(sets, splits, model, eval_config(cfg), val, progress=progress,
                              comm=comm)
    if not comm.is_main:
        return None
    record = run_dir.metrics()
    # how far the run took its images (the last set: the chosen one may be the start)
    drift = (pacing.drift(current.images.cpu().float(), initial)
             if initial is not None else None)
    lr_img = pacing.raised_lr(cfg.lr_img, record)  # where pacing raised it, the raised one
    ok, message = verdict.judge(results, lambda base: verdict.diagnose(
        [r["loss"] for r in record if "loss" in r], drift,
        sum(1 for r in record if r.get("diverged")), expert_accuracy(), base, lr_img))
    out = {"model": model, "chosen_iteration": chosen.meta.get("iteration"),
           "eval_lrs": list(cfg.eval_lrs), "sets": results, "beats_all": ok,
           "message": message, "drift": drift}
    run_dir.write_final(out)
    return out


def expert_accuracy(store: TrajectoryStore, experts: list[int]) -> float | None:
    """The experts' mean test accuracy from their summaries (a weak expert is one likely
    cause of a set that beats nothing); None when no summary has one."""
    accs = [store.summary(i).get("test_accuracy") for i in experts]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else None


def _note(comm: Comm, text: str) -> None:
    """One line on stderr, from rank 0 only."""
    if comm.is_main:
        progress_out.note(text)
