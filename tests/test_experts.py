"""Expert trajectories: snapshots are real copies, the store round-trips, mismatches are refused."""
import pytest
import torch

from trajdistill.data import load_dataset
from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer
from trajdistill.experts import BufferError, ExpertConfig, TrajectoryStore, train_experts
from trajdistill.io import FileFormatError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def buffer(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("buf")
    cfg = ExpertConfig(model="ConvNetD2", train_epochs=3, num_experts=2, seed=3)
    train_experts(digits, cfg, root, progress=False)
    return root, cfg


def test_every_stored_epoch_differs_and_experts_learn(buffer, digits):
    root, cfg = buffer
    store = TrajectoryStore.open(root)
    assert store.indices() == [0, 1]
    for i in store.indices():
        traj = store.load(i)
        assert traj.shape[0] == cfg.train_epochs + 1 and traj.dtype == torch.float32
        for e in range(cfg.train_epochs):  # the CPU-view bug would make these all equal
            assert not torch.equal(traj[e], traj[e + 1])
        s = store.summary(i)
        assert s["test_accuracy"] > 0.5  # 3 epochs on digits: far above 10 % chance
        assert len(s["test_per_class"]) == 10 and sum(map(sum, s["test_confusion"])) == len(digits.test)
    assert not torch.equal(store.load(0)[0], store.load(1)[0])  # independent initialisations


def test_store_round_trip_and_identity(buffer, digits):
    root, cfg = buffer
    store = TrajectoryStore.open(root)
    assert store.model == "ConvNetD2" and store.num_epochs == 3
    assert store.identity["data"]["dataset"] == "digits"
    assert store.preprocess.mean == pytest.approx(digits.preprocess.mean)
    again = torch.load(root / "expert_000.pt", weights_only=True)["trajectory"]
    assert torch.equal(again, store.load(0))


def test_rerun_resumes_without_retraining(buffer, digits):
    root, cfg = buffer
    before = (root / "expert_000.pt").stat().st_mtime_ns
    train_experts(digits, cfg, root, progress=False)
    assert (root / "expert_000.pt").stat().st_mtime_ns == before


def test_other_settings_are_refused(buffer, digits):
    root, cfg = buffer
    other = ExpertConfig(model="ConvNetD2", train_epochs=3, num_experts=2, seed=3, lr_teacher=0.1)
    with pytest.raises(BufferError, match="lr_teacher"):
        train_experts(digits, other, root, progress=False)


def test_buffer_from_other_data_is_refused(buffer, digits):
    root, _ = buffer
    from dataclasses import replace
    from trajdistill.data import ImageDataset
    shrunk = ImageDataset(digits.train.images[:, :, :6, :6].contiguous(), digits.train.labels,
                          digits.classes)
    other = replace(digits, name="digits6", train=shrunk)
    with pytest.raises(BufferError, match="image_shape"):
        open_buffer(root, other)


def test_distill_settings_beyond_the_buffer_are_refused(buffer, digits, tmp_path):
    root, _ = buffer
    store = open_buffer(root, digits)
    with pytest.raises(ConfigError, match="within the 3 epochs"):
        Distiller(DistillConfig(max_start_epoch=3, expert_epochs=1), digits, store, tmp_path)
    with pytest.raises(ConfigError, match="--ipc 500"):
        Distiller(DistillConfig(ipc=500), digits, store, tmp_path)
    with pytest.raises(ConfigError, match="lr_teacher"):
        Distiller(DistillConfig(lr_mode="independent-lr", init_epoch=2, lr_teacher=[0.1, 0.2, 0.3]),
                  digits, store, tmp_path)


def test_missing_and_damaged_buffers_get_clear_errors(buffer, tmp_path):
    root, _ = buffer
    with pytest.raises(BufferError, match="no expert buffer"):
        TrajectoryStore.open(tmp_path)
    (tmp_path / "buffer.json").write_text((root / "buffer.json").read_text())
    (tmp_path / "preprocess.pt").write_bytes((root / "preprocess.pt").read_bytes())
    blob = (root / "expert_000.pt").read_bytes()
    (tmp_path / "expert_000.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FileFormatError, match="expert_000.pt"):
        TrajectoryStore.open(tmp_path).load(0)


def test_unknown_model_is_refused(digits, tmp_path):
    from trajdistill.models import ModelError
    with pytest.raises(ModelError, match="ConvNetXY"):
        train_experts(digits, ExpertConfig(model="ConvNetXY", num_experts=1), tmp_path, progress=False)
