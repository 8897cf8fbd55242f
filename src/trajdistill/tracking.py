"""Optional experiment tracking: Weights & Biases and/or TensorBoard, same curves as the report.

Nothing here is needed for a run: with neither backend asked for, `Tracker.open` returns a
tracker that does nothing, and neither package is imported. Asking for one that is not
installed raises `TrackingError` with the pip command.

    tracker = Tracker.open(run_dir, config, wandb=True, tensorboard=True, name="job-1")
    tracker.log(record, step)          # one metrics.jsonl record per iteration
    tracker.log_eval(result, step)     # an evaluate_set result {model: {mean, std, ...}}
    tracker.log_images(syn, step)      # the synthetic grid (pixel space, ZCA inverted)
    tracker.close()

Scalars: loss, heldout, cap, r, threshold, rise_threshold, lr_img, seconds, lr/<k>,
accuracy/<model>, accuracy_std/<model>, accuracy_best/<model>. The per-start-epoch matching
losses and the per-stage held-out losses are single multi-line charts (what the users of
the reference code merged by hand in the WandB UI): TensorBoard `add_scalars` under the tags
`matching_loss_by_start_epoch` and `heldout_loss_by_stage`; WandB `wandb.plot.line_series`
charts under `charts/...`, redrawn from the whole history at every evaluation and at close.
WandB works offline (WANDB_MODE=offline, or `mode="offline"`).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

from .errors import TrajdistillError

MULTI = {"matching_loss_by_start_epoch": "matching loss, one line per start epoch",
         "heldout_loss_by_stage": "held-out next-epoch loss, one line per stage",
         "learned_lr": "learned lr(s)"}
SCALARS = ("loss", "heldout", "cap", "r", "threshold", "rise_threshold", "lr_img", "drift", "seconds")
INSTALL = {"wandb": "pip install wandb", "tensorboard": "pip install tensorboard"}


class TrackingError(TrajdistillError, RuntimeError):
    """A tracking backend was asked for but cannot be used (the message says how to fix it)."""


def require(package: str) -> Any:
    """Import an optional backend package or raise TrackingError naming the pip command."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise TrackingError(f"--{package.split('.')[0]} needs the '{package.split('.')[0]}' package, "
                            f"which is not installed ({e}); install it with: "
                            f"{INSTALL[package.split('.')[0]]}") from None


