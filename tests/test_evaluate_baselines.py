"""The three baselines of the evaluation protocol on the real CIFAR-10 subset
(../shared/data/cifar10-subset: 500 train / 100 test images per class).

Kept fast with a narrow ConvNet (ConvNetW32 / W16: the same family, fewer channels) and
short schedules; the thresholds are set from measured values (in each docstring) with a
wide margin, all far above chance (10 %): with 1000 test images a network at chance
stays below 13 % with probability > 0.999.
"""
import json

import pytest
import torch

from trajdistill.cli import main
from trajdistill.data import load_dataset
from trajdistill.baselines import class_means, random_real
from trajdistill.evaluate import EvalConfig, evaluate_set

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE


@pytest.fixture(scope="module")
def cifar(shared_data):
    return load_dataset("CIFAR10", shared_data / "cifar10-subset")


def _check(r, splits, n):
    cm = torch.tensor(r["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == n * len(splits.test)
    assert len(r["per_class"]) == 10 and len(r["accuracies"]) == n


def test_random_real_images(cifar):
    """10 random real images per class, 50 epochs: measured 25.1 / 24.6 / 26.2 % for draws
    0 / 1 / 2 (1 ipc: 11-21 % depending on the draw, too close to chance to test cheaply)."""
    images, labels = random_real(cifar, 10, seed=0)
    assert images.dtype == torch.uint8 and torch.bincount(labels).tolist() == [10] * 10
    r = evaluate_set(images, labels, cifar, [0.01], ["ConvNetW32"],
                     EvalConfig(num_eval=1, epoch_eval_train=50), progress=False)["ConvNetW32"]
    _check(r, cifar, 1)
    assert r["mean"] > 0.18, r["accuracies"]


def test_random_draws_are_independent_draws_outside_the_excluded_images(cifar):
    """The random-real baseline is an expectation over draws: draw k is random_real with
    evaluation network k's seed (runs of seeds 0 and 1 share no draw), each of ipc images per
    class, none an excluded (validation) image; without exclusion draw 0 of seed 0 is the
    single draw of before."""
    from trajdistill.baselines import random_draws
    from trajdistill.evaluate import network_seed
    from trajdistill.validation import default_val_size, validation_indices
    labels = cifar.train.labels
    val_idx = validation_indices(labels, 10, default_val_size(len(labels), 10))
    draws = random_draws(cifar, 2, seed=5, n=4, exclude=val_idx)
    assert len(draws) == 4
    val_images = {bytes(x.numpy()) for x in cifar.train.images[val_idx]}
    seen = []
    for k, (x, y) in enumerate(draws):
        assert torch.bincount(y, minlength=10).tolist() == [2] * 10
        assert not {bytes(im.numpy()) for im in x} & val_images  # no validation image
        assert torch.equal(x, random_real(cifar, 2, seed=network_seed(5, k), exclude=val_idx)[0])
        seen.append(bytes(x.numpy()))
    assert len(set(seen)) == 4  # four different draws
    assert torch.equal(random_draws(cifar, 2, seed=0, n=1)[0][0], random_real(cifar, 2, seed=0)[0])


def test_each_network_trains_on_its_own_draw(digits):
    """evaluate_set with draws: network k is the network k that evaluate_set trains on
    draws[k] alone (same seed, same batch order and augmentation), so the accuracies are those
    of the single-set runs taken diagonally."""
    from trajdistill.baselines import random_draws
    draws = random_draws(digits, 2, seed=0, n=3)
    cfg = EvalConfig(num_eval=3, epoch_eval_train=15, seed=2)
    both = evaluate_set(*draws[0], digits, [0.01], ["ConvNetD2"], cfg, progress=False,
                        draws=draws)["ConvNetD2"]["accuracies"]
    alone = [evaluate_set(*draws[k], digits, [0.01], ["ConvNetD2"], cfg,
                          progress=False)["ConvNetD2"]["accuracies"][k] for k in range(3)]
    assert both == pytest.approx(alone, abs=1e-12)
    assert len(set(alone)) > 1


def test_the_cli_random_baseline_trains_each_network_on_its_own_draw(tmp_path):
    out = tmp_path / "random.json"
    assert main(["baseline", "--kind", "random", "--dataset", "digits", "--ipc", "1", "--lr",
                 "0.01", "--num_eval", "3", "--epoch_eval_train", "5", "--device", DEVICE,
                 "--quiet", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["draws"] == 3 and len(r["ConvNetD2W32"]["accuracies"]) == 3


def test_class_mean_images(cifar):
    """One mean image per class, 50 epochs: measured 23.0 / 21.9 % (two networks)."""
    images, labels = class_means(cifar)
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))
    # the mean of a class, in network input space, is the preprocessed pixel mean
    pix = cifar.train.images[cifar.train.labels == 3].double().mean(0, keepdim=True) / 255
    assert torch.allclose(images[3:4], cifar.preprocess(pix.float()), atol=1e-4)
    r = evaluate_set(images, labels, cifar, [0.01], ["ConvNetW32"],
                     EvalConfig(num_eval=1, epoch_eval_train=50), progress=False)["ConvNetW32"]
    _check(r, cifar, 1)
    assert r["mean"] > 0.15, r["accuracies"]


def test_full_training_set_through_the_cli(cifar, shared_data, tmp_path, capsys):
    """All 5000 training images, 2 epochs (lr 0.01 then 0.001): measured 24.5 %."""
    out = tmp_path / "full.json"
    assert main(["baseline", "--kind", "full", "--dataset", "CIFAR10", "--data_path",
                 str(shared_data / "cifar10-subset"), "--model", "ConvNetW16", "--num_eval", "1",
                 "--epoch_eval_train", "2", "--device", DEVICE, "--quiet", "--out", str(out)]) == 0
    assert "ConvNetW16:" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["kind"] == "full" and r["epochs"] == 2
    _check(r["ConvNetW16"], cifar, 1)
    assert r["ConvNetW16"]["mean"] > 0.17, r["ConvNetW16"]["accuracies"]


def test_lr_sweep_chooses_on_validation_and_equals_a_plain_run_at_that_lr(tmp_path, capsys):
    """baseline --lr_sweep: the chosen lr is the one with the best validation accuracy, and its
    test figures are those of a plain `--lr` run at that lr (same seeds, same networks)."""
    common = ["baseline", "--kind", "mean", "--dataset", "digits", "--model", "ConvNetD2",
              "--num_eval", "2", "--epoch_eval_train", "30", "--device", DEVICE, "--quiet"]
    swept, plain = tmp_path / "sweep.json", tmp_path / "plain.json"
    assert main(common + ["--lr_sweep", "0.001", "0.1", "0.01", "--out", str(swept)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(swept.read_text())["ConvNetD2"]
    assert [e["lr"] for e in r["sweep"]] == [0.1, 0.01, 0.001]
    best = max(r["sweep"], key=lambda e: e["val_mean"])
    assert r["lr"] == best["lr"] and r["mean"] == best["mean"] and "val_mean" in r
    assert len({e["mean"] for e in r["sweep"]}) > 1  # the lrs really trained differently
    assert printed.count("<- chosen") == 1 and "(chosen on validation)" in printed
    assert main(common + ["--lr", str(r["lr"]), "--out", str(plain)]) == 0
    assert json.loads(plain.read_text())["ConvNetD2"]["accuracies"] == r["accuracies"]


def test_lr_sweep_and_lr_together_are_refused(capsys):
    assert main(["baseline", "--kind", "mean", "--dataset", "digits", "--lr", "0.01",
                 "--lr_sweep", "0.1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr_sweep" in err[0]


def test_the_robustness_benchmark_re_measures_a_rows_random_real_as_the_baseline_command(tmp_path):
    """`robustness.py --random_real_only SEED` records, for a row, what `trajdistill baseline
    --kind random` gives with the row's data flags and evaluation budget (rows measured under
    an older protocol are re-measured this way, without experts or distillation)."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
    done = subprocess.run([sys.executable, str(script), "--work", str(tmp_path), "--rows",
                           "digits:1", "--random_real_only", "3", "--num_eval", "2",
                           "--eval_epochs", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert (row["row"], row["ipc"], row["seed"], row["kind"]) == ("digits", 1, 3, "random real only")
    out = tmp_path / "direct.json"
    assert main(["baseline", "--kind", "random", "--dataset", "digits", "--ipc", "1",
                 "--num_eval", "2", "--epoch_eval_train", "4", "--seed", "3", "--quiet",
                 "--out", str(out)]) == 0
    direct = json.loads(out.read_text())[row["model"]]
    rr = row["random_real"]
    assert (rr["test"], rr["val"], rr["lrs"], rr["draws"]) == (
        direct["mean"], direct["val_mean"], direct["lrs"], 2)


def test_the_robustness_table_takes_re_measured_random_real_by_data_ipc_and_seed():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
    spec = importlib.util.spec_from_file_location("robustness_bench", path)
    rb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rb)
    one = {"test": 0.7, "std": 0.0, "val": 0.7, "lr": 0.01}
    rows = [{"row": "gz1-32", "ipc": 1, "distill_args": [], "random_real": one},
            {"row": "gz1-32", "ipc": 1, "distill_args": ["--seed", "1"], "random_real": one},
            {"row": "gz1-32", "ipc": 10, "distill_args": [], "random_real": one}]
    fresh = {"test": 0.5, "std": 0.1, "val": 0.6, "lr": 0.001, "draws": 5, "lrs": [0.001] * 5}
    merged = rb.with_random_real(rows, [{"row": "gz1-32", "ipc": 1, "seed": 1, "random_real": fresh}])
    assert [r["random_real"]["test"] for r in merged] == [0.7, 0.5, 0.7]  # seed 1, ipc 1 only
    assert merged[1]["random_real_one_draw"] == one and "random_real_one_draw" not in merged[0]
    assert "(med. 0.001)" in rb._cell(fresh) and "(0.01)" in rb._cell(one)
