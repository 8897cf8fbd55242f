"""Crash-proof runs: kill -9 and resume, atomic files, the divergence guard, safe loading."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trajdistill.data import load_dataset
from trajdistill.distill import ConfigError, DistillConfig, Distiller, DivergenceError, open_buffer
from trajdistill.experts import TrajectoryStore
from trajdistill.io import FileFormatError, safe_load
from trajdistill.matching import MatchResult

from conftest import DEVICE, REFERENCE  # TRAJDISTILL_TEST_DEVICE

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DISTILL = ["distill", "--dataset", "digits", "--model", "ConvNetD2", "--ipc", "1", "--syn_steps", "5",
           "--Iteration", "30", "--eval_it", "0", "--checkpoint_every", "3", "--min_duration", "10",
           "--lr_img", "30", "--device", DEVICE, "--quiet"]


def cli(*args):
    return [sys.executable, "-m", "trajdistill.cli", *map(str, args)]


@pytest.fixture(scope="module")
def buffers(digits_buffers):
    return digits_buffers  # 2 ConvNetD2 experts x 4 epochs at ROOT/digits/ConvNetD2 (read-only)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_when(proc, ready, timeout=120):
    """SIGKILL the process as soon as ready() holds (or fail if it ends first)."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_distillation_resumes_to_the_uninterrupted_result(buffers, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli(*DISTILL, "--buffer_path", buffers, "--run_dir", whole), env=ENV, check=True)

    proc = subprocess.Popen(cli(*DISTILL, "--buffer_path", buffers, "--run_dir", killed), env=ENV)
    kill_when(proc, lambda: lines(killed / "metrics.jsonl") >= 7)
    for stop_at in (16, 25):  # kill the resumed run again, further on
        proc = subprocess.Popen(cli("distill", "--resume", killed, "--quiet"), env=ENV)
        kill_when(proc, lambda: lines(killed / "metrics.jsonl") >= stop_at)
    subprocess.run(cli("distill", "--resume", killed, "--quiet"), env=ENV, check=True)

    a = torch.load(whole / "synthetic_last.pt", weights_only=True)
    b = torch.load(killed / "synthetic_last.pt", weights_only=True)
    assert torch.allclose(a["images"], b["images"], atol=1e-6, rtol=1e-5)
    assert a["lrs"] == pytest.approx(b["lrs"], rel=1e-6)
    ra = [json.loads(l) for l in (whole / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in rb] == list(range(30))
    for key in ("start_epoch", "expert", "cap", "level_up", "reset", "r"):
        assert [r.get(key) for r in ra] == [r.get(key) for r in rb], key
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-5)
    sa = torch.load(whole / "checkpoint.pt", weights_only=True)["schedule"]
    sb = torch.load(killed / "checkpoint.pt", weights_only=True)["schedule"]
    assert sa["cap"] == sb["cap"] and sa["history"] == pytest.approx(sb["history"], rel=1e-5)


@pytest.mark.slow
def test_killed_expert_training_resumes_and_leaves_no_half_file(tmp_path):
    args = ["buffer", "--dataset", "digits", "--model", "ConvNetD2", "--train_epochs", "3",
            "--num_experts", "3", "--device", DEVICE, "--quiet"]
    subprocess.run(cli(*args, "--buffer_path", tmp_path / "whole"), env=ENV, check=True)
    root = tmp_path / "killed" / "digits" / "ConvNetD2"
    proc = subprocess.Popen(cli(*args, "--buffer_path", tmp_path / "killed"), env=ENV)
    kill_when(proc, lambda: (root / "expert_000.pt").exists())
    # whatever the kill interrupted, only whole expert files carry the final name
    for f in root.glob("expert_*.pt"):
        TrajectoryStore.open(root).load(int(f.stem.split("_")[1]))
    subprocess.run(cli(*args, "--buffer_path", tmp_path / "killed"), env=ENV, check=True)
    a = TrajectoryStore.open(tmp_path / "whole" / "digits" / "ConvNetD2")
    b = TrajectoryStore.open(root)
    assert a.indices() == b.indices() == [0, 1, 2]
    for i in a.indices():
        if DEVICE == "cpu":
            assert torch.equal(a.load(i), b.load(i))
        else:  # CUDA's atomic additions (DSA's grid_sample backward) sum in any order
            assert torch.allclose(a.load(i), b.load(i), rtol=1e-4, atol=1e-6)


def test_truncated_checkpoint_and_trajectory_are_detected(buffers, tmp_path):
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=2, eval_it=0), splits, store,
                  tmp_path / "run", progress=False)
    d.run()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(FileFormatError, match="checkpoint.pt: damaged or truncated"):
        Distiller.resume(tmp_path / "run", splits, store, progress=False)
    traj = buffers / "digits" / "ConvNetD2" / "expert_001.pt"
    cut = tmp_path / "expert_001.pt"
    cut.write_bytes(traj.read_bytes()[:-300])
    with pytest.raises(FileFormatError, match="expert_001.pt: damaged or truncated"):
        safe_load(cut)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the payload is written by plain pickle on purpose
def test_pickle_with_code_payload_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"images": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(FileFormatError, match="refused to load"):
        safe_load(path)
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(FileFormatError):
        safe_load(path)
    assert not (tmp_path / "pwned").exists()


