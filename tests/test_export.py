"""Export of a distilled set: PNGs per class (pixel space, ZCA inverted, clipped as in the
report), a weights_only-loadable tensor file that is also a synthetic set, README and JSON."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from trajdistill.cli import main
from trajdistill.data.base import Preprocess
from trajdistill.data.zca import ZCA
from trajdistill.export import export_synthetic, load_export
from trajdistill.display import synthetic_display, to_uint8_hwc
from trajdistill.synthetic import SyntheticSet

CLASSES = ["air plane", "car", "bird/owl"]  # odd names become safe folder names


@pytest.fixture
def syn(tmp_path):
    g = torch.Generator().manual_seed(0)
    pre = Preprocess((0.49, 0.48, 0.45), (0.2, 0.2, 0.2),
                     ZCA.fit(torch.randn(200, 3, 4, 4, generator=g)))
    s = SyntheticSet(torch.randn(6, 3, 4, 4, generator=g), torch.tensor([0, 0, 1, 1, 2, 2]),
                     [0.012, 0.034], pre, {"dataset": "CIFAR10", "classes": CLASSES, "zca": True,
                                           "image_shape": [3, 4, 4]},
                     "ConvNet", 20, {"iteration": 500, "method": "STM"})
    path = tmp_path / "synthetic_best.pt"
    s.save(path)
    return s, path


def test_export_round_trip(syn, tmp_path):
    s, path = syn
    out = export_synthetic(path, tmp_path / "out")
    # tensors: plain data only, same images / labels / lrs, pixels are the ZCA-inverted images
    blob = load_export(out / "synthetic.pt")
    assert torch.equal(blob["images"], s.images) and torch.equal(blob["labels"], s.labels)
    assert blob["lrs"] == pytest.approx([0.012, 0.034]) and blob["classes"] == CLASSES
    assert torch.allclose(blob["pixels"], s.preprocess.inverse(s.images), atol=1e-5)
    assert blob["evaluation"]["epochs"] == 2 * 250 + 500  # lr list: k = max(20, 250) each
    assert blob["evaluation"]["lr_changes"][0] == [0, 0.012]
    back = SyntheticSet.load(out / "synthetic.pt")  # usable by `trajdistill evaluate --syn`
    assert torch.equal(back.images, s.images) and back.preprocess.zca is not None
    assert torch.allclose(back.preprocess.zca.transform, s.preprocess.zca.transform)
    # PNGs: one folder per class, pixel values exactly the report's display of each image
    shown = synthetic_display(s)
    meta = json.loads((out / "metadata.json").read_text())
    assert len(meta["files"]) == 6 and meta["zca"] is True and meta["images_per_class"] == 2
    for f in meta["files"]:
        with Image.open(out / f["file"]) as im:
            assert im.size == (4, 4) and im.mode == "RGB"
            assert (np.asarray(im) == to_uint8_hwc(shown[f["index"]])).all()
    dirs = sorted(p.name for p in (out / "images").iterdir())
    assert dirs == ["000_air_plane", "001_car", "002_bird_owl"]
    assert Image.open(out / "grid.png").size[0] > 0
    readme = (out / "README.txt").read_text()
    assert "weights_only=True" in readme and "ZCA" in readme and "0.012" in readme


def test_cli_export(syn, tmp_path, capsys):
    _, path = syn
    assert main(["export", str(path), str(tmp_path / "cli_out")]) == 0
    assert "exported" in capsys.readouterr().out
    assert (tmp_path / "cli_out" / "synthetic.pt").exists()
    with pytest.raises(SystemExit) as exit_:  # refused where the argument is parsed
        main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "argument syn: no such file" in capsys.readouterr().err
