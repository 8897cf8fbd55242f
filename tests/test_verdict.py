"""A run that says whether it worked (issue 21): the verdict's rules on hand-made records, and
a real run's final comparison, iteration-0 evaluation and report."""
import json

import pytest

from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.experts import ExpertConfig, train_experts
from trajdistill.report import build_report
from trajdistill import evaluate
from trajdistill.verdict import diagnose, judge, margin


def _r(val):
    return {"val_mean": val, "lr": 0.01, "mean": val, "std": 0.0}


def test_judge_says_which_sets_were_not_beaten():
    ok, line = judge({"distilled": _r(0.8), "class mean": _r(0.7), "random real": _r(0.5)},
                     lambda best: ["x"])
    assert ok and line.startswith("the distilled set beats class mean, random real")
    assert "80.00 % against class mean 70.00 %, random real 50.00 %" in line
    seen = []
    ok, line = judge({"distilled": _r(0.6), "class mean": _r(0.7), "random real": _r(0.5)},
                     lambda best: seen.append(best) or ["cause one", "cause two"])
    assert not ok and seen == [0.7]  # the causes are judged against the best baseline
    assert line.startswith("warning: the distilled set does not beat class mean on validation")
    assert line.endswith("Likely: cause one; cause two")
    # a tie is not a win
    assert not judge({"distilled": _r(0.7), "class mean": _r(0.7)}, lambda b: ["c"])[0]


def _nets(*vals):
    return {"val_mean": sum(vals) / len(vals), "val_accuracies": list(vals), "lr": 0.01,
            "mean": 0.5, "std": 0.0}


def test_margin_is_the_difference_and_its_standard_error():
    # sample variances 0.0002 and 0.0008 over 2 networks each: se = sqrt(0.0002/2 + 0.0008/2)
    d, se = margin(_nets(0.61, 0.63), _nets(0.58, 0.62))
    assert d == pytest.approx(0.02) and se == pytest.approx(0.0005 ** 0.5)
    assert margin(_r(0.7), _r(0.6))[1] == 0  # no networks' figures kept: no noise added


def test_a_lead_within_the_noise_is_a_tie_not_a_win():
    # the gz1 spiral-vs-rest run of session 12: 66.28 % against the class mean's 66.12 %,
    # with the networks' spread several points wide
    mine = _nets(0.62, 0.64, 0.66, 0.68, 0.7)
    ok, line = judge({"distilled": mine, "class mean": _nets(0.63, 0.65, 0.66, 0.67, 0.69),
                      "random real": _nets(0.5, 0.5, 0.51, 0.52, 0.52)}, lambda b: ["cause"])
    assert not ok
    assert line.startswith("warning: the distilled set is level with class mean (a lead or lag "
                           "within one standard error of the difference: 1.73 points) on validation")
    assert line.endswith("Likely: cause")
    # the same lead over tight networks is a win
    ok, _ = judge({"distilled": _nets(0.6601, 0.6602), "class mean": _nets(0.66, 0.66)},
                  lambda b: ["cause"])
    assert ok
    # behind by more than the noise on one, level on another: both said
    ok, line = judge({"distilled": mine, "class mean": _nets(0.75, 0.76),
                      "random real": _nets(0.65, 0.67)}, lambda b: ["c"])
    assert not ok and "does not beat class mean and is level with random real" in line


