"""STM's independent-lr mode inside the loop: one lr per stage, copied on level-up."""
import pytest
import torch

from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer

from conftest import DEVICE, REFERENCE  # TRAJDISTILL_TEST_DEVICE


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), tmp_path_factory.mktemp("modes")


def test_independent_lr_adds_a_stage_lr_on_level_up(setup):
    splits, store, root = setup
    # sigma 0.1 and min_duration 10: the first test (10 held-out losses) passes on any fall
    cfg = DistillConfig(ipc=1, syn_steps=3, iterations=40, eval_it=0, lr_mode="independent-lr",
                        init_epoch=2, lr_teacher=[0.01, 0.02], lr_lr=0.01, sigma=0.1,
                        min_duration=10, lr_img=30, pix_init="real")
    d = Distiller(cfg, splits, store, root / "run", progress=False)
    assert d.lrs() == pytest.approx([0.01, 0.02])
    records = [d.step() for _ in range(10)]
    assert records[-1]["level_up"] and d.schedule.cap == 3
    assert len(d.learnables.log_lrs) == 3 and d.lrs()[2] == pytest.approx(d.lrs()[1])  # a copy of the last
    assert all(g["lr"] == pytest.approx(0.01 * 3) for o in d.learnables.opt_lrs for g in o.param_groups)
    # each start epoch t < cap updated its own lr only
    before = d.lrs()
    rec = d.step()
    changed = [k for k, (a, b) in enumerate(zip(before, d.lrs())) if a != b]
    assert changed == [rec["start_epoch"]]


def test_global_lr_keeps_one_lr(setup):
    splits, store, root = setup
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=12, eval_it=0, sigma=0.1,
                                min_duration=10, **{**REFERENCE, "lr_img": 30}), splits, store,
                                root / "g",
                  progress=False)
    for _ in range(12):
        d.step()
    assert d.schedule.cap >= 2 and len(d.learnables.log_lrs) == 1


def test_learn_lr_false_keeps_the_lr_fixed(setup):
    splits, store, root = setup
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=3, eval_it=0, learn_lr=False,
                                **REFERENCE),
                  splits, store, root / "f", progress=False)
    for _ in range(3):
        d.step()
    assert d.lrs() == pytest.approx([0.01])


def test_compile_flag_reaches_the_matching_problems(setup):
    """--compile: parsed, kept in DistillConfig, passed to every MatchProblem of the loop
    (what it computes is tests/test_matching.py's; nothing is compiled here)."""
    from trajdistill.cli import build_parser
    splits, store, root = setup
    assert build_parser().parse_args(["distill", "--compile"]).compile is True
    assert build_parser().parse_args(["distill"]).compile is None  # auto (gradient_choice)
    for flag in (False, True):
        d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=1, eval_it=0, compile=flag),
                      splits, store, root / f"compile{flag}", progress=False)
        assert d.problem(store.load(0), 1, torch.Generator()).compile is flag


def test_a_run_chooses_its_step_kernel_once_and_builds_one_student(setup, monkeypatch):
    """Every problem of a run computes its steps with the kernel the run chose (here, on a
    CPU without --compile: the eager one, as a problem built on its own would choose), and
    --lr_teacher auto and --gradient auto measure on the run's own student network."""
    from trajdistill import gradient_choice, initial, kernels
    splits, store, root = setup
    built = []
    real = initial.run_student
    monkeypatch.setattr(initial, "run_student", lambda *a: built.append(1) or real(*a))
    monkeypatch.setattr(gradient_choice, "run_student", initial.run_student)
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=1, eval_it=0,
                                lr_teacher=["auto"], gradient="auto"),
                  splits, store, root / "kernel", progress=False)
    assert d.cfg.derived["lr_teacher"] and d.cfg.derived["gradient"]  # both were measured
    assert len(built) == 1
    one = d.problem(store.load(0), 1, torch.Generator())
    other = d.problem(store.load(1), 2, torch.Generator())
    assert one.kernel is other.kernel is d.kernel
    assert d.kernel is kernels.choose(graphed=one.graphed, compiled=one.compiled)


