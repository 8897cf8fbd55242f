"""Bad input, as a new (or hostile) user types it: every case ends in one `error: ...` line that
names the flag or file, exit status 2, never a traceback. Mostly in-process through cli.main;
three through a real process to prove what the console shows (and Ctrl-C's exit status 130)."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from trajdistill import cli
from trajdistill.data import load_dataset
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.errors import ConfigError, TrajdistillError
from trajdistill.baselines import random_real
from trajdistill.evaluate import EvalConfig, evaluate_set
from trajdistill.experts import BufferError, ExpertConfig, train_experts
from trajdistill.io import FileFormatError
from trajdistill.synthetic import SyntheticSet

CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A real tiny buffer (digits, ConvNetD2, 2 epochs) and a gallery of wrong files."""
    root = tmp_path_factory.mktemp("bad_input")
    splits = load_dataset("digits")
    train_experts(splits, ExpertConfig(model="ConvNetD2", train_epochs=2, num_experts=1),
                  root / "buffers" / "digits" / "ConvNetD2", progress=False)
    images, labels = random_real(splits, 1)
    syn = root / "syn.pt"
    SyntheticSet(splits.preprocess(images), labels, [0.01], splits.preprocess, splits.describe(),
                 "ConvNetD2", 5).save(syn)
    (root / "notes.txt").write_text("these are not tensors\n")
    blob = torch.load(syn, weights_only=True)  # damaged sets: a field gone, NaN lr, NaN images
    torch.save({k: v for k, v in blob.items() if k != "lrs"}, root / "no_lrs.pt")
    torch.save({**blob, "lrs": [float("nan")]}, root / "nan_lr.pt")
    torch.save({**blob, "images": blob["images"] * float("nan")}, root / "nan_images.pt")
    (root / "cut.pt").write_bytes(syn.read_bytes()[:300])
    (root / "a_dir").mkdir()
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("hello")
    (root / "cut_run").mkdir()
    (root / "cut_run" / "results.json").write_text('{"table": [1')
    # JSON of the right syntax and the wrong shape
    for name, files in {"list_run": {"results.json": "[1, 2]"},
                        "short_metrics_run": {"metrics.jsonl": '{"it": 0}\n'},
                        "bad_slots_run": {"metrics.jsonl": '{"it": 0, "loss": 1.0, "lrs": [0.01], '
                                                           '"slots": [{"start_epoch": "x", "loss": 1.0}]}\n'},
                        "list_config_run": {"config.json": "[]"},
                        "bad_final_run": {"metrics.jsonl": "", "final.json":
                                          '{"message": "ok", "sets": {"distilled": {"lr": 0.01}}}'},
                        "bad_derived_run": {"metrics.jsonl": "",
                                            "config.json": '{"derived": {"lr_img": 0.01}}'},
                        "string_source_run": {"config.json": '{"source": "digits"}'}}.items():
        (root / name).mkdir()
        for file, text in files.items():
            (root / name / file).write_text(text)
    # a finished two-iteration run, and a copy whose config.json was edited by hand
    assert cli.main(["distill", "--dataset", "digits", "--model", "ConvNetD2", "--device", "cpu",
                     "--buffer_path", str(root / "buffers"), "--run_dir", str(root / "done_run"),
                     "--quiet", "--Iteration", "2", "--syn_steps", "2", "--eval_it", "0",
                     "--val_size", "0", "--select_on", "test"]) == 0
    shutil.copytree(root / "done_run", root / "edited_run")
    config = json.loads((root / "edited_run" / "config.json").read_text())
    (root / "edited_run" / "config.json").write_text(json.dumps({**config, "ipc": "two"}))
    (root / "syn_run").mkdir()
    (root / "syn_run" / "synthetic_best.pt").write_bytes(syn.read_bytes())
    shutil.copytree(root / "syn_run", root / "figures_file_run")
    (root / "figures_file_run" / "figures").write_text("not a folder")
    _image_folder(root / "two_classes", ["cat", "dog"], 2)
    _image_folder(root / "one_class", ["cat"], 2)
    # a flat folder of images + labels CSV: classes a, b (2 images each) and c (1 image)
    from PIL import Image
    (root / "flat" / "images").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (6, 6), (50 * i, 0, 0)).save(root / "flat" / "images" / f"{i}.png")
    (root / "flat" / "labels.csv").write_text("id,label\n0,a\n1,a\n2,b\n3,b\n4,c\n")
    (root / "latin1_catalog.csv").write_bytes("objid,t01\n1,caf\u00e9\n".encode("latin-1"))
    from trajdistill.gzoo2.classes import column_name, required_answers
    header = ",".join(["objid"] + [column_name(a) for a in required_answers()])
    rows = "".join(f"{i}" + ",0.5" * len(required_answers()) + "\n" for i in range(2000))
    (root / "cut_catalog.csv.gz").write_bytes(gzip.compress((header + "\n" + rows).encode())[:2000])
    (root / "flat" / "latin1.csv").write_bytes("id,label\n0,caf\u00e9\n".encode("latin-1"))
    return {"root": str(root), "buf": str(root / "buffers"), "syn": str(syn),
            "txt": str(root / "notes.txt"), "cut": str(root / "cut.pt"),
            "dir": str(root / "a_dir"), "norun": str(root / "not_a_run"),
            "missing": str(root / "missing.pt"), "cutrun": str(root / "cut_run")}


