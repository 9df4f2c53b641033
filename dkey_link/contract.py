"""The small GATT-shaped interface every radio backend implements; backends move bytes and decide nothing.

A vehicle is a *peripheral*: it advertises our service, accepts connections, receives writes on the RX
characteristic and sends notifications on the TX characteristic. A device is a *central*: it scans,
connects, subscribes to TX and writes to RX. See docs/PROTOCOL.md §1 for the UUIDs.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from protocol import MAX_ATT_MTU as MAX_ATT_MTU  # re-exported: links and framing share one bound
from protocol import MIN_ATT_MTU

# Service and characteristic UUIDs (docs/PROTOCOL.md §1).
SERVICE_UUID = "7d4f0001-5e2a-4c1b-9f3a-6b1c2d3e4f50"
RX_CHAR_UUID = "7d4f0002-5e2a-4c1b-9f3a-6b1c2d3e4f50"  # central -> vehicle: write (with response) only
TX_CHAR_UUID = "7d4f0003-5e2a-4c1b-9f3a-6b1c2d3e4f50"  # vehicle -> central: notify

DEFAULT_ATT_MTU = MIN_ATT_MTU  # every link starts here until an MTU exchange raises it (up to MAX_ATT_MTU)


class AttErrorCode(enum.IntEnum):
    """ATT error codes a write may fail with (Bluetooth Core Vol 3 Part F §3.4.1.1, plus our app range)."""

    INVALID_HANDLE = 0x01
    WRITE_NOT_PERMITTED = 0x03
    INVALID_PDU = 0x04
    INSUFFICIENT_AUTHENTICATION = 0x05
    REQUEST_NOT_SUPPORTED = 0x06
    INVALID_OFFSET = 0x07
    INVALID_ATTRIBUTE_VALUE_LENGTH = 0x0D
    UNLIKELY_ERROR = 0x0E
    APP_BUSY = 0x80  # our application error: the vehicle is rate-limiting this link; retry later
    APP_REJECTED = 0x81  # our application error: the frame was refused (malformed or oversize)


class RadioError(Exception):
    """Base of every radio backend error."""


class AttError(RadioError):
    """A write was answered with an ATT error."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"ATT error 0x{code:02x}")
        self.code = code


class LinkLost(RadioError):
    """The link dropped (disconnect, out of range) while an operation was in flight."""


class NotFound(RadioError):
    """No matching advertiser was seen within the scan time."""


# ---------------------------------------------------------------- vehicle (peripheral) side


class PeripheralHandler(Protocol):
    """What a peripheral backend calls; every method is synchronous, cheap and must not block."""

    def on_connect(self, link: str, mtu: int) -> None:
        """A central connected (reported before its first write); `mtu` is the ATT MTU if known, else 23.

        Every backend reports a link when it connects, not when it first writes, so a central that connects and
        never writes is seen: the service's idle timeout and lifetime cap then drop it (disconnect(link)).
        """

    def on_mtu(self, link: str, mtu: int) -> None:
        """The ATT MTU of a connected link became known after on_connect (bless learns it at the first write)."""

    def on_subscribe(self, link: str | None) -> None:
        """A central enabled notifications on TX; `link` is None when the backend cannot tell which."""

    def on_write(self, link: str, data: bytes) -> None:
        """One ATT write arrived on RX; raise AttError to answer the write with that ATT error."""

    def on_disconnect(self, link: str) -> None:
        """The central left."""


class Peripheral(Protocol):
    """A vehicle-side radio: advertise, receive writes, send notifications."""

    notify_targets_one_link: bool
    """True if notify(link=...) reaches only that link; False if every subscriber gets it (bless)."""

    async def start(self, handler: PeripheralHandler) -> None:
        """Start advertising SERVICE_UUID under the configured name and deliver events to `handler`."""

    async def advertise_token(self, token: bytes) -> None:
        """Advertise `token` as the service data of SERVICE_UUID from now on (PROTOCOL.md §13).

        The vehicle calls it before start() (the first advertisement then carries the token) and at every
        rotation while running; a backend replaces the previous token, it never advertises two.
        """

    async def notify(self, data: bytes, link: str | None = None) -> None:
        """Send one notification (<= MTU-3 bytes) on TX to `link`, or to every subscriber if None."""

    async def disconnect(self, link: str) -> None:
        """Drop a link if the backend can; otherwise a no-op."""

    async def stop(self) -> None:
        """Stop advertising and drop every link; idempotent."""


# ---------------------------------------------------------------- device (central) side


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertiser seen while scanning."""

    address: str  # backend-specific and NOT an identity: vehicles are identified by their authenticated id
    name: str | None
    service_uuids: tuple[str, ...]
    rssi: int
    # The service data advertised under SERVICE_UUID (AD type 0x21): our vehicles put their rotating token there
    # (PROTOCOL.md §13); None if the advertiser sent none.
    service_data: bytes | None = None
    handle: object = field(default=None, compare=False, repr=False)  # backend object needed to connect


class Connection(Protocol):
    """A connected central's view of the vehicle's GATT service."""

    max_write_size: int
    """Largest single write the link carries (ATT MTU - 3; bleak: max_write_without_response_size)."""

    async def subscribe(self, on_notify: Callable[[bytes], None]) -> None:
        """Enable notifications on TX; `on_notify` is called (synchronously, in the loop) per notification."""

    async def write(self, data: bytes, *, response: bool = True) -> None:
        """Write one chunk (<= max_write_size) to RX; raises AttError or LinkLost."""

    async def disconnect(self) -> None:
        """Leave; idempotent."""

    @property
    def is_connected(self) -> bool:
        """False once the link dropped, from either side."""


class Central(Protocol):
    """A device-side radio: scan and connect."""

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: Callable[[Advertisement], bool] | None = None) -> list[Advertisement]:
        """Advertisers of `service_uuid` seen within `timeout` seconds, strongest first.

        Without `until` a backend may return as soon as it saw one. With `until` it returns as soon as it saw an
        advertisement `until` accepts (the device's own vehicle, by its token), else at the timeout, with every
        advertiser seen meanwhile.
        """

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> Connection:
        """Connect to an advertiser; raises RadioError (LinkLost, NotFound, ...) on failure."""

    async def aclose(self) -> None:
        """Release the adapter; idempotent."""


def call_handler(logger: logging.Logger, where: str, handler: PeripheralHandler | None, method: str,
                 *args: object) -> None:
    """Run handler.method(*args) if there is a handler; a handler bug is logged, never raised into the radio."""
    if handler is None:
        return
    try:
        getattr(handler, method)(*args)
    except Exception:
        logger.exception("%s: handler.%s raised", where, method)
