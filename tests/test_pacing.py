"""Pacing the derived Adam image lr by how far the images move (pacing.py)."""
import pytest
import torch

from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.pacing import is_check, pace, raise_factor, raised_lr


def test_the_pace_grows_as_the_square_root_of_the_run_done():
    assert pace(50, 200) == pytest.approx(0.2 * 0.5)
    assert pace(200, 200) == pytest.approx(0.2)
    assert pace(400, 200) == pytest.approx(0.2)  # past the plan: the end's pace
    assert pace(18, 200, 0.3) == pytest.approx(0.3 * 0.3)
    assert pace(250, 1000) == pytest.approx(0.2 * 0.5)
    assert pace(50, 10) == pace(50, 200)  # a short run keeps the speed of a 200-iteration one


def test_checks_fall_after_each_tenth_of_the_horizon_but_not_at_the_runs_end():
    assert [t for t in range(201) if is_check(t, 200)] == list(range(20, 200, 20))
    assert [t for t in range(2001) if is_check(t, 2000)] == list(range(200, 2000, 200))
    assert [t for t in range(51) if is_check(t, 50)] == [20, 40]
    assert not any(is_check(t, 10) for t in range(11))


def test_a_run_on_pace_keeps_its_lr_and_one_behind_is_raised_within_bounds():
    assert raise_factor(50, 200, drift=0.10, raised=1.0) == 1.0  # exactly on pace
    assert raise_factor(50, 200, drift=0.12, raised=1.0) == 1.0
    # behind: wanted 0.3 * 0.5 / 0.09 = 1.67
    assert raise_factor(50, 200, drift=0.09, raised=1.0) == pytest.approx(0.15 / 0.09)
    assert raise_factor(50, 200, drift=0.01, raised=1.0) == 2.0  # at most 2x at one check
    assert raise_factor(50, 200, drift=0.01, raised=8.0) == pytest.approx(10 / 8)  # 10x in all
    assert raise_factor(50, 200, drift=0.01, raised=10.0) == 1.0


def test_the_verdicts_image_lr_is_the_raised_one():
    records = [{"it": 0}, {"it": 19, "lr_img_raised": 2.0}, {"it": 39, "lr_img_raised": 1.5}]
    assert raised_lr(0.01, records) == pytest.approx(0.03)
    assert raised_lr(0.01, records[:1]) == 0.01


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    return (digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits),
            tmp_path_factory.mktemp("pacing"))


def _cfg(**kw):
    return DistillConfig(ipc=1, syn_steps=3, iterations=200, eval_it=0, lr_teacher=[0.01],
                         img_optimizer="adam", pix_init="real", **kw)


def test_images_that_hardly_move_get_a_larger_step_and_the_run_says_so(setup, capsys):
    """Adam at 1e-5 moves the digits far less than the pace: at each check (after iterations
    20 and 40 of 200) the lr doubles; STM's own image lr and its stop follow; the raise is in
    the record, the log and the checkpoint."""
    splits, store, root = setup
    d = Distiller(_cfg(lr_img=1e-5, pace_lr_img=True), splits, store, root / "slow",
                  progress=True)
    records = [d.step() for _ in range(41)]
    assert {r["it"]: r["lr_img_raised"] for r in records if "lr_img_raised" in r} == {19: 2.0,
                                                                                       39: 2.0}
    assert d.learnables.opt_img.param_groups[0]["lr"] == pytest.approx(4e-5)
    assert d.schedule.lr_img == pytest.approx(4e-5)
    assert d.schedule.stop_lr_img == pytest.approx(0.05 * 4e-5)
    assert records[39]["lr_img"] == pytest.approx(4e-5)
    assert "it 20: the images moved" in capsys.readouterr().err
    again = Distiller(_cfg(lr_img=1e-5, pace_lr_img=True), splits, store, root / "again",
                      progress=False)
    again.load_state_dict(d.state_dict())
    assert again.lr_raised == pytest.approx(4.0)
    assert again.learnables.opt_img.param_groups[0]["lr"] == pytest.approx(4e-5)


def test_a_run_on_pace_is_exactly_the_unpaced_run(setup):
    """Adam at 0.01 moves the digits well ahead of the pace: pacing on or off, the same images."""
    splits, store, root = setup
    runs = []
    for on in (True, False):
        d = Distiller(_cfg(lr_img=0.01, pace_lr_img=on), splits, store, root / f"on{on}",
                      progress=False)
        records = [d.step() for _ in range(21)]
        assert not any("lr_img_raised" in r for r in records)
        runs.append(d.learnables.images.detach().clone())
    assert torch.equal(runs[0], runs[1])
