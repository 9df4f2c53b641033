"""BLE central on bleak 3.x: the device side of `--radio ble` (BlueZ, macOS, Windows); moves bytes, decides nothing.

- scan: a BleakScanner filtered on the service UUID (also checked in software); returns shortly after the first
  match (`scan_settle` seconds to hear other vehicles), strongest first, like the mock and sim backends. The scan
  runs in fresh windows of `scan_window` seconds (stop, start again) until the timeout. Under BlueZ 5.66's btvirt
  an advertiser is reported only when a scan starts, and the kernel drops that one report about 3 times in 10
  (tests/ble_vm: hits came within 50 ms of the start or never), so one long discovery session stayed blind for
  10-20 s while every new session was a fresh chance. With real radios the windows just follow each other
  (results accumulate; 1.5 s spans a default 1.28 s advertising interval) and the first window finds the vehicle.
- connect: bleak_retry_connector.establish_connection (retries BlueZ's transient errors) with GATT service
  caching off, so a restarted vehicle's new handles are always rediscovered. BlueZ-only options go through
  `bluez=` and only when an adapter is named; then a vehicle already connected through another adapter of this
  machine counts as busy (NotFound) instead of being shared: establish_connection would swap in that other
  adapter's link (seen in tests/ble_vm: `--adapter hci2` ended up on hci1's link). When a failed attempt leaves
  bleak's client stuck "already connected" (tests/ble_vm: after BlueZ never signalled Connected=True, the
  connector's own retries all failed at once), connect() calls the connector again with a new client, up to
  twice, within the same timeout.
- max_write_size: the RX characteristic's max_write_without_response_size (ATT MTU - 3; bleak's mtu_size is
  always 23 on BlueZ), capped at 512, the longest attribute value ATT allows.
- errors: an ATT error answer -> AttError(code); anything else during a write or subscription -> LinkLost (the
  write may or may not have reached the vehicle); connect failures -> NotFound or RadioError.
bleak is imported inside the methods, so this module imports on machines without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from key_server.radio.base import (
    RX_CHAR_UUID,
    SERVICE_UUID,
    TX_CHAR_UUID,
    Advertisement,
    AttError,
    AttErrorCode,
    LinkLost,
    NotFound,
    RadioError,
)

__all__ = ["MAX_ATTRIBUTE_SIZE", "RSSI_UNKNOWN", "BleakCentral", "BleakConnection", "advertisement_from"]

log = logging.getLogger(__name__)

MAX_ATTRIBUTE_SIZE = 512  # ATT caps an attribute value at 512 bytes, whatever the MTU
RSSI_UNKNOWN = -127  # what we report for HCI's "RSSI not available" (127), which must not look like "very close"
_DEFAULT_WRITE_SIZE = 20  # bleak's value until the MTU is known (and forever on BlueZ < 5.62)
_ATT_ERROR_TEXT = re.compile(r"ATT error: 0x([0-9a-fA-F]{1,2})")
_STUCK_CLIENT = "Client is already connected"  # bleak's BleakError when connect() is called on a 'connected' client
_FRESH_CLIENTS = 2  # extra connector calls, each with a new client, after a connect that left its client stuck


def _att_code(exc: BaseException) -> int | None:
    """The ATT error code a bleak exception carries (BleakGATTProtocolError.code, or in its text), else None."""
    from bleak.exc import BleakGATTProtocolError

    if isinstance(exc, BleakGATTProtocolError):
        code = int(exc.code)
    else:
        match = _ATT_ERROR_TEXT.search(str(exc))
        if match is None:
            return None
        code = int(match.group(1), 16)
    return code or None  # 0 is "success": BlueZ's way of saying the request died with the link


def _link_error(exc: BaseException, what: str) -> RadioError:
    code = _att_code(exc)
    if code is not None:
        return AttError(code, f"{what}: ATT error 0x{code:02x} ({exc})")
    return LinkLost(f"{what} failed: {exc or type(exc).__name__}")


def advertisement_from(device: Any, adv: Any) -> Advertisement:
    """Our Advertisement from bleak's (BLEDevice, AdvertisementData); `handle` keeps the BLEDevice for connect."""
    rssi = adv.rssi if isinstance(adv.rssi, int) and adv.rssi < 127 else RSSI_UNKNOWN
    return Advertisement(
        address=device.address,
        name=adv.local_name or device.name,
        service_uuids=tuple(str(u).lower() for u in adv.service_uuids),
        rssi=rssi,
        handle=device,
    )


