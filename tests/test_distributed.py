"""Expert training under PyTorch's own launcher (torchrun, gloo on CPU): ranks share the work."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from trajdistill.experts import TrajectoryStore

pytestmark = pytest.mark.slow  # subprocesses and torchrun: still run by .ci/run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["buffer", "--dataset", "digits", "--model", "ConvNetD2", "--train_epochs", "2",
        "--num_experts", "3", "--device", "cpu", "--quiet"]


def test_torchrun_buffer_equals_single_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "trajdistill.cli", *ARGS, "--buffer_path", str(single)],
                   env=ENV, check=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", "-m", "trajdistill.cli", *ARGS, "--buffer_path", str(multi)],
                   env=ENV, check=True)
    a = TrajectoryStore.open(single / "digits" / "ConvNetD2")
    b = TrajectoryStore.open(multi / "digits" / "ConvNetD2")
    assert b.indices() == [0, 1, 2]
    for i in range(3):  # expert i is seeded by its index, whichever rank trained it
        assert torch.equal(a.load(i), b.load(i))


# ----------------------------------------------------------------------------- distillation
# A meta-batch of M trajectories per iteration, shared out over K ranks, must give what one
# process gives with the same M (every random draw comes from the seed, the iteration and the
# slot, never from the rank): images, lrs and soft labels to float tolerance.

from trajdistill.io import read_jsonl, safe_load  # noqa: E402

DATA = ["--dataset", "digits", "--model", "ConvNetD2", "--device", "cpu", "--quiet"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "trajdistill.cli"]
SINGLE = [sys.executable, "-m", "trajdistill.cli"]


def _buffer(root):
    """Two experts x 4 epochs on the digits (a few seconds)."""
    if not (root / "buffers").exists():
        subprocess.run(SINGLE + ["buffer", *DATA, "--train_epochs", "4", "--num_experts", "2",
                                 "--buffer_path", str(root / "buffers")], env=ENV, check=True)
    return str(root / "buffers")


def _distill(launcher, root, run, *flags):
    out = subprocess.run(launcher + ["distill", *DATA, "--buffer_path", _buffer(root),
                                     "--run_dir", str(root / run), "--syn_steps", "5",
                                     "--seed", "3", *flags],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _same_run(a, b):
    sa, sb = safe_load(a / "synthetic_last.pt"), safe_load(b / "synthetic_last.pt")
    assert torch.allclose(sa["images"], sb["images"], rtol=1e-5, atol=1e-5)
    assert sa["lrs"] == pytest.approx(sb["lrs"], rel=1e-5)
    if sa.get("soft_labels") is not None:
        assert torch.allclose(sa["soft_labels"], sb["soft_labels"], rtol=1e-5, atol=1e-5)
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["it"] for r in ma] == [r["it"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["slots"] == [dict(s, loss=pytest.approx(s["loss"], rel=1e-5)) for s in rb["slots"]]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        if "heldout" in rb:
            assert ra["heldout"] == pytest.approx(rb["heldout"], rel=1e-5)
    return ma


def test_torchrun_distill_equals_single_process(tmp_path):
    """STM with soft labels, M = 2 on 1 and on 2 ranks; evaluation shared out (3 networks
    on 2 ranks) gathers the accuracies one process measures."""
    flags = ["--num_trajectories", "2", "--Iteration", "6", "--soft_labels", "--eval_it", "6",
             "--num_eval", "3", "--epoch_eval_train", "15", "--val_size", "50",
             "--init_epoch", "2"]  # a first stage of two start epochs: the slots differ
    _distill(SINGLE, tmp_path, "one", *flags)
    out = _distill(TORCHRUN, tmp_path, "two", *flags)
    metrics = _same_run(tmp_path / "one", tmp_path / "two")
    assert all(len(r["slots"]) == 2 and "heldout" in r for r in metrics)
    # slot m of iteration t uses start epoch (2t + m) mod cap and both experts every iteration
    assert [[s["start_epoch"] for s in r["slots"]] for r in metrics] == [[0, 1]] * 6
    assert all(sorted(s["expert"] for s in r["slots"]) == [0, 1] for r in metrics)
    ea, eb = read_jsonl(tmp_path / "one" / "evals.jsonl"), read_jsonl(tmp_path / "two" / "evals.jsonl")
    assert ea[0]["ConvNetD2"]["accuracies"] == pytest.approx(eb[0]["ConvNetD2"]["accuracies"], abs=1e-3)
    assert len(eb[0]["ConvNetD2"]["accuracies"]) == 3
    assert "best set" in out.stdout and out.stdout.count("run directory") == 1  # rank 0 alone


def test_torchrun_resume_continues_as_one_process(tmp_path):
    """original-MTT, M = 4 on 2 ranks: 4 iterations, then --resume to 8 under torchrun,
    equals 8 uninterrupted iterations of one process."""
    flags = ["--method", "original-MTT", "--num_trajectories", "4", "--eval_it", "0",
             "--checkpoint_every", "2", "--expert_epochs", "1", "--max_start_epoch", "3"]
    _distill(SINGLE, tmp_path, "one", *flags, "--Iteration", "8")
    _distill(TORCHRUN, tmp_path, "two", *flags, "--Iteration", "4")
    out = subprocess.run(TORCHRUN + ["distill", "--resume", str(tmp_path / "two"), "--Iteration",
                                     "8", "--quiet"], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("resuming") == 1
    metrics = _same_run(tmp_path / "one", tmp_path / "two")
    assert len(metrics) == 8 and all(len(r["slots"]) == 4 for r in metrics)


def test_a_failing_rank_ends_the_whole_job(tmp_path):
    """One rank meets a damaged expert file (each rank loads one of the 2 experts in the
    first iteration): the job ends with that rank's one-line error, not a hang."""
    buf = _buffer(tmp_path)
    expert = next((tmp_path / "buffers").rglob("expert_001.pt"))
    expert.write_bytes(expert.read_bytes()[:200])
    t0 = time.monotonic()
    out = subprocess.run(TORCHRUN + ["distill", *DATA, "--buffer_path", buf, "--run_dir",
                                     str(tmp_path / "run"), "--num_trajectories", "2",
                                     "--Iteration", "3", "--eval_it", "0", "--syn_steps", "3"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "error: " in out.stderr and "expert_001.pt: damaged or truncated" in out.stderr
    # the other rank stops with one line too, not the backend's traceback
    assert "[rank0]: Traceback" not in out.stderr and "[rank1]: Traceback" not in out.stderr
    assert time.monotonic() - t0 < 120


def test_torchrun_baseline_shares_the_evaluation_networks(tmp_path):
    """3 evaluation networks on 2 ranks: the accuracies one process measures, printed once."""
    args = ["baseline", "--kind", "mean", *DATA, "--num_eval", "3", "--epoch_eval_train", "10"]
    outs = []
    for launcher, name in ((SINGLE, "one.json"), (TORCHRUN, "two.json")):
        p = subprocess.run(launcher + args + ["--out", str(tmp_path / name)], env=ENV,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.count("ConvNetD2:") == 1
        outs.append(json.loads((tmp_path / name).read_text()))
    one, two = (o["ConvNetD2"] for o in outs)
    assert len(two["accuracies"]) == 3
    assert two["accuracies"] == pytest.approx(one["accuracies"], abs=1e-9)
    assert two["confusion"] == one["confusion"]


def test_a_bad_collective_timeout_is_one_error_line(tmp_path):
    """TRAJDISTILL_DIST_TIMEOUT is read when torchrun starts the group: named, exit 2."""
    out = subprocess.run(TORCHRUN + ["baseline", "--kind", "mean", *DATA, "--num_eval", "2",
                                     "--epoch_eval_train", "2"],
                         env={**ENV, "TRAJDISTILL_DIST_TIMEOUT": "soon"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "error: TRAJDISTILL_DIST_TIMEOUT must be a positive number of seconds, got 'soon'" \
        in out.stderr
    assert "[rank0]: Traceback" not in out.stderr and "[rank1]: Traceback" not in out.stderr


def test_a_torchrun_worker_leaves_without_the_interpreters_shutdown(tmp_path):
    """Under torchrun (WORLD_SIZE > 1) a command ends by os._exit with its status, after its
    output: the interpreter's shutdown, which could abort a worker now and then after a
    finished job, does not run (an atexit hook stays silent). Alone it runs as usual."""
    code = ("import atexit, sys; atexit.register(lambda: print('interpreter shutdown')); "
            "from trajdistill.cli import main; "
            f"sys.exit(main(['baseline', '--kind', 'mean', '--dataset', {str(tmp_path / 'none')!r}]))")
    for world, shutdown_seen in (("2", False), ("1", True)):
        env = {**ENV, "RANK": "0", "WORLD_SIZE": world}
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error: "), p.stderr
        assert ("interpreter shutdown" in p.stdout) == shutdown_seen
