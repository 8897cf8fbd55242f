"""What a person looks at: image grids, curves, and a short report of a run directory.

Everything reads the run directory's files (metrics.jsonl, evals.jsonl, synthetic_*.pt,
results.json), so `trajdistill report RUN_DIR` can rebuild it at any time.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .synthetic import SyntheticSet  # noqa: E402


# ----------------------------------------------------------------------------- images

def display_images(pixels: torch.Tensor, clip_std: float = 2.5) -> torch.Tensor:
    """Pixels (N, C, H, W) -> [0,1] for showing: clip at mean +- clip_std std, scale each image."""
    x = pixels.detach().float()
    m, s = x.mean(), x.std()
    x = x.clamp(m - clip_std * s, m + clip_std * s)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def grid_image(images01: torch.Tensor, rows: int, cols: int, min_cell: int = 64,
               pad: int = 2) -> Image.Image:
    """Tile [0,1] images (rows*cols, C, H, W) into one PIL image, upscaled (nearest) for small ones."""
    n, c, h, w = images01.shape
    scale = max(1, min_cell // max(h, w))
    H, W = h * scale, w * scale
    canvas = np.ones((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), dtype=np.uint8) * 255
    for k in range(min(n, rows * cols)):
        img = (images01[k].clamp(0, 1) * 255).round().byte()
        img = img.repeat(3, 1, 1) if c == 1 else img[:3]
        arr = img.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
        r, q = divmod(k, cols)
        y0, x0 = pad + r * (H + pad), pad + q * (W + pad)
        canvas[y0:y0 + H, x0:x0 + W] = arr
    return Image.fromarray(canvas)


def save_synthetic_grid(syn: SyntheticSet, classes: list[str], path: str | Path) -> Path:
    """One row per class, one column per image of that class, class names on the left."""
    num_classes = len(classes)
    ipc = len(syn.labels) // num_classes
    order = torch.argsort(syn.labels, stable=True)
    shown = display_images(syn.pixels()[order])
    if ipc == 1:  # a single row reads better than a column
        grid = grid_image(shown, 1, num_classes)
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * num_classes), 2.0))
        ax.imshow(grid)
        cell = grid.size[0] / num_classes
        ax.set_xticks([cell * (i + 0.5) for i in range(num_classes)], classes, rotation=30,
                      ha="right", fontsize=8)
        ax.set_yticks([])
    else:
        grid = grid_image(shown, num_classes, ipc)
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * ipc + 1.5), max(3, 0.8 * num_classes)))
        ax.imshow(grid)
        cell = grid.size[1] / num_classes
        ax.set_yticks([cell * (i + 0.5) for i in range(num_classes)], classes, fontsize=8)
        ax.set_xticks([])
    ax.set_title(f"synthetic images ({ipc} per class)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- curves

def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it is good
    return out


def plot_matching(metrics: list[dict], path: str | Path) -> Path:
    """Matching loss of every start epoch on one chart; held-out loss of every stage on one."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    by_epoch = defaultdict(list)
    for r in metrics:
        by_epoch[r["start_epoch"]].append((r["it"], r["loss"]))
    for e in sorted(by_epoch):
        its, losses = zip(*by_epoch[e])
        a.plot(its, losses, ".", ms=3, label=f"start epoch {e}")
    a.set(title="matching loss by start epoch", xlabel="iteration", ylabel="loss", yscale="log")
    if len(by_epoch) <= 12:
        a.legend(fontsize=7)
    by_stage = defaultdict(list)
    for r in metrics:
        if "heldout" in r:
            by_stage[r["cap"] if "cap" in r else 0].append((r["it"], r["heldout"]))
    for cap in sorted(by_stage):
        its, losses = zip(*by_stage[cap])
        b.plot(its, losses, lw=1, label=f"epoch {cap}")
    b.set(title="held-out next-epoch loss (one line per stage)", xlabel="iteration",
          yscale="log")
    if by_stage and len(by_stage) <= 12:
        b.legend(fontsize=7)
    its = [r["it"] for r in metrics]
    if any("cap" in r for r in metrics):
        c.step(its, [r.get("cap", 0) for r in metrics], where="post", label="stage cap c")
        for r in metrics:
            if r.get("level_up"):
                c.axvline(r["it"], color="g", lw=0.5, alpha=0.5)
            if r.get("fine_tuning_started"):
                c.axvline(r["it"], color="r", lw=1)
        c.set(title="stage timeline (green: level-up, red: fine-tuning)", xlabel="iteration",
              ylabel="cap")
    else:
        c.plot(its, [r["start_epoch"] for r in metrics], ".", ms=2)
        c.set(title="start epoch drawn (MTT)", xlabel="iteration")
    return _save(fig, path)


