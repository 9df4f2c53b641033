"""The bless peripheral: its WriteValue/StartNotify hooks, ATT error mapping, link tracking, and the whole
backend against real bless + dbus-next on a private dbus-daemon with a fake bluetoothd (fakes_ble.FakeBlueZ)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bless.backends.bluezdbus.dbus.characteristic import BlueZGattCharacteristic, Flags
from dbus_next import Message, MessageType, Variant
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface

from dkey_link.contract import RX_CHAR_UUID, SERVICE_UUID, TX_CHAR_UUID, AttError, AttErrorCode, RadioError
from key_server.radio import ble
from key_server.radio.ble import UNKNOWN_LINK, BlessPeripheral, dbus_error_for, install_write_hook, probe_bluez

from .fakes_ble import FakeBlueZ, dbus_daemon_available
from .radio_helpers import Recorder, wait_until

DEV = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_01"
TOKEN = bytes(range(10))

# ---------------------------------------------------------------- ATT error -> D-Bus error


def bluez_att_ecode(name: str, msg: str, perm_err: int = 0x03) -> int:
    """BlueZ 5.66's dbus_error_to_att_ecode() (src/gatt-database.c), for a WriteValue reply (perm_err 0x03)."""
    if name == "org.bluez.Error.Failed":
        try:
            code = int(msg, 0)  # strtol(msg, &end, 0) with the whole string consumed
        except ValueError:
            return 0x80
        return code if 0x80 <= code <= 0x9F else 0x0E
    return {
        "org.bluez.Error.NotSupported": 0x06,
        "org.bluez.Error.NotAuthorized": 0x08,
        "org.bluez.Error.InvalidValueLength": 0x0D,
        "org.bluez.Error.InvalidOffset": 0x07,
        "org.bluez.Error.NotPermitted": perm_err,
    }.get(name, 0x0E)


@pytest.mark.parametrize("code", range(1, 256))
def test_every_att_code_reaches_the_central_as_itself_or_as_unlikely_error(code: int) -> None:
    name, msg = dbus_error_for(code)
    sendable = {0x03, 0x06, 0x07, 0x08, 0x0D} | set(range(0x80, 0xA0))
    assert bluez_att_ecode(name, msg) == (code if code in sendable else 0x0E)


def test_app_errors_use_failed_with_the_code_as_message() -> None:
    assert dbus_error_for(AttErrorCode.APP_BUSY) == ("org.bluez.Error.Failed", "0x80")
    assert dbus_error_for(AttErrorCode.APP_REJECTED) == ("org.bluez.Error.Failed", "0x81")
    assert dbus_error_for(0x0D)[0] == "org.bluez.Error.InvalidValueLength"
    assert dbus_error_for(0x08)[0] == "org.bluez.Error.NotAuthorized"
    assert dbus_error_for(0x06)[0] == "org.bluez.Error.NotSupported"


# ---------------------------------------------------------------- the hooks, on bless's real classes


class _App:
    """The parts of bless's BlueZGattApplication that its characteristic methods use."""

    def __init__(self) -> None:
        self.Write: Any = None
        self.StartNotify: Any = None
        self.StopNotify: Any = None
        self.subscribed_characteristics: list[str] = []


class _Service:
    def __init__(self, app: _App) -> None:
        self.path = "/org/bluez/car/service0001"
        self.app = app


def _characteristic(uuid: str, app: _App, flags: list[Flags] | None = None) -> BlueZGattCharacteristic:
    install_write_hook(BlueZGattCharacteristic)
    return BlueZGattCharacteristic(uuid, flags or [Flags.WRITE, Flags.WRITE_WITHOUT_RESPONSE], 1, _Service(app))


def _dbus_method(obj: ServiceInterface, name: str) -> Any:
    """The D-Bus method dbus-next dispatches a call of `name` to (what its bus would run)."""
    return next(m for m in ServiceInterface._get_methods(obj) if m.name == name)


def _options(device: str | None = DEV, mtu: int | None = 185, **extra: Variant) -> dict[str, Variant]:
    opts: dict[str, Variant] = {"link": Variant("s", "LE"), "type": Variant("s", "request"), **extra}
    if device is not None:
        opts["device"] = Variant("o", device)
    if mtu is not None:
        opts["mtu"] = Variant("q", mtu)
    return opts


