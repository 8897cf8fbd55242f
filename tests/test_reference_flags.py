"""The reference STM code's commands run unchanged (issue 12 part B): its distill.py flags,
the seed README's commands, --no_aug's student-only meaning, STM's own stop, evaluate --lr."""
import json

import pytest
import torch

from trajdistill.cli import build_parser, main
from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, default_iterations, open_buffer

# the seed README's commands, as written there
SEED_BUFFER = ("buffer --dataset=CIFAR10 --model=ConvNet --train_epochs=50 --num_experts=10 --zca "
               "--buffer_path=B --data_path=D")
SEED_DISTILL_FLAGS = ("--init_epoch=1 --lr_teacher 0.001 --dataset=CIFAR10 --ipc=1 --syn_steps=15 "
                      "--expert_epochs=1 --max_start_epoch=29 --lr_img=1000 --lr_lr=0.01 "
                      "--pix_init=noise --buffer_path=B --data_path=D --Iteration=10000 "
                      "--eval_it=200 --prev_iter=0 --wandb_name=Job_1 --load_syn_image=x.pt")
REFERENCE_ONLY = ("--method stage-MTT --fix_lr_teacher --algorithm independent-lr --cuda_gpu 0 "
                  "--load_all --max_files 1 --max_experts 1 --force_save --no_aug True")


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    """Experts made by the seed's buffer command (digits instead of CIFAR-10, no ZCA, tiny)."""
    root = tmp_path_factory.mktemp("refcompat")
    assert main(["buffer", "--dataset=digits", "--model=ConvNetD2", "--train_epochs=3",
                 "--num_experts=2", f"--buffer_path={root / 'buffers'}", "--data_path=unused",
                 "--device", "cpu", "--quiet"]) == 0
    return root


def test_seed_commands_parse_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"")  # --load_syn_image must name an existing file
    args = build_parser().parse_args(SEED_BUFFER.split())
    assert (args.dataset, args.train_epochs, args.num_experts, args.zca) == ("CIFAR10", 50, 10, True)
    args = build_parser().parse_args(["distill", *SEED_DISTILL_FLAGS.split(), *REFERENCE_ONLY.split()])
    assert args.lr_teacher == [0.001] and args.Iteration == 10000 and args.method == "stage-MTT"
    assert args.fix_lr_teacher and args.no_aug is True and args.max_files == 1
    assert build_parser().parse_args(["distill", "--no_aug"]).no_aug is True
    assert build_parser().parse_args(["distill", "--no_aug", "False"]).no_aug is False
    assert build_parser().parse_args(["distill", "--list", "0.01", "0.02"]).lr_teacher == [0.01, 0.02]


def test_seed_distill_command_runs(buffer, monkeypatch, capsys):
    """Every flag of the seed README's table, with a tiny budget on the digits."""
    monkeypatch.chdir(buffer)
    argv = ("distill --init_epoch=1 --lr_teacher 0.001 --dataset=digits --ipc=1 --syn_steps=3 "
            "--expert_epochs=1 --max_start_epoch=2 --lr_img=1000 --lr_lr=0.01 --pix_init=noise "
            f"--buffer_path={buffer / 'buffers'} --data_path=unused --Iteration=3 --eval_it=3 "
            "--prev_iter=0 --wandb_name=Job_1 --model=ConvNetD2 --num_eval=1 "
            "--epoch_eval_train=2 --device=cpu --quiet").split()
    assert main(argv) == 0
    config = json.loads((buffer / "runs" / "Job_1" / "config.json").read_text())
    assert config["iterations"] == 3 and config["lr_teacher"] == [0.001]
    assert "best set" in capsys.readouterr().out


