"""A tiny real run: experts -> STM distillation -> evaluation -> report, on the embedded digits."""
import json

import pytest
import torch

from trajdistill.cli import main
from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.baselines import random_real
from trajdistill.evaluate import EvalConfig, evaluate_set
from trajdistill.experts import ExpertConfig, train_experts
from trajdistill.report import build_report
from trajdistill.synthetic import SyntheticSet

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("e2e")
    splits = load_dataset("digits")
    train_experts(splits, ExpertConfig(model="ConvNetD2", train_epochs=6, num_experts=2),
                  root / "buffer", progress=False)
    store = open_buffer(root / "buffer", splits)
    cfg = DistillConfig(ipc=1, syn_steps=10, iterations=40, lr_img=30, lr_teacher=[0.01],
                        eval_it=20, num_eval=2, epoch_eval_train=150, pix_init="noise",
                        min_duration=10, checkpoint_every=20,
                        final_eval="off")  # the final comparison: test_verdict.py
    d = Distiller(cfg, splits, store, root / "run", progress=False)
    best = d.run()
    d.initial_accuracy = json.loads((root / "run" / "evals.jsonl").read_text().splitlines()[0]
                                    )["ConvNetD2"]["mean"]  # iteration 0: the noise it began as
    return splits, root / "run", best, d


def test_distilled_set_trains_a_network_well_above_chance(run):
    splits, run_dir, best, d = run
    syn = SyntheticSet.load(run_dir / "synthetic_best.pt")
    assert syn.images.shape == (10, 1, 8, 8) and syn.labels.tolist() == list(range(10))
    ev = EvalConfig(num_eval=2, epoch_eval_train=150, seed=5)
    acc = evaluate_set(syn.images, syn.labels, splits, syn.lrs, ["ConvNetD2"], ev, 10,
                       progress=False)["ConvNetD2"]["mean"]
    # from pure noise (networks trained on it are at chance, 10 %) to well above chance
    # in 40 iterations (measured: 11.6 % -> 65 %)
    assert d.initial_accuracy < 0.2
    assert acc > 0.5, acc
    assert best["accuracy"] > 0.5


def test_run_directory_holds_config_metrics_checkpoints(run):
    splits, run_dir, best, d = run
    for name in ("config.json", "metrics.jsonl", "evals.jsonl", "checkpoint.pt",
                 "synthetic_best.pt", "synthetic_last.pt"):
        assert (run_dir / name).exists(), name
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in rows] == list(range(40))
    for key in ("loss", "start_epoch", "heldout", "cap", "lrs", "lr_img", "seconds"):
        assert key in rows[0], key
    assert any(r.get("r") is not None for r in rows)  # the stage test ran (min_duration 10)
    assert rows[-1]["loss"] < rows[0]["loss"]
    evals = [json.loads(l) for l in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [e["it"] for e in evals] == [0, 20, 40]  # the start, then every eval_it


def test_report_is_written(run):
    splits, run_dir, best, d = run
    html = build_report(run_dir, splits.classes)
    text = html.read_text()
    for fig in ("synthetic.png", "matching.png", "lrs.png", "accuracy.png"):
        assert (run_dir / "figures" / fig).exists() and f"figures/{fig}" in text


def test_cli_evaluate_and_baseline(run, capsys):
    splits, run_dir, best, d = run
    assert main(["evaluate", "--syn", str(run_dir / "synthetic_best.pt"), "--dataset", "digits",
                 "--num_eval", "1", "--epoch_eval_train", "20", "--device", DEVICE, "--quiet"]) == 0
    assert "ConvNetD2:" in capsys.readouterr().out
    assert main(["baseline", "--kind", "mean", "--dataset", "digits", "--model", "ConvNetD2",
                 "--num_eval", "1", "--epoch_eval_train", "20", "--device", DEVICE, "--quiet"]) == 0
    assert "ConvNetD2:" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(capsys, tmp_path):
    assert main(["distill", "--dataset", "nosuchset", "--device", DEVICE]) == 2
    assert "unknown dataset 'nosuchset'" in capsys.readouterr().err
    assert main(["distill", "--dataset", "digits", "--buffer_path", str(tmp_path),
                 "--device", DEVICE]) == 2
    assert "no expert buffer" in capsys.readouterr().err
    assert main(["distill", "--preset", "CIFAR10-ipc7", "--device", DEVICE]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_random_real_baseline_picks_each_class(run):
    splits = run[0]
    images, labels = random_real(splits, 3, seed=1)
    assert images.dtype == torch.uint8 and labels.tolist() == sorted(list(range(10)) * 3)


def test_the_demo_runs_on_the_defaults_and_tabulates_the_final_comparison(tmp_path):
    """demo.py with a tiny budget: every distillation setting derived, the table read from
    the final comparison (each set at its lr chosen on validation), and a second run in the
    same folder starts afresh instead of appending to the first one's logs."""
    from trajdistill.demo import DemoConfig, run_demo
    cfg = DemoConfig(num_experts=1, train_epochs=2, iterations=3, num_eval=1,
                     epoch_eval_train=5, full_epochs=1)
    for _ in range(2):
        summary = run_demo(tmp_path / "demo", cfg, progress=False)
    names = [r["name"] for r in summary["table"]]
    assert names == ["STM distilled, 1 img/class", "class mean, 1 img/class",
                     "random real, 1 img/class, 1 draw", "full training set (1438 images)"]
    final = json.loads((tmp_path / "demo" / "final.json").read_text())
    learned = final["sets"]["distilled"]["learned"]["lr"]  # the chosen set's own lr
    assert {0.01, 0.003, 0.001, 0.0003, 0.0001, learned} <= {
        e["lr"] for e in final["sets"]["distilled"]["sweep"]}
    for row, name in zip(summary["table"], final["sets"]):  # each at an lr its sweep tried
        assert row["lr"] in [e["lr"] for e in final["sets"][name]["sweep"]]
    assert summary["table"][0]["mean"] == final["sets"]["distilled"]["mean"]
    config = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert {"img_optimizer", "lr_img", "pix_init", "lr_teacher"} <= set(config["derived"])
    evals = (tmp_path / "demo" / "evals.jsonl").read_text().splitlines()
    assert [json.loads(e)["it"] for e in evals] == [0, 3]  # the second run's only
    assert summary["verdict"] in (tmp_path / "demo" / "report.md").read_text()
