"""What a person looks at: image grids, curves, and a self-contained report of a run directory.

Everything reads the run directory's files (config.json, metrics.jsonl, evals.jsonl,
synthetic_*.pt, results.json), so `trajdistill report RUN_DIR` can rebuild it at any time.
The HTML embeds its figures (base64 PNG), so the single file can be mailed or attached;
the PNGs stay in RUN_DIR/figures/ as well. Given the real data (`splits`), it also shows
each class's synthetic image(s) beside the class mean and a few real training images.
"""
from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .data.base import DatasetSplits  # noqa: E402
from .io import load_json, read_jsonl  # noqa: E402
from .meta_batch import logged_matches  # noqa: E402
from .synthetic import SyntheticSet  # noqa: E402
from .texture import spec_of, tiled  # noqa: E402
from .io import FileFormatError  # noqa: E402

CLIP_STD = 2.5
MAX_SHOWN_IPC = 10        # the grid shows at most this many images of each class
MAX_LABELLED_CLASSES = 30  # beyond this many classes, figures drop per-class labels
MAX_COMPARED_CLASSES = 20  # the class comparison shows the first classes only


# ----------------------------------------------------------------------------- images

def display_images(pixels: torch.Tensor, clip_std: float = CLIP_STD) -> torch.Tensor:
    """Pixels (N, C, H, W) -> [0,1] for showing: clip at mean +- clip_std std, scale each image."""
    x = pixels.detach().float()
    m, s = x.mean(), x.std() if x.numel() > 1 else torch.tensor(0.0)
    x = x.clamp(m - clip_std * s, m + clip_std * s)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def synthetic_display(syn: SyntheticSet, clip_std: float = CLIP_STD,
                      tile: bool = True) -> torch.Tensor:
    """The synthetic images as shown everywhere (grid, export): ZCA inverted, clipped, scaled.
    Texture canvases are shown tiled 2 x 2, so that seams (or their absence) are visible."""
    shown = display_images(syn.pixels(), clip_std)
    return tiled(shown) if tile and spec_of(syn.meta) else shown


def to_uint8_hwc(image01: torch.Tensor) -> np.ndarray:
    """One [0,1] image (C, H, W) -> uint8 (H, W, 3) (grey images repeated to RGB)."""
    img = (image01.detach().float().clamp(0, 1) * 255).round().byte()
    img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]
    return img.permute(1, 2, 0).numpy()


def grid_image(images01: torch.Tensor, rows: int, cols: int, min_cell: int = 64,
               pad: int = 2) -> Image.Image:
    """Tile [0,1] images (rows*cols, C, H, W) into one PIL image, upscaled (nearest) for small ones."""
    n, c, h, w = images01.shape
    scale = max(1, min_cell // max(h, w))
    H, W = h * scale, w * scale
    canvas = np.ones((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), dtype=np.uint8) * 255
    for k in range(min(n, rows * cols)):
        arr = to_uint8_hwc(images01[k]).repeat(scale, 0).repeat(scale, 1)
        r, q = divmod(k, cols)
        y0, x0 = pad + r * (H + pad), pad + q * (W + pad)
        canvas[y0:y0 + H, x0:x0 + W] = arr
    return Image.fromarray(canvas)


def synthetic_grid(syn: SyntheticSet, num_classes: int) -> tuple[Image.Image, int]:
    """The bare grid (no labels): one row per class, at most MAX_SHOWN_IPC images each; with
    one image per class a single row (rows of 10 beyond 20 classes). Returns (grid, ipc)."""
    ipc = max(1, len(syn.labels) // max(num_classes, 1))
    order = torch.argsort(syn.labels, stable=True)
    shown = synthetic_display(syn)[order]
    if ipc == 1:
        cols = len(shown) if len(shown) <= 20 else 10
        return grid_image(shown, math.ceil(len(shown) / cols), cols), ipc
    k = min(ipc, MAX_SHOWN_IPC)
    labels = syn.labels[order]
    picked = torch.cat([shown[labels == c][:k] for c in range(num_classes)])
    return grid_image(picked, num_classes, k), ipc


def save_synthetic_grid(syn: SyntheticSet, classes: list[str], path: str | Path) -> Path:
    """One row per class, one column per image of that class, class names on the left."""
    classes = list(classes) or [str(i) for i in range(int(syn.labels.max()) + 1)]
    num_classes = len(classes)
    grid, ipc = synthetic_grid(syn, num_classes)
    zca = " ZCA inverted," if syn.preprocess.zca is not None else ""
    if ipc == 1 and num_classes > 20:  # rows of 10, classes in order
        rows = math.ceil(num_classes / 10)
        fig, ax = plt.subplots(figsize=(12, max(2.0, 1.2 * rows)))
        ax.imshow(grid)
        cell = grid.size[1] / rows
        ax.set_yticks([cell * (i + 0.5) for i in range(rows)], [f"{10 * i}-" for i in range(rows)],
                      fontsize=7)
        ax.set_xticks([])
    elif ipc == 1:  # a single row reads better than a column
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * num_classes), 2.2))
        ax.imshow(grid)
        cell = grid.size[0] / num_classes
        ax.set_xticks([cell * (i + 0.5) for i in range(num_classes)], classes, rotation=30,
                      ha="right", fontsize=8)
        ax.set_yticks([])
    else:
        k = min(ipc, MAX_SHOWN_IPC)
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * k + 1.5), max(3, 0.8 * num_classes)))
        ax.imshow(grid)
        cell = grid.size[1] / num_classes
        ax.set_yticks([cell * (i + 0.5) for i in range(num_classes)], classes, fontsize=8)
        ax.set_xticks([])
    ax.set_title(f"synthetic images ({ipc} per class;{zca} clipped at {CLIP_STD} std)", fontsize=9)
    return _save(fig, path)


