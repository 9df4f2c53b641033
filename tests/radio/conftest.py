"""Fixtures shared by the radio tests: one kit per backend (a mock air, a sim air directory)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .radio_helpers import RadioKit


@pytest.fixture
def air_dir(tmp_path: Path) -> Iterator[Path]:
    """A sim air directory short enough for AF_UNIX socket paths (tmp_path may be too long)."""
    if len(os.fsencode(tmp_path)) <= 40:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(params=["mock", "sim"])
async def kit(request: pytest.FixtureRequest, air_dir: Path) -> AsyncIterator[RadioKit]:
    """One backend's kit; every contract test runs against both."""
    k = RadioKit(request.param, air_dir)
    try:
        yield k
    finally:
        await k.close()