class _LinkState:
    """Set by bleak's disconnected_callback once the connection is ours (earlier calls are failed attempts)."""

    def __init__(self) -> None:
        self.armed = False
        self.lost = False

    def on_disconnected(self, _client: Any) -> None:
        if self.armed:
            self.lost = True


class BleakConnection:
    """A connected vehicle's key service seen through bleak; implements base.Connection."""

    def __init__(
        self,
        client: Any,
        rx: Any,
        tx: Any,
        state: _LinkState,
        max_write_size: int,
        on_close: Callable[[BleakConnection], None] | None = None,
    ) -> None:
        self._client = client
        self._rx = rx
        self._tx = tx
        self._state = state
        self._on_close = on_close
        self.max_write_size = max_write_size
        self.address: str = getattr(client, "address", "?")

    @property
    def is_connected(self) -> bool:
        """False once the link dropped, from either side."""
        return not self._state.lost and bool(self._client.is_connected)

    def _check(self, what: str) -> None:
        if not self.is_connected:
            raise LinkLost(f"{what}: the link to {self.address} is down")

    async def subscribe(self, on_notify: Callable[[bytes], None]) -> None:
        """Enable notifications on TX; each one is handed to `on_notify` synchronously, in the loop."""
        self._check("subscribe")

        def deliver(_characteristic: Any, data: bytearray) -> None:
            try:
                on_notify(bytes(data))
            except Exception:
                log.exception("on_notify raised")

        try:
            await self._client.start_notify(self._tx, deliver)
        except Exception as exc:
            raise _link_error(exc, "subscribe") from exc

    async def write(self, data: bytes, *, response: bool = True) -> None:
        """Write one chunk (<= max_write_size) to RX; AttError if the vehicle refused it, LinkLost otherwise."""
        self._check("write")
        if len(data) > self.max_write_size:
            raise AttError(
                AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH,
                f"write of {len(data)} bytes exceeds the link's {self.max_write_size}",
            )
        try:
            await self._client.write_gatt_char(self._rx, bytes(data), response=response)
        except Exception as exc:
            raise _link_error(exc, "write") from exc

    async def disconnect(self) -> None:
        """Leave; idempotent, never raises."""
        self._state.lost = True
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None
        try:
            await self._client.disconnect()
        except Exception as exc:  # noqa: BLE001 - leaving must not fail; BlueZ drops the link on its own
            log.debug("disconnect from %s: %s", self.address, exc)


