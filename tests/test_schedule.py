"""The STM stage machine on scripted held-out-loss sequences (no network involved)."""
import math
import random

import numpy as np
import pytest

from trajdistill.schedule import StageMachine, UniformStart, pearson_with_index


def feed(machine, values):
    return [machine.record(v) for v in values]


def test_pearson_matches_numpy():
    vals = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert pearson_with_index(vals) == pytest.approx(np.corrcoef(np.arange(8), vals)[0, 1])
    assert pearson_with_index([2.0] * 5) == 0.0


def test_significant_fall_levels_up_at_first_decisive_test():
    m = StageMachine(max_start_epoch=10, sigma=5, min_duration=20)
    falling = [100.0 - i + 0.3 * math.sin(i) for i in range(30)]
    events = feed(m, falling)
    # n=20: s = 1/sqrt(18), -5 s = -1.18 < -1: a fall cannot pass yet
    assert events[19].r is not None and not events[19].level_up
    assert events[19].threshold == pytest.approx(-5 / math.sqrt(18))
    # n=30: -5/sqrt(28) = -0.945, and r is about -1
    assert events[29].r < events[29].threshold == pytest.approx(-5 / math.sqrt(28))
    assert events[29].passed and events[29].level_up
    assert m.cap == 2 and m.history == [] and not m.passed
    assert all(not e.level_up for e in events[:29])


def test_significant_rise_levels_up():
    m = StageMachine(max_start_epoch=10, min_duration=20)
    events = feed(m, [1.0 + 0.01 * i for i in range(20)])
    assert events[-1].r == pytest.approx(1.0)
    assert events[-1].rise_threshold == pytest.approx(3 / math.sqrt(18))
    assert events[-1].level_up and not events[-1].passed
    assert m.cap == 2 and m.history == []


def test_noise_does_not_level_up():
    rng = random.Random(1234)
    m = StageMachine(max_start_epoch=10, min_duration=20, max_duration=10_000)
    events = feed(m, [1.0 + rng.gauss(0, 0.1) for _ in range(500)])
    tested = [e for e in events if e.r is not None]
    assert len(tested) == 49  # n = 20, 30, ..., 500
    assert not any(e.level_up or e.reset for e in events)
    assert m.cap == 1 and len(m.history) == 500


def test_tests_only_every_ten_entries_after_min_duration():
    m = StageMachine(max_start_epoch=10, min_duration=25)
    events = feed(m, [1.0 + 0.01 * i for i in range(40)])
    # n=30 is the first multiple of ten >= 25; the rise there resets H, so n=40 never comes
    assert [i + 1 for i, e in enumerate(events) if e.r is not None] == [30]
    assert events[29].reset


def test_fine_tuning_after_t_max_then_lr_decay_and_stop():
    rng = random.Random(7)
    m = StageMachine(max_start_epoch=10, min_duration=20, max_duration=50, lr_img=100.0)
    events = feed(m, [1.0 + rng.gauss(0, 0.1) for _ in range(60)])
    assert not any(e.fine_tuning_started for e in events[:59])
    assert events[59].fine_tuning_started and m.fine_tuning and not m.needs_heldout
    lrs = [m.after_update() for _ in range(200)]
    assert lrs[48] == 100.0 and lrs[49] == pytest.approx(80.0)
    assert lrs[99] == pytest.approx(64.0) and lrs[149] == pytest.approx(51.2)
    assert lrs[199] == pytest.approx(40.96) and m.finished  # 40.96 < 50: the run ends


def test_no_decay_before_fine_tuning():
    m = StageMachine(max_start_epoch=3, lr_img=100.0)
    assert [m.after_update() for _ in range(120)] == [100.0] * 120


def test_cap_never_exceeds_max_start_epoch():
    m = StageMachine(max_start_epoch=2, min_duration=20)
    for _ in range(4):  # four rises in a row: four stage ends, one possible level-up
        events = feed(m, [1.0 + 0.01 * i for i in range(20)])
        assert events[-1].reset
    assert m.cap == 2


