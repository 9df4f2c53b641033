# ruff: noqa: F821, F722, N802 - dbus-next reads D-Bus signatures from string annotations ("s", "b")
"""The bleak central while bluetoothd is away or restarting: recognising it, waiting for it, plain-words errors.

Fakes with bleak's shapes (fakes_ble) for scan/watch/connect; the real dbus_fast probes and bleak's real BlueZ
manager against a private dbus-daemon with FakeBlueZ standing in for bluetoothd.
"""

import asyncio
import gc
import logging
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from bleak.exc import BleakDBusError, BleakError
from bleak_retry_connector import BleakConnectionError
from dbus_next.aio import MessageBus
from dbus_next.constants import PropertyAccess
from dbus_next.service import ServiceInterface, dbus_property, method

from dkey_link.contract import SERVICE_UUID, Advertisement, NotFound, RadioError
from key_client.driver import Target, connect_vehicle
from key_client.radio.ble import (
    BLUEZ_NOT_RUNNING,
    BleakCentral,
    _refresh_bleak_bluez_state,
    advertisement_from,
    bluez_is_gone,
    bluez_owner,
    bluez_ready,
)
from protocol import KeyPair

from .fakes_ble import (
    FakeBlueZ,
    FakeClient,
    FakeConnector,
    FakeScanner,
    _Adapter1,
    _Root,
    adv_data,
    ble_device,
    close_bus,
)
from .radio_helpers import wait_until


