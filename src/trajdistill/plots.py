"""The curves of a run: matching loss by start epoch, STM's stage test, the lrs, accuracy,
the confusion matrix and per-class accuracy; and the stage timeline they annotate. Each reads
records of metrics.jsonl / evals.jsonl (records.py) and writes one PNG."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .display import plt, save_figure
from .meta_batch import logged_matches
from .pacing import DRIFT_LOW, horizon, pace

MAX_LABELLED_CLASSES = 30  # beyond this many classes, figures drop per-class labels


def stage_events(metrics: list[dict]) -> list[dict]:
    """The stage timeline: level-ups (and why), stage resets at the top, fine-tuning, stop."""
    events = []
    for r in metrics:
        if r.get("reset") or r.get("level_up"):
            why = ("held-out loss falling (r < threshold)" if r.get("passed")
                   else "held-out loss rising (r > rise threshold)")
            events.append({"it": r["it"], "event": "level-up" if r.get("level_up") else
                           "stage reset (cap at max_start_epoch)", "cap": r.get("cap"),
                           "n": r.get("n"), "r": r.get("r"), "threshold": r.get("threshold"),
                           "rise_threshold": r.get("rise_threshold"), "why": why})
        if r.get("fine_tuning_started"):
            events.append({"it": r["it"], "event": "fine-tuning starts", "cap": r.get("cap"),
                           "n": r.get("n"), "r": r.get("r"), "threshold": r.get("threshold"),
                           "rise_threshold": r.get("rise_threshold"),
                           "why": "no significant change within T_max held-out measurements"})
    if metrics:
        last = metrics[-1]
        events.append({"it": last["it"], "event": "stop", "cap": last.get("cap"),
                       "why": "early stop: image lr fell below its floor" if last.get("finished")
                       else "iteration limit (or the run is still going)"})
    return events


def plot_matching(metrics: list[dict], path: str | Path, min_start_epoch: int = 0,
                  expert_epochs: int = 1) -> Path:
    """Matching loss of every start epoch on one chart; held-out loss of every stage on one
    (stage cap c holds out the epochs min_start_epoch + c -> + expert_epochs, schedule.py);
    the stage timeline."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    by_epoch = defaultdict(list)
    for r in metrics:
        for epoch, loss in logged_matches(r):  # one point per trajectory of the meta-batch
            by_epoch[epoch].append((r["it"], loss))
    cmap = plt.get_cmap("viridis")
    n_ep = max(len(by_epoch), 1)
    for i, e in enumerate(sorted(by_epoch)):
        its, losses = zip(*by_epoch[e])
        a.plot(its, losses, ".-", ms=3, lw=0.6, color=cmap(i / max(n_ep - 1, 1)),
               label=f"start epoch {e}")
    a.set(title="matching loss, one line per start epoch", xlabel="iteration", ylabel="loss",
          yscale="log")
    if len(by_epoch) <= 12:
        a.legend(fontsize=7)
    by_stage = defaultdict(list)
    for r in metrics:
        if "heldout" in r:
            by_stage[r.get("cap", 0)].append((r["it"], r["heldout"]))
    for i, cap in enumerate(sorted(by_stage)):
        its, losses = zip(*by_stage[cap])
        b.plot(its, losses, lw=1, color=cmap(i / max(len(by_stage) - 1, 1)),
               label=f"stage cap {cap} (epoch {min_start_epoch + cap}->"
                     f"{min_start_epoch + cap + expert_epochs})")
    b.set(title="held-out next-epoch loss, one line per stage", xlabel="iteration", yscale="log")
    if by_stage and len(by_stage) <= 12:
        b.legend(fontsize=7)
    its = [r["it"] for r in metrics]
    if any("cap" in r for r in metrics):
        c.step(its, [r.get("cap", 0) for r in metrics], where="post", color="k", label="stage cap c")
        for ev in stage_events(metrics):
            color = {"level-up": "g", "fine-tuning starts": "r", "stop": "k"}.get(ev["event"], "orange")
            c.axvline(ev["it"], color=color, lw=0.8 if ev["event"] == "level-up" else 1.5,
                      alpha=0.6, ls="--" if ev["event"] == "stop" else "-")
        c.set(title="stage timeline", xlabel="iteration", ylabel="stage cap c")
        c.text(0.01, 0.98, "green: level-up, red: fine-tuning,\nblack dashed: stop", fontsize=7,
               transform=c.transAxes, va="top")
    else:
        points = [(r["it"], e) for r in metrics for e, _ in logged_matches(r)]
        c.plot([p[0] for p in points], [p[1] for p in points], ".", ms=2)
        c.set(title="start epoch drawn (MTT)", xlabel="iteration")
    return save_figure(fig, path)