def _image_folder(root, classes, n, splits=("train", "test")):
    """train/<class>/ and test/<class>/ with n tiny real PNGs each."""
    from PIL import Image
    for split in splits:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), (40 * k, 20 * i, 90)).save(root / split / name / f"{i}.png")


DISTILL = ["distill", "--dataset", "digits", "--model", "ConvNetD2", "--device", "cpu",
           "--buffer_path", "{buf}", "--run_dir", "{root}/run", "--quiet"]
# a baseline that, were its input accepted, would be over in a second
BASELINE = ["baseline", "--num_eval", "1", "--epoch_eval_train", "1", "--device", "cpu", "--quiet"]

# (argv, what the error line must name)
CASES = [
    # the issue's own list
    (["evaluate", "--syn", "/etc/passwd", "--dataset", "digits"], "synthetic-set file"),
    (["report", "{norun}"], "is not a run directory"),
    (DISTILL + ["--lr_img", "-5"], "--lr_img"),
    (DISTILL + ["--device", CUDA], "--device"),
    (DISTILL + ["--syn_steps", "0"], "--syn_steps"),
    (DISTILL + ["--sigma", "-1"], "--sigma"),
    (["baseline", "--kind", "random", "--ipc", "100000", "--dataset", "digits", "--device", "cpu"],
     "--ipc"),
    (DISTILL + ["--load_syn_image", "{txt}"], "notes.txt: not a tensor file"),
    # numbers that are not numbers, or out of range
    (DISTILL + ["--ipc", "0"], "--ipc"),
    (DISTILL + ["--ipc", "two"], "--ipc"),
    (DISTILL + ["--ipc", "1.5"], "--ipc"),
    (DISTILL + ["--lr_teacher", "nan"], "--lr_teacher"),
    (DISTILL + ["--lr_lr", "inf"], "--lr_lr"),
    (DISTILL + ["--lr_teacher", "0"], "--lr_teacher"),
    (DISTILL + ["--Iteration", "-3"], "--Iteration"),
    (DISTILL + ["--batch_syn", ""], "--batch_syn"),
    (["buffer", "--dataset", "digits", "--num_experts", "0"], "--num_experts"),
    (["buffer", "--dataset", "digits", "--mom", "-0.5"], "--mom"),
    (["evaluate", "--syn", "{syn}", "--num_eval", "0"], "--num_eval"),
    (["baseline", "--dataset", "digits", "--lr", "-1"], "--lr"),
    (["demo", "--iterations", "0"], "--iterations"),
    (["gzoo2", "build", "--catalog", "{txt}", "--images", "{dir}", "--out", "{root}/g",
      "--aug", "0"], "--aug"),
    # unknown choices and names
    (DISTILL + ["--eval_mode", "X"], "--eval_mode"),
    (DISTILL + ["--gradient", "fast"], "--gradient"),
    (DISTILL + ["--lr_mode", "per-stage"], "--lr_mode"),
    (DISTILL + ["--method", "DATM-ish"], "--method"),
    (DISTILL + ["--algorithm", "per-stage"], "--algorithm"),  # was a note, then ignored
    (["baseline", "--kind", "median", "--dataset", "digits"], "--kind"),
    (["buffer", "--dataset", "digits", "--dsa_strategy", "blur"], "--dsa_strategy"),
    (["distill", "--dataset", "nosuchset", "--device", "cpu"], "nosuchset"),
    (["distill", "--dataset", ""], "--dataset"),
    (["distill", "--preset", "CIFAR10-ipc7", "--device", "cpu"], "CIFAR10-ipc7"),
    (["buffer", "--dataset", "digits", "--model", "NoSuchNet", "--buffer_path", "{root}/b",
      "--device", "cpu"], "NoSuchNet"),
    (DISTILL + ["--no_such_flag", "1"], "--no_such_flag"),
    (["demo", "--device", "gpu"], "--device"),
    # settings that cannot work together (checked with the buffer / the data)
    (DISTILL + ["--lr_teacher", "0.01", "0.02"], "--lr_teacher"),
    (DISTILL + ["--max_start_epoch", "50"], "max_start_epoch"),
    (DISTILL + ["--ipc", "500"], "--ipc"),
    (DISTILL + ["--val_size", "3"], "--val_size"),
    (["buffer", "--dataset", "digits", "--lr_teacher", "0.01", "0.02"], "--lr_teacher"),
    # files and folders that are missing, of the wrong kind, or damaged
    (["distill", "--dataset", "digits", "--device", "cpu", "--buffer_path", "{root}/nowhere"],
     "no expert buffer"),
    (DISTILL + ["--resume", "{root}/nowhere"], "--resume"),
    (DISTILL + ["--load_syn_image", "{dir}"], "--load_syn_image"),
    (["evaluate", "--syn", "{dir}"], "--syn"),
    (["evaluate", "--syn", "{missing}"], "--syn"),
    (["evaluate", "--syn", "{cut}", "--dataset", "digits"], "cut.pt: damaged or truncated"),
    (["evaluate", "--syn", "{txt}", "--dataset", "digits"], "notes.txt: not a tensor file"),
    (["evaluate", "--syn", "{syn}", "--out", "{dir}"], "--out"),
    (["baseline", "--dataset", "CIFAR10", "--data_path", "{root}/nowhere", "--device", "cpu"],
     "nowhere"),
    (["report", "{missing}"], "run_dir"),
    (["report", "{cutrun}"], "results.json: not valid JSON"),
    (DISTILL + ["--resume", "{norun}"], "config.json"),
    (["distill", "--preset", ""], "--preset"),
    (["export", "{txt}", "{root}/export"], "notes.txt"),
    (["export", "{dir}", "{root}/export"], "syn"),
    (["gzoo2", "build", "--catalog", "{root}/nowhere.csv", "--images", "{dir}", "--out",
      "{root}/g"], "nowhere.csv"),
    # the embedded digits take no loader options: refused, not ignored (was a misleading
    # "no expert buffer at .../digits-16px", or a baseline on the plain digits)
    (DISTILL + ["--res", "16"], "take option(s) res"),
    (["baseline", "--dataset", "digits", "--labels", "{txt}", "--num_eval", "1",
      "--epoch_eval_train", "1", "--device", "cpu", "--quiet"], "take option(s) labels"),
    # output folders and files that cannot be written (were tracebacks, some after the work)
    (DISTILL + ["--run_dir", "{txt}/run"], "--run_dir"),
    (["buffer", "--dataset", "digits", "--buffer_path", "{txt}"], "--buffer_path"),
    (["export", "{syn}", "{txt}"], "out_dir"),
    (["demo", "--run_dir", "{txt}/demo"], "--run_dir"),
    (["gzoo2", "build", "--catalog", "{txt}", "--images", "{dir}", "--out", "{txt}"], "--out"),
    (["evaluate", "--syn", "{syn}", "--dataset", "digits", "--num_eval", "1",
      "--epoch_eval_train", "1", "--device", "cpu", "--quiet", "--out", "/proc/trajdistill.json"],
     "--out"),
    (["evaluate", "--syn", "{syn}", "--dataset", "digits", "--lr", "0.01", "--lr_sweep", "0.1"],
     "--lr_sweep"),
    (["evaluate", "--syn", "{syn}", "--dataset", "digits", "--lr_sweep", "0"], "--lr_sweep"),
    # a seed beyond 64 bits (was an OverflowError traceback from torch.Generator)
    (DISTILL + ["--seed", "99999999999999999999"], "--seed"),
    # more memory than the machine has: the allocator's refusal, in one line (was a traceback)
    (DISTILL + ["--texture", "--canvas_size", "1000000", "--pix_init", "noise"], "out of memory"),
    # run files of the right syntax but the wrong shape (were AttributeError / KeyError)
    (["report", "{root}/list_run"], "results.json: expected a JSON object"),
    (["report", "{root}/short_metrics_run"], "metrics.jsonl, record 1: 'loss'"),
    (["report", "{root}/bad_slots_run"], "metrics.jsonl, record 1: 'start_epoch'"),
    (["report", "{root}/bad_final_run"], "final.json, set 'distilled': 'val_mean'"),
    (["report", "{root}/bad_derived_run"], "config.json: 'derived' should map settings"),
    (DISTILL + ["--resume", "{root}/list_config_run"], "config.json: expected a JSON object"),
    (DISTILL + ["--resume", "{root}/string_source_run"], "config.json does not say"),
    # synthetic-set files with a field missing or non-finite (were a KeyError, or a silent
    # evaluation with lr NaN / an export of NaN images)
    (["evaluate", "--syn", "{root}/no_lrs.pt", "--dataset", "digits"], "without 'lrs'"),
    (["evaluate", "--syn", "{root}/nan_lr.pt", "--dataset", "digits", "--num_eval", "1",
      "--epoch_eval_train", "1", "--device", "cpu", "--quiet"], "nan_lr.pt: 'lrs' should be"),
    (["export", "{root}/nan_images.pt", "{root}/nan_export"], "nan_images.pt: the images are not"),
    # a report asked to compare a digits run with other data (was a RuntimeError in torch.cat)
    (["report", "{root}/syn_run", "--dataset", "{root}/two_classes"], "--dataset"),
    # a run directory the report cannot write in (was a FileExistsError traceback)
    (["report", "{root}/figures_file_run"], "figures: expected a folder"),
    # labels CSVs and folders that cannot make a classification dataset (a UnicodeDecodeError
    # traceback; one class or a class without a test image trained and "tested" silently)
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "latin1.csv"], "latin1.csv: not UTF-8"),
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "labels.csv", "--classes", "a"],
     "only one class"),
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "labels.csv"], "c (1) have fewer than 2"),
    (BASELINE + ["--dataset", "{root}/one_class"], "one class folder"),
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "labels.csv", "--classes", "a,b",
                 "--class_names", "x,x"], "--class_names"),
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "labels.csv", "--classes", "a,b",
                 "--crop", "center"], "--crop center needs --res"),
    # catalogs that are not UTF-8 CSV, or a cut .gz (a codec message without the file, an
    # EOFError traceback), and the builder's own ranges named by flag
    (["gzoo2", "build", "--catalog", "{root}/latin1_catalog.csv", "--images", "{dir}", "--out",
      "{root}/g"], "latin1_catalog.csv: not UTF-8"),
    (["gzoo2", "build", "--catalog", "{root}/cut_catalog.csv.gz", "--images", "{dir}", "--out",
      "{root}/g"], "cut_catalog.csv.gz: damaged or truncated gzip"),
    (["gzoo2", "build", "--catalog", "{txt}", "--images", "{dir}", "--out", "{root}/g",
      "--per-class", "5", "--test-per-class", "10"], "--test-per-class"),
    # settings that fail with the buffer: an --expert_epochs it cannot hold (was reported as
    # "max_start_epoch (-1)"), a --prev_iter past --Iteration (ran nothing, exit status 0)
    (DISTILL + ["--expert_epochs", "3"], "--expert_epochs"),
    (DISTILL + ["--prev_iter", "5", "--Iteration", "2"], "--prev_iter"),
    # --resume: settings of the run's config.json named as such (was "--ipc must be ..." for a
    # flag never given), and an --Iteration the run has passed (nothing ran, exit status 0,
    # and config.json was rewritten with the smaller --Iteration)
    (["distill", "--resume", "{root}/edited_run", "--quiet"], "edited_run/config.json: --ipc"),
    (["distill", "--resume", "{root}/done_run", "--Iteration", "1", "--quiet"],
     "--Iteration 1: "),
    # an initial set of NaN images (was distilled, saved, and refused only when read back)
    (DISTILL + ["--load_syn_image", "{root}/nan_images.pt", "--Iteration", "2", "--eval_it", "0",
                "--syn_steps", "2"], "nan_images.pt: the images are not all finite"),
    # a flat image folder without --labels (was "DIR/train: missing directory"), --labels a
    # folder (was "no such file")
    (BASELINE + ["--dataset", "{root}/flat"], "needs --labels CSV"),
    (BASELINE + ["--dataset", "{root}/flat", "--labels", "{dir}"], "a directory; expected"),
    # flags that the command would ignore (it ran without them, exit status 0)
    (BASELINE + ["--dataset", "digits", "--kind", "mean", "--ipc", "5"], "--ipc is for --kind random"),
    (["evaluate", "--syn", "{syn}", "--dataset", "digits", "--zca", "--num_eval", "1",
      "--epoch_eval_train", "1", "--device", "cpu", "--quiet"], "--zca"),
]


