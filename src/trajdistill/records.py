"""The records a run logs, defined next to their writer (distill.py) and read by the report,
tracking and the verdict; and the one rule that chooses the best set.

metrics.jsonl, one record per iteration:
    it, loss, lrs, drift, seconds          always (drift: ||X - X0|| / ||X0|| after the step)
    expert, start_epoch                    one trajectory per iteration, or
    slots: [{expert, start_epoch, loss}]   a meta-batch (and heldouts: each slot's held-out loss)
    loss_epoch_<e>                         the mean matching loss of the slots that started at e
    heldout, heldout_seconds, cap, n, r, threshold, rise_threshold, passed, level_up, reset,
    fine_tuning, fine_tuning_started, lr_img, finished     STM's stage machine (schedule.py)
    diverged, refused, ...                 an update the guard refused (guard.py)
evals.jsonl, one record per evaluation:
    it, lrs, selected_on ("val" or "test"), and per evaluation model
    {mean, std, accuracies[, val_mean, val_std, per_class, confusion]}
final.json: the verdict (verdict.py). config.json: the resolved config (distill_config.py).

The best set, by one rule (`replaces`, in the order of the evaluations): a later evaluation
takes the place of the best so far when its FIRST evaluation model scores higher on the
selection accuracy (validation when the run chose on validation, else test; the earlier one on a
tie); it takes the place of the first evaluation (the run's start) already when it scores no
more than the standard error of the difference below it (the verdict's margin over their
networks): two evaluations of 5 networks differ by that much by chance, and a start kept on
such a lead threw away sets that were better on test (docs/defaults.md). The Distiller saves
synthetic_best.pt by this rule and the report reads it back by the same.

The report indexes these fields directly: a log of the right syntax but the wrong shape
(hand-edited, or from another program) is named with its line, not met as a KeyError.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .io import FileFormatError
from .meta_batch import Combined, Slot


def slot_fields(slots: list[Slot], matched: Combined) -> dict:
    """What a metrics record says of the meta-batch: one slot's expert and start epoch, or
    every slot's; loss_epoch_<e> is the mean loss of the slots that started at e."""
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


def eval_record(it: int, lrs: list[float], selected_on: str, result: dict) -> dict:
    """An evals.jsonl record: {model: evaluate_set's figures} at iteration `it`."""
    return {"it": it, "lrs": lrs, "selected_on": selected_on, **result}


def models(e: dict) -> list[str]:
    """The evaluation models of an evals record, in the order they were evaluated."""
    return [k for k, v in e.items() if isinstance(v, dict)]


def selection_key(e: dict, m: str) -> str:
    """The accuracy that chooses the best set: validation (when the run chose on it) or test."""
    return "val_mean" if e.get("selected_on") == "val" and "val_mean" in e[m] else "mean"


def selection(e: dict) -> dict:
    """What the rule needs of an evaluation: its iteration, its score (the first model's
    selection accuracy) and the per-network accuracies behind the score."""
    m = models(e)[0]
    key = selection_key(e, m)
    per_network = e[m].get("val_accuracies" if key == "val_mean" else "accuracies") or []
    return {"it": e["it"], "score": e[m][key], "accuracies": list(per_network)}


def standard_error(*samples: list[float]) -> float:
    """The standard error of a difference of means: sqrt(sum of s^2 / n over the samples), s
    the sample standard deviation (a sample of fewer than 2 adds nothing). The verdict's margin
    and the best-set rule both use it."""
    return math.sqrt(sum(statistics.variance(x) / len(x) for x in samples if len(x) > 1))


def replaces(mine: dict, best: dict, best_is_start: bool) -> bool:
    """Whether an evaluation (`selection`) becomes the best set in place of `best`: by a higher
    score; in place of the run's start already when it is no more than the standard error of
    the difference below it."""
    if best_is_start:
        return (best["score"] - mine["score"]
                <= standard_error(best["accuracies"], mine["accuracies"]))
    return mine["score"] > best["score"]


def chosen(evals: list[dict]) -> dict | None:
    """The evaluation that chose synthetic_best.pt, by the rule above, in the order the run
    met them (the first one scored is the run's start)."""
    scored = [e for e in evals if models(e)]
    best = scored[0] if scored else None
    for e in scored[1:]:
        if replaces(selection(e), selection(best), best_is_start=best is scored[0]):
            best = e
    return best


