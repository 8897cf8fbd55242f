"""Several processes (torchrun) through PyTorch's own torch.distributed, or one process.

`Comm` is the little the distillation needs from the process group: this process's rank,
the world size, a sum over ranks of one tensor, rank 0's object sent to every rank, and
every rank's object gathered everywhere. With one process (no torchrun) every call is the
identity, so the same code path runs with K = 1 and K > 1.

`init_from_env` starts the group from the variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, ...): gloo on CPU, NCCL on CUDA with one GPU per local rank.
Collectives time out after TRAJDISTILL_DIST_TIMEOUT seconds (default 1800), so a rank
that died without torchrun noticing cannot leave the others waiting forever; when a rank
raises, torchrun stops the other ranks and the job ends with that rank's message.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import ConfigError, TrajdistillError

DEFAULT_TIMEOUT_S = 1800


class PeerFailure(TrajdistillError, RuntimeError):
    """Another rank of the job stopped (its own error line says why) or a collective timed
    out: this rank stops with one line instead of the backend's traceback."""


@contextmanager
def _collective(what: str):
    """A collective that fails here failed because of another rank (or the network)."""
    try:
        yield
    except RuntimeError as e:  # gloo / NCCL report a peer's exit or a timeout this way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PeerFailure(f"another process of this torchrun job stopped or timed out during "
                          f"{what} (its own error is above): {first}") from None


def env_world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) without torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Comm:
    """Collectives over the ranks of a started process group, or none (world 1)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (every rank gets the sum)."""
        if self.active:
            with _collective("the gradient all-reduce"):
                torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (the others' argument is ignored)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        with _collective("a broadcast from rank 0"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        with _collective("gathering results"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            with _collective("a barrier"):
                torch.distributed.barrier()

    def my_share(self, n: int) -> list[int]:
        """The items 0..n-1 this rank works on: every world-th, from its rank."""
        return list(range(self.rank, n, self.world))


SINGLE = Comm()


def _timeout() -> timedelta:
    """TRAJDISTILL_DIST_TIMEOUT seconds (a positive number), DEFAULT_TIMEOUT_S without it."""
    text = os.environ.get("TRAJDISTILL_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"TRAJDISTILL_DIST_TIMEOUT must be a positive number of seconds, "
                          f"got {text!r}")
    return timedelta(seconds=seconds)


def init_from_env(device: str) -> tuple[Comm, str]:
    """Start the process group torchrun asked for (if any); returns it and this rank's
    device (cuda -> cuda:LOCAL_RANK). Without torchrun: (SINGLE, device)."""
    rank, world = env_world()
    if world <= 1:
        return SINGLE, device
    cuda = str(device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s): lower "
                              "--nproc_per_node or pass --device cpu")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
    return Comm(torch.distributed.get_rank(), torch.distributed.get_world_size()), device


def shutdown(comm: Comm) -> None:
    """Leave the process group cleanly (after a last barrier)."""
    if comm.active and torch.distributed.is_initialized():
        comm.barrier()
        torch.distributed.destroy_process_group()