def test_write_hook_keeps_bless_dbus_signature_and_passes_the_options() -> None:
    app = _App()
    seen: list[tuple[Any, bytes, dict[str, Variant]]] = []
    app._dkey_write_value = lambda ch, value, options: seen.append((ch, value, options))  # type: ignore[attr-defined]
    ch = _characteristic(RX_CHAR_UUID, app)
    m = _dbus_method(ch, "WriteValue")
    assert (m.in_signature, m.out_signature) == ("aya{sv}", "")
    m.fn(ch, b"\x01\x02", _options())
    assert seen == [(ch, b"\x01\x02", _options())]


def test_write_hook_falls_back_to_bless_behaviour_for_other_applications() -> None:
    app = _App()
    calls: list[tuple[Any, bytes]] = []
    app.Write = lambda ch, value: calls.append((ch, value))
    ch = _characteristic(RX_CHAR_UUID, app)
    _dbus_method(ch, "WriteValue").fn(ch, b"x", _options())
    assert calls == [(ch, b"x")]


def test_installing_the_write_hook_twice_changes_nothing() -> None:
    install_write_hook(BlueZGattCharacteristic)
    first = BlueZGattCharacteristic.WriteValue
    install_write_hook(BlueZGattCharacteristic)
    assert BlueZGattCharacteristic.WriteValue is first


class _Wired:
    """A BlessPeripheral wired to a Recorder without bless's server (its hooks called directly)."""

    def __init__(self) -> None:
        self.rec = Recorder()
        self.p = BlessPeripheral("car")
        self.p._handler = self.rec
        self.app = _App()
        self.app._dkey_write_value = self.p._on_write_value  # type: ignore[attr-defined]
        self.app.StartNotify = self.p._on_start_notify
        self.rx = _characteristic(RX_CHAR_UUID, self.app)
        self.tx = _characteristic(TX_CHAR_UUID, self.app, [Flags.NOTIFY])

    def write(self, data: bytes, options: dict[str, Variant]) -> None:
        _dbus_method(self.rx, "WriteValue").fn(self.rx, data, options)


def test_a_write_from_a_device_not_seen_connecting_reports_connect_first_then_mtu_growth() -> None:
    w = _Wired()
    w.write(b"a", _options(mtu=185))
    w.write(b"b", _options(mtu=247))
    w.write(b"c", _options(mtu=100))  # never shrinks
    assert w.rec.events == [("connect", DEV, 185), ("write", DEV, b"a"), ("mtu", DEV, 247), ("write", DEV, b"b"),
                            ("write", DEV, b"c")]
    assert w.p.links == (DEV,)


def test_two_devices_are_two_links() -> None:
    w = _Wired()
    other = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_02"
    w.write(b"a", _options())
    w.write(b"b", _options(device=other, mtu=23))
    assert w.rec.of("connect") == [("connect", DEV, 185), ("connect", other, 23)]
    assert w.rec.writes(other) == [b"b"]


def test_write_without_mtu_or_device_option_still_arrives() -> None:
    w = _Wired()
    w.write(b"a", _options(device=None, mtu=None))
    assert w.rec.events == [("connect", UNKNOWN_LINK, 23), ("write", UNKNOWN_LINK, b"a")]


@pytest.mark.parametrize(("code", "name", "text"), [
    (AttErrorCode.APP_BUSY, "org.bluez.Error.Failed", "0x80"),
    (AttErrorCode.APP_REJECTED, "org.bluez.Error.Failed", "0x81"),
    (AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH, "org.bluez.Error.InvalidValueLength", None),
])
def test_att_error_from_the_handler_becomes_the_bluez_dbus_error(code: int, name: str, text: str | None) -> None:
    w = _Wired()
    w.rec.fail = AttError(code)
    with pytest.raises(DBusError) as err:
        w.write(b"a", _options())
    assert err.value.type == name
    if text is not None:
        assert err.value.text == text


def test_a_handler_bug_answers_unlikely_error_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    w = _Wired()
    w.rec.fail = RuntimeError("bug")
    with pytest.raises(DBusError) as err:
        w.write(b"a", _options())
    assert bluez_att_ecode(err.value.type, err.value.text) == 0x0E
    assert "handler.on_write raised" in caplog.text


