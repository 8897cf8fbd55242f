"""The run directory: every file a distillation writes, owned in one place.

    config.json         the resolved config that ran, and where its data and buffer came from
    metrics.jsonl       one record per iteration (records.py)
    evals.jsonl         one record per evaluation (records.py)
    checkpoint.pt       everything to resume (Distiller.state_dict)
    synthetic_last.pt   the set at the last checkpoint
    synthetic_best.pt   the set the selection chose (records.better)
    final.json          the verdict: the chosen set against its start and the baselines
A new run in a folder that held another starts afresh (fresh logs, the last run's verdict and
best set removed); a resumed run keeps its logs, cut back to its checkpoint. Under torchrun
only rank 0 writes: the other ranks hold a RunDirectory with `writer=False`, whose writes
do nothing.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .io import atomic_save, atomic_write_text, load_json, read_jsonl, safe_load, write_json
from .synthetic import SyntheticSet


class _Discard:
    """A log file that writes nothing (ranks other than 0)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Log:
    """A JSON-lines log: one record per line, flushed when asked."""

    def __init__(self, file):
        self.file = file

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class RunDirectory:
    """The files of one run (module docstring). Paths are attributes; reads and writes are
    methods; `writer=False` (torchrun's other ranks) makes every write a no-op."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.evals_path = self.path / "evals.jsonl"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.last_path = self.path / "synthetic_last.pt"
        self.best_path = self.path / "synthetic_best.pt"
        self.final_path = self.path / "final.json"
        self._config: dict | None = None

    def __str__(self) -> str:
        return str(self.path)

    def holds_run(self) -> bool:
        return self.checkpoint_path.exists()

    # ------------------------------------------------------------------ config
    def write_config(self, cfg, source: dict) -> None:
        """The resolved config that runs, with where its data and buffer came from."""
        self._config = {**asdict(cfg), "source": source}
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.config_path, self._config)

    def config(self) -> dict:
        """config.json, read once."""
        if self._config is None:
            self._config = load_json(self.config_path)
        return self._config

    # ------------------------------------------------------------------ logs
    def open_logs(self, fresh: bool) -> tuple[Log, Log]:
        """(metrics, evals). fresh: a new run; the previous run's logs, verdict and best set
        go. Otherwise the logs are continued."""
        if not self.writer:
            return Log(_Discard()), Log(_Discard())
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.final_path.unlink(missing_ok=True)
            self.best_path.unlink(missing_ok=True)
        mode = "w" if fresh else "a"
        return Log(open(self.metrics_path, mode)), Log(open(self.evals_path, mode))

    def cut_logs(self, iteration: int) -> None:
        """A resumed run redoes everything after its checkpoint: the iterations from
        `iteration` on and the evaluations after it go (a line cut by a kill ends a file)."""
        if self.writer:
            _keep(self.metrics_path, lambda r: r.get("it", -1) < iteration)
            _keep(self.evals_path, lambda r: r.get("it", -1) <= iteration)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    # ------------------------------------------------------------------ states and sets
    def save_checkpoint(self, state: dict, last: SyntheticSet) -> None:
        if self.writer:
            atomic_save(state, self.checkpoint_path)
            last.save(self.last_path)

    def checkpoint(self) -> dict | None:
        return safe_load(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def save_best(self, chosen: SyntheticSet) -> None:
        if self.writer:
            chosen.save(self.best_path)

    def best(self) -> SyntheticSet | None:
        return SyntheticSet.load(self.best_path) if self.best_path.exists() else None

    def write_final(self, final: dict) -> None:
        if self.writer:
            write_json(self.final_path, final)


def _keep(path: Path, keep) -> None:
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r)))
