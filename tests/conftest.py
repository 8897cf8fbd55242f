"""Shared test fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

# The real data lives beside the project (../shared/data), read-only; never copied in.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data: the real test files (see its README). Copy before writing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "compile: compiles with torch.compile (about a minute with a cold inductor "
        "cache; deselect with -m 'not compile')")