def available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class Backend(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def series_point(self, tag: str, key: str, value: float, step: int) -> None: ...
    def series_chart(self, tag: str, series: dict[str, list[tuple[int, float]]], step: int) -> None: ...
    def image(self, tag: str, image, step: int, caption: str) -> None: ...
    def close(self) -> None: ...


# ----------------------------------------------------------------------------- backends

class WandbBackend:
    def __init__(self, run_dir: Path, config: dict, name: str | None, project: str,
                 mode: str | None = None, module=None):
        self.wandb = module or require("wandb")
        kw = {"project": project, "name": name, "config": config, "dir": str(run_dir)}
        if mode:
            kw["mode"] = mode
        self.run = self.wandb.init(**kw)

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def series_point(self, tag, key, value, step):
        pass  # the scalar is logged too (loss_epoch/<t>); the chart is redrawn in series_chart

    def series_chart(self, tag, series, step):
        keys = sorted(series, key=_natural)
        if not keys:
            return
        chart = self.wandb.plot.line_series(
            xs=[[x for x, _ in series[k]] for k in keys], ys=[[y for _, y in series[k]] for k in keys],
            keys=keys, title=MULTI.get(tag, tag), xname="iteration")
        self.run.log({f"charts/{tag}": chart}, step=step)

    def image(self, tag, image, step, caption):
        self.run.log({tag: self.wandb.Image(image, caption=caption)}, step=step)

    def close(self):
        self.run.finish()


class TensorBoardBackend:
    def __init__(self, run_dir: Path, module=None):
        mod = module or _tensorboard_module()
        self.writer = mod.SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def scalars(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def series_point(self, tag, key, value, step):
        self.writer.add_scalars(tag, {key: value}, step)

    def series_chart(self, tag, series, step):
        pass  # add_scalars already draws one chart per tag

    def image(self, tag, image, step, caption):
        import numpy as np
        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self):
        self.writer.flush()
        self.writer.close()


def _tensorboard_module():
    require("tensorboard")  # torch.utils.tensorboard needs the tensorboard package itself
    from torch.utils import tensorboard
    return tensorboard


# ----------------------------------------------------------------------------- the tracker

class Tracker:
    """Fans one run's records out to zero or more backends; a no-op with none."""

    def __init__(self, backends: list | None = None):
        self.backends = list(backends or [])
        self.series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        self.best: dict[str, float] = {}

    @classmethod
    def open(cls, run_dir: str | Path, config: dict | None = None, *, wandb: bool = False,
             tensorboard: bool = False, name: str | None = None, project: str = "trajdistill",
             wandb_mode: str | None = None) -> "Tracker":
        """The tracker of a run: `wandb` / `tensorboard` turn each backend on (each import
        happens only then; TrackingError if the package is missing)."""
        run_dir = Path(run_dir)
        config = _plain(config or {})
        backends = []
        try:
            if tensorboard:
                backends.append(TensorBoardBackend(run_dir))
            if wandb:
                run_dir.mkdir(parents=True, exist_ok=True)
                backends.append(WandbBackend(run_dir, config, name or run_dir.name, project, wandb_mode))
        except BaseException:
            for b in backends:
                b.close()
            raise
        return cls(backends)

    @property
    def active(self) -> bool:
        return bool(self.backends)

    def log(self, record: dict, step: int | None = None) -> None:
        """One iteration's metrics record (the keys of metrics.jsonl)."""
        if not self.backends:
            return
        step = int(record.get("it", 0) if step is None else step)
        values = {k: float(record[k]) for k in SCALARS if _number(record.get(k))}
        for k, v in enumerate(record.get("lrs") or []):
            values[f"lr/{k}"] = float(v)
        for flag in ("level_up", "fine_tuning", "fine_tuning_started", "finished"):
            if flag in record:
                values[f"stage/{flag}"] = float(bool(record[flag]))
        points = []
        for key in record:  # loss_epoch_<e>: the (mean) matching loss of start epoch e
            if key.startswith("loss_epoch_") and _number(record[key]):
                epoch = key[len("loss_epoch_"):]
                values[f"loss_epoch/{epoch}"] = float(record[key])
                points.append(("matching_loss_by_start_epoch", f"start_epoch_{epoch}",
                               float(record[key])))
        if _number(record.get("heldout")):
            cap = record.get("cap", 0)
            points.append(("heldout_loss_by_stage", f"stage_{cap}", float(record["heldout"])))
        for k, v in enumerate(record.get("lrs") or []):
            points.append(("learned_lr", f"lr_{k}", float(v)))
        for tag, key, v in points:
            self.series[tag][key].append((step, v))
        for b in self.backends:
            b.scalars(values, step)
            for tag, key, v in points:
                b.series_point(tag, key, v, step)

    def log_eval(self, result: dict, step: int) -> None:
        """An evaluation {model: {mean, std, per_class, ...}}; redraws the multi-line charts."""
        if not self.backends:
            return
        values = {}
        for model, r in result.items():
            if not isinstance(r, dict) or "mean" not in r:
                continue
            self.best[model] = max(self.best.get(model, -1.0), r["mean"])
            values.update({f"accuracy/{model}": r["mean"], f"accuracy_std/{model}": r["std"],
                           f"accuracy_best/{model}": self.best[model]})
            for c, a in enumerate(r.get("per_class") or []):
                values[f"per_class/{model}/{c}"] = a
        for b in self.backends:
            b.scalars(values, step)
        self._charts(step)

    def log_images(self, syn, step: int, classes: list[str] | None = None,
                   tag: str = "synthetic_images") -> None:
        """The synthetic set as a grid, exactly as the report shows it."""
        if not self.backends:
            return
        from .display import synthetic_grid
        n = len(classes) if classes else int(syn.labels.max()) + 1
        grid, ipc = synthetic_grid(syn, n)
        caption = f"iteration {step}, {ipc} per class, lr(s) " + ", ".join(f"{v:.3g}" for v in syn.lrs)
        for b in self.backends:
            b.image(tag, grid, step, caption)

    def _charts(self, step: int) -> None:
        for tag, series in self.series.items():
            for b in self.backends:
                b.series_chart(tag, {k: list(v) for k, v in series.items()}, step)

    def close(self) -> None:
        if not self.backends:
            return
        last = max((pts[-1][0] for s in self.series.values() for pts in s.values()), default=0)
        self._charts(last)
        for b in self.backends:
            b.close()
        self.backends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _natural(key: str):
    tail = key.rsplit("_", 1)[-1]
    return (0, int(tail), key) if tail.isdigit() else (1, 0, key)


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out
