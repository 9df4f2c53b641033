"""BLE central on bleak 3.x: the device side of `--radio ble` (BlueZ, macOS, Windows); moves bytes, decides nothing.

- scan: an unfiltered BleakScanner, our service UUID checked in software (in the UUID list or as a service-data
  key); returns shortly after the first match (`scan_settle` seconds to hear other vehicles), strongest first,
  like the mock and sim backends. The scan
  runs in fresh windows of `scan_window` seconds (stop, start again) until the timeout. Under BlueZ 5.66's btvirt
  an advertiser is reported only when a scan starts, and the kernel drops that one report about 3 times in 10
  (tests/ble_vm: hits came within 50 ms of the start or never), so one long discovery session stayed blind for
  10-20 s while every new session was a fresh chance. With real radios the windows just follow each other
  (results accumulate; 1.5 s spans a default 1.28 s advertising interval) and the first window finds the vehicle.
- connect: bleak_retry_connector.establish_connection with GATT service caching off, so a restarted vehicle's
  new handles are always rediscovered, and `max_attempts=connect_attempts`. key-client makes its central with
  connect_attempts=1 (key_client/radios.py): the driver is the one layer that retries (docs/CLIENT.md), and
  every connect() is one attempt within the timeout it is given. BlueZ-only options go through `bluez=` and only
  when an adapter is named; then a vehicle already connected through another adapter of this machine counts as
  busy (NotFound) instead of being shared: establish_connection would swap in that other adapter's link (seen in
  tests/ble_vm: `--adapter hci2` ended up on hci1's link). A failed attempt can leave bleak's client stuck
  "already connected" (tests/ble_vm: BlueZ never signalled Connected=True); every connect() makes a new client,
  so the driver's next attempt is the fresh start that cures it.
- max_write_size: the RX characteristic's max_write_without_response_size (ATT MTU - 3; bleak's mtu_size is
  always 23 on BlueZ), capped at 512, the longest attribute value ATT allows.
- errors: an ATT error answer -> AttError(code); anything else during a write or subscription -> LinkLost (the
  write may or may not have reached the vehicle); connect failures -> NotFound or RadioError.
- bluetoothd restarts (BlueZ 5.66 segfaults on reconnects; systemd with the Restart= drop-in of docs/DEPLOY.md,
  the user or the ble_vm guest's supervisor start it again within seconds): while org.bluez has no owner on the
  system bus, every BlueZ call fails with a D-Bus error (bluez_is_gone). A scan whose start fails that way waits
  for bluetoothd (bluez_ready: org.bluez owned and the adapter powered, polled every 0.25 s over a short-lived
  system bus connection) for up to `bluez_wait` s but not past the scan's own timeout, so callers keep their time
  budget (after such a wait the scan still listens for one window); watch() has no timeout and waits the whole
  `bluez_wait`. Not back in time -> RadioError saying to start it. A connect that fails that way -> RadioError
  saying bluetoothd went away; the driver's next attempt scans again first,
  and so waits. watch() also asks every `bluez_check`
  s who owns org.bluez: a new bluetoothd knows nothing of the old one's discovery session, so without a new scan
  watch() would hear nothing.
- bleak's process-global BlueZManager (manager.py in bleak 3.1) outlives a bluetoothd restart half-right: it
  takes the new daemon's InterfacesAdded (its match rules name no sender), so adapters and re-found devices are
  fresh, but nothing tells it the old daemon's objects are gone (a dead process sends no InterfacesRemoved; the
  manager resets only when its own bus connection drops, and does not watch NameOwnerChanged). Devices that were
  connected stay Connected=True in its cache (establish_connection then swaps in such a device on another
  adapter, and `_connections_elsewhere` calls the vehicle busy), with the GATT objects of the cut link. So when
  we see a restart (a scan that waited for bluetoothd, a connect that lost it, a watch that saw a new owner) we
  close that manager's bus connection (_refresh_bleak_bluez_state): bleak's own recovery drops the cache,
  reports those links disconnected, and re-reads BlueZ on its next call. It reaches into bleak's private
  `_global_instances` and `_bus`, and does nothing if those change.
bleak is imported inside the methods, so this module imports on machines without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dkey_link.contract import (
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

__all__ = [
    "BLUEZ_NOT_RUNNING",
    "MAX_ATTRIBUTE_SIZE",
    "RSSI_UNKNOWN",
    "BleakCentral",
    "BleakConnection",
    "advertisement_from",
    "bluez_is_gone",
    "bluez_owner",
    "bluez_ready",
]

log = logging.getLogger(__name__)

MAX_ATTRIBUTE_SIZE = 512  # ATT caps an attribute value at 512 bytes, whatever the MTU
RSSI_UNKNOWN = -127  # what we report for HCI's "RSSI not available" (127), which must not look like "very close"
_DEFAULT_WRITE_SIZE = 20  # bleak's value until the MTU is known (and forever on BlueZ < 5.62)
_ATT_ERROR_TEXT = re.compile(r"ATT error: 0x([0-9a-fA-F]{1,2})")

BLUEZ_NOT_RUNNING = ("BlueZ (bluetoothd) is not running on this machine: start it (sudo systemctl start bluetooth) "
                     "and try again")
_BLUEZ = "org.bluez"
_ADAPTER_IFACE = "org.bluez.Adapter1"
# What dbus-daemon answers for a call to org.bluez while nobody owns that name: ServiceUnknown / NameHasNoOwner, or
# Spawn.* (ChildExited, ExecFailed, ...) when it tried to start bluetoothd through D-Bus activation and failed.
_BLUEZ_GONE_ERRORS = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.",
)
# org.freedesktop.DBus.Error.NoReply with this text: bluetoothd left the bus (died) while our call was pending.
# A NoReply without it is a plain timeout of a daemon that is still there.
_DIED_DURING_CALL = "disconnected from message bus without replying"
_BLUEZ_POLL = 0.25  # s between bluez_ready probes while waiting for bluetoothd
_PROBE_TIMEOUT = 2.0  # s for one probe (connect, ask, close); a system bus slower than that counts as "not ready"


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


def bluez_is_gone(exc: BaseException) -> bool:
    """True if `exc`, or an exception it was raised from, says bluetoothd (org.bluez) is not on the system bus.

    Looks at BleakDBusError.dbus_error and at the text (bleak-retry-connector wraps the D-Bus error in its own
    message), through __cause__ and __context__: ServiceUnknown, NameHasNoOwner and Spawn.* mean nobody owns
    org.bluez; NoReply "... disconnected from message bus without replying" means bluetoothd died during the call.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        text = f"{getattr(e, 'dbus_error', '') or ''} {e}"
        if any(name in text for name in _BLUEZ_GONE_ERRORS) or _DIED_DURING_CALL in text.lower():
            return True
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


