# ruff: noqa: F811 - pytest fixtures imported from test_ble_peripheral are parameters here
"""Silent and hogging centrals on the bless backend: links come from BlueZ's Device1 objects (Connected), not from
the first write, so the service's idle timeout and lifetime cap drop a central that connects and never writes
(issue 10, item 1: over real BlueZ one silent central stops the advertising and locks everyone out). Real bless +
dbus-next on a private dbus-daemon with a fake bluetoothd (fakes_ble.FakeBlueZ); the attack and the honest case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_next import Variant

from hardware import ActuatorConfig, SimulatedLock
from key_server.audit import AuditLog
from key_server.clock import GuardedClock
from key_server.radio.ble import BlessPeripheral
from key_server.service import KeyService, ServiceConfig
from key_server.store import KeyStore
from protocol import KeyPair

from .fakes_ble import FakeBlueZ
from .radio_helpers import Recorder, wait_until
from .test_ble_peripheral import _connected, _signal, _Wired, bluez, car, needs_dbus  # noqa: F401 - fixtures

OTHER = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_02"

# ---------------------------------------------------------------- the signals, without a bus


def _wired() -> _Wired:
    w = _Wired()
    w.p._bluez_owner = ":1.7"
    w.p._adapter_path = "/org/bluez/hci0"
    return w


def _added(path: str, connected: bool, sender: str = ":1.7") -> object:
    return _signal("/", "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}",
                   [path, {"org.bluez.Device1": {"Connected": Variant("b", connected),
                                                 "Address": Variant("s", "AA:BB:CC:DD:EE:02")}}], sender)


def test_connected_true_reports_the_link_before_any_write_once() -> None:
    w = _wired()
    w.p._on_bus_message(_connected(OTHER, True))
    w.p._on_bus_message(_connected(OTHER, True))  # BlueZ may say it twice (InterfacesAdded, then the property)
    w.p._on_bus_message(_added(OTHER, True))
    assert w.rec.events == [("connect", OTHER, 23)]
    assert w.p.links == (OTHER,)


def test_a_device_added_connected_is_a_link_and_one_added_disconnected_is_not() -> None:
    w = _wired()
    w.p._on_bus_message(_added("/org/bluez/hci0/dev_AA_BB_CC_DD_EE_03", False))
    w.p._on_bus_message(_added(OTHER, True))
    assert w.rec.events == [("connect", OTHER, 23)]


@pytest.mark.parametrize("path", [
    "/org/bluez/hci1/dev_AA_BB_CC_DD_EE_02",  # another adapter: not a central of ours
    "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_02/service0010",  # a GATT object below a device
    "/org/bluez/hci0",
])
def test_devices_of_other_adapters_and_other_objects_are_not_links(path: str) -> None:
    w = _wired()
    w.p._on_bus_message(_connected(path, True))
    w.p._on_bus_message(_added(path, True))
    assert w.rec.events == []


def test_connected_signals_from_others_than_bluetoothd_are_ignored() -> None:
    w = _wired()
    w.p._on_bus_message(_connected(OTHER, True, sender=":1.99"))
    w.p._on_bus_message(_added(OTHER, True, sender=":1.99"))
    assert w.rec.events == []


def test_after_stop_nothing_is_reported() -> None:
    w = _wired()
    w.p._handler = None
    w.p._on_bus_message(_connected(OTHER, True))
    assert w.rec.events == [] and w.p.links == ()


# ---------------------------------------------------------------- real bless, fake bluetoothd


@needs_dbus
async def test_a_central_that_never_writes_is_a_link_and_disconnect_drops_it(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, rec = car
    dev = bluez.add_device()
    await wait_until(lambda: rec.of("connect") == [("connect", dev, 23)])
    assert rec.of("write") == [] and p.links == (dev,)
    await p.disconnect(dev)
    assert bluez.devices[dev].disconnect_calls == 1  # org.bluez.Device1.Disconnect: BlueZ drops the central
    assert rec.of("disconnect") == [("disconnect", dev)]


@needs_dbus
async def test_a_central_bluez_would_not_disconnect_is_reported_again_so_the_drop_is_retried(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, rec = car
    dev = bluez.add_device()
    await wait_until(lambda: p.links == (dev,))
    bluez.devices[dev].refuse_disconnect = True
    await p.disconnect(dev)
    # forgotten and reported again: the service's idle timeout starts over and it asks once more
    assert rec.events == [("connect", dev, 23), ("disconnect", dev), ("connect", dev, 23)] and p.links == (dev,)
    bluez.devices[dev].refuse_disconnect = False
    await p.disconnect(dev)
    assert bluez.devices[dev].disconnect_calls == 2 and p.links == ()


@needs_dbus
async def test_a_known_device_that_connects_again_is_a_link_again(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    _, rec = car
    dev = bluez.add_device(connected=False)  # BlueZ knows the device (seen advertising, or an earlier link)
    await asyncio.sleep(0.1)
    assert rec.events == []
    bluez.devices[dev].set_connected(True)
    await wait_until(lambda: rec.of("connect") == [("connect", dev, 23)])


@needs_dbus
async def test_a_central_on_another_adapter_is_none_of_ours(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    _, rec = car
    bluez.add_device(adapter="hci1")
    mine = bluez.add_device("dev_AA_BB_CC_DD_EE_05")
    await wait_until(lambda: rec.of("connect") != [])
    await asyncio.sleep(0.1)
    assert rec.of("connect") == [("connect", mine, 23)]


@needs_dbus
async def test_a_central_connected_before_the_start_is_adopted(bluez: FakeBlueZ) -> None:
    """A silent central that stayed connected through a key-server restart must not hold the adapter forever."""
    dev = bluez.add_device()
    p, rec = BlessPeripheral("car"), Recorder()
    await p.start(rec)
    try:
        assert rec.of("connect") == [("connect", dev, 23)]
    finally:
        await p.stop()
    assert bluez.devices[dev].disconnect_calls == 1


# ---------------------------------------------------------------- the service drops silent and hogging centrals


@pytest.fixture
async def served(bluez: FakeBlueZ, tmp_path: Path) -> AsyncIterator[tuple[KeyService, ServiceConfig]]:
    """A KeyService on the bless peripheral (fake bluetoothd); tests set the config's timeouts before use."""
    store = KeyStore.open(tmp_path / "keys.db", create=True)
    clock = GuardedClock(store, source=lambda: 1_800_000_000)
    lock = SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=5))
    config = ServiceConfig(poll_interval=0.05, link_idle_timeout=60.0, max_link_lifetime=60.0)
    service = KeyService(identity=KeyPair.generate(), store=store, audit=AuditLog(store), clock=clock, lock=lock,
                         peripheral=BlessPeripheral("car"), config=config)
    try:
        yield service, config
    finally:
        await service.stop()
        await lock.aclose()
        clock.close()
        store.close()


