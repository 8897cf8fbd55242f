"""Texture distillation (--texture): toroidal canvases seen through random windows, in
distillation (both gradient methods: tests/test_matching.py), evaluation, report and export."""
import json

import pytest
import torch
from PIL import Image

from trajdistill.cli import main
from trajdistill.data import load_dataset
from trajdistill.distill import ConfigError, DistillConfig, Distiller, open_buffer, resolve
from trajdistill.texture import TextureSpec, real_canvases, tiled, windows
from trajdistill.training import train_epoch

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE


def test_windows_are_the_references_rolled_crops():
    """Window (dy, dx) of a canvas == torch.roll(canvas, (dy, dx))[:, :h, :w], sample-major."""
    canvases = torch.randn(3, 2, 12, 12)
    spec = TextureSpec(canvas_size=2, canvas_samples=2)
    shifts = spec.draw_shifts(3, (12, 12), torch.Generator().manual_seed(1))
    got = windows(canvases, shifts, (6, 6))
    want = torch.cat([torch.stack([torch.roll(canvases[b], tuple(shifts[s, b].tolist()), (1, 2))
                                   [:, :6, :6] for b in range(3)]) for s in range(2)])
    assert torch.equal(got, want)
    # a window across the edge wraps around: shift (1, 1) starts at the last row/column
    one = windows(canvases[:1], torch.tensor([[[1, 1]]]), (6, 6))[0]
    assert torch.equal(one[:, 0, 0], canvases[0, :, 11, 11])
    assert torch.equal(one[:, 1:, 1:], canvases[0, :, :5, :5])


def test_real_canvases_and_tiling():
    imgs = torch.arange(8 * 4, dtype=torch.float32).reshape(8, 1, 2, 2)
    c = real_canvases(imgs, 2)
    assert c.shape == (2, 1, 4, 4)
    assert torch.equal(c[0, :, :2, :2], imgs[0]) and torch.equal(c[0, :, :2, 2:], imgs[1])
    assert torch.equal(c[0, :, 2:, :2], imgs[2]) and torch.equal(c[1, :, 2:, 2:], imgs[7])
    t = tiled(c)
    assert t.shape == (2, 1, 8, 8) and torch.equal(t[:, :, 4:, 4:], c)


def test_evaluation_trains_on_windows():
    """Each training batch is canvas_samples windows of every canvas, labels repeated."""
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.flatten(1)[:, :2] * self.w

    net = Probe()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    canvases, labels = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 0, 1, 0])
    train_epoch(net, canvases, labels, opt, batch_size=4, device="cpu",
                texture=TextureSpec(2, 3), generator=torch.Generator().manual_seed(0))
    assert seen == [(12, 1, 4, 4), (3, 1, 4, 4)]


@pytest.fixture(scope="module")
def setup(digits, digits_buffers, tmp_path_factory):
    root = tmp_path_factory.mktemp("texture")
    (root / "buffers").symlink_to(digits_buffers)  # the CLI test's --buffer_path; read-only
    return digits, open_buffer(digits_buffers / "digits" / "ConvNetD2", digits), root


def test_texture_distillation_learns_canvases(setup):
    splits, store, root = setup
    cfg = DistillConfig(ipc=1, syn_steps=3, iterations=3, eval_it=3, num_eval=1,
                        epoch_eval_train=2, pix_init="noise", texture=True, canvas_size=2,
                        canvas_samples=2)
    d = Distiller(cfg, splits, store, root / "run", progress=False)
    assert d.learnables.images.shape == (10, 1, 16, 16)
    before = d.learnables.images.detach().clone()
    d.run()
    assert not torch.equal(before, d.learnables.images.detach())
    syn = d.synthetic_set()
    assert syn.meta["texture"] == {"canvas_size": 2, "canvas_samples": 2}
    evals = [json.loads(l) for l in (root / "run" / "evals.jsonl").read_text().splitlines()]
    assert 0 <= evals[-1]["ConvNetD2"]["mean"] <= 1


def test_texture_refused_with_zca_and_warned_with_real_init(setup):
    splits, store, root = setup
    zca = load_dataset("digits", zca=True)
    with pytest.raises(ConfigError, match="--texture cannot be used with --zca"):
        resolve(DistillConfig(texture=True, pix_init="noise"), zca, store)
    with pytest.raises(ConfigError, match="--texture cannot be used with --soft_labels"):
        resolve(DistillConfig(texture=True, pix_init="noise", soft_labels=True), splits, store)
    with pytest.warns(UserWarning, match="--texture with --pix_init real"):
        d = Distiller(DistillConfig(texture=True, pix_init="real", iterations=1), splits, store,
                      root / "real", progress=False)
    # each canvas holds 2 x 2 real training images of its class
    first = splits.preprocess(splits.train.images[splits.train.indices_of(0)])
    quarter = d.learnables.images[0, :, :8, :8].detach()
    assert any(torch.allclose(quarter, img) for img in first)


def test_texture_through_the_cli_evaluate_report_export(setup, tmp_path, monkeypatch, capsys):
    splits, store, root = setup
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--dataset=digits", "--model=ConvNetD2", "--ipc=1", "--syn_steps=2",
                 f"--buffer_path={root / 'buffers'}", "--Iteration=2", "--eval_it=2",
                 "--num_eval=1", "--epoch_eval_train=2", "--pix_init=noise", "--texture",
                 "--canvas_size", "2", "--canvas_samples", "1", "--wandb_name=tex",
                 f"--device={DEVICE}",
                 "--quiet"]) == 0
    run = tmp_path / "runs" / "tex"
    assert (run / "report.html").exists()
    assert main(["evaluate", "--syn", str(run / "synthetic_last.pt"), "--dataset", "digits",
                 "--num_eval", "1", "--epoch_eval_train", "2", "--device", DEVICE, "--quiet"]) == 0
    assert main(["export", str(run / "synthetic_last.pt"), str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    png = Image.open(tmp_path / "out" / meta["files"][0]["file"])
    assert png.size == (32, 32)  # a 16x16 canvas of 8x8 digits, shown tiled 2 x 2
    assert main(["report", str(run), "--dataset", "digits"]) == 0
