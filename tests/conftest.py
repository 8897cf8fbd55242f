"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from trajdistill.precision import set_tf32

# The real data lives beside the project (../shared/data), read-only; never copied in.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The device of the device-aware tests (gradient identities, resume, end to end, soft labels,
# evaluation) import it: `TRAJDISTILL_TEST_DEVICE=cuda pytest` runs them on a GPU, the rest
# stay on CPU.
DEVICE = os.environ.get("TRAJDISTILL_TEST_DEVICE", "cpu")
if DEVICE != "cpu" and not (DEVICE.startswith("cuda") and torch.cuda.is_available()):
    raise pytest.UsageError(f"TRAJDISTILL_TEST_DEVICE={DEVICE}: expected cpu, or cuda[:N] on "
                            "a machine with CUDA")
set_tf32(False)  # the tool's own default (trajdistill.precision); test_cuda.py turns it on
# Under pytest-xdist (test.sh) the workers share the cores: each gets its share of threads,
# not one thread per core each (which would oversubscribe the machine K times).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

# The reference's distillation settings (before issue 21 they were the defaults): tests of the
# loop's mechanics that were written against them pin them, so that the derived defaults
# (Adam, class-mean start, auto lr) do not change what they check.
REFERENCE = {"lr_img": 1000.0, "lr_teacher": [0.01], "pix_init": "real"}


@pytest.fixture(scope="session")
def digits():
    """The embedded 8 px digits (DatasetSplits), loaded once."""
    from trajdistill.data import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_buffers(tmp_path_factory, digits) -> Path:
    """One small expert buffer the loop's tests share: 2 ConvNetD2 experts x 4 epochs on the
    digits, at ROOT/digits/ConvNetD2 (the command line's layout: `--buffer_path ROOT`).
    Read-only: a test that adds experts or writes beside them makes its own."""
    from trajdistill.experts import ExpertConfig, train_experts
    root = tmp_path_factory.mktemp("digits_buffers")
    train_experts(digits, ExpertConfig(model="ConvNetD2", train_epochs=4, num_experts=2),
                  root / "digits" / "ConvNetD2", progress=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data: the real test files (see its README). Copy before writing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar_zca(shared_data):
    """The real CIFAR-10 subset, ZCA-whitened (the fit, a 3072 x 3072 eigendecomposition, once)."""
    from trajdistill.data import load_dataset
    return load_dataset("CIFAR10", shared_data / "cifar10-subset", zca=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: runs the command line in subprocesses (kill and resume, torchrun, "
        "the console); CI runs them too, deselect locally with -m 'not slow'")
    config.addinivalue_line(
        "markers", "compile: compiles with torch.compile (about a minute with a cold inductor "
        "cache; deselect with -m 'not compile')")