def class_pixel_means(splits: DatasetSplits, chunk: int = 256) -> torch.Tensor:
    """Per-class mean training image in [0,1] pixel space (C, H, W each), chunked."""
    c, h, w = splits.image_shape
    out = torch.zeros(splits.num_classes, c, h, w, dtype=torch.float64)
    for k in range(splits.num_classes):
        members = splits.train.indices_of(k)
        for part in members.split(chunk):
            out[k] += splits.train.images[part].to(torch.float64).sum(0) / 255.0
        out[k] /= max(len(members), 1)
    return out.float()


def save_class_comparison(syn: SyntheticSet, splits: DatasetSplits, path: str | Path,
                          n_real: int = 4, seed: int = 0) -> Path:
    """Per class (one row): its synthetic image(s) | the class mean | n_real real images."""
    n_cls = min(splits.num_classes, MAX_COMPARED_CLASSES)
    classes = splits.classes[:n_cls]
    # texture canvases: an image-sized window (their top-left corner), beside real images
    shown = synthetic_display(syn, tile=False)[..., :splits.image_shape[1], :splits.image_shape[2]]
    ipc = min(max(1, len(syn.labels) // splits.num_classes), 3)
    means = display_images(class_pixel_means(splits))  # contrast-stretched like the synthetic
    gen = torch.Generator().manual_seed(seed)
    cols = ipc + 1 + n_real
    cells = []
    for k in range(n_cls):
        mine = shown[syn.labels == k][:ipc]
        mine = torch.cat([mine, torch.ones(ipc - len(mine), *shown.shape[1:])]) if len(mine) < ipc else mine
        members = splits.train.indices_of(k)
        pick = members[torch.randperm(len(members), generator=gen)[:n_real]]
        real = splits.train.images[pick].float() / 255.0
        if len(real) < n_real:
            real = torch.cat([real, torch.ones(n_real - len(real), *real.shape[1:])])
        cells += [mine, means[k:k + 1], real]
    grid = grid_image(torch.cat(cells), n_cls, cols)
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * cols + 1.5), max(3, 0.85 * n_cls + 0.8)))
    ax.imshow(grid)
    cw, ch = grid.size[0] / cols, grid.size[1] / n_cls
    ax.set_yticks([ch * (i + 0.5) for i in range(n_cls)], classes, fontsize=8)
    labels = [f"synthetic {i + 1}" if ipc > 1 else "synthetic" for i in range(ipc)] + \
             ["class mean"] + [f"real {i + 1}" for i in range(n_real)]
    ax.set_xticks([cw * (i + 0.5) for i in range(cols)], labels, rotation=30, ha="right", fontsize=8)
    more = f" (first {n_cls} of {splits.num_classes} classes)" if n_cls < splits.num_classes else ""
    ax.set_title("each class: synthetic | mean of its training images | random real images" + more,
                 fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- curves

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


def plot_matching(metrics: list[dict], path: str | Path) -> Path:
    """Matching loss of every start epoch on one chart; held-out loss of every stage on one;
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
               label=f"stage cap {cap} (epoch {cap}->{cap + 1})")
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
    return _save(fig, path)


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
    return _save(fig, path)


def plot_lrs(metrics: list[dict], path: str | Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report

def selection_key(e: dict, m: str) -> str:
    """The accuracy that chose synthetic_best.pt: validation (when the run chose on it) or test."""
    return "val_mean" if e.get("selected_on") == "val" and "val_mean" in e[m] else "mean"


def _best_eval(evals: list[dict]) -> tuple[dict | None, str | None]:
    """The evaluation that chose synthetic_best.pt (best validation accuracy of the first
    model, or best test accuracy for runs that chose on test), and that model."""
    if not evals:
        return None, None
    models = [k for k in evals[0] if isinstance(evals[0][k], dict)]
    if not models:
        return None, None
    m = models[0]
    return max((e for e in evals if m in e), key=lambda e: e[m][selection_key(e, m)]), m


def selection_note(evals: list[dict]) -> str:
    """One sentence: which accuracy chose the best set."""
    if not evals:
        return ""
    if evals[-1].get("selected_on") == "val":
        return ("synthetic_best.pt was chosen on validation accuracy (held-out training images "
                "the evaluation networks never train on); test accuracy did not take part.")
    return "synthetic_best.pt was chosen on test accuracy (optimistic: the test set took part)."


CLASS_VIEW = "Each class: synthetic vs class mean vs real"


def is_galaxy_run(data: dict, config: dict) -> bool:
    """Galaxy Zoo builds, galaxy-cropped folders, or runs with the galaxy augmentation."""
    return (str(data.get("dataset", "")).lower().startswith("gzoo2")
            or data.get("crop") == "center-half" or config.get("dsa_strategy") == "galaxy")


def build_report(run_dir: str | Path, classes: list[str] | None = None,
                 splits: DatasetSplits | None = None) -> Path:
    """Write figures/ and report.html (self-contained) + report.md for a run directory.

    `splits` (the real data the run used) adds the per-class comparison of synthetic
    images with class means and real examples. Returns the HTML path."""
    run = Path(run_dir)
    figs = run / "figures"
    for path, folder in ((figs, True), (run / "report.html", False), (run / "report.md", False)):
        if path.exists() and path.is_dir() != folder:  # the report writes there
            raise FileFormatError(f"{path}: expected a {'folder' if folder else 'file'}, the "
                                  f"report writes its {'figures' if folder else 'page'} there")
    metrics = _checked_metrics(read_jsonl(run / "metrics.jsonl"), run / "metrics.jsonl")
    evals = _checked_evals(read_jsonl(run / "evals.jsonl"), run / "evals.jsonl")
    results = (_checked_results(load_json(run / "results.json"), run / "results.json")
               if (run / "results.json").exists() else {})
    config = load_json(run / "config.json") if (run / "config.json").exists() else {}
    syn_path = run / "synthetic_best.pt" if (run / "synthetic_best.pt").exists() else run / "synthetic_last.pt"
    syn = SyntheticSet.load(syn_path) if syn_path.exists() else None
    if splits is not None and classes is None:
        classes = splits.classes
    classes = list(classes or (syn.data.get("classes") if syn else None) or [])
    best, best_model = _best_eval(evals)

    sections: list[dict] = []  # {title, img, caption, html}

    def add(title, img=None, caption="", body="", md=""):
        sections.append({"title": title, "img": img, "caption": caption, "html": body, "md": md})

    if syn is not None:
        save_synthetic_grid(syn, classes, figs / "synthetic.png")
        add("Synthetic images", "figures/synthetic.png",
            f"{syn_path.name} (iteration {syn.meta.get('iteration', '?')}); learned lr(s): "
            f"{', '.join(f'{v:.4g}' for v in syn.lrs)}. Shown in pixel space"
            f"{' (ZCA inverted)' if syn.preprocess.zca is not None else ''}, clipped at "
            f"{CLIP_STD} std of the set and stretched per image.")
    if syn is not None and syn.soft_labels is not None:
        add("Learned soft labels", caption="Each synthetic image's label distribution "
            f"(softmax of its learned logits): the top {TOP_LABELS} classes.",
            body=_soft_label_table(syn, classes))
    if syn is not None and splits is not None and len(splits.classes) == int(syn.labels.max()) + 1:
        save_class_comparison(syn, splits, figs / "classes.png")
        add(CLASS_VIEW, "figures/classes.png",
            "Row per class: the synthetic image(s), the mean of the class's training images (the "
            "class-mean baseline, contrast-stretched the same way) and random real training images.")
    if plot_accuracy(evals, figs / "accuracy.png"):
        add("Accuracy over iterations", "figures/accuracy.png",
            f"Mean ± std test accuracy of {len(evals[0][best_model]['accuracies'])} fresh networks "
            f"per evaluation; best {best_model}: {100 * best[best_model]['mean']:.2f} % at "
            f"iteration {best['it']}.")
    if metrics:
        plot_matching(metrics, figs / "matching.png")
        add("Matching loss and stages", "figures/matching.png",
            "Left: the normalised matching loss of every start epoch on one chart. Middle: STM's "
            "held-out next-epoch loss, one line per stage. Right: the stage cap over iterations "
            "with level-ups, fine-tuning and the stop.")
        if plot_stage_test(metrics, figs / "stage_test.png"):
            add("Why each stage ended", "figures/stage_test.png",
                "The stage test every 10 held-out losses: a level-up when r falls below "
                "-sigma·s (loss falling) or rises above 3·s (over-fitting).")
        events = stage_events(metrics)
        add("Stage timeline", body=_events_table(events), md=_events_markdown(events))
        plot_lrs(metrics, figs / "lrs.png")
        add("Learning rates", "figures/lrs.png",
            f"Final learned lr(s): {', '.join(f'{v:.4g}' for v in metrics[-1].get('lrs', []))}.")
    cm = results.get("confusion")
    cm_title = "distilled set"
    if not cm and best is not None:
        cm, cm_title = best[best_model]["confusion"], f"{best_model}, iteration {best['it']}"
    if cm and classes and len(cm) == len(classes):
        plot_confusion(cm, classes, figs / "confusion.png", f"{cm_title}: confusion (row-normalised)")
        add("Confusion matrix", "figures/confusion.png",
            "Summed over the evaluation networks, rows normalised: row = true class.")
    per_class = _per_class_rows(results, best, best_model)
    if per_class and classes and all(len(a) == len(classes) for _, a in per_class):
        plot_per_class(per_class, classes, figs / "per_class.png")
        add("Per-class accuracy", "figures/per_class.png", body=_per_class_table(per_class, classes))

    if syn is not None and is_galaxy_run(syn.data, config):
        # for astronomers the question is what the network saw in each class: that view first
        sections.sort(key=lambda sec: sec["title"] != CLASS_VIEW)
    if _checked_derived(config.get("derived"), run / "config.json"):
        add("Derived settings", caption="Settings not given on the command line, derived from "
            "the data and the expert buffer (defaults.py), and what each was derived from.",
            body=_derived_table(config["derived"]), md=_derived_markdown(config["derived"]))
    table = results.get("table") or _table_from_evals(evals)
    final = (_checked_final(load_json(run / "final.json"), run / "final.json")
             if (run / "final.json").exists() else None)
    html_path = run / "report.html"
    note = selection_note(evals)
    html_path.write_text(_html(run, table, sections, results, config, syn, note, final))
    (run / "report.md").write_text(_markdown(run.name, table, sections, note, final))
    return html_path


# ----------------------------------------------------------------------------- verdict, derived

def _final_rows(final: dict) -> list[tuple[str, str, str, str]]:
    """(set, lr, validation, test) per set of final.json; the distilled set also at its
    learned lr (the reference's protocol)."""
    rows = []
    for name, r in final.get("sets", {}).items():
        rows.append((name, f"{r['lr']:.3g} (chosen on validation)",
                     f"{100 * r['val_mean']:.2f} ± {100 * r.get('val_std', 0.0):.2f}",
                     f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"))
        if r.get("learned"):
            e = r["learned"]
            rows.append((f"{name}, at its learned lr", f"{e['lr']:.3g} (learned)",
                         f"{100 * e['val_mean']:.2f}", f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}"))
    return rows


def _final_html(final: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>"
                   for a, b, c, d in _final_rows(final))
    colour = "#1a7f37" if final.get("beats_all") else "#b35900"
    return (f"<h2>Verdict</h2><p style='color:{colour}'><b>{html.escape(final['message'])}</b></p>"
            f"<table><tr><th>set ({html.escape(str(final.get('model', '')))})</th><th>lr</th>"
            f"<th>validation (%)</th><th>test (%)</th></tr>{rows}</table>")


def _final_markdown(final: dict) -> list[str]:
    lines = ["## Verdict", "", f"**{final['message']}**", "",
             "| set | lr | validation (%) | test (%) |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _final_rows(final)]
    return lines + [""]


def _derived_table(derived: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(d.get('value')))}</td>"
                   f"<td>{html.escape(str(d.get('from')))}</td></tr>" for k, d in derived.items())
    return f"<table><tr><th>setting</th><th>value</th><th>derived from</th></tr>{rows}</table>"


def _derived_markdown(derived: dict) -> str:
    return "\n".join(["| setting | value | derived from |", "| --- | --- | --- |"]
                     + [f"| {k} | {d.get('value')} | {d.get('from')} |" for k, d in derived.items()])


# ----------------------------------------------------------------------------- reading the logs
# The report indexes these fields directly: a log of the right syntax but the wrong shape
# (hand-edited, or from another program) is named with its line, not met as a KeyError.

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FIELD_KINDS = {"an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "a number": _is_number,
                "a list of numbers": lambda v: isinstance(v, list) and all(map(_is_number, v)),
                "a list": lambda v: isinstance(v, list),
                "an object": lambda v: isinstance(v, dict),
                "a string": lambda v: isinstance(v, str)}


def _require(record: dict, where: str, fields: dict[str, str], optional: bool = False) -> None:
    for key, kind in fields.items():
        if optional and key not in record:
            continue
        if not _FIELD_KINDS[kind](record.get(key)):
            raise FileFormatError(f"{where}: {key!r} should be {kind}, got {record.get(key)!r}")


def _checked_metrics(metrics: list[dict], path: Path) -> list[dict]:
    for n, r in enumerate(metrics, 1):
        _require(r, f"{path}, record {n}", {"it": "an integer", "loss": "a number",
                                            "lrs": "a list of numbers"})
        # one trajectory per iteration: its start epoch; a meta-batch: every slot's
        slots = r["slots"] if "slots" in r else [r]
        if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
            raise FileFormatError(f"{path}, record {n}: 'slots' should be a list of objects, "
                                  f"got {r.get('slots')!r}")
        for s in slots:
            _require(s, f"{path}, record {n}", {"start_epoch": "an integer", "loss": "a number"})
        if r.get("r") is not None:  # a stage test: plotted with its thresholds
            _require(r, f"{path}, record {n}", {"r": "a number", "threshold": "a number",
                                                "rise_threshold": "a number"})
    return metrics


_EVAL_FIELDS = {"mean": "a number", "std": "a number", "accuracies": "a list of numbers"}
_EVAL_OPTIONAL = {"val_mean": "a number", "val_std": "a number", "per_class": "a list of numbers",
                  "confusion": "a list"}


def _checked_evals(evals: list[dict], path: Path) -> list[dict]:
    for n, e in enumerate(evals, 1):
        _require(e, f"{path}, record {n}", {"it": "an integer"})
        for model, res in e.items():
            if isinstance(res, dict):
                _require(res, f"{path}, record {n}, {model}", _EVAL_FIELDS)
                _require(res, f"{path}, record {n}, {model}", _EVAL_OPTIONAL, optional=True)
    return evals


def _checked_results(results: dict, path: Path) -> dict:
    _require(results, str(path), {"table": "a list", "confusion": "a list", "details": "an object"},
             optional=True)
    for n, row in enumerate(results.get("table") or [], 1):
        if not isinstance(row, dict):
            raise FileFormatError(f"{path}: 'table' row {n} should be an object, got {row!r}")
        _require(row, f"{path}, 'table' row {n}", {"name": "a string", "mean": "a number",
                                                  "std": "a number"})
        _require(row, f"{path}, 'table' row {n}", {"val_mean": "a number", "val_std": "a number"},
                 optional=True)
    return results


def _checked_final(final: dict, path: Path) -> dict:
    """final.json (verdict.py): the message and every set's figures the report shows."""
    _require(final, str(path), {"message": "a string", "sets": "an object"})
    for name, r in final["sets"].items():
        if not isinstance(r, dict):
            raise FileFormatError(f"{path}: set {name!r} should be an object, got {r!r}")
        _require(r, f"{path}, set {name!r}", {"lr": "a number", "val_mean": "a number",
                                              "mean": "a number", "std": "a number"})
        _require(r, f"{path}, set {name!r}", {"val_std": "a number", "learned": "an object"},
                 optional=True)
        if "learned" in r:
            _require(r["learned"], f"{path}, set {name!r}, 'learned'", {
                "lr": "a number", "val_mean": "a number", "mean": "a number", "std": "a number"})
    return final


def _checked_derived(derived, path: Path) -> dict:
    """config.json's 'derived': {setting: {value, from}} (defaults.py), or nothing."""
    if derived is None:
        return {}
    if not isinstance(derived, dict) or not all(isinstance(d, dict) for d in derived.values()):
        raise FileFormatError(f"{path}: 'derived' should map settings to objects with 'value' "
                              f"and 'from', got {derived!r}")
    return derived


def _per_class_rows(results: dict, best: dict | None, best_model: str | None):
    rows = []
    details = results.get("details") or {}
    for name, res in details.items():
        if isinstance(res, dict) and res:
            first = next(iter(res.values()))
            if isinstance(first, dict) and "per_class" in first:
                rows.append((name, first["per_class"]))
    if not rows and best is not None:
        rows.append((f"distilled ({best_model}, it {best['it']})", best[best_model]["per_class"]))
    return rows


def _table_from_evals(evals: list[dict]) -> list[dict]:
    if not evals:
        return []
    out = []
    models = [k for k in evals[0] if isinstance(evals[0][k], dict)]
    for m in models:
        best = max((e for e in evals if m in e), key=lambda e: e[m][selection_key(e, m)])
        last = [e for e in evals if m in e][-1]
        for label, e in (("best", best), ("last", last)):
            row = {"name": f"{m}: {label} (iteration {e['it']})", "mean": e[m]["mean"],
                   "std": e[m]["std"], "n": len(e[m]["accuracies"])}
            if "val_mean" in e[m]:
                row.update(val_mean=e[m]["val_mean"], val_std=e[m]["val_std"])
            out.append(row)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if not math.isnan(v) else ""
    return str(v)


def _events_table(events: list[dict]) -> str:
    head = ["iteration", "event", "cap after", "n", "r", "threshold", "rise threshold", "reason"]
    keys = ["it", "event", "cap", "n", "r", "threshold", "rise_threshold", "why"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(e.get(k)))}</td>" for k in keys) + "</tr>"
                   for e in events)
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{rows}</table>"
            if events else "<p>no stage events</p>")


def _events_markdown(events: list[dict]) -> str:
    """The stage timeline as the HTML shows it, as a Markdown table."""
    if not events:
        return "no stage events"
    head = ["iteration", "event", "cap after", "n", "r", "threshold", "rise threshold", "reason"]
    keys = ["it", "event", "cap", "n", "r", "threshold", "rise_threshold", "why"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_fmt(e.get(k)).replace("|", "\\|") for k in keys) + " |"
              for e in events]
    return "\n".join(lines)


