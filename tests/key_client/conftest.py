"""Fixtures shared by the key client tests: a running key server on the mock radio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..key_server.harness import Harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """A started key server harness (mock radio, simulated lock), stopped after the test."""
    harness = await Harness(tmp_path).start()
    yield harness
    await harness.stop()