def plot_lrs(metrics: list[dict], path: str | Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    its = [r["it"] for r in metrics]
    width = max((len(r["lrs"]) for r in metrics), default=0)
    for k in range(width):
        pts = [(r["it"], r["lrs"][k]) for r in metrics if len(r["lrs"]) > k]
        a.plot(*zip(*pts), label=f"lr {k}" if width > 1 else "learned lr")
    a.set(title="learned student lr", xlabel="iteration", yscale="log")
    a.legend(fontsize=7)
    if any("lr_img" in r for r in metrics):
        b.plot(its, [r.get("lr_img", np.nan) for r in metrics])
    b.set(title="image learning rate", xlabel="iteration")
    return _save(fig, path)


def plot_accuracy(evals: list[dict], path: str | Path) -> Path | None:
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    models = [k for k in evals[0] if isinstance(evals[0][k], dict)]
    for m in models:
        its = [e["it"] for e in evals]
        mean = np.array([100 * e[m]["mean"] for e in evals])
        std = np.array([100 * e[m]["std"] for e in evals])
        ax.errorbar(its, mean, yerr=std, marker="o", capsize=3, label=m)
    ax.set(title="test accuracy of networks trained on the synthetic set", xlabel="iteration",
           ylabel="accuracy (%)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path,
                   title: str) -> Path:
    cm = np.array(confusion, dtype=float)
    cm = cm / cm.sum(1, keepdims=True).clip(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report

def build_report(run_dir: str | Path, classes: list[str] | None = None) -> Path:
    """Write figures/ and report.html (+ report.md) for a run directory; returns the HTML path."""
    run = Path(run_dir)
    figs = run / "figures"
    metrics = read_jsonl(run / "metrics.jsonl")
    evals = read_jsonl(run / "evals.jsonl")
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    syn_path = run / "synthetic_best.pt" if (run / "synthetic_best.pt").exists() else run / "synthetic_last.pt"
    syn = SyntheticSet.load(syn_path) if syn_path.exists() else None
    classes = classes or (syn.data.get("classes") if syn else None) or []
    sections: list[tuple[str, str | None, str]] = []  # (title, image file, caption)
    if syn is not None:
        save_synthetic_grid(syn, classes, figs / "synthetic.png")
        sections.append(("Synthetic images", "figures/synthetic.png",
                         f"{syn_path.name}; learned lr(s): {', '.join(f'{v:.4g}' for v in syn.lrs)}"))
    if metrics:
        plot_matching(metrics, figs / "matching.png")
        sections.append(("Matching loss and stages", "figures/matching.png",
                         "left: loss of every start epoch; middle: STM's held-out next-epoch loss, "
                         "one line per stage; right: stage cap over time"))
        plot_lrs(metrics, figs / "lrs.png")
        sections.append(("Learning rates", "figures/lrs.png", ""))
    if plot_accuracy(evals, figs / "accuracy.png"):
        sections.append(("Accuracy over iterations", "figures/accuracy.png", ""))
    table = results.get("table", [])
    cm = results.get("confusion")
    if cm and classes:
        plot_confusion(cm, classes, figs / "confusion.png", "distilled set: confusion (row-normalised)")
        sections.append(("Confusion matrix", "figures/confusion.png", ""))
    html_path = run / "report.html"
    html_path.write_text(_html(run.name, table, sections, results))
    (run / "report.md").write_text(_markdown(run.name, table, sections))
    return html_path


def _table_rows(table: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["name"], f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}",
             str(r.get("n", ""))) for r in table]


def _html(title: str, table: list[dict], sections, results: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>"
                   for a, b, c in _table_rows(table))
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}"
             "img{max-width:100%}</style>",
             f"<h1>Distillation report: {html.escape(title)}</h1>"]
    if rows:
        parts.append("<h2>Test accuracy (%) — mean ± std over evaluation networks</h2>"
                     f"<table><tr><th>set</th><th>accuracy</th><th>networks</th></tr>{rows}</table>")
    for key in ("notes",):
        if results.get(key):
            parts.append(f"<p>{html.escape(str(results[key]))}</p>")
    for name, img, caption in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if img:
            parts.append(f"<img src='{img}' alt='{html.escape(name)}'>")
        if caption:
            parts.append(f"<p>{html.escape(caption)}</p>")
    return "\n".join(parts) + "\n"


def _markdown(title: str, table: list[dict], sections) -> str:
    lines = [f"# Distillation report: {title}", ""]
    if table:
        lines += ["| set | test accuracy (%) | networks |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in _table_rows(table)]
        lines.append("")
    for name, img, caption in sections:
        lines += [f"## {name}", ""]
        if img:
            lines += [f"![{name}]({img})", ""]
        if caption:
            lines += [caption, ""]
    return "\n".join(lines)