@contextlib.asynccontextmanager
async def _system_bus() -> AsyncIterator[Any]:
    """A dbus_fast connection to the system bus, closed (socket included) on exit."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus: Any = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        yield bus
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.wait_for_disconnect(), 1.0)


async def _ask(bus: Any, destination: str, path: str, interface: str, member: str, signature: str = "",
               body: list[Any] | None = None) -> list[Any] | None:
    """The body of a method call's reply, or None if it was an error; never starts a service (NO_AUTOSTART)."""
    from dbus_fast import Message, MessageFlag, MessageType

    # NO_AUTOSTART: a probe must not make dbus-daemon try to launch bluetoothd (that is how Spawn.* errors come).
    reply = await bus.call(Message(destination=destination, path=path, interface=interface, member=member,
                                   signature=signature, body=body or [], flags=MessageFlag.NO_AUTOSTART))
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        return None
    return list(reply.body)


async def _owner(bus: Any) -> str | None:
    body = await _ask(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner",
                      "s", [_BLUEZ])
    return str(body[0]) if body else None


async def bluez_owner() -> str | None:
    """The unique bus name of the process owning org.bluez on the system bus; None if none, or if the bus can't tell."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT), _system_bus() as bus:
            return await _owner(bus)
    except Exception as exc:  # noqa: BLE001 - a probe answers "unknown", it never fails its caller
        log.debug("asking the system bus who owns org.bluez: %r", exc)
        return None


_default_owner = bluez_owner  # BleakCentral.__init__ has a parameter of that name


async def bluez_ready(adapter: str | None = None) -> bool:
    """True if bluetoothd owns org.bluez and `adapter` (any adapter if None) is powered; False, never raising, if not.

    One short-lived system bus connection, closed before returning."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT), _system_bus() as bus:
            if await _owner(bus) is None:
                return False
            if adapter:
                body = await _ask(bus, _BLUEZ, f"/org/bluez/{adapter}", "org.freedesktop.DBus.Properties", "Get",
                                  "ss", [_ADAPTER_IFACE, "Powered"])
                return body is not None and len(body) == 1 and getattr(body[0], "value", None) is True
            body = await _ask(bus, _BLUEZ, "/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
            objects: dict[str, dict[str, dict[str, Any]]] = body[0] if body else {}
            return any(getattr(ifaces.get(_ADAPTER_IFACE, {}).get("Powered"), "value", False) is True
                       for ifaces in objects.values())
    except Exception as exc:  # noqa: BLE001 - a probe answers "not ready", it never fails its caller
        log.debug("probing bluetoothd: %r", exc)
        return False


async def _refresh_bleak_bluez_state() -> None:
    """Make bleak's BlueZ manager of this loop forget the previous bluetoothd (see the module docstring)."""
    if sys.platform != "linux":
        return
    try:
        from bleak.backends.bluezdbus import manager as bluez_manager

        instances = getattr(bluez_manager, "_global_instances", None)
        instance = instances.get(asyncio.get_running_loop()) if isinstance(instances, dict) else None
        bus = getattr(instance, "_bus", None)
        if bus is None or not bus.connected:
            return  # never initialised (bluetoothd was away at its first call), or already being rebuilt
        log.debug("bluetoothd restarted: making bleak re-read BlueZ's objects")
        # bleak's bus watcher then clears the cache and marks the old links disconnected; its next call connects a
        # new bus and reads GetManagedObjects from the new bluetoothd. Wait for the disconnect to complete: until
        # then bleak still sees the bus as connected and would send its next call down the closed socket.
        bus.disconnect()
        try:
            await asyncio.wait_for(bus.wait_for_disconnect(), 2.0)
        finally:
            # dbus-next 0.2.3 only shuts the socket down: close it, or every bluetoothd restart leaks an fd (and a
            # ResourceWarning when it is collected) in a long-running `auto`.
            for name in ("_stream", "_sock"):
                with contextlib.suppress(Exception):
                    getattr(bus, name).close()
    except Exception as exc:  # noqa: BLE001 - best effort: without it only stale entries remain, as before
        log.debug("could not reset bleak's BlueZ state: %r", exc)


def advertisement_from(device: Any, adv: Any) -> Advertisement:
    """Our Advertisement from bleak's (BLEDevice, AdvertisementData); `handle` keeps the BLEDevice for connect."""
    rssi = adv.rssi if isinstance(adv.rssi, int) and adv.rssi < 127 else RSSI_UNKNOWN
    data = {str(u).lower(): bytes(v) for u, v in (getattr(adv, "service_data", None) or {}).items()}
    # A UUID that only has service data (AD type 0x21) is advertised too: a legacy advertisement has no room for
    # both our 128-bit UUID list and our service data with the token (PROTOCOL.md §13), so one may be left out.
    uuids = tuple(str(u).lower() for u in adv.service_uuids)
    uuids += tuple(u for u in data if u not in uuids)
    return Advertisement(
        address=device.address,
        name=adv.local_name or device.name,
        service_uuids=uuids,
        rssi=rssi,
        service_data=data.get(SERVICE_UUID),
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
        bluez_wait: float = 15.0,
        bluez_check: float = 5.0,
        bluez_ready: Callable[[], Awaitable[bool]] | None = None,
        bluez_owner: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        """`adapter` (e.g. "hci1") is BlueZ-only; the factories default to bleak and bleak-retry-connector.

        `bluez_wait`: how long a scan may wait for bluetoothd to come back to the system bus; `bluez_ready` (default:
        the module's bluez_ready for `adapter`) says when it is. `bluez_owner` (default: the module's bluez_owner,
        but only with bleak's own scanner, so fakes never touch the real system bus) is asked every `bluez_check` s
        during watch() to notice a restarted bluetoothd.
        """
        self.adapter = adapter
        self.scan_settle = scan_settle
        self.scan_window = scan_window
        self.connect_attempts = connect_attempts
        self.mtu_wait = mtu_wait
        self.bluez_wait = bluez_wait
        self.bluez_check = bluez_check
        self._scanner_factory = scanner_factory
        self._connector = connector
        self._client_class = client_class
        self._bluez_ready = bluez_ready
        self._bluez_owner = bluez_owner if bluez_owner is not None or scanner_factory is not None else _default_owner
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
        # No service_uuids filter: BlueZ's discovery filter (5.66 and later) matches only UUID-list AD types, and
        # the vehicle's UUID may travel only as its service data's key (PROTOCOL.md §13; BlueZ 5.66 cannot put the
        # list in the scan response). The callers check the UUID in software (advertisement_from merges both).
        return factory(callback, **self._bluez())

    def _scan_error(self, exc: BaseException) -> RadioError:
        where = f" on {self.adapter}" if self.adapter else ""
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return RadioError(f"Bluetooth is not available{where}: no system D-Bus or BlueZ (is bluetoothd "
                              "running? on a machine without Bluetooth use --radio sim)")
        return RadioError(f"cannot scan{where}: {exc or type(exc).__name__}")

    async def _start(self, callback: Callable[[Any, Any], None], service_uuid: str,
                     until: float | None = None) -> tuple[Any, bool]:
        """A started scanner, and whether it had to wait for bluetoothd; RadioError if it cannot scan.

        If bluetoothd is not on the system bus (bluez_is_gone), waits for it up to `bluez_wait` s and not past
        `until` (loop time; None: no limit but `bluez_wait`), then tries again with a new scanner."""
        loop = asyncio.get_running_loop()
        wait_end: float | None = None
        waited_from = loop.time()
        while True:
            scanner = self._scanner(callback, service_uuid)
            try:
                await scanner.start()
            except Exception as exc:
                if not bluez_is_gone(exc):
                    raise self._scan_error(exc) from exc
                error: Exception = exc
            else:
                return scanner, wait_end is not None
            now = loop.time()
            if wait_end is None:
                wait_end = now + max(0.0, self.bluez_wait if until is None else min(self.bluez_wait, until - now))
                waited_from = now
                log.info("bluetoothd is not on the system bus; waiting up to %.3g s for it", wait_end - now)
            if not await self._wait_for_bluez(wait_end):
                log.debug("bluetoothd did not come back; the last scan error: %s", error)
                what = f" with {self.adapter} powered" if self.adapter else ""
                raise RadioError(f"{BLUEZ_NOT_RUNNING} (waited {round(loop.time() - waited_from, 1):g} s for it "
                                 f"to come back{what})") from error
            # bleak's manager may still hold the previous bluetoothd's objects: make it read the new one's
            await _refresh_bleak_bluez_state()

    async def _wait_for_bluez(self, until: float) -> bool:
        """Poll bluez_ready every 0.25 s until it says True (-> True) or `until` (loop time) passes (-> False)."""
        ready = self._bluez_ready or (lambda: bluez_ready(self.adapter))
        loop = asyncio.get_running_loop()
        while True:
            if await ready():
                return True
            left = until - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(_BLUEZ_POLL, left))

    @staticmethod
    async def _stop(scanner: Any) -> None:
        try:
            await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - the results are in; a failing stop only leaks a scan
            log.debug("stopping the scan: %s", exc)

    # ------------------------------------------------------------------ Central

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: Callable[[Advertisement], bool] | None = None) -> list[Advertisement]:
        """Advertisers of `service_uuid`, strongest first; returns `scan_settle` s after the first, else at timeout.

        With `until`, returns at once when an advertisement it accepts is seen, and not before (else at timeout).
        Scans in fresh windows of `scan_window` seconds (see the module docstring) until something is seen. If
        bluetoothd is away, waits for it within the timeout (module docstring), RadioError if it does not return."""
        self._check_open()
        wanted = service_uuid.lower()
        seen: dict[str, Advertisement] = {}
        first = asyncio.Event()
        matched = asyncio.Event()

        def on_detection(device: Any, adv: Any) -> None:
            found = advertisement_from(device, adv)
            if wanted in found.service_uuids:
                seen[found.address] = found
                first.set()
                if until is not None and until(found):
                    matched.set()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        window = 0
        while True:
            window += 1
            scanner, waited = await self._start(on_detection, wanted, until=deadline)
            if waited:
                # The wait for bluetoothd ate into the timeout: listen for one window anyway (at most
                # `scan_window` s past the caller's timeout) rather than return at once with nothing heard.
                deadline = max(deadline, loop.time() + min(self.scan_window, max(0.0, timeout)))
            try:
                if until is not None:
                    # Our vehicle's token ends the scan the moment it is heard: no settling, no other windows.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(min(deadline, loop.time() + max(0.1, self.scan_window))):
                            await matched.wait()
                    if matched.is_set():
                        break
                    if not first.is_set():  # logged at the deadline too: the caller's next scan is the fresh one
                        log.debug("scan window %d saw nothing; starting a fresh one", window)
                    if loop.time() >= deadline:
                        break
                    continue
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
        """Scan until cancelled, calling `on_adv` (synchronously) for every advertisement of `service_uuid`.

        Starts a new scan when bluetoothd restarts; RadioError if it is away longer than `bluez_wait` s."""
        self._check_open()
        wanted = service_uuid.lower()

        def on_detection(device: Any, adv: Any) -> None:
            found = advertisement_from(device, adv)
            if wanted in found.service_uuids:
                try:
                    on_adv(found)
                except Exception:
                    log.exception("watch: on_adv raised")

        probe = self._bluez_owner
        scanner: Any = None
        try:
            # Who owns org.bluez is asked before the scan starts: a restart in between then shows as a change.
            owner = await probe() if probe is not None else None
            scanner, _ = await self._start(on_detection, wanted)
            if probe is None:
                await asyncio.Event().wait()  # until cancelled
                return
            while True:
                await asyncio.sleep(self.bluez_check)
                now = await probe()
                if owner is None:
                    owner = now  # the probe could not tell before: learn the owner now
                    continue
                if now == owner:
                    continue
                # bluetoothd left the bus (now None), or a new one took its place: either way the discovery session
                # we started lives no more, and the scanner would stay silent. Start a new one (waits if needed).
                log.info("bluetoothd %s; starting a new scan", "left the system bus" if now is None else "restarted")
                await self._stop(scanner)
                scanner = None
                if now is not None:
                    await _refresh_bleak_bluez_state()  # else _start does it once bluetoothd is back
                owner = now  # None: the next probe learns the owner _start found
                scanner, _ = await self._start(on_detection, wanted)
        finally:
            if scanner is not None:
                await self._stop(scanner)

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> BleakConnection:
        """Connect (`connect_attempts` tries within `timeout`) and find the key service; NotFound or RadioError."""
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
            # The vehicle serves one central at a time anyway: call it busy, the driver's next attempt retries.
            elsewhere = await _connections_elsewhere(device, self.adapter)
            if elsewhere:
                raise NotFound(f"{label} is busy: already connected through {', '.join(elsewhere)}")
        try:
            async with asyncio.timeout(timeout):
                client = await connector(
                    client_class,
                    device,
                    label,
                    disconnected_callback=state.on_disconnected,
                    max_attempts=self.connect_attempts,
                    use_services_cache=False,
                    **self._bluez(),
                )
        except TimeoutError as exc:
            raise NotFound(f"{label}: not connectable within {timeout:g} s") from exc
        except Exception as exc:
            if bluez_is_gone(exc):
                # Plain words instead of dbus-daemon's "Launch helper exited ...". The driver's next scan waits for
                # bluetoothd; make bleak forget the dead daemon's objects before that.
                await _refresh_bleak_bluez_state()
                raise RadioError(f"could not connect to {label}: bluetoothd (the Bluetooth service) went away "
                                 "during the connect") from exc
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