def plot_stage_test(metrics: list[dict], path: str | Path) -> Path | None:
    """STM's test: r against its thresholds at every test, and the image lr (fine-tuning)."""
    tests = [r for r in metrics if r.get("r") is not None]
    if not tests:
        return None
    fig, a = plt.subplots(figsize=(8, 3.5))
    its = [r["it"] for r in tests]
    a.plot(its, [r["r"] for r in tests], "o-", ms=3, label="r (held-out loss vs time)")
    a.plot(its, [r["threshold"] for r in tests], "g--", label="pass below (-sigma s)")
    a.plot(its, [r["rise_threshold"] for r in tests], "r--", label="over-fit above (3 s)")
    for r in tests:
        if r.get("level_up") or r.get("reset"):
            a.axvline(r["it"], color="g", lw=0.5, alpha=0.5)
    lo = max(-3.0, min(-1.0, *(r["threshold"] for r in tests)))
    a.set(title="stage test: Pearson r of the held-out losses with time", xlabel="iteration",
          ylim=(lo - 0.05, 1.05))
    a.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)


def plot_lrs(metrics: list[dict], path: str | Path, planned: int | None = None) -> Path:
    """The learned student lr(s), the image lr, and how far the images moved (drift) against
    the pace a derived image lr is held to (pacing.py; `planned`: the run's iterations)."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.5))
    its = [r["it"] for r in metrics]
    width = max((len(r["lrs"]) for r in metrics), default=0)
    for k in range(width):
        pts = [(r["it"], r["lrs"][k]) for r in metrics if len(r["lrs"]) > k]
        a.plot(*zip(*pts), label=f"lr {k}" if width > 1 else "learned lr")
    a.set(title="learned student lr", xlabel="iteration", yscale="log")
    if width:
        a.legend(fontsize=7)
    if any("lr_img" in r for r in metrics):
        b.plot(its, [r.get("lr_img", np.nan) for r in metrics])
    b.set(title="image learning rate", xlabel="iteration")
    drifts = [(r["it"], r["drift"]) for r in metrics if "drift" in r]
    if drifts:
        c.plot(*zip(*drifts), label="||X - X0|| / ||X0||")
        if planned:
            done = np.arange(1, max(its) + 2)
            c.plot(done - 1, [pace(int(t), planned) for t in done], "--", color="grey",
                   label=f"pace ({DRIFT_LOW} by it {horizon(planned)})")
        c.legend(fontsize=7)
    c.set(title="image drift from the start", xlabel="iteration")
    return save_figure(fig, path)


def plot_accuracy(evals: list[dict], path: str | Path) -> Path | None:
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    models = [k for k in evals[0] if isinstance(evals[0][k], dict)]
    for m in models:
        its = [e["it"] for e in evals if m in e]
        mean = np.array([100 * e[m]["mean"] for e in evals if m in e])
        std = np.array([100 * e[m]["std"] for e in evals if m in e])
        ax.errorbar(its, mean, yerr=std, marker="o", capsize=3, label=m)
    ax.set(title="test accuracy of networks trained on the synthetic set", xlabel="iteration",
           ylabel="accuracy (%)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path,
                   title: str) -> Path:
    cm = np.array(confusion, dtype=float)
    cm = cm / cm.sum(1, keepdims=True).clip(min=1)
    n = len(classes)
    big = n > MAX_LABELLED_CLASSES
    fig, ax = plt.subplots(figsize=(10, 9) if big else (1.6 + 0.55 * n, 1.2 + 0.5 * n))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if not big:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if cm[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_per_class(rows: list[tuple[str, list[float]]], classes: list[str], path: str | Path) -> Path:
    """Grouped bars: per-class test accuracy of each set (distilled first, then baselines)."""
    n, m = len(classes), len(rows)
    big = n > MAX_LABELLED_CLASSES
    fig, ax = plt.subplots(figsize=(14, 3.8) if big else (max(6, 0.35 * n * max(m, 1) + 2), 3.8))
    width = 0.8 / max(m, 1)
    x = np.arange(n)
    for i, (name, acc) in enumerate(rows):
        ax.bar(x + (i - (m - 1) / 2) * width, 100 * np.asarray(acc, dtype=float), width, label=name)
    ax.axhline(100 / max(n, 1), color="grey", lw=0.8, ls=":", label="chance")
    if not big:
        ax.set_xticks(x, classes, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="per-class test accuracy", ylim=(0, 100),
           xlabel="class index" if big else None)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)