def test_partial_long_write_is_refused_with_invalid_offset() -> None:
    w = _Wired()
    with pytest.raises(DBusError) as err:
        w.write(b"a", _options(offset=Variant("q", 20)))
    assert err.value.type == "org.bluez.Error.InvalidOffset"
    assert w.rec.of("write") == []


def test_write_after_stop_is_refused() -> None:
    w = _Wired()
    w.p._handler = None
    with pytest.raises(DBusError) as err:
        w.write(b"a", _options())
    assert err.value.type == "org.bluez.Error.NotSupported"


def test_start_notify_from_bluez_calls_on_subscribe_without_identity() -> None:
    w = _Wired()
    start = _dbus_method(w.tx, "StartNotify")
    start.fn(w.tx)
    start.fn(w.tx)  # a second central's CCC enable: bluetoothd calls StartNotify again
    assert w.rec.events == [("subscribe", None), ("subscribe", None)]
    assert w.p.subscriptions == 2
    assert w.app.subscribed_characteristics == [TX_CHAR_UUID, TX_CHAR_UUID]  # bless's own bookkeeping still runs


def _signal(path: str, interface: str, member: str, signature: str, body: list[Any], sender: str) -> Message:
    msg = Message.new_signal(path, interface, member, signature, body)
    msg.sender = sender
    return msg


def _connected(path: str, value: bool, sender: str = ":1.7") -> Message:
    return _signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                   ["org.bluez.Device1", {"Connected": Variant("b", value)}, []], sender)


def test_bluez_connected_false_ends_the_link_once() -> None:
    w = _Wired()
    w.p._bluez_owner = ":1.7"
    w.write(b"a", _options())
    assert w.p._on_bus_message(_connected(DEV, True)) is None
    assert w.p._on_bus_message(_connected(DEV, False)) is None
    assert w.p._on_bus_message(_connected(DEV, False)) is None
    assert w.rec.of("disconnect") == [("disconnect", DEV)]
    assert w.p.links == ()


def test_disconnect_signals_from_others_than_bluetoothd_are_ignored() -> None:
    w = _Wired()
    w.p._bluez_owner = ":1.7"
    w.write(b"a", _options())
    w.p._on_bus_message(_connected(DEV, False, sender=":1.99"))
    w.p._on_bus_message(_connected("/org/bluez/hci0/dev_00_00_00_00_00_09", False))
    assert w.rec.of("disconnect") == []


def test_device_removed_ends_the_link() -> None:
    w = _Wired()
    w.p._bluez_owner = ":1.7"
    w.write(b"a", _options())
    w.p._on_bus_message(_signal("/", "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", "oas",
                                [DEV, ["org.bluez.Device1"]], ":1.7"))
    assert w.rec.of("disconnect") == [("disconnect", DEV)]


def test_bluetoothd_leaving_the_bus_ends_every_link(caplog: pytest.LogCaptureFixture) -> None:
    w = _Wired()
    w.p._bluez_owner = ":1.7"
    w.write(b"a", _options())
    w.write(b"b", _options(device="/org/bluez/hci0/dev_AA_BB_CC_DD_EE_02"))
    msg = _signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged", "sss",
                  ["org.bluez", ":1.7", ""], "org.freedesktop.DBus")
    w.p._on_bus_message(msg)
    assert len(w.rec.of("disconnect")) == 2
    assert w.p._bluez_owner is None
    assert "bluetoothd left the system bus" in caplog.text


def test_method_calls_on_the_bus_are_left_to_dbus_next() -> None:
    w = _Wired()
    call = Message(destination=":1.5", path=DEV, interface="org.bluez.Device1", member="Disconnect")
    assert w.p._on_bus_message(call) is None


async def test_a_name_bless_cannot_turn_into_a_dbus_path_is_refused() -> None:
    with pytest.raises(RadioError, match="ASCII"):
        await BlessPeripheral("车").start(Recorder())


async def test_start_without_bless_platform_support_raises_radio_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ble.sys, "platform", "darwin")
    with pytest.raises(RadioError, match="needs Linux"):
        await BlessPeripheral("car").start(Recorder())


# dbus-next's MessageBus() leaves its socket unclosed when the bus address does not connect (a ResourceWarning
# at garbage collection, ignored outside tests); not ours to fix. The tests collect it before they end.
_DBUS_NEXT_SOCKET_LEAK = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