def test_diagnose_names_the_causes_the_record_shows():
    flat = [0.5] * 30
    assert any("barely fell (0.500 -> 0.500)" in c for c in diagnose(flat, 0.3, 0, 0.9, 0.5))
    over = [2.0] * 10 + [0.5] * 20  # first ten average 2: the student overshoots
    assert any("first matching losses average 2.00" in c for c in diagnose(over, 0.3, 0, 0.9, 0.5))
    falling = [1.0 - 0.02 * i for i in range(30)]  # 0.91 -> 0.61: learning
    assert diagnose(falling, 0.3, 0, 0.9, 0.5) == [
        "no clear cause in the run's record: try more iterations, more experts, or --syn_steps"]
    # images that hardly moved: the image step, scaled to move them about 0.3 of their norm
    assert any("moved only 0.10 of their norm" in c and "try --lr_img 0.03 " in c
               for c in diagnose(falling, 0.10, 0, 0.9, 0.5, lr_img=0.01))
    assert any("--lr_img about 10x" in c for c in diagnose(falling, 0.0, 0, 0.9, 0.5))
    assert not any("moved only" in c for c in diagnose(falling, 0.25, 0, 0.9, 0.5, 0.01))
    causes = diagnose(falling, 3.0, 4, 0.52, 0.5)
    assert any("drifted 3.0 times" in c for c in causes)
    assert any("4 updates were refused" in c for c in causes)
    assert any("experts are weak (test accuracy 52.0 %, hardly above the best baseline's 50.0 %"
               in c for c in causes)
    # experts below the baseline are said to be below it
    assert any("experts are weak (test accuracy 45.0 %, below the best baseline's 50.0 %" in c
               for c in diagnose(falling, 0.3, 0, 0.45, 0.5))


def _sweep_with_peak(monkeypatch, grid, peak, beyond=evaluate.EDGE_STEPS):
    """evaluate_sweep over a stand-in trainer whose validation accuracy falls with the
    distance (in decades) of its lr from `peak`; returns (lrs tried, lr chosen)."""
    import math
    trained = []

    def fake(images, labels, splits, lrs, models, cfg, syn_steps, progress, val, comm, **_):
        trained.append(lrs[0])
        acc = 1 - abs(math.log10(lrs[0] / peak)) / 10
        return {m: {"val_mean": acc, "mean": acc, "std": 0.0} for m in models}
    monkeypatch.setattr(evaluate, "evaluate_set", fake)
    r = evaluate.evaluate_sweep(None, None, None, grid, ["M"], None, val=(0, [1]),
                                beyond=beyond)["M"]
    assert [e["lr"] for e in r["sweep"]] == sorted(trained, reverse=True)
    return trained, r["lr"]


def test_a_sweep_looks_past_the_end_of_its_grid_where_the_best_lr_lies(monkeypatch):
    grid = [1e-2, 1e-3, 1e-4]  # mean step: a factor of 10
    # the best inside the grid: the grid alone
    assert _sweep_with_peak(monkeypatch, grid, 1e-3) == (grid, 1e-3)
    # best at the low end: one decade lower wins, the next does not
    tried, chosen = _sweep_with_peak(monkeypatch, grid, 1e-5)
    assert tried == pytest.approx(grid + [1e-5, 1e-6]) and chosen == pytest.approx(1e-5)
    # far below: two steps at most
    tried, chosen = _sweep_with_peak(monkeypatch, grid, 1e-9)
    assert tried == pytest.approx(grid + [1e-5, 1e-6]) and chosen == pytest.approx(1e-6)
    # at the high end: upwards, until the best is no longer the end
    tried, chosen = _sweep_with_peak(monkeypatch, grid, 0.05)
    assert tried == pytest.approx(grid + [0.1, 1.0]) and chosen == pytest.approx(0.1)
    tried, chosen = _sweep_with_peak(monkeypatch, grid, 0.02)  # 0.1 loses: no second step
    assert tried == pytest.approx(grid + [0.1]) and chosen == pytest.approx(0.01)
    # an explicit list (beyond=0) is only that list; one lr has no spacing to step by
    assert _sweep_with_peak(monkeypatch, grid, 1e-9, beyond=0) == (grid, 1e-4)
    assert _sweep_with_peak(monkeypatch, [1e-2], 1e-9) == ([1e-2], 1e-2)


