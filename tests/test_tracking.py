"""Optional tracking: a stub backend sees the same curves as the report; the real TensorBoard
and W&B (offline) backends when installed; clear errors when asked for and missing."""
import sys

import pytest
import torch

from trajdistill import tracking
from trajdistill.cli import build_parser
from trajdistill.data.base import Preprocess
from trajdistill.synthetic import SyntheticSet
from trajdistill.tracking import Tracker, TrackingError

RECORDS = [  # metrics.jsonl lines as distill.py writes them (STM, a level-up at it 3)
    {"it": 0, "loss": 0.9, "loss_epoch_0": 0.9, "start_epoch": 0, "heldout": 1.0, "cap": 1,
     "lrs": [0.01], "lr_img": 100.0, "seconds": 0.1, "level_up": False, "fine_tuning": False},
    {"it": 1, "loss": 0.8, "loss_epoch_0": 0.8, "start_epoch": 0, "heldout": 0.9, "cap": 1,
     "lrs": [0.011], "lr_img": 100.0, "seconds": 0.1, "level_up": False, "fine_tuning": False},
    {"it": 2, "loss": 0.7, "loss_epoch_0": 0.7, "start_epoch": 0, "heldout": 0.8, "cap": 2,
     "r": -0.99, "threshold": -0.5, "rise_threshold": 0.3, "lrs": [0.012], "lr_img": 100.0,
     "seconds": 0.1, "level_up": True, "fine_tuning": False},
    {"it": 3, "loss": 0.95, "loss_epoch_1": 0.95, "start_epoch": 1, "heldout": 1.1, "cap": 2,
     "lrs": [0.012, 0.02], "lr_img": 100.0, "seconds": 0.1, "level_up": False, "fine_tuning": False},
]
EVAL = {"ConvNet": {"mean": 0.4, "std": 0.02, "accuracies": [0.38, 0.42],
                    "per_class": [0.3, 0.5], "confusion": [[3, 7], [5, 5]]}}


class Stub:
    def __init__(self):
        self.scalar_log, self.points, self.charts, self.images, self.closed = [], [], [], [], False

    def scalars(self, values, step):
        self.scalar_log.append((step, dict(values)))

    def series_point(self, tag, key, value, step):
        self.points.append((tag, key, step, value))

    def series_chart(self, tag, series, step):
        self.charts.append((tag, series, step))

    def image(self, tag, image, step, caption):
        self.images.append((tag, image.size, step, caption))

    def close(self):
        self.closed = True


def _syn():
    return SyntheticSet(torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), [0.01],
                        Preprocess((0.5,), (0.25,)), {"dataset": "x", "classes": ["a", "b"]},
                        "ConvNetD2", 5)


def _feed(tracker):
    for r in RECORDS:
        tracker.log(r, r["it"])
    tracker.log_eval(EVAL, 4)
    tracker.log_images(_syn(), 4, ["a", "b"])
    tracker.close()


def test_stub_backend_gets_scalars_multiline_series_eval_and_images():
    stub = Stub()
    _feed(Tracker([stub]))
    steps = [s for s, _ in stub.scalar_log]
    assert steps[:4] == [0, 1, 2, 3]
    first = stub.scalar_log[0][1]
    for k in ("loss", "heldout", "cap", "lr_img", "seconds", "lr/0", "loss_epoch/0"):
        assert k in first, k
    assert stub.scalar_log[2][1]["r"] == -0.99 and stub.scalar_log[2][1]["stage/level_up"] == 1.0
    assert stub.scalar_log[3][1]["lr/1"] == 0.02
    ev = stub.scalar_log[4][1]
    assert ev["accuracy/ConvNet"] == 0.4 and ev["accuracy_std/ConvNet"] == 0.02
    assert ev["accuracy_best/ConvNet"] == 0.4 and ev["per_class/ConvNet/1"] == 0.5
    # the per-start-epoch and per-stage curves: one tag each, one key per epoch / stage
    by_tag = {}
    for tag, key, step, v in stub.points:
        by_tag.setdefault(tag, {}).setdefault(key, []).append((step, v))
    assert by_tag["matching_loss_by_start_epoch"] == {"start_epoch_0": [(0, 0.9), (1, 0.8), (2, 0.7)],
                                                      "start_epoch_1": [(3, 0.95)]}
    assert by_tag["heldout_loss_by_stage"] == {"stage_1": [(0, 1.0), (1, 0.9)],
                                               "stage_2": [(2, 0.8), (3, 1.1)]}
    assert set(by_tag["learned_lr"]) == {"lr_0", "lr_1"}
    # whole-history charts redrawn at the evaluation and at close
    chart_tags = [t for t, _, _ in stub.charts]
    assert chart_tags.count("heldout_loss_by_stage") == 2
    last = [s for t, s, _ in stub.charts if t == "heldout_loss_by_stage"][-1]
    assert last == by_tag["heldout_loss_by_stage"]
    assert stub.images and stub.images[0][0] == "synthetic_images" and stub.closed