@_DBUS_NEXT_SOCKET_LEAK
async def test_start_without_a_system_bus_raises_radio_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/dkey-test-bus")
    p = BlessPeripheral("car")
    with pytest.raises(RadioError, match="could not start"):
        await p.start(Recorder())
    assert not p.started
    await p.stop()  # idempotent on a peripheral that never started
    gc.collect()  # let the leaked socket warn here, under this test's filter


@_DBUS_NEXT_SOCKET_LEAK
async def test_probe_without_a_system_bus_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/dkey-test-bus")
    report = await probe_bluez(timeout=2.0)
    assert report["system_bus"] is False and report["bluez"] is False and report["adapters"] == []
    assert report["error"]
    gc.collect()


# ---------------------------------------------------------------- real bless on a private bus with a fake bluetoothd

needs_dbus = pytest.mark.skipif(not dbus_daemon_available(), reason="needs dbus-daemon")


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBlueZ]:
    fake = await FakeBlueZ(bus_address, adapters=("hci0", "hci1")).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def car(bluez: FakeBlueZ) -> AsyncIterator[tuple[BlessPeripheral, Recorder]]:
    p = BlessPeripheral("car")
    rec = Recorder()
    await p.start(rec)
    try:
        yield p, rec
    finally:
        await p.stop()


