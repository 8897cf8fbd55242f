"""Whether the data has an up (orientation.py), and the augmentation derived from it: hand-made
class means with known asymmetries, the real data sets of ../shared/data on either side of the
line, and the derived strategy travelling from the buffer to the distillation."""
import math

import pytest
import torch

from trajdistill.augment import DEFAULT_STRATEGY
from trajdistill.baselines import class_means
from trajdistill.distill import DistillConfig, open_buffer, resolve
from trajdistill.experts import ExpertConfig, train_experts
from trajdistill.orientation import ORIENTATION_FREE, asymmetries, strategy_for

GZ1 = dict(labels="gz1_labels.csv", id_column="OBJID", label_column="CLASS", crop="center-half",
           res=32, classes="0,1+2,3")


def _grid(side=16):
    i = torch.arange(side, dtype=torch.float64)
    return i.view(-1, 1).expand(side, side), i.view(1, -1).expand(side, side)


def test_hand_made_means_have_their_hand_computed_asymmetries():
    rows, cols = _grid()
    c = 7.5
    blob = torch.exp(-((rows - c) ** 2 + (cols - c) ** 2) / 8)   # round: no up
    ramp = rows.clone()                                          # dark at the top, light below
    # the ramp, centred, is x = i - c: its vertical flip is -x, ||x - (-x)|| = 2 ||x||, so
    # sqrt(2); its quarter turn is a ramp along the other axis, orthogonal to x, so exactly 1
    got = asymmetries(torch.stack([ramp, ramp]).unsqueeze(1))
    assert got["vflip"] == pytest.approx(math.sqrt(2), abs=1e-4)
    assert got["rot90"] == pytest.approx(1.0, abs=1e-4)
    got = asymmetries(blob.expand(3, 2, 16, 16))
    assert got["vflip"] == pytest.approx(0, abs=1e-4) and got["rot90"] == pytest.approx(0, abs=1e-4)
    # a class mean per class: the average over classes (blob 0, ramp sqrt(2))
    got = asymmetries(torch.stack([blob, ramp]).unsqueeze(1))
    assert got["vflip"] == pytest.approx(math.sqrt(2) / 2, abs=1e-4)
    # a constant image is flat: nothing left after the spatial mean, no shape to call free
    flat = asymmetries(torch.stack([blob, torch.full_like(blob, 3.0)]).unsqueeze(1))
    assert flat == {"vflip": 0.5, "rot90": 0.5}
    assert strategy_for(flat, DEFAULT_STRATEGY)[0] == DEFAULT_STRATEGY


def test_a_non_square_image_is_never_called_orientation_free():
    rows, cols = _grid()
    blob = torch.exp(-((rows - 7.5) ** 2 + (cols - 7.5) ** 2) / 8)[:, 2:14]
    got = asymmetries(blob.expand(2, 1, 16, 12))
    assert got["vflip"] < 1e-6 and got["rot90"] == 1.0
    assert strategy_for(got, DEFAULT_STRATEGY)[0] == DEFAULT_STRATEGY


@pytest.fixture(scope="module")
def gz1(shared_data):
    from trajdistill.data import load_dataset
    with pytest.warns(UserWarning, match="left out 171"):
        return load_dataset(str(shared_data / "gz1"), **GZ1)


def test_galaxies_have_no_up_and_get_the_galaxy_strategy(gz1):
    got = asymmetries(class_means(gz1)[0])
    assert max(got.values()) < 0.1          # measured 0.068 and 0.070
    strategy, why = strategy_for(got, DEFAULT_STRATEGY)
    assert strategy == "galaxy" and "no up" in why and f"{got['rot90']:.2f}" in why


def test_zca_whitening_does_not_hide_that_galaxies_have_no_up(gz1):
    """Whitened class means are noisy (no flip maps them onto themselves: 0.33-0.37 here, and
    `buffer --zca` once derived DSA's default for galaxies); measured as images they are the
    same galaxies as without ZCA."""
    from trajdistill.data.zca_apply import with_zca
    from trajdistill.orientation import measure
    white = with_zca(gz1)
    assert min(asymmetries(class_means(white)[0]).values()) > 0.25   # the whitened means
    plain, unwhitened = measure(gz1), measure(white)
    assert max(unwhitened.values()) < 0.1
    assert unwhitened == pytest.approx(plain, abs=0.005)             # 0.068 / 0.070 either way