@needs_dbus
async def test_a_silent_central_is_dropped_after_the_idle_timeout(
    served: tuple[KeyService, ServiceConfig], bluez: FakeBlueZ
) -> None:
    service, config = served
    config.link_idle_timeout = 0.4
    await service.start()
    loop = asyncio.get_running_loop()
    dev = bluez.add_device()
    await wait_until(lambda: dev in service.links)
    t0 = loop.time()
    await wait_until(lambda: bluez.devices[dev].disconnect_calls == 1, timeout=5.0)
    assert 0.3 <= loop.time() - t0 < 4.0  # not before the idle timeout (t0 is a little after the connection)
    await wait_until(lambda: service.peripheral.links == ())  # type: ignore[attr-defined]
    assert dev not in service.links and not bluez.devices[dev]._connected


@needs_dbus
async def test_a_central_that_keeps_writing_is_not_idle_but_is_dropped_at_the_lifetime_cap(
    served: tuple[KeyService, ServiceConfig], bluez: FakeBlueZ
) -> None:
    """The honest side of the idle timeout (a link in use stays), and the hog: activity does not buy a link past
    max_link_lifetime."""
    service, config = served
    config.link_idle_timeout = 1.0
    config.max_link_lifetime = 2.5
    await service.start()
    loop = asyncio.get_running_loop()
    dev = bluez.add_device()
    await wait_until(lambda: dev in service.links)
    t0 = loop.time()
    seq = 0
    while bluez.devices[dev].disconnect_calls == 0 and loop.time() - t0 < 8.0:
        # a first chunk announcing a long message, then continuations: each write is activity, none a failure
        answer = await bluez.write(dev, b"\x80\x07\xd0" if seq == 0 else bytes((seq,)) + b"x")
        if bluez.devices[dev].disconnect_calls == 0:  # (a write racing the drop may find the link gone)
            assert answer is None
        seq += 1
        await asyncio.sleep(0.1)
        if loop.time() - t0 < 2.0:
            assert bluez.devices[dev].disconnect_calls == 0, "a busy link was dropped as idle"
    assert bluez.devices[dev].disconnect_calls == 1
    assert 2.5 <= loop.time() - t0 < 6.0
    assert service.stats.links_expired == 1