def test_start_epoch_sampling():
    rng = random.Random(0)
    cyc = StageMachine(max_start_epoch=5, init_epoch=3)
    assert [cyc.start_epoch(it, rng) for it in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    rnd = StageMachine(max_start_epoch=5, init_epoch=3, sample_method="random")
    draws = {rnd.start_epoch(it, rng) for it in range(200)}
    assert draws == {0, 1, 2}
    mtt = UniformStart(max_start_epoch=4)
    assert {mtt.start_epoch(it, rng) for it in range(200)} == {0, 1, 2, 3}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="init_epoch"):
        StageMachine(max_start_epoch=3, init_epoch=4)
    with pytest.raises(ValueError, match="sample_method"):
        StageMachine(max_start_epoch=3, sample_method="zigzag")


def test_state_round_trip():
    m = StageMachine(max_start_epoch=5)
    feed(m, [1.0, 2.0, 3.0])
    m2 = StageMachine(max_start_epoch=5)
    m2.load_state_dict(m.state_dict())
    assert m2.state_dict() == m.state_dict()


# ----------------------------------------------------------------------------- aligned windows

def test_aligned_upper_bound_grows_linearly_then_stays():
    """DATM CIFAR-10 ipc10: from 10 to 20 over 1000 iterations (hand-computed values)."""
    from trajdistill.schedule import AlignedStart
    s = AlignedStart(min_start_epoch=0, current_max_start_epoch=10, max_start_epoch=20,
                     expansion_end_epoch=1000)
    assert [s.upper(it) for it in (0, 99, 100, 550, 999, 1000, 5000)] == [10, 10, 11, 15, 19, 20, 20]


def test_aligned_start_epochs_stay_in_the_window_and_cover_it():
    from trajdistill.schedule import AlignedStart
    s = AlignedStart(min_start_epoch=3, current_max_start_epoch=6, max_start_epoch=12,
                     expansion_end_epoch=60)
    rng = random.Random(0)
    early = {s.start_epoch(0, rng) for _ in range(300)}
    late = {s.start_epoch(500, rng) for _ in range(300)}
    assert early == {3, 4, 5} and late == set(range(3, 12))
    restored = AlignedStart(0, 1, 2, 1)
    restored.load_state_dict(s.state_dict())
    assert restored == s


@pytest.mark.parametrize("args", [(5, 5, 10, 10), (0, 11, 10, 10), (0, 5, 10, 0), (-1, 5, 10, 1)])
def test_aligned_refuses_empty_or_backward_windows(args):
    from trajdistill.schedule import AlignedStart
    with pytest.raises(ValueError):
        AlignedStart(*args)


def test_stm_window_counts_from_min_start_epoch():
    """The stage cap counts from min_start_epoch: starts in [min, min + cap), the held-out
    epoch is min + cap, and the cap stops where min + cap reaches max_start_epoch."""
    m = StageMachine(max_start_epoch=7, init_epoch=2, min_start_epoch=4, min_duration=20,
                     sigma=0.1)
    assert [m.start_epoch(it, None) for it in range(4)] == [4, 5, 4, 5]
    assert m.heldout_epoch == 6
    for k in range(400):  # a falling held-out loss passes every test
        m.record(10.0 - 0.01 * k)
    assert m.cap == 3 and m.heldout_epoch == 7
    with pytest.raises(ValueError):
        StageMachine(max_start_epoch=7, init_epoch=4, min_start_epoch=4)


def test_uniform_start_from_min_start_epoch():
    rng = random.Random(1)
    s = UniformStart(max_start_epoch=6, min_start_epoch=2)
    assert {s.start_epoch(0, rng) for _ in range(200)} == {2, 3, 4, 5}
    assert UniformStart(9).start_epoch(0, random.Random(5)) == random.Random(5).randrange(9)