def test_with_one_draw_per_network_each_network_keeps_its_own_best_lr(monkeypatch):
    """Random real as draws: network k trains on draw k and keeps the lr best on validation
    for its own draw (one lr shared by all draws sank to the grid's bottom); the figures are
    each network's at its own lr, `lr` their median, and the grid is looked past for any
    network that does best at an end. Stand-in trainer: network k's validation accuracy
    peaks at peaks[k], its test accuracy is 0.1 below its validation accuracy."""
    import math
    from types import SimpleNamespace
    peaks = [1e-2, 1e-3, 1e-6]   # at the grid's top, inside, two decades below
    trained = []

    def fake(images, labels, splits, lrs, models, cfg, syn_steps, progress, val, comm,
             draws=None, keep_each=False):
        assert draws == ["d0", "d1", "d2"] and keep_each
        trained.append(lrs[0])
        vals = [1 - abs(math.log10(lrs[0] / p)) / 10 for p in peaks]
        tests = [v - 0.1 for v in vals]
        # 1000 test images of one class: network k's confusion row gives its test accuracy
        conf = [[[round(1000 * t), 1000 - round(1000 * t)], [0, 0]] for t in tests]
        return {m: {"val_mean": sum(vals) / 3, "val_accuracies": vals, "mean": sum(tests) / 3,
                    "std": 0.0, "confusions": conf} for m in models}
    monkeypatch.setattr(evaluate, "evaluate_set", fake)
    grid = [1e-2, 1e-3, 1e-4]
    r = evaluate.evaluate_sweep(None, None, None, grid, ["M"], SimpleNamespace(num_eval=3),
                                val=(0, [1]), beyond=evaluate.EDGE_STEPS, draws=["d0", "d1", "d2"])["M"]
    # looked past the top for network 0 (0.1 loses) and twice past the bottom for network 2
    assert trained == pytest.approx(grid + [1e-1, 1e-5, 1e-6])
    assert r["lrs"] == pytest.approx([1e-2, 1e-3, 1e-6])
    assert r["lr"] == pytest.approx(1e-3)  # the median
    assert r["val_accuracies"] == pytest.approx([1.0, 1.0, 1.0])
    assert r["accuracies"] == pytest.approx([0.9, 0.9, 0.9], abs=1e-3)
    assert r["mean"] == pytest.approx(0.9, abs=1e-3)
    # the sweep still reports every lr averaged over the networks
    assert [e["lr"] for e in r["sweep"]] == pytest.approx(sorted(trained, reverse=True))
    at_grid_top = next(e for e in r["sweep"] if e["lr"] == 1e-2)
    assert at_grid_top["val_mean"] == pytest.approx((1.0 + 0.9 + 0.6) / 3)