@needs_dbus
async def test_registers_one_service_with_rx_and_tx_and_advertises_it(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    assert bluez.app_adapter == "hci0"
    assert bluez.services == {SERVICE_UUID: (bluez.services[SERVICE_UUID][0], True)}
    # Write only: on a write-without-response characteristic BlueZ acknowledges every write itself, and the
    # vehicle's busy and rejected errors would never reach the central (BlueZ 5.66 gatt-database.c chrc_write_cb).
    assert bluez.chars[RX_CHAR_UUID][1] == ["write"]
    assert bluez.chars[TX_CHAR_UUID][1] == ["notify"]  # nothing readable: bless ignores read offsets
    [adv] = bluez.advertisements.values()
    # no token given yet: the service UUID list only; never a name unless one is configured
    assert adv["ServiceUUIDs"] == [SERVICE_UUID] and adv["Type"] == "peripheral" and "LocalName" not in adv
    assert bluez.adapters["hci0"].aliases == [ble.GENERIC_DEVICE_NAME]  # the GAP name: never the host name
    # outside bluetoothd's /org/bluez namespace, where a bleak central on this machine would mistake them for its own
    paths = [bluez.services[SERVICE_UUID][0], *(path for path, _ in bluez.chars.values()), *bluez.advertisements]
    assert all(path.startswith("/dkey/car/") for path in paths), paths


@needs_dbus
async def test_uses_the_named_adapter(bluez: FakeBlueZ) -> None:
    p = BlessPeripheral("car", adapter="hci1")
    await p.start(Recorder())
    try:
        assert bluez.app_adapter == "hci1"
        assert [a["adapter"] for a in bluez.advertisements.values()] == ["hci1"]
    finally:
        await p.stop()


@needs_dbus
async def test_writes_over_dbus_reach_the_handler_with_device_path_and_mtu(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    _, rec = car
    dev = bluez.add_device()
    assert await bluez.write(dev, b"hello", mtu=247) is None
    assert await bluez.write(dev, b"again", command=True) is None
    # connected (from BlueZ's Device1) before the first write; that write names the MTU
    assert rec.events == [("connect", dev, 23), ("mtu", dev, 247), ("write", dev, b"hello"), ("write", dev, b"again")]


@needs_dbus
@pytest.mark.parametrize(("code", "error"), [
    (AttErrorCode.APP_BUSY, ("org.bluez.Error.Failed", "0x80")),
    (AttErrorCode.APP_REJECTED, ("org.bluez.Error.Failed", "0x81")),
    (AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH, ("org.bluez.Error.InvalidValueLength", "ATT error 0x0d")),
])
async def test_att_errors_travel_to_bluetoothd_as_its_error_names(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ, code: int, error: tuple[str, str]
) -> None:
    _, rec = car
    rec.fail = AttError(code)
    reply = await bluez.write(bluez.add_device(), b"x")
    assert reply == error
    assert bluez_att_ecode(*reply) == code


@needs_dbus
async def test_each_subscription_calls_on_subscribe_and_a_pushed_notification_goes_out(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, rec = car
    rec.on_subscribe_hook = lambda _link: asyncio.get_running_loop().create_task(p.notify(b"challenge"))
    assert await bluez.start_notify() is None
    assert await bluez.start_notify() is None  # a second central
    await wait_until(lambda: len(bluez.notifications) == 2)
    assert rec.of("subscribe") == [("subscribe", None), ("subscribe", None)]
    assert bluez.notifications == [b"challenge", b"challenge"]


@needs_dbus
async def test_notify_sets_the_tx_value_every_subscriber_gets(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, _ = car
    assert p.notify_targets_one_link is False
    await p.notify(b"one", link=DEV)
    await p.notify(b"two")
    await wait_until(lambda: len(bluez.notifications) == 2)
    assert bluez.notifications == [b"one", b"two"]


@needs_dbus
async def test_device_disconnect_ends_the_link_and_a_reconnect_is_a_new_link(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, rec = car
    dev = bluez.add_device()
    await bluez.write(dev, b"a")
    bluez.devices[dev].set_connected(False)
    await wait_until(lambda: rec.of("disconnect") == [("disconnect", dev)])
    assert p.links == ()
    bluez.devices[dev].set_connected(True)
    await wait_until(lambda: len(rec.of("connect")) == 2)
    await bluez.write(dev, b"b", mtu=100)
    assert rec.of("connect") == [("connect", dev, 23), ("connect", dev, 23)]
    assert rec.of("mtu") == [("mtu", dev, 185), ("mtu", dev, 100)]


@needs_dbus
async def test_device_object_removed_ends_the_link(car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ) -> None:
    _, rec = car
    dev = bluez.add_device()
    await bluez.write(dev, b"a")
    bluez.remove_device(dev)
    await wait_until(lambda: rec.of("disconnect") == [("disconnect", dev)])


@needs_dbus
async def test_disconnect_asks_bluez_to_drop_the_device(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, rec = car
    dev = bluez.add_device()
    await bluez.write(dev, b"a")
    await p.disconnect(dev)
    assert bluez.devices[dev].disconnect_calls == 1
    assert rec.of("disconnect") == [("disconnect", dev)]
    await p.disconnect(dev)  # unknown now: ignored
    await p.disconnect("/org/bluez/hci0/dev_00_00_00_00_00_09")
    assert bluez.devices[dev].disconnect_calls == 1


@needs_dbus
async def test_bluetoothd_leaving_ends_every_link(car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ) -> None:
    _, rec = car
    dev = bluez.add_device()
    await bluez.write(dev, b"a")
    await bluez.release_name()
    await wait_until(lambda: rec.of("disconnect") == [("disconnect", dev)])


@needs_dbus
async def test_stop_drops_links_unregisters_and_is_idempotent(bluez: FakeBlueZ) -> None:
    p = BlessPeripheral("car")
    rec = Recorder()
    await p.start(rec)
    dev = bluez.add_device()
    await bluez.write(dev, b"a")
    await p.stop()
    assert bluez.devices[dev].disconnect_calls == 1
    assert rec.of("disconnect") == [("disconnect", dev)]
    assert bluez.advertisements == {} and bluez.unregistered_apps
    assert bluez.adapters["hci0"].aliases == [ble.GENERIC_DEVICE_NAME]  # left generic (an empty one: the host name)
    await p.stop()
    with pytest.raises(RadioError):
        await p.notify(b"x")


@needs_dbus
async def test_start_twice_raises(car: tuple[BlessPeripheral, Recorder]) -> None:
    p, rec = car
    with pytest.raises(RadioError, match="already started"):
        await p.start(rec)


@needs_dbus
async def test_refused_advertising_fails_start_and_releases_the_bus(bluez: FakeBlueZ) -> None:
    bluez.fail_advertising = "Failed to register advertisement"  # what some Pi 6.12 kernels give (docs/DEPLOY.md)
    p = BlessPeripheral("car")
    with pytest.raises(RadioError, match="Failed to register advertisement"):
        await p.start(Recorder())
    assert not p.started
    assert bluez.app is not None
    assert bluez.app[0] not in await _bus_names(bluez)  # bless's bus is closed: bluetoothd drops its registration


async def _bus_names(bluez: FakeBlueZ) -> list[str]:
    reply = await bluez.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                         interface="org.freedesktop.DBus", member="ListNames"))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    return list(reply.body[0])


@needs_dbus
async def test_cancelled_start_releases_the_bus(bluez: FakeBlueZ) -> None:
    bluez.advertising_delay = 10.0
    p = BlessPeripheral("car")
    task = asyncio.create_task(p.start(Recorder()))
    await wait_until(lambda: bluez.app is not None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not p.started
    assert bluez.app is not None and bluez.app[0] not in await _bus_names(bluez)


@needs_dbus
async def test_start_without_bluetoothd_raises_radio_error(bus_address: str) -> None:
    with pytest.raises(RadioError, match="could not start"):
        await BlessPeripheral("car").start(Recorder())


@needs_dbus
async def test_start_on_a_missing_adapter_raises_radio_error(bluez: FakeBlueZ) -> None:
    with pytest.raises(RadioError, match="hci7"):
        await BlessPeripheral("car", adapter="hci7").start(Recorder())


@needs_dbus
async def test_probe_lists_adapters_and_their_gatt_and_advertising_support(bluez: FakeBlueZ) -> None:
    report = await probe_bluez(timeout=3.0)
    assert report["system_bus"] is True and report["bluez"] is True and report["error"] is None
    assert [a["name"] for a in report["adapters"]] == ["hci0", "hci1"]
    hci0 = report["adapters"][0]
    assert hci0["powered"] is True and hci0["gatt_server"] is True and hci0["advertising"] is True
    assert hci0["address"] == "00:00:00:00:00:00" and hci0["roles"] == ["central", "peripheral"]
    assert hci0["supported_advertisements"] == 5
    assert hci0["extended_advertising"] is True  # SupportedSecondaryChannels: extended advertising


@needs_dbus
async def test_probe_tells_extended_from_legacy_advertising(bus_address: str) -> None:
    fake = await FakeBlueZ(bus_address, adapters=("hci0", "hci1"), legacy=("hci0",)).start()
    try:
        report = await probe_bluez(timeout=3.0)
    finally:
        await fake.stop()
    assert {a["name"]: a["extended_advertising"] for a in report["adapters"]} == {"hci0": False, "hci1": True}


@needs_dbus
async def test_probe_without_bluetoothd_says_so(bus_address: str) -> None:
    report = await probe_bluez(timeout=3.0)
    assert report["system_bus"] is True and report["bluez"] is False
    assert "bluetoothd is not running" in report["error"]


@needs_dbus
async def test_a_restarted_bluetoothd_gets_the_service_and_advertisement_again(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ, bus_address: str
) -> None:
    p, rec = car
    p.recovery_backoff = (0.05, 0.2)
    await p.advertise_token(TOKEN)
    dev = bluez.add_device()
    await bluez.write(dev, b"before")
    await bluez.stop()  # bluetoothd crashes: its bus connection closes, org.bluez loses its owner
    await wait_until(lambda: rec.of("disconnect") == [("disconnect", dev)])
    assert p.registrations == 1
    again = await FakeBlueZ(bus_address, adapters=("hci0", "hci1")).start()
    try:
        await wait_until(lambda: p.registrations == 2, timeout=10.0)
        assert p.started and again.app is not None and len(again.advertisements) == 1
        (adv,) = again.advertisements.values()
        assert adv["ServiceData"] == {SERVICE_UUID: TOKEN} and "LocalName" not in adv  # the current token
        assert set(again.chars) == {RX_CHAR_UUID, TX_CHAR_UUID}
        dev2 = again.add_device("dev_AA_BB_CC_DD_EE_02")
        assert await again.write(dev2, b"after") is None
        assert rec.of("write")[-1] == ("write", dev2, b"after")
        await p.notify(b"pushed")
        await wait_until(lambda: again.notifications == [b"pushed"])
        old_names = await _bus_names(again)
        assert len([n for n in old_names if n.startswith(":")]) == 2  # the new bluez and one bless bus: old one closed
    finally:
        await p.stop()
        await again.stop()
    assert again.unregistered_apps and again.advertisements == {}


@needs_dbus
async def test_stop_while_waiting_for_bluetoothd_ends_the_recovery(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ, bus_address: str
) -> None:
    p, _ = car
    p.recovery_backoff = (0.05, 0.1)
    await bluez.stop()
    again = await FakeBlueZ(bus_address, adapters=("hci0", "hci1")).start()
    again.fail_advertising = "Failed to register advertisement"  # bluetoothd up, but not ready to advertise yet
    try:
        await wait_until(lambda: p._recovery is not None, timeout=5.0)
        await asyncio.sleep(0.3)  # a few failing attempts
        assert p.registrations == 1
        await p.stop()
        assert p._recovery is None and not p.started
    finally:
        await again.stop()


# ---------------------------------------------------------------- advertising (issue 13: nothing static on air)


@needs_dbus
async def test_each_token_is_a_new_advertisement_with_the_service_data_and_nothing_else(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ
) -> None:
    p, _ = car
    first, second = bytes(10), bytes(range(1, 11))
    await p.advertise_token(first)
    [first_path] = bluez.advertisements
    await p.advertise_token(second)
    assert len(bluez.advertisements) == 1  # the old one is unregistered: one advertisement at a time
    [(path, adv)] = bluez.advertisements.items()
    assert adv["ServiceData"] == {SERVICE_UUID: second}
    # flags (3: general discoverable) + service data (2 + 16 + 10) = 31 bytes: no room for a UUID list (BlueZ >= 5.80
    # puts it in the scan response); no name, no TX power
    assert set(adv) == {"adapter", "Type", "Discoverable", "ServiceData", "ScanResponseServiceUUIDs", "MinInterval",
                        "MaxInterval"}
    assert adv["Discoverable"] is True  # else BlueZ's unfiltered discovery drops the car (module docstring)
    assert adv["ScanResponseServiceUUIDs"] == [SERVICE_UUID]
    assert adv["MinInterval"] == adv["MaxInterval"] == 153  # BlueZ: int(153 / 0.625) = 244 units = 152.5 ms
    tokens = [a.get("ServiceData", {}).get(SERVICE_UUID) for a in bluez.advertisement_log]
    assert tokens == [None, first, second]  # start (no token yet), then one registration per token
    assert path != first_path and path.startswith("/dkey/car/adv")  # a new object: BlueZ re-reads everything


@needs_dbus
async def test_a_token_given_before_start_is_advertised_from_the_first_registration(bluez: FakeBlueZ) -> None:
    p = BlessPeripheral("car", local_name="My car", advertising_interval_ms=100)
    await p.advertise_token(TOKEN)
    await p.start(Recorder())
    try:
        [adv] = bluez.advertisement_log
        assert adv["ServiceData"] == {SERVICE_UUID: TOKEN}
        assert adv["LocalName"] == "My car" and bluez.adapters["hci0"].aliases == ["My car"]  # configured: shown
        assert adv["MinInterval"] == adv["MaxInterval"] == 100
    finally:
        await p.stop()
    assert bluez.advertisements == {}


@needs_dbus
async def test_a_refused_token_raises_radio_error(car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ) -> None:
    p, _ = car
    bluez.fail_advertising = "Maximum advertisements reached"
    with pytest.raises(RadioError, match="Maximum advertisements reached"):
        await p.advertise_token(TOKEN)
    bluez.fail_advertising = None
    await p.advertise_token(TOKEN)  # and the next rotation works again
    [adv] = bluez.advertisements.values()
    assert adv["ServiceData"] == {SERVICE_UUID: TOKEN}


@pytest.mark.parametrize(("wanted", "given", "units"), [(152.5, 153, 244), (100, 100, 160), (20, 20, 32),
                                                        (1280, 1280, 2048), (211.875, 212, 339)])
def test_the_interval_is_sent_as_the_whole_ms_bluez_truncates_to_the_nearest_units(
    wanted: float, given: int, units: int
) -> None:
    assert ble.bluez_interval_ms(wanted) == given
    assert int(given / 0.625) == units  # what BlueZ 5.66 parse_min_interval computes


@pytest.mark.parametrize("interval", [19.9, 10_240.1, 0])
def test_an_interval_outside_the_legacy_range_is_refused(interval: float) -> None:
    with pytest.raises(RadioError, match="advertising interval"):
        BlessPeripheral("car", advertising_interval_ms=interval)


@needs_dbus
async def test_an_interval_bluez_refuses_falls_back_to_the_kernel_default_once(
    bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture
) -> None:
    bluez.refuse_intervals = True
    p = BlessPeripheral("car")
    await p.advertise_token(TOKEN)
    await p.start(Recorder())
    try:
        await p.advertise_token(bytes(10))
        assert [("MinInterval" in a, a["ServiceData"][SERVICE_UUID]) for a in bluez.advertisement_log] == [
            (False, TOKEN), (False, bytes(10))]
        assert not p.interval_applied
        assert "refused the advertisement with a 152.5 ms interval" in caplog.text
    finally:
        await p.stop()


@needs_dbus
async def test_bluez_setting_the_tx_power_on_the_advertisement_is_accepted_quietly(
    car: tuple[BlessPeripheral, Recorder], bluez: FakeBlueZ, caplog: pytest.LogCaptureFixture
) -> None:
    p, _ = car
    await p.advertise_token(TOKEN)
    # the fake, like bluetoothd 5.66 with Experimental, sets TxPower while each registration is under way
    assert bluez.tx_power_replies == [MessageType.METHOD_RETURN] * 2
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text


async def _legacy_car(bus_address: str, **kwargs: Any) -> tuple[FakeBlueZ, BlessPeripheral]:
    fake = await FakeBlueZ(bus_address, adapters=("hci0", "hci1"), legacy=("hci0",)).start()
    p = BlessPeripheral("car", **kwargs)
    p.power_wait = 2.0
    return fake, p


@needs_dbus
async def test_a_legacy_advertiser_is_power_cycled_with_every_token_between_the_old_and_new_advertisement(
    bus_address: str,
) -> None:
    """Legacy advertising: the kernel makes a new private address only when it powers the controller on
    (docs/DEPLOY.md §8), so every token, the one at start too, goes with Powered off then on, while no
    advertisement is registered."""
    fake, p = await _legacy_car(bus_address)
    try:
        await p.start(Recorder())
        assert p.legacy_advertising is True and p.rotation_waits_for_idle
        assert fake.events[:3] == [("powered", False), ("powered", True), ("register", fake.events[2][1])]
        fake.events.clear()
        await p.advertise_token(TOKEN)
        kinds = [k for k, _ in fake.events]
        assert kinds == ["unregister", "powered", "powered", "register"], fake.events
        assert [v for k, v in fake.events if k == "powered"] == [False, True]
        assert p.address_renewals == 2
    finally:
        await p.stop()
        await fake.stop()


@needs_dbus
async def test_no_power_cycle_on_extended_advertising_with_a_central_connected_or_when_turned_off(
    bluez: FakeBlueZ, bus_address: str
) -> None:
    p = BlessPeripheral("car")  # the fixture's adapters advertise the extended way: a new set is a new address
    await p.start(Recorder())
    try:
        await p.advertise_token(TOKEN)
        assert p.legacy_advertising is False and not p.rotation_waits_for_idle and p.address_renewals == 0
        assert ("powered", False) not in bluez.events
    finally:
        await p.stop()
    await bluez.stop()
    fake, p = await _legacy_car(bus_address)
    try:
        await p.start(Recorder())
        dev = fake.add_device()
        await wait_until(lambda: dev in p.links)
        fake.events.clear()
        await p.advertise_token(TOKEN)  # e.g. a secret rotated while a central is connected: not cut for it
        assert [k for k, _ in fake.events] == ["unregister", "register"] and p.address_renewals == 1
    finally:
        await p.stop()
        await fake.stop()
    fake, p = await _legacy_car(bus_address, renew_legacy_address=False)
    try:
        await p.start(Recorder())
        await p.advertise_token(TOKEN)
        assert p.legacy_advertising is True and not p.rotation_waits_for_idle
        assert not any(k == "powered" for k, _ in fake.events) and p.address_renewals == 0
    finally:
        await p.stop()
        await fake.stop()


@needs_dbus
async def test_a_refused_power_cycle_is_logged_once_and_advertising_goes_on(
    bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake, p = await _legacy_car(bus_address)
    fake.refuse_power = True
    try:
        await p.start(Recorder())
        await p.advertise_token(TOKEN)
        assert len(fake.advertisements) == 1 and p.address_renewals == 0 and not p.rotation_waits_for_idle
        assert caplog.text.count("could not power the adapter off and on") == 1
    finally:
        await p.stop()
        await fake.stop()
