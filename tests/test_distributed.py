"""Expert training under PyTorch's own launcher (torchrun, gloo on CPU): ranks share the work."""
import os
import subprocess
import sys

import torch

from trajdistill.experts import TrajectoryStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["buffer", "--dataset", "digits", "--model", "ConvNetD2", "--train_epochs", "2",
        "--num_experts", "3", "--device", "cpu", "--quiet"]


def test_torchrun_buffer_equals_single_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "trajdistill.cli", *ARGS, "--buffer_path", str(single)],
                   env=ENV, check=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", "-m", "trajdistill.cli", *ARGS, "--buffer_path", str(multi)],
                   env=ENV, check=True)
    a = TrajectoryStore.open(single / "digits" / "ConvNetD2")
    b = TrajectoryStore.open(multi / "digits" / "ConvNetD2")
    assert b.indices() == [0, 1, 2]
    for i in range(3):  # expert i is seeded by its index, whichever rank trained it
        assert torch.equal(a.load(i), b.load(i))