def test_reference_only_flags_run_with_their_meaning(buffer, monkeypatch, capsys):
    monkeypatch.chdir(buffer)
    argv = (f"distill --dataset=digits --model=ConvNetD2 --buffer_path={buffer / 'buffers'} "
            "--ipc=1 --syn_steps=3 --Iteration=4 --eval_it=0 --init_epoch=2 --lr_teacher 0.01 "
            f"--wandb_name=ref --quiet --lr_init 0.01 {REFERENCE_ONLY}").split()
    assert main(argv) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    # one line each for the flags without meaning here, and for --cuda_gpu without CUDA
    assert sum("--load_all" in n for n in notes) == 1 and sum("--force_save" in n for n in notes) == 1
    assert sum("--lr_init" in n for n in notes) == 1
    assert "Traceback" not in err
    if not torch.cuda.is_available():
        assert sum("--cuda_gpu 0" in n for n in notes) == 1
    config = json.loads((buffer / "runs" / "ref" / "config.json").read_text())
    assert config["method"] == "STM" and config["learn_lr"] is False
    assert config["lr_mode"] == "independent-lr" and config["lr_teacher"] == [0.01, 0.01]
    assert config["max_experts"] == 1  # one file of at most one expert
    assert config["no_aug"] is True and config["dsa"] is True  # evaluation keeps DSA
    rows = [json.loads(l) for l in (buffer / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lrs"] == pytest.approx([0.01, 0.01]) for r in rows)  # --fix_lr_teacher
    assert {r["expert"] for r in rows} == {0}  # --max_experts 1


def test_max_files_counts_reference_files_of_ten_experts(capsys):
    from trajdistill.reference_flags import translate
    assert translate({"max_files": 2}, False, False)["max_experts"] == 20
    assert translate({"max_files": 2, "max_experts": 3}, False, False)["max_experts"] == 6
    assert translate({"cuda_gpu": 1, "device": "cpu"}, True, False)["device"] == "cuda:1"
    assert translate({"cuda_gpu": 1, "device": "cpu"}, True, True)["device"] == "cpu"
    assert "--device cpu was given" in capsys.readouterr().err
    assert translate({"algorithm": "global-lr"}, False, False)["lr_mode"] == "global-lr"


def test_unknown_method_is_refused(buffer):
    assert main(["distill", "--dataset=digits", "--model=ConvNetD2", "--method", "stage-DM",
                 f"--buffer_path={buffer / 'buffers'}", "--device", "cpu", "--quiet"]) == 2


# ----------------------------------------------------------------------------- --no_aug

def _distiller(buffer, tmp_path, **kw):
    splits = load_dataset("digits")
    store = open_buffer(buffer / "buffers" / "digits" / "ConvNetD2", splits)
    cfg = DistillConfig(ipc=1, syn_steps=4, iterations=2, eval_it=0, **kw)
    return Distiller(cfg, splits, store, tmp_path / "run", progress=False)


def test_no_aug_switches_off_the_students_augmentation_only(buffer, tmp_path, monkeypatch):
    d = _distiller(buffer, tmp_path, no_aug=True, num_eval=1, epoch_eval_train=1)
    traj = d.store.load(d.experts[0])
    assert all(a is None for a in d.problem(traj, 0, torch.Generator()).plan.augs)
    with_aug = _distiller(buffer, tmp_path, num_eval=1, epoch_eval_train=1)
    assert all(a is not None for a in with_aug.problem(traj, 0, torch.Generator()).plan.augs)
    seen = {}

    def fake_evaluate_set(images, labels, splits, lrs, models, cfg, **kw):
        seen["dsa"] = cfg.dsa
        return {m: {"mean": 0.0, "std": 0.0} for m in models}
    monkeypatch.setattr("trajdistill.run_eval.evaluate_set", fake_evaluate_set)
    d.evaluate()
    assert seen["dsa"] is True


def test_batch_train_reaches_the_evaluation_networks(buffer, tmp_path, monkeypatch):
    """The reference's --batch_train is the evaluation networks' minibatch (was ignored)."""
    seen = {}

    def fake_evaluate_set(images, labels, splits, lrs, models, cfg, **kw):
        seen["batch"] = cfg.batch_train
        return {m: {"mean": 0.0, "std": 0.0} for m in models}
    monkeypatch.setattr("trajdistill.run_eval.evaluate_set", fake_evaluate_set)
    _distiller(buffer, tmp_path, batch_train=7).evaluate()
    assert seen["batch"] == 7
    _distiller(buffer, tmp_path).evaluate()
    assert seen["batch"] == 256


# ----------------------------------------------------------------------------- STM's own stop

def test_default_iterations_rule():
    # 29 stages x (1000 + 10) + 50 x 14 decays (1000 x 0.8^14 = 44 < 50 <= 1000 x 0.8^13) + 1
    cfg = DistillConfig(max_start_epoch=29, max_duration=1000, lr_img=1000)
    assert default_iterations(cfg) == 29 * 1010 + 700 + 1
    # a short schedule still gets the reference's 20,001
    assert default_iterations(DistillConfig(max_start_epoch=2)) == 20001
    assert default_iterations(DistillConfig(method="original-MTT", max_start_epoch=29)) == 5000


def test_stm_without_iteration_ends_by_its_own_stop(buffer, monkeypatch):
    """T_max 20 and lr_img 60 (one decay to 48 < 50): the run fine-tunes and stops itself
    within 2 stages x 30 + 50 iterations, far below its default cap."""
    monkeypatch.chdir(buffer)
    assert main(["distill", "--dataset=digits", "--model=ConvNetD2", "--ipc=1", "--syn_steps=2",
                 f"--buffer_path={buffer / 'buffers'}", "--T_max=20", "--min_duration=20",
                 "--lr_img=60", "--eval_it=0", "--wandb_name=own_stop", "--device=cpu",
                 "--quiet"]) == 0
    run = buffer / "runs" / "own_stop"
    config = json.loads((run / "config.json").read_text())
    assert config["iterations"] == 20001
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["finished"] and len(rows) <= 2 * 30 + 50
    assert sum(r.get("fine_tuning", False) for r in rows) == 50


# ----------------------------------------------------------------------------- evaluate --lr

def test_evaluate_with_a_hand_set_lr(buffer, tmp_path, capsys, monkeypatch):
    from trajdistill.evaluate import EvalConfig, evaluate_set
    d = _distiller(buffer, tmp_path)
    syn_path = tmp_path / "syn.pt"
    d.synthetic_set().save(syn_path)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--syn", str(syn_path), "--dataset", "digits", "--lr", "0.05",
                 "--num_eval", "1", "--epoch_eval_train", "3", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    assert "lr 0.05 (set by --lr)" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["lrs"] == [0.05]
    splits = load_dataset("digits")
    want = evaluate_set(d.learnables.images.detach(), d.learnables.labels, splits, [0.05], ["ConvNetD2"],
                        EvalConfig(num_eval=1, epoch_eval_train=3), progress=False)
    assert got["ConvNetD2"]["accuracies"] == want["ConvNetD2"]["accuracies"]
    # a list is the per-stage schedule; --lr learned is the set's own lr (the reference's)
    seen = []

    def fake(images, labels, splits, lrs, models, *a, **k):  # validation accuracy = the lr
        seen.append(list(lrs))
        return {m: {"mean": 0.5, "std": 0.0, "val_mean": lrs[0], "val_std": 0.0,
                    "accuracies": [0.5], "per_class": [0.5] * 10} for m in models}

    monkeypatch.setattr("trajdistill.evaluate.evaluate_set", fake)
    main(["evaluate", "--syn", str(syn_path), "--dataset", "digits", "--lr", "0.01", "0.02",
          "--device", "cpu", "--quiet"])
    main(["evaluate", "--syn", str(syn_path), "--dataset", "digits", "--lr", "learned",
          "--device", "cpu", "--quiet"])
    assert seen == [[0.01, 0.02], d.lrs()]
    # without --lr: every lr of the grid and the learned one; the best on validation is kept
    seen.clear()
    main(["evaluate", "--syn", str(syn_path), "--dataset", "digits", "--device", "cpu", "--quiet"])
    # (here the largest lr always wins, so the sweep goes 2 mean grid steps past the top)
    grid = sorted({0.01, 0.003, 0.001, 0.0003, 0.0001, *d.lrs()})
    step = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1))
    tried = sorted(v for (v,) in seen)
    assert tried[:len(grid)] == grid
    assert tried[len(grid):] == pytest.approx([grid[-1] * step, grid[-1] * step ** 2])
    assert f"lr {tried[-1]:g} (chosen on validation)" in capsys.readouterr().out