def test_gradient_memory_keeps_steps_and_changes_nothing_else(setup, capsys):
    """--gradient_memory: the kept steps follow the budget (one step's measured graph), a
    whole run gives the images and lr of the plain lean walk, and with --gradient unroll
    it is refused."""
    from trajdistill.matching import step_graph_bytes
    splits, store, root = setup
    base = dict(ipc=2, syn_steps=6, iterations=3, eval_it=0, seed=3, device=DEVICE)
    lean = Distiller(DistillConfig(**base), splits, store, root / "lean", progress=False)
    per_step = step_graph_bytes(lean.problem(store.load(0), 1, torch.Generator()),
                                lean.learnables.images, lean.learnables.log_lrs[0].exp())
    budget = 2.5 * per_step / 2**30                  # room for 2 steps' graphs
    hybrid = Distiller(DistillConfig(**base, gradient_memory=budget), splits, store,
                       root / "hybrid", progress=True)
    assert hybrid.problem(store.load(0), 1, torch.Generator()).keep_steps == 2
    assert "the last 2 of 6 unrolled steps keep their graphs" in capsys.readouterr().err
    big = Distiller(DistillConfig(**base, gradient_memory=1000.0), splits, store,
                    root / "big", progress=False)
    assert big.problem(store.load(0), 1, torch.Generator()).keep_steps == 6
    x0 = lean.learnables.images.detach().clone()
    lean.run()
    hybrid.run()
    # float32 and ReLU ties (README, --compile): the image updates agree to about 1e-3, the
    # exact identity is test_matching's float64 one
    moved, moved_lean = hybrid.learnables.images.detach() - x0, lean.learnables.images.detach() - x0
    assert float((moved - moved_lean).norm() / moved_lean.norm()) < 1e-2
    assert hybrid.lrs() == pytest.approx(lean.lrs(), rel=1e-3)
    with pytest.raises(ConfigError, match="--gradient_memory"):
        Distiller(DistillConfig(**base, gradient="unroll", gradient_memory=1.0), splits, store,
                  root / "x", progress=False)


def test_cuda_graphs_follow_the_device_and_refuse_what_cannot_be(setup):
    """--cuda_graphs: auto records the walk's steps exactly where there is CUDA (and not with
    --compile, the other way to run them); on without CUDA, on with --compile, or a word
    that is not a choice are refused by name."""
    splits, store, root = setup
    base = dict(ipc=1, syn_steps=2, iterations=1, eval_it=0, device=DEVICE)
    auto = Distiller(DistillConfig(**base), splits, store, root / "g_auto", progress=False)
    problem = auto.problem(store.load(0), 1, torch.Generator())
    assert problem.cuda_graphs == problem.graphed == DEVICE.startswith("cuda")
    off = Distiller(DistillConfig(**base, cuda_graphs="off"), splits, store, root / "g_off",
                    progress=False)
    assert not off.problem(store.load(0), 1, torch.Generator()).cuda_graphs
    # the rule itself, on every device kind (not only the one this suite runs on)
    from trajdistill.cuda_graphs import wanted
    assert wanted("auto", "cuda", False) and wanted("on", "cuda", False)
    assert not wanted("auto", "cuda", True)  # --compile runs the steps its own way
    assert not wanted("off", "cuda", False) and not wanted("auto", "cpu", False)
    bad = [dict(cuda_graphs="maybe")]
    if DEVICE == "cpu":
        bad.append(dict(cuda_graphs="on"))
    else:
        bad.append(dict(cuda_graphs="on", compile=True))
    for extra in bad:
        with pytest.raises(ConfigError, match="--cuda_graphs"):
            Distiller(DistillConfig(**base, **extra), splits, store, root / "g_bad",
                      progress=False)


def test_autocast_reaches_the_matching_problems_and_refuses_compile(setup):
    """--autocast bf16: parsed, passed to every MatchProblem as torch.bfloat16 (off: None);
    with --compile, or a word that is not a choice, refused by name. (What it computes:
    tests/test_matching.py.)"""
    from trajdistill.cli import build_parser
    splits, store, root = setup
    assert build_parser().parse_args(["distill", "--autocast", "bf16"]).autocast == "bf16"
    base = dict(ipc=1, syn_steps=2, iterations=1, eval_it=0, device=DEVICE)
    for word, dtype in (("off", None), ("bf16", torch.bfloat16)):
        d = Distiller(DistillConfig(**base, autocast=word), splits, store, root / f"ac_{word}",
                      progress=False)
        assert d.problem(store.load(0), 1, torch.Generator()).autocast is dtype
    for extra in (dict(autocast="bf16", compile=True), dict(autocast="fp16")):
        with pytest.raises(ConfigError, match="--autocast"):
            Distiller(DistillConfig(**base, **extra), splits, store, root / "ac_bad",
                      progress=False)


def test_each_record_says_how_far_the_images_moved(setup):
    """`drift` = ||X - X0|| / ||X0||. Adam's first step moves every pixel whose gradient is not
    zero by exactly its lr (m / sqrt(v) = sign(g) at step 1, up to eps), so after one step the
    drift is lr * sqrt(#moved pixels) / ||X0||, computed here from the images themselves."""
    splits, store, root = setup
    d = Distiller(DistillConfig(ipc=1, syn_steps=3, iterations=3, eval_it=0, img_optimizer="adam",
                                lr_img=0.01, pix_init="real", lr_teacher=[0.01]),
                  splits, store, root / "drift", progress=False)
    x0 = d.learnables.images.detach().clone()
    first = d.step()
    moved = (d.learnables.images.detach() - x0).abs()
    changed = int((moved > 0).sum())
    assert changed > 0 and moved.max() == pytest.approx(0.01, rel=1e-4)
    assert first["drift"] == pytest.approx(0.01 * changed ** 0.5 / float(x0.norm()), rel=1e-3)
    later = [d.step()["drift"] for _ in range(2)]
    assert later[-1] == pytest.approx(float((d.learnables.images.detach() - x0).norm() / x0.norm()), rel=1e-6)