def selection_note(evals: list[dict]) -> str:
    """One sentence: which accuracy chose the best set."""
    if not evals:
        return ""
    if evals[-1].get("selected_on") == "val":
        return ("synthetic_best.pt was chosen on validation accuracy of the first evaluation "
                "model (held-out training images the evaluation networks never train on); test "
                "accuracy did not take part.")
    return ("synthetic_best.pt was chosen on test accuracy of the first evaluation model "
            "(optimistic: the test set took part).")


# ----------------------------------------------------------------------------- checks

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FIELD_KINDS = {"an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "a number": _is_number,
                "a list of numbers": lambda v: isinstance(v, list) and all(map(_is_number, v)),
                "a list": lambda v: isinstance(v, list),
                "an object": lambda v: isinstance(v, dict),
                "a string": lambda v: isinstance(v, str)}


def require(record: dict, where: str, fields: dict[str, str], optional: bool = False) -> None:
    for key, kind in fields.items():
        if optional and key not in record:
            continue
        if not _FIELD_KINDS[kind](record.get(key)):
            raise FileFormatError(f"{where}: {key!r} should be {kind}, got {record.get(key)!r}")


def checked_metrics(metrics: list[dict], path: Path) -> list[dict]:
    for n, r in enumerate(metrics, 1):
        require(r, f"{path}, record {n}", {"it": "an integer", "loss": "a number",
                                            "lrs": "a list of numbers"})
        # one trajectory per iteration: its start epoch; a meta-batch: every slot's
        slots = r["slots"] if "slots" in r else [r]
        if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
            raise FileFormatError(f"{path}, record {n}: 'slots' should be a list of objects, "
                                  f"got {r.get('slots')!r}")
        for s in slots:
            require(s, f"{path}, record {n}", {"start_epoch": "an integer", "loss": "a number"})
        if r.get("r") is not None:  # a stage test: plotted with its thresholds
            require(r, f"{path}, record {n}", {"r": "a number", "threshold": "a number",
                                                "rise_threshold": "a number"})
    return metrics


_EVAL_FIELDS = {"mean": "a number", "std": "a number", "accuracies": "a list of numbers"}
_EVAL_OPTIONAL = {"val_mean": "a number", "val_std": "a number", "per_class": "a list of numbers",
                  "confusion": "a list"}


def checked_evals(evals: list[dict], path: Path) -> list[dict]:
    for n, e in enumerate(evals, 1):
        require(e, f"{path}, record {n}", {"it": "an integer"})
        for model, res in e.items():
            if isinstance(res, dict):
                require(res, f"{path}, record {n}, {model}", _EVAL_FIELDS)
                require(res, f"{path}, record {n}, {model}", _EVAL_OPTIONAL, optional=True)
    return evals


def checked_results(results: dict, path: Path) -> dict:
    require(results, str(path), {"table": "a list", "confusion": "a list", "details": "an object"},
             optional=True)
    for n, row in enumerate(results.get("table") or [], 1):
        if not isinstance(row, dict):
            raise FileFormatError(f"{path}: 'table' row {n} should be an object, got {row!r}")
        require(row, f"{path}, 'table' row {n}", {"name": "a string", "mean": "a number",
                                                  "std": "a number"})
        require(row, f"{path}, 'table' row {n}", {"val_mean": "a number", "val_std": "a number"},
                 optional=True)
    return results


def checked_final(final: dict, path: Path) -> dict:
    """final.json (verdict.py): the message and every set's figures the report shows."""
    require(final, str(path), {"message": "a string", "sets": "an object"})
    for name, r in final["sets"].items():
        if not isinstance(r, dict):
            raise FileFormatError(f"{path}: set {name!r} should be an object, got {r!r}")
        require(r, f"{path}, set {name!r}", {"lr": "a number", "val_mean": "a number",
                                              "mean": "a number", "std": "a number"})
        require(r, f"{path}, set {name!r}", {"val_std": "a number", "learned": "an object"},
                 optional=True)
        if "learned" in r:
            require(r["learned"], f"{path}, set {name!r}, 'learned'", {
                "lr": "a number", "val_mean": "a number", "mean": "a number", "std": "a number"})
    return final


def checked_derived(derived, path: Path) -> dict:
    """config.json's 'derived': {setting: {value, from}} (defaults.py), or nothing."""
    if derived is None:
        return {}
    if not isinstance(derived, dict) or not all(isinstance(d, dict) for d in derived.values()):
        raise FileFormatError(f"{path}: 'derived' should map settings to objects with 'value' "
                              f"and 'from', got {derived!r}")
    return derived