@pytest.fixture(scope="module")
def digits_buffer(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict")
    splits = load_dataset("digits")
    train_experts(splits, ExpertConfig(num_experts=1, train_epochs=4), root / "buffer",
                  progress=False)
    return splits, open_buffer(root / "buffer", splits), root


def test_a_run_compares_its_chosen_set_with_its_start_and_the_baselines(digits_buffer):
    splits, store, root = digits_buffer
    cfg = DistillConfig(ipc=2, syn_steps=5, iterations=4, eval_it=4, num_eval=1,
                        epoch_eval_train=30, eval_lrs=[0.01, 0.001])
    d = Distiller(cfg, splits, store, root / "run", progress=False)
    best = d.run()
    evals = [json.loads(line) for line in (root / "run" / "evals.jsonl").read_text().splitlines()]
    assert [e["it"] for e in evals] == [0, 4]  # the start is evaluated: it may be the best
    final = json.loads((root / "run" / "final.json").read_text())
    # ipc 2 starts from real images (k-means representatives), so the start is its own contender
    assert list(final["sets"]) == ["distilled", "its start (kmeans)", "class mean",
                                   "random real (2/class)"]
    learned = d.lrs()[0]
    assert final["eval_lrs"] == [0.01, 0.001]
    lrs = {e["lr"] for e in final["sets"]["distilled"]["sweep"]}
    assert {0.01, 0.001, learned} <= lrs  # the learned lr competes
    low, high = min(0.001, learned), max(0.01, learned)
    assert all(lr < low or lr > high for lr in lrs - {0.01, 0.001, learned})  # past the ends
    assert final["sets"]["distilled"]["learned"]["lr"] == learned
    assert final["sets"]["random real (2/class)"]["draws"] == cfg.num_eval  # one per network
    # `baseline --kind random` with the run's evaluation flags trains the same networks on the
    # same draws (outside the same validation split): a row measured before the per-network
    # draws can be re-measured without distilling again (benchmarks/robustness.py)
    from trajdistill.cli import main
    out = root / "random.json"
    assert main(["baseline", "--kind", "random", "--dataset", "digits", "--ipc", "2",
                 "--num_eval", "1", "--epoch_eval_train", "30", "--model", final["model"],
                 "--dsa_strategy", d.cfg.dsa_strategy, "--lr_sweep", "0.01", "0.001",
                 "--quiet", "--out", str(out)]) == 0
    alone = {e["lr"]: e for e in json.loads(out.read_text())[final["model"]]["sweep"]}
    for e in final["sets"]["random real (2/class)"]["sweep"]:
        if e["lr"] in alone:
            assert (e["val_mean"], e["mean"]) == (alone[e["lr"]]["val_mean"], alone[e["lr"]]["mean"])
    assert set(alone) == {0.01, 0.001}
    for name, r in final["sets"].items():
        assert r["lr"] == max(r["sweep"], key=lambda e: e["val_mean"])["lr"], name
    assert best["verdict"] == final["message"] and best["beats_all"] == final["beats_all"]
    report = build_report(root / "run", splits=splits).with_name("report.md").read_text()
    assert "## Verdict" in report and final["message"] in report
    assert "| distilled, at its learned lr |" in report and "## Derived settings" in report
    assert "| random real (2/class), 1 draw (one per network) |" in report


def test_a_set_that_did_not_move_is_reported_as_not_beating_its_start(digits_buffer, capsys):
    # Adam at 1e-9 leaves the class means where they were: the distilled set equals the
    # class-mean baseline image for image, trains the same networks, and cannot beat it
    splits, store, root = digits_buffer
    cfg = DistillConfig(ipc=1, syn_steps=3, iterations=2, eval_it=2, num_eval=1,
                        epoch_eval_train=20, eval_lrs=[0.01], lr_img=1e-9, img_optimizer="adam",
                        lr_teacher=[0.01], learn_lr=False)
    d = Distiller(cfg, splits, store, root / "still", progress=False)
    best = d.run()
    final = json.loads((root / "still" / "final.json").read_text())
    assert list(final["sets"]) == ["distilled", "class mean", "random real (1/class)"]
    assert final["sets"]["distilled"]["val_mean"] == final["sets"]["class mean"]["val_mean"]
    assert not best["beats_all"]
    assert best["verdict"].startswith("warning: the distilled set is level with class mean")
    assert final["drift"] < 1e-6  # the last images against the start, in final.json
    assert "the images moved only 0.00 of their norm" in best["verdict"]


def test_final_eval_off_and_no_evaluation_write_no_verdict(digits_buffer):
    splits, store, root = digits_buffer
    for name, kw in (("off", {"final_eval": "off", "eval_it": 2}), ("none", {"eval_it": 0})):
        d = Distiller(DistillConfig(ipc=1, syn_steps=2, iterations=2, num_eval=1,
                                    epoch_eval_train=5, **kw), splits, store, root / name,
                      progress=False)
        assert "verdict" not in d.run()
        assert not (root / name / "final.json").exists()


def test_a_new_run_in_a_used_folder_starts_afresh(digits_buffer):
    """Logs were opened for appending: a second run in the same folder added its records to
    the first one's, and the report plotted both. A new run now starts its logs and removes
    the last one's results; a resumed run keeps its own (test_resume.py)."""
    splits, store, root = digits_buffer
    run = root / "again"
    for iterations, eval_it in ((3, 3), (2, 0)):
        d = Distiller(DistillConfig(ipc=1, syn_steps=2, iterations=iterations, eval_it=eval_it,
                                    num_eval=1, epoch_eval_train=2, eval_lrs=[0.01]),
                      splits, store, run, progress=False)
        d.run()
        if eval_it:  # the first run chose a set and judged it
            assert (run / "synthetic_best.pt").exists() and (run / "final.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in rows] == [0, 1]
    assert (run / "evals.jsonl").read_text() == ""  # the second run evaluated nothing
    assert not (run / "synthetic_best.pt").exists() and not (run / "final.json").exists()
