"""Pick the device-side radio: `ble` (bleak), `sim` (local sockets), or `mock` (in-memory, tests only).

The mock radio has no shared medium outside one process, so tests hand their MockAir over with
`register_mock(air)`; `--radio mock` is refused unless one is registered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ClientError

if TYPE_CHECKING:
    from dkey_link.contract import Central
    from dkey_link.mock import MockAir

RadioKind = Literal["ble", "sim", "mock"]
KINDS: tuple[str, ...] = ("ble", "sim", "mock")

_mock_air: MockAir | None = None


def register_mock(air: MockAir | None) -> None:
    """Make `--radio mock` use `air` (None unregisters); for tests only."""
    global _mock_air
    _mock_air = air


@contextlib.contextmanager
def mock_air(air: MockAir) -> Iterator[MockAir]:
    """register_mock(air) for the duration of a `with` block."""
    register_mock(air)
    try:
        yield air
    finally:
        register_mock(None)


def make_central(kind: str, *, adapter: str | None = None, sim_dir: Path | None = None) -> Central:
    """A Central of the given kind; ClientError if it cannot be made here (no bleak, no mock registered)."""
    if kind == "ble":
        try:
            # Lazy: bleak pulls in D-Bus/CoreBluetooth machinery that sim and mock users never need.
            from key_client.radio.ble import BleakCentral
        except ImportError as exc:
            raise ClientError(f"the ble radio is not available here ({exc}); install bleak, "
                              "or use --radio sim with a simulated key-server") from exc
        # One connect try per call: the driver owns retries (docs/CLIENT.md, "Time limits and retries").
        central: Central = BleakCentral(adapter=adapter, connect_attempts=1)
        return central
    if kind == "sim":
        from dkey_link.sim import SimCentral

        return SimCentral(air_dir=sim_dir, name="key-client")
    if kind == "mock":
        if _mock_air is None:
            raise ClientError("the mock radio only exists inside the test suite (use --radio ble or sim)")
        return _mock_air.central(name="key-client")
    raise ClientError(f"unknown radio {kind!r}: use ble or sim")


__all__ = ["KINDS", "RadioKind", "make_central", "mock_air", "register_mock"]
