"""Fixtures shared by the radio tests: one kit per backend (a mock air, a sim air directory)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .fakes_ble import FakeClient, FakeScanner, dbus_daemon_available, private_bus
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


@pytest.fixture(autouse=True)
def _reset_ble_fakes() -> Iterator[None]:
    """The bleak fakes keep scripts and failures in class attributes: every test starts and ends clean."""
    FakeScanner.reset()
    FakeClient.services_to_offer = None
    yield
    FakeScanner.reset()
    FakeClient.services_to_offer = None


@pytest.fixture
def bus_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private dbus-daemon that bless, dbus_fast and bleak take for the system bus; skipped without one."""
    if not dbus_daemon_available():
        pytest.skip("needs dbus-daemon")
    with private_bus() as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