@pytest.mark.parametrize("name, options", [
    ("fashion-mnist", {}),            # clothes: upright (vertical flip 0.47)
    ("eurosat-rgb", {"res": 32}),     # nearly flat class means: noise, scrambled by a turn
])
def test_upright_and_shapeless_data_keep_dsas_default(shared_data, name, options):
    from trajdistill.data import load_dataset
    splits = load_dataset(str(shared_data / name), **options)
    got = asymmetries(class_means(splits)[0])
    assert min(got.values()) > 2 * ORIENTATION_FREE
    assert strategy_for(got, DEFAULT_STRATEGY)[0] == DEFAULT_STRATEGY


def test_the_experts_derive_it_and_the_distillation_takes_the_buffers(digits, gz1, tmp_path):
    made = ExpertConfig(model="ConvNetD2", train_epochs=1, num_experts=1).resolve(gz1)
    assert made.dsa_strategy == "galaxy" and "no up" in made.derived["dsa_strategy"]["from"]
    kept = ExpertConfig(dsa_strategy="crop").resolve(gz1)  # a given strategy is kept
    assert kept.dsa_strategy == "crop" and "dsa_strategy" not in kept.derived
    digit = ExpertConfig(model="ConvNetD2").resolve(digits)  # digits have an up (0.45, 0.99)
    assert digit.dsa_strategy == DEFAULT_STRATEGY
    # a buffer made with the galaxy strategy hands it on to a distillation that names none
    train_experts(digits, ExpertConfig(model="ConvNetD2", train_epochs=2, num_experts=1,
                                       dsa_strategy="galaxy"), tmp_path, progress=False)
    store = open_buffer(tmp_path, digits)
    settled = resolve(DistillConfig(syn_steps=2, lr_teacher=[0.01]), digits, store)
    assert settled.dsa_strategy == "galaxy"
    assert str(tmp_path) in settled.derived["dsa_strategy"]["from"]
    assert resolve(DistillConfig(syn_steps=2, lr_teacher=[0.01], dsa_strategy="crop"), digits,
                   store).dsa_strategy == "crop"
    assert resolve(settled, digits, store) == settled  # config.json resolves to itself


def test_evaluate_and_baseline_augment_as_the_distillation_did(gz1, digits):
    from trajdistill.cli.evaluation import eval_strategy as _eval_strategy
    assert _eval_strategy({"dsa": True, "dsa_strategy": "crop"}, gz1, "galaxy") == \
        {"dsa_strategy": "crop"}                                          # given
    assert _eval_strategy({"dsa": True}, digits, "galaxy") == {"dsa_strategy": "galaxy"}  # the set's
    o = {"dsa": True}
    assert _eval_strategy(o, gz1) == {"dsa_strategy": "galaxy"}          # derived from the data
    assert o["derived_note"].startswith("derived --dsa_strategy galaxy: the class means")
    assert _eval_strategy({"dsa": True}, digits) == {"dsa_strategy": DEFAULT_STRATEGY}
    assert _eval_strategy({"dsa": False}, gz1) == {}                      # no augmentation at all
    # `baseline --kind mean` hands over the class means it already has: the same answer
    from trajdistill.baselines import class_means
    means = class_means(gz1)[0]
    o_given = {"dsa": True}
    assert _eval_strategy(o_given, gz1, means=means) == {"dsa_strategy": "galaxy"}
    assert o_given["derived_note"] == o["derived_note"]


def test_a_distilled_set_records_its_augmentation(digits, digits_buffers, tmp_path):
    from trajdistill.distill import Distiller
    from trajdistill.synthetic import SyntheticSet
    store = open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)
    d = Distiller(DistillConfig(syn_steps=2, lr_teacher=[0.01], iterations=0, eval_it=0),
                  digits, store, tmp_path / "run", progress=False)
    d.synthetic_set().save(tmp_path / "set.pt")
    assert SyntheticSet.load(tmp_path / "set.pt").meta["dsa_strategy"] == DEFAULT_STRATEGY