class BleakCentral:
    """A device-side radio on bleak; implements base.Central (plus watch() for proximity)."""

    def __init__(
        self,
        *,
        adapter: str | None = None,
        scan_settle: float = 0.3,
        scan_window: float = 1.5,
        connect_attempts: int = 3,
        mtu_wait: float = 0.3,
        scanner_factory: Callable[..., Any] | None = None,
        connector: Callable[..., Awaitable[Any]] | None = None,
        client_class: type | None = None,
    ) -> None:
        """`adapter` (e.g. "hci1") is BlueZ-only; the factories default to bleak and bleak-retry-connector."""
        self.adapter = adapter
        self.scan_settle = scan_settle
        self.scan_window = scan_window
        self.connect_attempts = connect_attempts
        self.mtu_wait = mtu_wait
        self._scanner_factory = scanner_factory
        self._connector = connector
        self._client_class = client_class
        self._connections: set[BleakConnection] = set()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RadioError("ble central is closed")

    def _bluez(self) -> dict[str, Any]:
        return {"bluez": {"adapter": self.adapter}} if self.adapter else {}

    def _scanner(self, callback: Callable[[Any, Any], None], service_uuid: str) -> Any:
        factory = self._scanner_factory
        if factory is None:
            from bleak import BleakScanner

            factory = BleakScanner
        return factory(callback, service_uuids=[service_uuid], **self._bluez())

    async def _start(self, scanner: Any) -> None:
        try:
            await scanner.start()
        except Exception as exc:
            where = f" on {self.adapter}" if self.adapter else ""
            if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                raise RadioError(f"Bluetooth is not available{where}: no system D-Bus or BlueZ (is bluetoothd "
                                 "running? on a machine without Bluetooth use --radio sim)") from exc
            raise RadioError(f"cannot scan{where}: {exc or type(exc).__name__}") from exc

    @staticmethod
    async def _stop(scanner: Any) -> None:
        try:
            await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - the results are in; a failing stop only leaks a scan
            log.debug("stopping the scan: %s", exc)

    # ------------------------------------------------------------------ Central

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID) -> list[Advertisement]:
        """Advertisers of `service_uuid`, strongest first; returns `scan_settle` s after the first, else at timeout.

        Scans in fresh windows of `scan_window` seconds (see the module docstring) until something is seen."""
        self._check_open()
        wanted = service_uuid.lower()
        seen: dict[str, Advertisement] = {}
        first = asyncio.Event()

        def on_detection(device: Any, adv: Any) -> None:
            found = advertisement_from(device, adv)
            if wanted in found.service_uuids:
                seen[found.address] = found
                first.set()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        window = 0
        while True:
            window += 1
            scanner = self._scanner(on_detection, wanted)
            await self._start(scanner)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(min(deadline, loop.time() + max(0.1, self.scan_window))):
                        await first.wait()
                if first.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(deadline):
                            await asyncio.sleep(self.scan_settle)  # other vehicles in range, fresher RSSI
            finally:
                await self._stop(scanner)
            if first.is_set() or loop.time() >= deadline:
                break
            log.debug("scan window %d saw nothing; starting a fresh one", window)
        return sorted(seen.values(), key=lambda a: a.rssi, reverse=True)

    async def watch(self, service_uuid: str, on_adv: Callable[[Advertisement], None]) -> None:
        """Scan until cancelled, calling `on_adv` (synchronously) for every advertisement of `service_uuid`."""
        self._check_open()
        wanted = service_uuid.lower()

        def on_detection(device: Any, adv: Any) -> None:
            found = advertisement_from(device, adv)
            if wanted in found.service_uuids:
                try:
                    on_adv(found)
                except Exception:
                    log.exception("watch: on_adv raised")

        scanner = self._scanner(on_detection, wanted)
        await self._start(scanner)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await self._stop(scanner)

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> BleakConnection:
        """Connect (retrying transient errors) and find the key service; NotFound or RadioError on failure."""
        self._check_open()
        label = adv.name or adv.address
        if adv.handle is None:
            raise NotFound(f"{label}: no BLE device handle (the advertisement must come from this central's scan)")
        connector: Callable[..., Awaitable[Any]] | None = self._connector
        client_class = self._client_class
        if connector is None or client_class is None:
            from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

            connector = connector or establish_connection
            client_class = client_class or BleakClientWithServiceCache
        state = _LinkState()
        device: Any = adv.handle  # a BLEDevice from our scan
        if self.adapter and self._connector is None:
            # bleak-retry-connector swaps in a connection the same address already has on ANY adapter, so a
            # central on hci2 would silently share hci1's link (and lose it when that process disconnects).
            # The vehicle serves one central at a time anyway: call it busy, the driver's next cycle retries.
            elsewhere = await _connections_elsewhere(device, self.adapter)
            if elsewhere:
                raise NotFound(f"{label} is busy: already connected through {', '.join(elsewhere)}")
        try:
            async with asyncio.timeout(timeout):
                for fresh in range(_FRESH_CLIENTS, -1, -1):
                    try:
                        client = await connector(
                            client_class,
                            device,
                            label,
                            disconnected_callback=state.on_disconnected,
                            max_attempts=self.connect_attempts,
                            use_services_cache=False,
                            **self._bluez(),
                        )
                        break
                    except Exception as exc:
                        # A failed connect can leave bleak's client believing it is connected (e.g. BlueZ never
                        # signalled Connected=True), and then every retry on that client fails at once with
                        # "Client is already connected". Only a new client (a new connector call) helps.
                        if fresh == 0 or _STUCK_CLIENT not in str(exc):
                            raise
                        log.info("connect to %s: %s; retrying with a fresh client", label, exc)
                        await asyncio.sleep(0.25)
        except TimeoutError as exc:
            raise NotFound(f"{label}: not connectable within {timeout:g} s") from exc
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"{label}: {exc}") from exc
            raise RadioError(f"could not connect to {label}: {exc or type(exc).__name__}") from exc
        state.armed = True
        try:
            rx, tx = self._key_service(client, label)
            size = await self._write_size(rx)
        except BaseException:
            await _quiet_disconnect(client)
            raise
        conn = BleakConnection(client, rx, tx, state, size, on_close=self._connections.discard)
        self._connections.add(conn)
        log.debug("connected to %s, max write %d", label, size)
        return conn

    async def aclose(self) -> None:
        """Disconnect every connection of this central; idempotent."""
        self._closed = True
        conns = list(self._connections)
        if conns:
            await asyncio.gather(*(c.disconnect() for c in conns))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _key_service(client: Any, label: str) -> tuple[Any, Any]:
        try:
            service = client.services.get_service(SERVICE_UUID)
            rx = service.get_characteristic(RX_CHAR_UUID) if service is not None else None
            tx = service.get_characteristic(TX_CHAR_UUID) if service is not None else None
        except Exception as exc:
            raise RadioError(f"{label}: GATT discovery failed: {exc}") from exc
        if rx is None or tx is None:
            raise RadioError(f"{label} does not offer the key service {SERVICE_UUID}")
        return rx, tx

    async def _write_size(self, rx: Any) -> int:
        """RX's max_write_without_response_size, waiting up to `mtu_wait` s if it still shows bleak's default."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.mtu_wait
        size = int(rx.max_write_without_response_size)
        while size <= _DEFAULT_WRITE_SIZE and loop.time() < deadline:
            await asyncio.sleep(0.05)
            size = int(rx.max_write_without_response_size)
        return max(_DEFAULT_WRITE_SIZE, min(size, MAX_ATTRIBUTE_SIZE))


async def _connections_elsewhere(device: Any, adapter: str) -> list[str]:
    """BlueZ object paths of connections to `device`'s address held by adapters other than `adapter`."""
    try:
        from bleak_retry_connector.bluez import get_connected_devices

        connected = await get_connected_devices(device)
    except Exception as exc:  # noqa: BLE001 - a failed check must not block connecting
        log.debug("could not list existing connections: %s", exc)
        return []
    mine = f"/org/bluez/{adapter}/"
    paths = [str((d.details or {}).get("path", "")) for d in connected if isinstance(d.details, dict)]
    return [p for p in paths if p and not p.startswith(mine)]


def _is_not_found(exc: BaseException) -> bool:
    from bleak.exc import BleakDeviceNotFoundError

    try:
        from bleak_retry_connector import BleakNotFoundError
    except ImportError:  # pragma: no cover - a dependency of the project
        return isinstance(exc, BleakDeviceNotFoundError)
    return isinstance(exc, BleakDeviceNotFoundError | BleakNotFoundError)


async def _quiet_disconnect(client: Any) -> None:
    try:
        await client.disconnect()
    except Exception as exc:  # noqa: BLE001 - already failing; the first error is the one to report
        log.debug("disconnect after a failed connect: %s", exc)
