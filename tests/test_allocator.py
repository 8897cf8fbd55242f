"""allocator.keep_large_blocks: a step's large activations are reused from the heap instead of
being mmapped (and page-faulted in) afresh every time (issue 23)."""
import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from trajdistill.allocator import keep_large_blocks
print(keep_large_blocks())
def faults_of_a_fresh_64mb_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_64mb_block()          # the first one faults in either case
print(faults_of_a_fresh_64mb_block())   # the second: reused, or mmapped again
"""


def _probe(setting: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "TRAJDISTILL_MALLOC": setting, "OMP_NUM_THREADS": "1"})
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_block_is_reused_without_page_faults():
    kept, faults = _probe("keep")
    default, default_faults = _probe("default")
    assert kept and not default
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert default_faults > pages // 2   # glibc's own: a fresh mmap, every page faulted in
    assert faults < pages // 20          # kept: the same pages again
