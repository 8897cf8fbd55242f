"""The validation split: which images, that no validation image enters the synthetic set,
that synthetic_best.pt is chosen on validation accuracy, and how it is reported."""
import statistics

import pytest
import torch

from trajdistill.cli.distill import best_summary
from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer
from trajdistill.io import read_jsonl
from trajdistill.report import build_report
from trajdistill.validation import default_val_size, validation_indices


def test_default_size_is_ten_percent_capped_with_one_per_class():
    assert default_val_size(1438, 10) == 144       # digits
    assert default_val_size(50000, 10) == 5000     # CIFAR-10
    assert default_val_size(120000, 100) == 5000   # the cap
    assert default_val_size(30, 10) == 10          # at least one per class


def test_indices_are_fixed_cover_every_class_and_differ_by_seed():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 47)
    a = validation_indices(labels, 3, 10)
    assert torch.equal(a, validation_indices(labels, 3, 10))       # fixed
    assert len(a) == 10 and len(set(a.tolist())) == 10 and torch.equal(a, a.sort().values)
    assert set(labels[a].tolist()) == {0, 1, 2}                     # one per class at least
    assert not torch.equal(a, validation_indices(labels, 3, 10, seed=1))
    assert len(validation_indices(labels, 3, 0)) == 0
    with pytest.raises(ValueError):
        validation_indices(labels, 3, 2)


@pytest.fixture(scope="module")
def setup(digits, digits_buffers):
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)


def test_no_validation_image_is_copied_into_the_set(setup, tmp_path):
    splits, store = setup
    d = Distiller(DistillConfig(ipc=10, iterations=1, eval_it=0), splits, store, tmp_path / "r",
                  progress=False)
    assert d.cfg.val_size == 144 and len(d.val_idx) == 144
    val = splits.preprocess(splits.train.images[d.val_idx]).flatten(1)
    init = d.learnables.images.detach().flatten(1)
    assert torch.cdist(init, val).min() > 0


@pytest.mark.parametrize("select_on", ["val", "test"])
def test_best_set_is_chosen_on_the_requested_accuracy(setup, tmp_path, select_on):
    splits, store = setup
    cfg = DistillConfig(ipc=1, syn_steps=3, iterations=6, eval_it=2, num_eval=2,
                        epoch_eval_train=6, lr_img=100, select_on=select_on, val_size=300)
    d = Distiller(cfg, splits, store, tmp_path / select_on, progress=False)
    best = d.run()
    evals = read_jsonl(tmp_path / select_on / "evals.jsonl")
    # the start (iteration 0) is evaluated too: a run may end worse than it began
    assert [e["it"] for e in evals] == [0, 2, 4, 6]
    assert all(e["selected_on"] == select_on for e in evals)
    m = d.cfg.eval_models[0]  # the resolved config (the caller's is left as it was)
    for e in evals:  # validation and test side by side, one value per network
        assert len(e[m]["val_accuracies"]) == len(e[m]["accuracies"]) == 2
        assert 0 <= e[m]["val_mean"] <= 1
    key = "val_mean" if select_on == "val" else "mean"
    per_net = "val_accuracies" if select_on == "val" else "accuracies"
    chosen = evals[0]  # the start, left where a later set comes within one standard error
    for e in evals[1:]:  # of it; after that a later set must score higher (the first of equals)
        a, b = chosen[m], e[m]
        se = (statistics.variance(a[per_net]) / 2 + statistics.variance(b[per_net]) / 2) ** 0.5
        if (a[key] - b[key] <= se) if chosen is evals[0] else (b[key] > a[key]):
            chosen = e
    assert best["iteration"] == chosen["it"]
    assert best["accuracy"] == pytest.approx(chosen[m]["mean"])
    assert best["val_accuracy"] == pytest.approx(chosen[m]["val_mean"])
    saved = torch.load(tmp_path / select_on / "synthetic_best.pt", weights_only=True)
    assert saved["meta"]["iteration"] == chosen["it"]
    word = "validation" if select_on == "val" else "test"
    line = best_summary(best)
    assert f"chosen on {word} accuracy" in line
    assert f"{100 * best['accuracy']:.2f} %" in line and "validation" in line
    build_report(tmp_path / select_on)
    text = (tmp_path / select_on / "report.md").read_text()
    assert "| validation accuracy (%) | test accuracy (%) |" in text
    assert f"{100 * chosen[m]['val_mean']:.2f} ± " in text
    assert f"chosen on {word} accuracy" in text


def test_the_start_stays_the_best_set_only_on_a_lead_beyond_the_networks_spread():
    """Hand-computed: two networks each. The start scores 0.60 (0.58, 0.62), a later set 0.59
    (0.57, 0.61): the standard error of the difference is sqrt(0.0008 / 2 + 0.0008 / 2) = 0.028
    > 0.01, so the later set takes the start's place. Among later sets a higher score wins,
    however close: 0.595 replaces 0.59, 0.58 (within the error) does not replace 0.595. A
    start that leads by more than the error (0.70 on identical networks: error 0) stays."""
    from trajdistill import records

    def ev(it, *accs):
        return {"it": it, "selected_on": "val",
                "M": {"mean": 0.5, "std": 0.0, "accuracies": [0.5] * len(accs),
                      "val_mean": sum(accs) / len(accs), "val_accuracies": list(accs)}}
    start, close = records.selection(ev(0, 0.58, 0.62)), records.selection(ev(5, 0.57, 0.61))
    se = records.standard_error(start["accuracies"], close["accuracies"])
    assert se == pytest.approx(0.0008 ** 0.5)
    assert records.replaces(close, start, best_is_start=True)
    assert not records.replaces(close, start, best_is_start=False)  # not higher
    evals = [ev(0, 0.58, 0.62), ev(5, 0.57, 0.61), ev(10, 0.585, 0.605), ev(15, 0.57, 0.59)]
    assert records.chosen(evals)["it"] == 10
    assert records.chosen([ev(0, 0.70, 0.70), ev(5, 0.60, 0.60)])["it"] == 0
    assert records.chosen([ev(0, 0.70, 0.70)])["it"] == 0 and records.chosen([]) is None


def test_bad_validation_settings_are_refused(setup, tmp_path):
    splits, store = setup
    for kw, msg in [(dict(val_size=0), "--select_on val needs"), (dict(val_size=5), "--val_size"),
                    (dict(val_size=len(splits.train)), "--val_size"),
                    (dict(select_on="x"), "--select_on")]:
        with pytest.raises(ConfigError, match=msg):
            Distiller(DistillConfig(**kw), splits, store, tmp_path / "r", progress=False)
    Distiller(DistillConfig(val_size=0, select_on="test"), splits, store, tmp_path / "r",
              progress=False)