def _run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit through SystemExit(2)
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,culprit", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_gets_one_error_line_naming_the_culprit(env, argv, culprit, capsys):
    code, err = _run_main([a.format(**env) for a in argv], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert culprit in errors[0], err
    assert "usage:" not in err and "weights_only=False" not in err


def test_every_subcommand_of_the_parser_has_bad_input_cases():
    """A new subcommand (or one renamed) needs its own bad-input cases here."""
    from trajdistill.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {argv[0] for argv, _ in CASES} == set(sub.choices)


def test_every_package_error_is_one_type_and_a_bug_keeps_its_traceback(monkeypatch):
    for error in (ConfigError, BufferError, FileFormatError):
        assert issubclass(error, TrajdistillError)

    def bug(args):
        raise ZeroDivisionError("a genuine bug")
    monkeypatch.setattr(cli.runs, "cmd_export", bug)  # the export subcommand's module
    with pytest.raises(ZeroDivisionError):
        cli.main(["export", __file__, "out"])


@pytest.mark.parametrize("field,value,flag", [("syn_steps", 0, "--syn_steps"),
                                              ("sigma", 0.0, "--sigma"),
                                              ("lr_img", -5.0, "--lr_img"),
                                              ("lr_lr", float("nan"), "--lr_lr"),
                                              # were TypeError / AttributeError / RuntimeError /
                                              # AssertionError tracebacks, a ValueError from the
                                              # schedule, or accepted and used as garbage
                                              ("lr_teacher", 0.01, "--lr_teacher"),
                                              ("lr_teacher", [float("nan")], "--lr_teacher"),
                                              ("ipc", 1.5, "--ipc"),
                                              ("learn_lr", "no", "--learn_lr"),
                                              ("device", "gpu", "--device"),
                                              ("dsa_strategy", 5, "--dsa_strategy"),
                                              ("eval_batched", "maybe", "--eval_batched"),
                                              ("eval_models", ["NoSuchNet"], "NoSuchNet"),
                                              ("sample_method", "sometimes", "--sample_method"),
                                              ("lr_y", float("nan"), "--lr_y"),
                                              ("seed", 2 ** 70, "--seed")])
def test_python_configs_are_checked_before_torch_optim_sees_them(env, tmp_path, field, value, flag):
    splits = load_dataset("digits")
    store = open_buffer(f"{env['buf']}/digits/ConvNetD2", splits)
    with pytest.raises(ConfigError, match=flag):
        Distiller(DistillConfig(**{field: value}), splits, store, tmp_path, progress=False)


@pytest.mark.parametrize("kw,flag", [({"num_experts": 0}, "--num_experts"),
                                     ({"train_epochs": 0}, "--train_epochs"),
                                     ({"lr_teacher": float("nan")}, "--lr_teacher"),
                                     ({"mom": -1.0}, "--mom"),
                                     ({"batch_train": 0}, "--batch_train"),
                                     ({"decay": "yes"}, "--decay"),
                                     ({"device": "gpu"}, "--device")])
def test_python_expert_configs_are_checked_before_any_training(tmp_path, kw, flag):
    """ExpertConfig gets the buffer flags' kinds (were torch.optim ValueErrors, a RuntimeError
    from torch.device or tensor.split, or an empty buffer / NaN experts accepted)."""
    cfg = ExpertConfig(**{"model": "ConvNetD2", "train_epochs": 1, "num_experts": 1, **kw})
    with pytest.raises(ConfigError, match=flag):
        train_experts(load_dataset("digits"), cfg, tmp_path / "buf", progress=False)
    assert not (tmp_path / "buf").exists()


@pytest.mark.parametrize("kw,lrs,flag", [({"num_eval": 0}, [0.01], "--num_eval"),
                                         ({"epoch_eval_train": 0}, [0.01], "--epoch_eval_train"),
                                         ({"batch_train": 0}, [0.01], "--batch_train"),
                                         ({"device": "gpu"}, [0.01], "--device"),
                                         ({}, [float("nan")], "--lr"),
                                         ({}, [-1.0], "--lr"),
                                         ({}, [], "--lr")])
def test_python_eval_configs_are_checked_before_any_training(kw, lrs, flag):
    """EvalConfig and the lrs of evaluate_set get the evaluate flags' kinds (were IndexError,
    RuntimeError and torch.optim ValueError tracebacks, or an evaluation at lr NaN)."""
    splits = load_dataset("digits")
    images, labels = random_real(splits, 1)
    with pytest.raises(ConfigError, match=flag):
        evaluate_set(images, labels, splits, lrs, ["ConvNetD2"],
                     EvalConfig(**{"num_eval": 1, "epoch_eval_train": 1, **kw}), progress=False)


def _console(*argv: str, **kw) -> subprocess.Popen:
    # a suite started in the background (`./test.sh &`) inherits SIGINT ignored, and a Python
    # started with it ignored never raises KeyboardInterrupt: the console's child gets the
    # terminal's default back, as a command typed at a prompt has it
    default_sigint = None if sys.platform == "win32" else (
        lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.Popen([sys.executable, "-m", "trajdistill.cli", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=default_sigint,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, **kw)


@pytest.mark.slow
def test_console_shows_one_line_for_a_foreign_file_and_an_unknown_flag():
    p = _console("evaluate", "--syn", "/etc/passwd", "--dataset", "digits")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: /etc/passwd: not a tensor")
    p = _console("distill", "--ipc", "0")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --ipc: expected a positive integer, got '0'")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    p = _console("demo", "--run_dir", str(tmp_path / "demo"), "--iterations", "5",
                 cwd=tmp_path)
    # wait until the demo is at work (its first line), then interrupt it as Ctrl-C does
    assert p.stdout.readline().startswith("[demo]")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"


def test_evaluate_lr_sweep_includes_the_learned_lr(env, tmp_path, capsys):
    """evaluate --lr_sweep: the set's learned lr (0.01 here) is one of the candidates."""
    out = tmp_path / "sweep.json"
    assert cli.main(["evaluate", "--syn", env["syn"], "--dataset", "digits", "--num_eval", "1",
                 "--epoch_eval_train", "2", "--lr_sweep", "0.1", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())["ConvNetD2"]
    assert [e["lr"] for e in r["sweep"]] == [0.1, 0.01]
    assert "chosen on validation" in capsys.readouterr().out


def test_a_bad_tf32_setting_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv("TRAJDISTILL_TF32", "yes")
    assert cli.main(["baseline", "--dataset", "digits", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TRAJDISTILL_TF32" in err[0]


def test_a_warning_is_one_plain_line(env, capsys):
    """A warning about the user's input reads like an error line: `warning: ...`, one line,
    without Python's `file:line: UserWarning:` prefix and the source line that raised it."""
    # (4 images then leave no training image outside the validation split: that error line
    # follows, and is not what this tests)
    _, err = _run_main([a.format(**env) for a in BASELINE + [
        "--dataset", "{root}/flat", "--labels", "labels.csv", "--classes", "a,b"]], capsys)
    warned = [line for line in err.splitlines() if "rows used" in line]
    assert warned == ["warning: " + warned[0][len("warning: "):]], err
    assert "4 of 5 rows used; left out 1 with a class not in --classes" in warned[0], err
    assert "UserWarning" not in err and "load_labelled_folder" not in err, err
