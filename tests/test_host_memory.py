"""Freed host memory is reused (host_memory.py): a 64 MB block allocated, freed and allocated
again costs the kernel no fresh pages the second time, where glibc's default maps it afresh
(64 MB / 4 KiB = 16384 page faults). Measured in fresh processes: malloc's settings are
per process."""
import os
import subprocess
import sys
import textwrap

import pytest

from trajdistill.host_memory import keep_freed_memory

PROBE = textwrap.dedent("""
    import resource, torch
    from trajdistill.host_memory import keep_freed_memory
    kept = keep_freed_memory()
    for _ in range(2):  # twice: the first may grow the heap
        x = torch.ones(16 << 20)  # 64 MB, every page touched
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env}, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr(
    "CS_GNU_LIBC_VERSION"), reason="glibc's malloc only")
def test_a_freed_block_is_reused_without_fresh_pages():
    kept, faults = _probe()
    assert kept == "True" and faults < 1000
    kept, faults = _probe(TRAJDISTILL_MALLOC="default")  # glibc's own settings
    assert kept == "False" and faults >= 16384


def test_the_opt_out_is_read(monkeypatch):
    monkeypatch.setenv("TRAJDISTILL_MALLOC", "default")
    assert keep_freed_memory() is False