@pytest.fixture(autouse=True)
def collect_bleaks_lost_buses() -> Iterator[None]:
    """Collect, here, the buses bleak drops when these tests kill its bluetoothd.

    bleak's BlueZ manager forgets a bus whose daemon died without closing its socket (bleak, not us: our own reset,
    _refresh_bleak_bluez_state, closes it); left to the garbage collector, that socket's ResourceWarning would
    surface in whichever later test happens to collect it. Only this file kills bluetoothd under bleak.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

CHILD_EXITED = "org.freedesktop.DBus.Error.Spawn.ChildExited"
LAUNCH_HELPER = "Launch helper exited with unknown return code 1"
CAR = "AA:BB:CC:DD:EE:01"


def spawn_error() -> BleakDBusError:
    """What bleak raised in CI once bluetoothd had crashed: dbus-daemon failed to auto-start org.bluez."""
    return BleakDBusError(CHILD_EXITED, [LAUNCH_HELPER])


class Bluetoothd:
    """A scripted bluetoothd for the fakes: away (scanner starts fail with a Spawn error) until back() is called."""

    def __init__(self, *, back_after: float | None = None) -> None:
        self.probes = 0
        self.is_back = False
        self.owner_name = ":1.1"
        self._back_at = None if back_after is None else time.monotonic() + back_after
        FakeScanner.fail_start = spawn_error()

    def back(self, owner: str = ":1.2") -> None:
        self.is_back = True
        self.owner_name = owner
        FakeScanner.fail_start = None

    def leave(self) -> None:
        self.is_back = False
        FakeScanner.fail_start = spawn_error()

    async def ready(self) -> bool:
        """The fake bluez_ready: polled by the central while it waits."""
        self.probes += 1
        if self._back_at is not None and not self.is_back and time.monotonic() >= self._back_at:
            self.back()
        return self.is_back

    async def owner(self) -> str | None:
        """The fake bluez_owner: who owns org.bluez (None while away)."""
        return self.owner_name if self.is_back else None


def central(bluetoothd: Bluetoothd | None = None, connector: FakeConnector | None = None,
            **kwargs: object) -> BleakCentral:
    extra: dict[str, object] = {}
    if bluetoothd is not None:
        extra = {"bluez_ready": bluetoothd.ready, "bluez_owner": bluetoothd.owner}
    return BleakCentral(scanner_factory=FakeScanner, connector=connector or FakeConnector(), client_class=FakeClient,
                        **extra, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the classifier, on real bleak exceptions


@pytest.mark.parametrize("exc", [
    BleakDBusError(CHILD_EXITED, [LAUNCH_HELPER]),
    BleakDBusError("org.freedesktop.DBus.Error.Spawn.ExecFailed", ["Failed to execute program org.bluez"]),
    BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown",
                   ["The name org.bluez was not provided by any .service files"]),
    BleakDBusError("org.freedesktop.DBus.Error.NameHasNoOwner", ["Could not get owner of name 'org.bluez'"]),
    BleakDBusError("org.freedesktop.DBus.Error.NoReply",
                   ["Message recipient disconnected from message bus without replying"]),
    BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown", []),  # no details at all
    # bleak-retry-connector's wrapping: only the text carries the D-Bus name
    BleakConnectionError(f"car - {CAR}: Failed to connect after 3 attempt(s): [{CHILD_EXITED}] {LAUNCH_HELPER}"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:60]}")
def test_bluez_gone_errors_are_recognised(exc: BaseException) -> None:
    assert bluez_is_gone(exc)


@pytest.mark.parametrize("exc", [
    BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),  # adapter powered off: bluetoothd is there
    BleakDBusError("org.bluez.Error.Failed", ["Operation already in progress"]),
    BleakDBusError("org.freedesktop.DBus.Error.NoReply", ["Did not receive a reply. Possible causes include: ..."]),
    BleakDBusError("org.freedesktop.DBus.Error.UnknownObject", ["Method \"Connect\" ... doesn't exist"]),
    BleakError("adapter 'hci1' not found"),
    FileNotFoundError(2, "No such file or directory"),  # no system bus at all: a different message
    TimeoutError(),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:60]}")
def test_other_errors_are_not_bluez_gone(exc: BaseException) -> None:
    assert not bluez_is_gone(exc)


def test_bluez_gone_is_found_through_cause_and_context() -> None:
    try:
        try:
            raise spawn_error()
        except BleakDBusError as inner:
            raise BleakError("connect failed") from inner
    except BleakError as outer:
        assert bluez_is_gone(outer)
    try:
        try:
            raise spawn_error()
        except BleakDBusError:
            raise RuntimeError("while handling it") from None  # __cause__ None, __context__ kept
    except RuntimeError as outer:
        assert outer.__context__ is not None and bluez_is_gone(outer)
    a, b = BleakError("a"), BleakError("b")
    a.__context__, b.__context__ = b, a  # a cycle must not hang the walk
    assert not bluez_is_gone(a)


# ---------------------------------------------------------------- scan and watch wait for bluetoothd


async def test_scan_waits_for_bluetoothd_then_scans(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="key_client.radio.ble")
    FakeScanner.script = [(0.01, ble_device(CAR), adv_data())]
    bluetoothd = Bluetoothd(back_after=0.6)
    start = time.monotonic()
    ads = await central(bluetoothd, adapter="hci1", scan_settle=0.05).scan(5.0)
    assert [a.address for a in ads] == [CAR]
    assert 0.5 < time.monotonic() - start < 2.0
    assert bluetoothd.probes >= 2  # polled, not a single long sleep
    failed, worked = FakeScanner.instances[0], FakeScanner.instances[-1]
    assert not failed.started and worked.started and worked.stopped and worked.bluez == {"adapter": "hci1"}
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelno == logging.INFO
    assert waits[0].getMessage() == "bluetoothd is not on the system bus; waiting up to 5 s for it"


async def test_scan_gives_up_with_plain_words_when_bluetoothd_stays_away() -> None:
    bluetoothd = Bluetoothd()
    start = time.monotonic()
    with pytest.raises(RadioError) as err:
        await central(bluetoothd, adapter="hci1", bluez_wait=0.5).scan(10.0)
    took = time.monotonic() - start
    assert 0.45 < took < 1.5
    text = str(err.value)
    assert text.startswith(BLUEZ_NOT_RUNNING) and "sudo systemctl start bluetooth" in text
    assert "(waited 0.5 s for it to come back with hci1 powered)" in text
    assert LAUNCH_HELPER not in text  # dbus-daemon's words stay in the chain (and the -vv log)
    assert isinstance(err.value.__cause__, BleakDBusError)


async def test_scan_waits_no_longer_than_its_own_timeout() -> None:
    """bluez_wait is 15 s, but a 0.4 s scan must not become a 15 s one: the caller's timeout bounds the wait."""
    start = time.monotonic()
    with pytest.raises(RadioError, match="is not running"):
        await central(Bluetoothd(), scan_window=0.2).scan(0.4)
    assert time.monotonic() - start < 1.0


