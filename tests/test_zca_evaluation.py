"""A ZCA-whitened synthetic set is always evaluated on a ZCA-whitened test set.

Users of the reference code evaluated whitened images against an un-whitened test set and
got chance accuracy; here the transform travels inside the synthetic-set file.
"""
import torch

import trajdistill.evaluate as evaluate_module
from trajdistill.cli import main
from trajdistill.synthetic import SyntheticSet

from conftest import DEVICE  # TRAJDISTILL_TEST_DEVICE


def test_evaluate_uses_the_synthetic_sets_zca_even_without_the_flag(shared_data, cifar_zca,
                                                                    tmp_path, monkeypatch):
    path = shared_data / "cifar10-subset" / "cifar-10-python.tar.gz"
    splits = cifar_zca
    idx = torch.cat([splits.train.indices_of(c)[:1] for c in range(10)])
    syn = SyntheticSet(splits.preprocess(splits.train.images[idx]), splits.train.labels[idx], [0.01],
                       splits.preprocess, splits.describe(), "ConvNet")
    syn.save(tmp_path / "syn.pt")

    seen = {}

    def capture(images, labels, used_splits, *args, **kwargs):
        seen["splits"] = used_splits
        return {"ConvNet": {"mean": 0.1, "std": 0.0, "accuracies": [0.1], "per_class": [0.1] * 10,
                            "confusion": [[0] * 10] * 10}}

    monkeypatch.setattr(evaluate_module, "evaluate_set", capture)
    assert main(["evaluate", "--syn", str(tmp_path / "syn.pt"), "--dataset", "CIFAR10",
                 "--data_path", str(path), "--lr", "learned", "--device", DEVICE,
                 "--quiet"]) == 0  # no --zca given
    used = seen["splits"].preprocess
    assert used.zca is not None
    assert torch.equal(used.zca.transform, splits.preprocess.zca.transform)
    test_batch = seen["splits"].test.images[:8]
    assert torch.allclose(used(test_batch), splits.preprocess(test_batch))
