"""--pix_init kmeans: the real images nearest the centres of a k-means clustering of each
class in an expert's features; on hand-made clusters and on the embedded digits, against
independent computations."""
import pytest
import torch

from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.models import FlatModel, build_model
from trajdistill.representatives import representatives
from trajdistill.validation import validation_indices


def blobs(sizes, places, gen):
    """Tight clusters of 16-feature points around constant points of the given values."""
    return torch.cat([place + 0.01 * torch.randn(n, 16, generator=gen)
                      for n, place in zip(sizes, places)])


def test_one_representative_per_cluster_whatever_the_cluster_sizes():
    gen = torch.Generator().manual_seed(0)
    images = blobs([60, 30, 10], [0.0, 5.0, -5.0], gen)
    members = torch.arange(100) + 1000  # dataset indices, not positions
    picks = representatives(members, lambda i: images[i - 1000], 3, gen)
    # a random draw of 3 misses the 10-image cluster 73 % of the time; k-means never does
    positions = [int(p) - 1000 for p in picks]
    assert all(0 <= p < 100 for p in positions)
    assert sorted((p >= 60) + (p >= 90) for p in positions) == [0, 1, 2]


def test_one_representative_is_the_image_nearest_the_class_mean():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(40, 75, generator=gen)
    pick = representatives(torch.arange(40), lambda i: images[i], 1, gen)
    nearest = (images - images.mean(0)).norm(dim=1).argmin()
    assert pick.tolist() == [int(nearest)]


def test_picks_are_distinct_even_where_images_repeat():
    gen = torch.Generator().manual_seed(2)
    images = torch.zeros(6, 4)  # six identical points: every centre is the same point
    picks = representatives(torch.arange(6), lambda i: images[i], 4, gen)
    assert len(set(picks.tolist())) == 4
    assert sorted(representatives(torch.arange(3), lambda i: images[i], 5, gen).tolist()) == \
        [0, 1, 2]  # asked for more than the class has: all of them


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    store = open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)
    return digits, store, tmp_path_factory.mktemp("kmeans")


def test_a_kmeans_start_is_real_training_images_of_each_class_none_from_validation(setup):
    splits, store, root = setup
    cfg = DistillConfig(ipc=1, pix_init="kmeans", eval_it=0, val_size=50)
    images = Distiller(cfg, splits, store, root / "one", progress=False).learnables.images.detach()
    val = set(validation_indices(splits.train.labels, splits.num_classes, 50).tolist())
    expert = build_model("ConvNetD2", 1, 10, (8, 8))  # the first expert at its last epoch
    FlatModel.wrap(expert).load_flat(store.load(store.indices()[0])[-1].float())
    for c in range(splits.num_classes):
        members = [int(i) for i in splits.train.indices_of(c) if int(i) not in val]
        real = splits.preprocess(splits.train.images[members])
        with torch.no_grad():
            features = expert.features(real).flatten(1)  # what its classifier sees
        # at one image per class the only centre is the mean of the class's features (over
        # the images outside the validation split): the start is the real image nearest it
        nearest = (features - features.mean(0)).norm(dim=1).argmin()
        assert torch.allclose(images[c], real[nearest])

    cfg = DistillConfig(ipc=3, pix_init="kmeans", eval_it=0, val_size=50)
    images = Distiller(cfg, splits, store, root / "three", progress=False).learnables.images
    pool = splits.preprocess(splits.train.images)
    for c in range(splits.num_classes):
        found = [int(((pool - im).flatten(1).abs().amax(1) < 1e-6).nonzero()[0])
                 for im in images.detach()[3 * c:3 * c + 3]]
        assert len(set(found)) == 3 and not set(found) & val
        assert all(int(splits.train.labels[i]) == c for i in found)


def test_the_start_is_drawn_once_when_the_lr_is_measured_on_it(setup, monkeypatch, capsys):
    """--lr_teacher auto measures the lr on the run's start; the run then starts from that
    same draw instead of clustering every class a second time, and says the drawing's notes
    once."""
    import trajdistill.initial as initial
    splits, store, root = setup
    calls = []

    def counted(*args, **kw):
        calls.append(1)
        return representatives(*args, **kw)

    def noted(cfg, splits, val_idx, gen, labeller, note):
        note("a note made while drawing the start")
        return drawn(cfg, splits, val_idx, gen, labeller, note)

    drawn = initial.initial_images
    monkeypatch.setattr(initial, "representatives", counted)
    monkeypatch.setattr(initial, "initial_images", noted)
    cfg = DistillConfig(ipc=2, pix_init="kmeans", syn_steps=3, eval_it=0, val_size=50)
    d = Distiller(cfg, splits, store, root / "once", progress=False)
    assert "measured" in d.cfg.derived["lr_teacher"]["from"]  # the lr was measured on it
    assert len(calls) == splits.num_classes  # one clustering per class, not two
    assert capsys.readouterr().err.count("a note made while drawing the start") == 1
    # the same lr as a measurement that draws its own start
    assert initial.measure_teacher_lr(d.cfg, splits, store) == pytest.approx(d.cfg.lr_teacher[0],
                                                                            rel=1e-6)
    assert len(calls) == 2 * splits.num_classes