def test_no_backend_is_a_no_op_that_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "require", lambda name: pytest.fail(f"imported {name}"))
    t = Tracker.open(tmp_path, {"a": 1})
    assert not t.active
    _feed(t)
    assert not any(tmp_path.iterdir())


def test_missing_package_gives_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)        # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(TrackingError, match="pip install wandb"):
        Tracker.open(tmp_path, {}, wandb=True)
    with pytest.raises(TrackingError, match="pip install tensorboard"):
        Tracker.open(tmp_path, {}, tensorboard=True)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["distill", "--dataset", "digits", "--wandb"])
    assert e.value.code == 2 and "pip install wandb" in capsys.readouterr().err


def test_tensorboard_backend_writes_one_chart_per_stage_family(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    _feed(Tracker.open(tmp_path, {"ipc": 1}, tensorboard=True))
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "tensorboard"))
    mux.Reload()
    runs = mux.Runs()
    # add_scalars: one sub-run per line, all under the same tag -> one chart
    stage_runs = [r for r in runs if "heldout_loss_by_stage" in r]
    assert len(stage_runs) == 2
    main = [r for r in runs if r == "."][0]
    tags = runs[main]["scalars"]
    for t in ("loss", "heldout", "cap", "lr/0", "accuracy/ConvNet"):
        assert t in tags, t
    assert "synthetic_images" in runs[main]["images"]
    assert [e.value for e in mux.Scalars(main, "loss")] == pytest.approx([0.9, 0.8, 0.7, 0.95])


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    _feed(Tracker.open(tmp_path, {"ipc": 1, "lr_teacher": [0.01]}, wandb=True, name="test-run"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_stub_sees_every_record_a_real_distillation_writes(digits, digits_buffers, tmp_path,
                                                              monkeypatch):
    """Not hand-written records: a tiny real STM run's metrics.jsonl and evals.jsonl, as the
    tracker receives them, with nothing dropped or renamed."""
    from trajdistill import distill
    from trajdistill.distill import DistillConfig, Distiller, open_buffer
    from trajdistill.io import read_jsonl
    stub = Stub()
    monkeypatch.setattr(distill.Tracker, "open", classmethod(lambda cls, *a, **k: Tracker([stub])))
    store = open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)
    cfg = DistillConfig(ipc=1, syn_steps=3, iterations=8, eval_it=4, num_eval=1,
                        epoch_eval_train=5, final_eval="off", lr_teacher=[0.01], min_duration=2)
    Distiller(cfg, digits, store, tmp_path / "run", progress=False).run()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evals = read_jsonl(tmp_path / "run" / "evals.jsonl")
    logged = {step: values for step, values in stub.scalar_log if "loss" in values}
    assert sorted(logged) == [r["it"] for r in metrics]
    for r in metrics:
        assert logged[r["it"]]["loss"] == r["loss"] and logged[r["it"]]["lr/0"] == r["lrs"][0]
        assert logged[r["it"]]["heldout"] == r["heldout"] and logged[r["it"]]["cap"] == r["cap"]
    accs = [values["accuracy/ConvNetD2"] for _, values in stub.scalar_log
            if "accuracy/ConvNetD2" in values]
    assert accs == [e["ConvNetD2"]["mean"] for e in evals] and len(accs) == 3  # it 0, 4, 8
    assert len(stub.images) == 3 and stub.closed
