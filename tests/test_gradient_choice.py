"""--gradient auto (the default): the plain unroll where its graph fits a quarter of the free
memory, the lean walk where it does not or where --compile / --gradient_memory ask for it;
then --compile auto: on for a large lean walk on a CPU with a C++ compiler; each choice and
its reason recorded (issue 23)."""
import json

import pytest
import torch

from trajdistill import gradient_choice
from trajdistill.distill import DistillConfig, Distiller, open_buffer, resolve
from trajdistill.matching import MatchProblem, plan_unroll, step_graph_bytes
from trajdistill.models import FlatModel, build_model

GB = 2**30


@pytest.fixture(scope="module")
def store(digits, digits_buffers):
    return open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)


def test_the_unroll_graph_is_one_measured_step_times_syn_steps(digits, store):
    cfg = resolve(DistillConfig(ipc=2, syn_steps=7, gradient="lean"), digits, store)
    need = gradient_choice.unroll_bytes(cfg, digits, store)
    # one step measured independently: the same network, start and minibatch of 20 images
    student = FlatModel.wrap(build_model("ConvNetD2", 1, 10, (8, 8)))
    theta = store.load(0)[0].float()
    plan = plan_unroll(20, 1, 20, (8, 8), cfg.dsa_strategy, torch.Generator().manual_seed(1))
    one = step_graph_bytes(MatchProblem(student, theta, theta, torch.arange(10).repeat_interleave(2),
                                        plan), torch.randn(20, 1, 8, 8), torch.tensor(0.01))
    # (the augmentation's draws differ: a percent either way)
    assert need == pytest.approx(7 * one, rel=0.01) and one > 20 * 64 * 4
    assert gradient_choice.unroll_bytes(
        resolve(DistillConfig(ipc=2, syn_steps=14, gradient="lean"), digits, store),
        digits, store) == 2 * need


@pytest.mark.parametrize("free,method", [(64 * GB, "unroll"), (2**20, "lean"), (None, "lean")])
def test_auto_takes_the_unroll_where_it_fits_a_quarter_of_the_free_memory(digits, store, free,
                                                                          method, monkeypatch):
    monkeypatch.setattr(gradient_choice, "available_bytes", lambda device: free)
    cfg = resolve(DistillConfig(ipc=1, syn_steps=5), digits, store)
    assert cfg.gradient == method
    why = cfg.derived["gradient"]["from"]
    assert why.startswith("--gradient auto: ")
    assert ("fits" in why) == (method == "unroll")


def test_explicit_settings_and_the_lean_walks_own_flags_win(digits, store, monkeypatch):
    monkeypatch.setattr(gradient_choice, "available_bytes", lambda device: 64 * GB)
    assert resolve(DistillConfig(gradient="lean"), digits, store).gradient == "lean"
    assert "gradient" not in resolve(DistillConfig(gradient="lean"), digits, store).derived
    assert resolve(DistillConfig(gradient_memory=0.5), digits, store).gradient == "lean"
    assert resolve(DistillConfig(compile=True), digits, store).gradient == "lean"
    from trajdistill.errors import ConfigError
    with pytest.raises(ConfigError, match="--gradient_memory"):
        resolve(DistillConfig(gradient="unroll", gradient_memory=0.5), digits, store)
    with pytest.raises(ConfigError, match="--gradient must be one of auto, "):
        resolve(DistillConfig(gradient="fast"), digits, store)


def test_the_run_records_the_method_and_computes_the_unrolls_gradient(digits, store, tmp_path,
                                                                      monkeypatch):
    """An auto run that took the unroll is the explicit unroll run, number for number, and
    config.json says which method ran and why."""
    monkeypatch.setattr(gradient_choice, "available_bytes", lambda device: 64 * GB)
    base = dict(ipc=1, syn_steps=4, iterations=3, eval_it=0, lr_teacher=[0.01])
    auto = Distiller(DistillConfig(**base), digits, store, tmp_path / "auto", progress=False)
    auto.run()
    explicit = Distiller(DistillConfig(**base, gradient="unroll"), digits, store,
                         tmp_path / "unroll", progress=False)
    explicit.run()
    assert torch.equal(auto.learnables.images.detach(), explicit.learnables.images.detach())
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["gradient"] == "unroll" and "fits" in saved["derived"]["gradient"]["from"]


def test_compile_auto_is_off_for_the_unroll_and_for_small_problems(digits, store, monkeypatch):
    monkeypatch.setattr(gradient_choice, "available_bytes", lambda device: 64 * GB)
    unroll = resolve(DistillConfig(ipc=1, syn_steps=5), digits, store)
    assert unroll.gradient == "unroll" and unroll.compile is False
    assert "plain unroll runs" in unroll.derived["compile"]["from"]
    lean = resolve(DistillConfig(ipc=1, syn_steps=5, gradient="lean"), digits, store)
    assert lean.compile is False
    why = lean.derived["compile"]["from"]
    assert why.startswith("--compile auto: a small problem") and "under 1 GB" in why


def test_compile_auto_is_on_for_a_large_lean_walk_on_a_cpu_with_a_compiler(digits, store,
                                                                          monkeypatch):
    """'Large' is the unroll's measured graph against COMPILE_FROM_BYTES (1 GB); the digits'
    stands in for a large one with the threshold lowered to a byte."""
    monkeypatch.setattr(gradient_choice, "COMPILE_FROM_BYTES", 1)
    monkeypatch.setattr(gradient_choice, "available_bytes", lambda device: 2**20)  # lean
    real_compiler = gradient_choice.cxx_compiler
    monkeypatch.setattr(gradient_choice, "cxx_compiler", lambda: "/usr/bin/g++")
    cfg = resolve(DistillConfig(ipc=1, syn_steps=5), digits, store)
    assert cfg.gradient == "lean" and cfg.compile is True
    assert cfg.derived["compile"]["from"].startswith("--compile auto: a large lean walk on a CPU")
    monkeypatch.setattr(gradient_choice, "cxx_compiler", real_compiler)
    monkeypatch.setenv("CXX", "/nonexistent/g++")  # inductor's compiler, and not there
    cfg = resolve(DistillConfig(ipc=1, syn_steps=5), digits, store)
    assert cfg.compile is False and "no C++ compiler" in cfg.derived["compile"]["from"]
    for flag in (False, True):  # an explicit flag is kept, and not listed as derived
        cfg = resolve(DistillConfig(ipc=1, syn_steps=5, compile=flag), digits, store)
        assert cfg.compile is flag and "compile" not in cfg.derived


def test_the_compile_flag_takes_auto_on_off_and_alone_means_on():
    from trajdistill.cli import build_parser
    parse = lambda *a: build_parser().parse_args(["distill", *a]).compile  # noqa: E731
    assert (parse(), parse("--compile"), parse("--compile", "on"), parse("--compile", "off"),
            parse("--compile", "AUTO")) == (None, True, True, False, None)
    assert parse("--compile", "--ipc", "2") is True
