"""DSA: each transform does what it says, replay is exact, and gradients flow to the input."""
import math

import pytest
import torch

from trajdistill import augment as A


def image(n=3, c=3, h=8, w=8, dtype=torch.float64):
    return torch.randn(n, c, h, w, dtype=dtype, generator=torch.Generator().manual_seed(0))


def test_replay_gives_identical_output_for_every_group():
    x = image(5)
    for seed in range(30):
        p = A.sample(A.DEFAULT_STRATEGY, 5, 8, 8, torch.Generator().manual_seed(seed))
        assert torch.equal(A.apply(x, p), A.apply(x, p))
        q = A.sample(A.DEFAULT_STRATEGY, 5, 8, 8, torch.Generator().manual_seed(seed))
        assert torch.equal(A.apply(x, p), A.apply(x, q))


def test_single_mode_draws_every_group_and_independent_per_image_params():
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        p = A.sample(A.DEFAULT_STRATEGY, 16, 32, 32, gen)
        seen.add(p["group"])
        if p["group"] == "rotate":
            assert p["angle"].unique().numel() == 16
            assert p["angle"].abs().max() <= 15 * math.pi / 180
        if p["group"] == "scale":
            assert p["scale"].min() >= 1 / 1.2 and p["scale"].max() <= 1.2
        if p["group"] == "crop":
            assert p["shift"].abs().max() <= 4  # 12.5 % of 32
    assert seen == set(A.parse_strategy(A.DEFAULT_STRATEGY))


@pytest.mark.parametrize("group", A.GROUPS)
def test_every_group_is_differentiable(group):
    x = image(2, 2, 6, 6).requires_grad_(True)
    p = A.sample(group, 2, 6, 6, torch.Generator().manual_seed(3))
    # crop/cutout/flip are piecewise linear selections; color/scale/rotate are smooth in x
    assert torch.autograd.gradcheck(lambda t: A.apply(t, p), (x,))


def test_color_matches_hand_computation():
    x = image(2, 3, 4, 4)
    p = {"group": "color", "brightness": torch.tensor([0.3, -0.2]),
         "saturation": torch.tensor([1.5, 0.0]), "contrast": torch.tensor([0.5, 1.2])}
    out = A.apply(x, p)
    for k in range(2):
        v = x[k] + p["brightness"][k]
        v = (v - v.mean(0, keepdim=True)) * p["saturation"][k] + v.mean(0, keepdim=True)
        v = (v - v.mean()) * p["contrast"][k] + v.mean()
        assert torch.allclose(out[k], v)
    # saturation 0 leaves a grey image: every channel equal
    assert torch.allclose(out[1, 0], out[1, 1]) and torch.allclose(out[1, 1], out[1, 2])


def test_crop_is_a_translation_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    out = A.apply(x, {"group": "crop", "shift": torch.tensor([[1, 0], [-1, 2]])})
    assert torch.equal(out[0, 0, :3], x[0, 0, 1:]) and torch.equal(out[0, 0, 3], torch.zeros(4))
    assert torch.equal(out[1, 0, 1:, :2], x[1, 0, :3, 2:])
    assert out[1, 0, 0].abs().sum() == 0 and out[1, 0, :, 2:].abs().sum() == 0


def test_cutout_zeroes_one_square_of_half_the_side():
    x = torch.ones(1, 3, 8, 8)
    p = A.sample("cutout", 1, 8, 8, torch.Generator().manual_seed(0))
    p["centre"] = torch.tensor([[4, 4]])
    out = A.apply(x, p)
    assert p["size"] == (4, 4)
    assert torch.equal(out[0, :, 2:6, 2:6], torch.zeros(3, 4, 4))
    assert out.sum() == 3 * (64 - 16)


def test_flip_is_horizontal_and_per_image():
    x = image(2)
    out = A.apply(x, {"group": "flip", "flip": torch.tensor([True, False])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_scale_and_rotate_identity_and_quarter_turn():
    x = image(2, 1, 5, 5)
    one = A.apply(x, {"group": "scale", "scale": torch.ones(2, 2, dtype=torch.float64)})
    assert torch.allclose(one, x, atol=1e-12)
    zero = A.apply(x, {"group": "rotate", "angle": torch.zeros(2, dtype=torch.float64)})
    assert torch.allclose(zero, x, atol=1e-12)
    quarter = A.apply(x, {"group": "rotate", "angle": torch.full((2,), math.pi / 2, dtype=torch.float64)})
    assert torch.allclose(quarter, torch.rot90(x, -1, (2, 3)), atol=1e-9)  # +angle turns clockwise
    # scale 1/2 along x samples the central half of each row (columns 1..3 of 0..4): a 2x zoom
    half = A.apply(x, {"group": "scale", "scale": torch.tensor([[0.5, 1.0]] * 2, dtype=torch.float64)})
    assert torch.allclose(half[..., 0], x[..., 1]) and torch.allclose(half[..., 4], x[..., 3])
    assert torch.allclose(half[..., 1], (x[..., 1] + x[..., 2]) / 2)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="blur"):
        A.sample("color_blur", 2, 8, 8)


# ------------------------------------------------------------------ galaxy groups

def test_galaxy_strategy_draws_full_turns_and_both_flips():
    assert A.parse_strategy("galaxy") == A.parse_strategy(A.GALAXY_STRATEGY)
    gen = torch.Generator().manual_seed(1)
    angles, flips = [], []
    for _ in range(300):
        p = A.sample("galaxy", 8, 16, 16, gen)
        assert p["group"] not in ("rotate", "flip")  # the small turn and h-flip are replaced
        if p["group"] == "rotate360":
            angles.append(p["angle"])
        if p["group"] == "flips":
            flips.append(torch.stack([p["flip"], p["flip_v"]], 1))
    angles, flips = torch.cat(angles), torch.cat(flips)
    assert angles.min() < -0.9 * math.pi and angles.max() > 0.9 * math.pi
    # all four flip combinations occur, each about a quarter of the time
    combos = torch.bincount(flips[:, 0].long() * 2 + flips[:, 1].long(), minlength=4).float()
    assert (combos / combos.sum() - 0.25).abs().max() < 0.08


def test_flips_and_half_turn_match_hand_results():
    x = image(4, 2, 5, 5)
    out = A.apply(x, {"group": "flips", "flip": torch.tensor([True, False, True, False]),
                      "flip_v": torch.tensor([False, True, True, False])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1].flip(-2))
    assert torch.equal(out[2], x[2].flip(-1).flip(-2)) and torch.equal(out[3], x[3])
    half = A.apply(x, {"group": "rotate360", "angle": torch.full((4,), math.pi, dtype=torch.float64)})
    assert torch.allclose(half, torch.rot90(x, 2, (2, 3)), atol=1e-9)