def test_planted_nan_is_refused_then_repeated_failure_stops_the_run(buffers, tmp_path):
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=20, eval_it=0, max_failures=3),
                  splits, store, tmp_path / "run", progress=False)
    real = d.grad_fn
    poisoned = {4, 7, 8, 9}

    def sometimes_nan(problem, images, log_lr):
        r = real(problem, images, log_lr)
        if d.iteration in poisoned:
            r = MatchResult(r.loss, r.grad_images.clone().index_fill_(0, torch.tensor([0]), float("nan")),
                            r.grad_log_lr)
        return r

    d.grad_fn = sometimes_nan
    for _ in range(4):
        d.step()
    before = d.learnables.images.detach().clone(), d.lrs()
    rec = d.step()  # iteration 4: NaN gradient
    assert rec["diverged"] == "non-finite image gradient"
    assert torch.equal(d.learnables.images.detach(), before[0]) and d.lrs() == before[1]
    d.step(), d.step()  # 5, 6 fine: the failure count resets
    assert d.guard.failures == 0
    with pytest.raises(DivergenceError, match="3 iterations in a row"):
        d.run()
    assert torch.isfinite(d.learnables.images).all()
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in rows if "diverged" in r] == [7, 8, 9]


def test_an_update_that_overflows_is_rolled_back(buffers, tmp_path):
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=5, eval_it=0, **REFERENCE), splits,
                  store, tmp_path / "run", progress=False)
    real = d.grad_fn
    d.grad_fn = lambda p, x, lr: MatchResult(1.0, torch.full_like(x, 3e38), real(p, x, lr).grad_log_lr)
    d.step()
    good = d.learnables.images.detach().clone()
    rec = d.step()
    assert rec["diverged"] == "the update made images non-finite"
    assert torch.equal(d.learnables.images.detach(), good)


def test_seed_flags_prev_iter_and_load_syn_image_continue_a_run(buffers, tmp_path):
    """The seed's way to continue: start from saved images and count on from --prev_iter."""
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    first = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=4, eval_it=0), splits, store,
                      tmp_path / "first", progress=False)
    first.run()
    bare = tmp_path / "images_4.pt"  # the reference code saved a bare image tensor
    torch.save(first.learnables.images.detach().clone(), bare)
    for source in (bare, tmp_path / "first" / "synthetic_last.pt"):
        d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=6, eval_it=0, prev_iter=4,
                                    load_syn_image=str(source)), splits, store,
                      tmp_path / f"second_{source.stem}", progress=False)
        assert torch.equal(d.learnables.images.detach(), first.learnables.images.detach())
        d.run()
        rows = [json.loads(l) for l in d.run_dir.metrics_path.read_text().splitlines()]
        assert [r["it"] for r in rows] == [4, 5]
    with pytest.raises(Exception, match="expected an image tensor of shape"):
        torch.save(torch.zeros(3, 1, 8, 8), tmp_path / "wrong.pt")
        Distiller(DistillConfig(ipc=1, load_syn_image=str(tmp_path / "wrong.pt")), splits, store,
                  tmp_path / "third", progress=False)


def test_original_mtt_resumes_to_the_uninterrupted_result(buffers, tmp_path):
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    cfg = dict(method="original-MTT", ipc=1, syn_steps=3, eval_it=0, checkpoint_every=2,
               device=DEVICE)
    whole = Distiller(DistillConfig(iterations=6, **cfg), splits, store, tmp_path / "whole",
                      progress=False)
    whole.run()
    part = Distiller(DistillConfig(iterations=4, **cfg), splits, store, tmp_path / "part",
                     progress=False)
    part.run()
    resumed = Distiller.resume(tmp_path / "part", splits, store, progress=False, iterations=6)
    assert resumed.iteration == 4
    resumed.run()
    assert torch.allclose(resumed.learnables.images, whole.learnables.images, atol=1e-6)
    rows = lambda d: [json.loads(l)["start_epoch"] for l in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "part") == rows(tmp_path / "whole")


def test_soft_label_logits_resume_to_the_uninterrupted_result(buffers, tmp_path):
    """Soft labels: the label logits and their optimiser's momentum are checkpointed, so a
    resumed run equals an uninterrupted one; a hard-label run refuses a soft checkpoint."""
    splits = load_dataset("digits")
    store = open_buffer(buffers / "digits" / "ConvNetD2", splits)
    cfg = dict(checkpoint_every=2, ipc=1, syn_steps=3, eval_it=0, soft_labels=True, lr_y=5.0,
               lr_img=30, device=DEVICE)
    whole = Distiller(DistillConfig(iterations=6, **cfg), splits, store, tmp_path / "whole",
                      progress=False)
    start = whole.learnables.label_logits.detach().clone()
    whole.run()
    assert not torch.allclose(whole.learnables.label_logits, start)   # the logits were updated
    part = Distiller(DistillConfig(iterations=4, **cfg), splits, store, tmp_path / "part",
                     progress=False)
    part.run()
    resumed = Distiller.resume(tmp_path / "part", splits, store, progress=False, iterations=6)
    assert torch.equal(resumed.learnables.label_logits.detach(), part.learnables.label_logits.detach())
    resumed.run()
    assert torch.allclose(resumed.learnables.label_logits, whole.learnables.label_logits, atol=1e-6)
    assert torch.allclose(resumed.learnables.images, whole.learnables.images, atol=1e-6)
    blob = torch.load(tmp_path / "whole" / "synthetic_last.pt", weights_only=True)
    assert torch.allclose(blob["soft_labels"], whole.learnables.label_logits.detach())
    # a hard-label run cannot resume a soft-label checkpoint by mistake
    hard = Distiller(DistillConfig(iterations=6, **{**cfg, "soft_labels": False}), splits, store,
                     tmp_path / "hard", progress=False)
    with pytest.raises(ConfigError, match="soft labels"):
        hard.load_state_dict(torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True))