TOP_LABELS = 3  # classes shown per image in the soft-label table


def soft_label_rows(syn: SyntheticSet, classes: list[str]) -> list[tuple[int, str, list[tuple[str, float]]]]:
    """(image index, its class, [(class, probability)] of the top classes) per image."""
    names = classes or [str(i) for i in range(syn.soft_labels.shape[1])]
    probs = torch.softmax(syn.soft_labels.float(), dim=1)
    top = probs.topk(min(TOP_LABELS, probs.shape[1]), dim=1)
    return [(i, names[int(syn.labels[i])],
             [(names[int(c)], float(p)) for p, c in zip(top.values[i], top.indices[i])])
            for i in range(len(syn.labels))]


def _soft_label_table(syn: SyntheticSet, classes: list[str]) -> str:
    rows = "".join(f"<tr><td>{i}</td><td>{html.escape(c)}</td><td>" +
                   ", ".join(f"{html.escape(n)} {100 * p:.1f} %" for n, p in top) + "</td></tr>"
                   for i, c, top in soft_label_rows(syn, classes))
    return ("<table><tr><th>image</th><th>class</th><th>label distribution (top classes)</th>"
            f"</tr>{rows}</table>")


def _per_class_table(rows, classes) -> str:
    head = "<tr><th>class</th>" + "".join(f"<th>{html.escape(n)}</th>" for n, _ in rows) + "</tr>"
    body = "".join("<tr><td>" + html.escape(c) + "</td>" +
                   "".join(f"<td>{100 * a[i]:.1f}</td>" for _, a in rows) + "</tr>"
                   for i, c in enumerate(classes))
    return f"<table>{head}{body}</table>"


