"""Freed host memory is reused (host_memory.py). Steps that allocate and free activations of
52 MB (config A's size, above glibc's largest mmap threshold of 32 MB) cost the kernel fresh
pages on every step with glibc's settings: at least one 52 MB block, 12800 pages, per step.
Kept, most of those pages are reused. Measured in fresh processes: malloc's settings are per
process."""
import os
import subprocess
import sys
import textwrap

import pytest

from trajdistill.host_memory import keep_freed_memory

PAGES_PER_BLOCK = 100 * 128 * 32 * 32 * 4 // 4096  # one 52 MB activation, 4 KiB pages
STEPS = 5

PROBE = textwrap.dedent(f"""
    import resource, torch
    from trajdistill.host_memory import keep_freed_memory
    kept = keep_freed_memory()
    torch.set_num_threads(1)
    w = torch.randn(128, 1, 1, requires_grad=True)
    x = torch.randn(100, 128, 32, 32)
    def step():  # a forward and backward pass whose every tensor is 52 MB
        y = torch.relu(x * w)
        torch.relu(y * w).sum().backward()
    step(); step()  # the heap grows to its working size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({STEPS}):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env}, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr(
    "CS_GNU_LIBC_VERSION"), reason="glibc's malloc only")
def test_repeated_steps_reuse_freed_pages():
    kept, default = _probe(TRAJDISTILL_MALLOC="default")  # glibc's own settings
    assert kept == "False" and default >= STEPS * PAGES_PER_BLOCK
    kept, faults = _probe()
    assert kept == "True" and faults * 4 < default  # session 12: 38k-90k against 576k


def test_the_opt_out_is_read(monkeypatch):
    monkeypatch.setenv("TRAJDISTILL_MALLOC", "default")
    assert keep_freed_memory() is False