async def test_scan_that_waited_its_time_away_still_listens_one_window() -> None:
    FakeScanner.script = [(0.05, ble_device(CAR), adv_data())]
    start = time.monotonic()
    ads = await central(Bluetoothd(back_after=0.45), scan_window=0.3, scan_settle=0.01).scan(0.5)
    assert [a.address for a in ads] == [CAR]
    assert time.monotonic() - start < 0.5 + 0.3 + 0.3  # at most one window past the timeout


async def test_an_unrelated_scan_error_still_fails_at_once() -> None:
    bluetoothd = Bluetoothd()
    FakeScanner.fail_start = BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"])
    start = time.monotonic()
    with pytest.raises(RadioError, match=r"cannot scan on hci1: \[org.bluez.Error.NotReady\]"):
        await central(bluetoothd, adapter="hci1").scan(5.0)
    assert time.monotonic() - start < 0.3 and bluetoothd.probes == 0


async def test_watch_waits_for_bluetoothd_at_start() -> None:
    FakeScanner.script = [(0.01, ble_device(CAR), adv_data())]
    seen: list[Advertisement] = []
    task = asyncio.create_task(central(Bluetoothd(back_after=0.3)).watch(SERVICE_UUID, seen.append))
    try:
        await wait_until(lambda: seen, 3.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert FakeScanner.instances[-1].stopped


async def test_watch_starts_a_new_scan_when_bluetoothd_restarts(caplog: pytest.LogCaptureFixture) -> None:
    """A new bluetoothd knows nothing of the old one's discovery session: the old scanner would stay silent."""
    caplog.set_level(logging.INFO, logger="key_client.radio.ble")
    bluetoothd = Bluetoothd()
    bluetoothd.back(":1.7")
    seen: list[Advertisement] = []
    task = asyncio.create_task(central(bluetoothd, bluez_check=0.05).watch(SERVICE_UUID, seen.append))
    try:
        await wait_until(lambda: FakeScanner.instances and FakeScanner.instances[0].started)
        await asyncio.sleep(0.2)  # same owner: nothing happens
        assert len(FakeScanner.instances) == 1
        FakeScanner.script = [(0.01, ble_device(CAR), adv_data())]
        bluetoothd.owner_name = ":1.42"  # restarted between two checks
        await wait_until(lambda: seen, 3.0)
        assert FakeScanner.instances[0].stopped and FakeScanner.instances[1].started
        # now it leaves and comes back: the watch waits for it, then scans again
        bluetoothd.leave()
        await wait_until(lambda: FakeScanner.instances[1].stopped, 3.0)
        bluetoothd.back(":1.50")
        await wait_until(lambda: FakeScanner.instances[-1].started and len(FakeScanner.instances) > 2, 3.0)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(s.stopped for s in FakeScanner.instances if s.started)
    restarts = [r.getMessage() for r in caplog.records if "starting a new scan" in r.getMessage()]
    assert restarts == ["bluetoothd restarted; starting a new scan",
                        "bluetoothd left the system bus; starting a new scan"]


async def test_watch_ends_with_a_radio_error_when_bluetoothd_does_not_come_back() -> None:
    bluetoothd = Bluetoothd()
    bluetoothd.back()
    task = asyncio.create_task(central(bluetoothd, bluez_check=0.05, bluez_wait=0.3).watch(SERVICE_UUID, print))
    await wait_until(lambda: FakeScanner.instances and FakeScanner.instances[0].started)
    bluetoothd.leave()
    with pytest.raises(RadioError, match="is not running"):
        await asyncio.wait_for(task, 3.0)


async def test_watch_with_fakes_and_no_probe_never_checks_the_owner() -> None:
    """With an injected scanner and no bluez_owner the watch must not ask the machine's real system bus."""
    c = BleakCentral(scanner_factory=FakeScanner, connector=FakeConnector(), client_class=FakeClient)
    assert c._bluez_owner is None
    assert BleakCentral()._bluez_owner is bluez_owner


# ---------------------------------------------------------------- connect


@pytest.mark.parametrize("error", [
    BleakConnectionError(f"car - {CAR}: Failed to connect after 3 attempt(s): [{CHILD_EXITED}] {LAUNCH_HELPER}"),
    BleakDBusError("org.freedesktop.DBus.Error.NoReply",
                   ["Message recipient disconnected from message bus without replying"]),
    BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown", ["The name org.bluez was not provided"]),
], ids=["wrapped-spawn", "died-during-call", "service-unknown"])
async def test_connect_when_bluetoothd_went_away_says_so(error: Exception) -> None:
    c = central(connector=FakeConnector(error=error))
    with pytest.raises(RadioError) as err:
        await c.connect(advertisement_from(ble_device(CAR), adv_data()), timeout=2.0)
    assert not isinstance(err.value, NotFound)
    assert str(err.value) == "could not connect to car: bluetoothd (the Bluetooth service) went away during the connect"
    assert err.value.__cause__ is error


# ---------------------------------------------------------------- the driver on top


async def test_driver_reports_the_plain_words_when_no_scan_could_run() -> None:
    """Every scan failed (bluetoothd away): the radio's message, not "no vehicle found", within the scan time."""
    start = time.monotonic()
    with pytest.raises(RadioError) as err:
        await connect_vehicle(central(Bluetoothd(), bluez_wait=0.2), KeyPair.generate(), Target(None),
                              scan_time=2.0, attempts=2)
    text = str(err.value)
    assert text.startswith("no scan could run in 2 s (3 tries): " + BLUEZ_NOT_RUNNING), text
    # each try waited for bluetoothd (0.2 s, the last one only to the deadline) before the driver's own
    # pause (0.5 s, 1.0 s): the scan time bounds it all
    assert 1.8 < time.monotonic() - start < 2.6


# ---------------------------------------------------------------- the real probes on a private bus


async def _eventually_no_owner(timeout: float = 3.0) -> bool:
    """True once bluez_owner() says nobody owns org.bluez (dbus-daemon drops the name when the socket closes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await bluez_owner() is None:
            return True
        await asyncio.sleep(0.02)
    return False


class _UnpoweredAdapter(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.bluez.Adapter1")

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> "b":
        return False


async def test_probes_follow_bluetoothd_on_the_system_bus(bus_address: str) -> None:
    assert await bluez_ready("hci0") is False
    assert await bluez_ready() is False
    assert await bluez_owner() is None
    bz = await FakeBlueZ(bus_address, adapters=("hci0",)).start()
    try:
        assert await bluez_ready("hci0") is True
        assert await bluez_ready() is True
        assert await bluez_ready("hci7") is False  # no such adapter
        assert await bluez_owner() == bz.bus.unique_name
    finally:
        await bz.stop()
    assert await _eventually_no_owner()
    assert await bluez_ready("hci0") is False


async def test_probe_needs_the_adapter_powered(bus_address: str) -> None:
    """bluetoothd back on the bus but its adapter not powered yet (AutoEnable pending): not ready."""
    bus = await MessageBus(bus_address=bus_address).connect()
    try:
        bus.export("/org/bluez/hci0", _UnpoweredAdapter())
        await bus.request_name("org.bluez")
        assert await bluez_owner() == bus.unique_name
        assert await bluez_ready("hci0") is False
        assert await bluez_ready() is False
    finally:
        await close_bus(bus)


async def test_probes_never_raise_without_a_system_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/dkey/system_bus_socket")
    assert await bluez_ready("hci0") is False
    assert await bluez_owner() is None


async def test_scan_with_the_real_probe_waits_until_bluetoothd_owns_the_bus(bus_address: str) -> None:
    FakeScanner.script = [(0.01, ble_device(CAR), adv_data())]
    FakeScanner.fail_start = spawn_error()
    started: list[FakeBlueZ] = []

    async def restart_bluetoothd() -> None:
        await asyncio.sleep(0.5)
        FakeScanner.fail_start = None
        started.append(await FakeBlueZ(bus_address, adapters=("hci1",)).start())

    helper = asyncio.create_task(restart_bluetoothd())
    c = BleakCentral(adapter="hci1", scanner_factory=FakeScanner, connector=FakeConnector(), client_class=FakeClient,
                     scan_settle=0.01)
    try:
        start = time.monotonic()
        ads = await c.scan(5.0)
        assert [a.address for a in ads] == [CAR] and time.monotonic() - start > 0.45
    finally:
        await helper
        for bz in started:
            await bz.stop()


# ---------------------------------------------------------------- bleak's BlueZ manager across a restart


class _Device1(ServiceInterface):
    """The Device1 properties bleak and bleak-retry-connector read."""

    def __init__(self, adapter: str, connected: bool) -> None:
        super().__init__("org.bluez.Device1")
        self._adapter = adapter
        self._connected = connected

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return CAR

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> "s":
        return "car"

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> "o":
        return f"/org/bluez/{self._adapter}"

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> "b":
        return self._connected

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> "as":
        return [SERVICE_UUID]


def _path(adapter: str) -> str:
    return f"/org/bluez/{adapter}/dev_{CAR.replace(':', '_')}"


@pytest.fixture
async def bleak_manager_cleanup(bus_address: str) -> AsyncIterator[None]:
    """Close and forget the bleak manager this test's loop created (it must not outlive the private bus)."""
    yield
    from bleak.backends.bluezdbus import manager as bluez_manager

    instance = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is not None and instance._bus is not None:
        instance._bus.disconnect()
        await asyncio.wait_for(instance._bus.wait_for_disconnect(), 2)
        if instance._bus_watcher_task is not None:
            await instance._bus_watcher_task


async def test_bleak_manager_keeps_the_dead_daemons_devices_until_we_refresh_it(
        bus_address: str, bleak_manager_cleanup: None) -> None:
    """The evidence behind _refresh_bleak_bluez_state (module docstring): bleak 3.1 takes the new bluetoothd's
    InterfacesAdded but never drops what the crashed one exported, so a link that another adapter held at the
    crash stays Connected=True, and bleak-retry-connector would swap that dead device in for ours."""
    from bleak.backends.bluezdbus.manager import get_global_bluez_manager
    from bleak_retry_connector.bluez import get_connected_devices

    old = await FakeBlueZ(bus_address, adapters=("hci1", "hci2")).start()
    old.bus.export(_path("hci2"), _Device1("hci2", connected=True))  # another central's link to the car
    manager = await get_global_bluez_manager()
    assert _path("hci2") in manager._properties
    await old.stop()  # the crash: no InterfacesRemoved from a dead process
    new = await FakeBlueZ(bus_address, adapters=("hci1", "hci2")).start()
    try:
        new.bus.export(_path("hci1"), _Device1("hci1", connected=False))  # our scan found the car again
        ours = ble_device(CAR)  # details path /org/bluez/hci1/dev_...
        await wait_until(lambda: _path("hci1") in manager._properties)
        assert await get_global_bluez_manager() is manager
        stale = [d.details["path"] for d in await get_connected_devices(ours)]
        assert stale == [_path("hci2")], "bleak now drops a dead bluetoothd's objects: _refresh may be unneeded"

        await _refresh_bleak_bluez_state()
        fresh = await get_global_bluez_manager()
        assert fresh._bus is not None and fresh._bus.connected
        assert _path("hci2") not in fresh._properties and _path("hci1") in fresh._properties
        assert {"/org/bluez/hci1", "/org/bluez/hci2"} <= fresh._adapters
        assert await get_connected_devices(ours) == []
    finally:
        await new.stop()


async def test_refresh_without_a_bleak_manager_does_nothing() -> None:
    await _refresh_bleak_bluez_state()  # no manager in this loop: no error, nothing created
    from bleak.backends.bluezdbus import manager as bluez_manager

    assert asyncio.get_running_loop() not in bluez_manager._global_instances


# ---------------------------------------------------------------- real bleak scanning across bluetoothd restarts


class _ScanningAdapter(_Adapter1):
    """Adapter1 with what bleak's scanner calls (discovery filter, start, stop); counts discovery sessions."""

    def __init__(self) -> None:
        super().__init__("00:00:00:00:00:01")
        self.starts = 0
        self.active = 0

    @method()
    def SetDiscoveryFilter(self, properties: "a{sv}"):
        pass

    @method()
    def StartDiscovery(self):
        self.starts += 1
        self.active += 1

    @method()
    def StopDiscovery(self):
        self.active -= 1


class _AdvertisingCar(_Device1):
    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> "n":
        return -50


class _ScanningBlueZ:
    """A bluetoothd stand-in that real bleak can scan with: owns org.bluez, exports hci1, can show the car."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.adapter = _ScanningAdapter()
        self.bus: Any = None

    async def start(self) -> "_ScanningBlueZ":
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.export("/", _Root())
        self.bus.export("/org/bluez/hci1", self.adapter)
        await self.bus.request_name("org.bluez")
        return self

    def show_car(self) -> None:
        """The car's advertisement arrives: bluetoothd creates its Device1 (InterfacesAdded)."""
        self.bus.export(_path("hci1"), _AdvertisingCar("hci1", connected=False))

    async def crash(self) -> None:
        await close_bus(self.bus)


async def test_real_bleak_scan_and_watch_across_bluetoothd_restarts(
        bus_address: str, bleak_manager_cleanup: None) -> None:
    """bleak's own scanner and manager: a fresh process meets no bluetoothd (ServiceUnknown on this private bus,
    Spawn.ChildExited on a real one) and waits; a watch notices a crash and restart, and scans on the new daemon."""
    daemons: list[_ScanningBlueZ] = []

    async def bluetoothd_starts(after: float) -> None:
        await asyncio.sleep(after)
        daemons.append(await _ScanningBlueZ(bus_address).start())
        await asyncio.sleep(0.1)
        daemons[-1].show_car()

    c = BleakCentral(adapter="hci1", scan_window=0.5, scan_settle=0.05, bluez_check=0.1)
    helper = asyncio.create_task(bluetoothd_starts(0.5))
    try:
        ads = await c.scan(4.0)
        await helper
        assert [a.address for a in ads] == [CAR]
        assert daemons[0].adapter.starts >= 1 and daemons[0].adapter.active == 0

        seen: list[Advertisement] = []
        watch = asyncio.create_task(c.watch(SERVICE_UUID, seen.append))
        await wait_until(lambda: daemons[0].adapter.active == 1, 3.0)
        await daemons[0].crash()
        await bluetoothd_starts(0.3)
        await wait_until(lambda: daemons[1].adapter.active == 1, 5.0)  # the watch scans on the new daemon
        await wait_until(lambda: seen, 3.0)
        assert not watch.done()
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
        assert daemons[1].adapter.active == 0
    finally:
        helper.cancel()
        for d in daemons:
            if d.bus is not None and d.bus.connected:
                await d.crash()