def _table_rows(table: list[dict]) -> list[tuple[str, str, str, str]]:
    """(set, validation accuracy or "", test accuracy, networks) per row."""
    return [(r["name"],
             f"{100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f}" if "val_mean" in r else "",
             f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}", str(r.get("n", ""))) for r in table]


def _embed(run: Path, rel: str) -> str:
    data = base64.b64encode((run / rel).read_bytes()).decode()
    return f"data:image/png;base64,{data}"


_CONFIG_KEYS = ("dataset", "method", "ipc", "syn_steps", "expert_epochs", "max_start_epoch",
                "init_epoch", "sigma", "max_duration", "lr_img", "lr_lr", "lr_teacher", "lr_mode",
                "pix_init", "iterations", "eval_models", "num_eval", "epoch_eval_train", "dsa",
                "gradient", "num_trajectories", "seed")


def _html(run: Path, table: list[dict], sections, results: dict, config: dict,
          syn: SyntheticSet | None, note: str = "", final: dict | None = None) -> str:
    title = run.name
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{v}</td><td>{b}</td><td>{c}</td></tr>"
                   for a, v, b, c in _table_rows(table))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 9px;font-size:90%}th{background:#f3f3f3}img{max-width:100%}"
             "nav a{margin-right:1em}.cap{color:#555}</style></head><body>",
             f"<h1>Distillation report: {html.escape(title)}</h1>"]
    facts = dict((k, config[k]) for k in _CONFIG_KEYS if k in config)
    if config.get("autocast", "off") != "off":  # an inexact run says so
        facts["autocast"] = config["autocast"]
    if syn is not None:
        facts.setdefault("dataset", syn.data.get("dataset"))
        facts["images"] = f"{len(syn.labels)} x {list(syn.images.shape[1:])}"
        facts["zca"] = syn.preprocess.zca is not None
    if facts:
        parts.append("<p>" + "; ".join(f"<b>{html.escape(k)}</b> {html.escape(str(v))}"
                                       for k, v in facts.items()) + "</p>")
    parts.append("<nav>" + "".join(f"<a href='#s{i}'>{html.escape(s['title'])}</a>"
                                   for i, s in enumerate(sections)) + "</nav>")
    if final:
        parts.append(_final_html(final))
    if rows:
        parts.append("<h2>Accuracy (%) — mean ± std over evaluation networks</h2>"
                     "<table><tr><th>set</th><th>validation</th><th>test</th><th>networks</th></tr>"
                     f"{rows}</table>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
    if results.get("notes"):
        parts.append(f"<p>{html.escape(str(results['notes']))}</p>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s['title'])}</h2>")
        if s["img"]:
            parts.append(f"<a href='{s['img']}'><img src='{_embed(run, s['img'])}' "
                         f"alt='{html.escape(s['title'])}'></a>")
        if s["caption"]:
            parts.append(f"<p class='cap'>{html.escape(s['caption'])}</p>")
        if s["html"]:
            parts.append(s["html"])
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(title: str, table: list[dict], sections, note: str = "",
              final: dict | None = None) -> str:
    lines = [f"# Distillation report: {title}", ""]
    if final:
        lines += _final_markdown(final)
    if table:
        lines += ["| set | validation accuracy (%) | test accuracy (%) | networks |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {v} | {b} | {c} |" for a, v, b, c in _table_rows(table)]
        lines.append("")
        if note:
            lines += [note, ""]
    for s in sections:
        lines += [f"## {s['title']}", ""]
        if s["img"]:
            lines += [f"![{s['title']}]({s['img']})", ""]
        if s["caption"]:
            lines += [s["caption"], ""]
        if s.get("md"):
            lines += [s["md"], ""]
    return "\n".join(lines)
