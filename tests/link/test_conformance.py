"""The installed bless, dbus-next, bleak and bleak-retry-connector still have what our ble backends and their
fakes (fakes_ble.py) rely on: names, parameter names, and the few behaviours the hooks are built around.
A failure here means a dependency moved: revisit key_server/radio/ble.py or key_client/radio/ble.py."""

from __future__ import annotations

import inspect
from typing import Any

import bleak
import bleak_retry_connector
import bless
import dbus_next
import pytest
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDBusError, BleakError, BleakGATTProtocolError
from bless.backends.bluezdbus.dbus import service as bless_dbus_service
from bless.backends.bluezdbus.dbus.application import BlueZGattApplication
from bless.backends.bluezdbus.dbus.characteristic import BlueZGattCharacteristic, Flags
from bless.backends.bluezdbus.server import BlessServerBlueZDBus
from bless.backends.server import BaseBlessServer
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from dkey_link.contract import TX_CHAR_UUID

from .fakes_ble import FakeClient, FakeConnector, FakeScanner


def params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def has_params(fn: Any, *names: str) -> bool:
    return list(names) == params(fn)[: len(names)]


# ---------------------------------------------------------------- bless (BlueZ backend)


def _bless_dbus_method(fn: Any) -> Any:
    return fn.__dict__["__DBUS_METHOD"]


def _original_write_value() -> Any:
    """bless's own WriteValue, even after install_write_hook replaced it on the class."""
    current = BlueZGattCharacteristic.WriteValue
    return getattr(current, "bless_original", current)


def test_bless_characteristic_methods_we_hook_are_dbus_methods_with_bluez_signatures() -> None:
    write = _bless_dbus_method(_original_write_value())
    assert (write.name, write.in_signature, write.out_signature) == ("WriteValue", "aya{sv}", "")
    assert params(write.fn) == ["value", "options"]
    assert _bless_dbus_method(BlueZGattCharacteristic.StartNotify).in_signature == ""
    assert _bless_dbus_method(BlueZGattCharacteristic.StopNotify).in_signature == ""


class _App:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.Write = lambda ch, value: self.calls.append(("write", ch, value))
        self.StartNotify = lambda arg: self.calls.append(("start", arg))
        self.StopNotify = lambda arg: self.calls.append(("stop", arg))
        self.subscribed_characteristics: list[str] = []


class _Service:
    path = "/org/bluez/car/service0001"

    def __init__(self, app: _App) -> None:
        self.app = app


def test_bless_write_value_still_drops_bluez_options() -> None:
    """Why we replace WriteValue: bless passes only (characteristic, value) on, never device or mtu."""
    app = _App()
    ch = BlueZGattCharacteristic(TX_CHAR_UUID, [Flags.WRITE], 1, _Service(app))
    _bless_dbus_method(_original_write_value()).fn(ch, b"v", {"device": "x", "mtu": 185})
    assert app.calls == [("write", ch, b"v")]


def test_bless_start_notify_calls_app_start_notify_with_none_and_counts_subscribers() -> None:
    app = _App()
    ch = BlueZGattCharacteristic(TX_CHAR_UUID, [Flags.NOTIFY], 1, _Service(app))
    _bless_dbus_method(BlueZGattCharacteristic.StartNotify).fn(ch)
    _bless_dbus_method(BlueZGattCharacteristic.StartNotify).fn(ch)
    _bless_dbus_method(BlueZGattCharacteristic.StopNotify).fn(ch)
    assert app.calls == [("start", None), ("start", None), ("stop", None)]
    # bless's StartNotify/StopNotify bookkeeping, which the adapter hooks
    assert app.subscribed_characteristics == [TX_CHAR_UUID]


def test_dbus_next_collects_a_class_method_when_the_object_is_created() -> None:
    """The WriteValue hook must be on the class before bless creates its characteristics."""
    app = _App()
    ch = BlueZGattCharacteristic(TX_CHAR_UUID, [Flags.WRITE], 1, _Service(app))
    names = [m.name for m in ServiceInterface._get_methods(ch)]
    assert {"WriteValue", "ReadValue", "StartNotify", "StopNotify"} <= set(names)


def test_bless_builds_characteristics_from_the_class_we_patch() -> None:
    assert bless_dbus_service.BlueZGattCharacteristic is BlueZGattCharacteristic
    assert has_params(bless_dbus_service.BlueZGattService.add_characteristic, "uuid", "flags", "value")
    assert has_params(BlueZGattCharacteristic.__init__, "uuid", "flags", "index", "service")


def test_bless_application_has_the_callback_slots_we_set() -> None:
    app = BlueZGattApplication("car", "org.bluez", None)  # type: ignore[arg-type]
    for slot in ("Read", "Write", "StartNotify", "StopNotify"):
        assert getattr(app, slot) is None
    assert app.subscribed_characteristics == []


def test_bless_server_sets_start_notify_in_setup_and_takes_an_adapter() -> None:
    assert bless.BlessServer is BlessServerBlueZDBus
    assert has_params(BlessServerBlueZDBus.__init__, "name", "loop")
    init_src = inspect.getsource(BlessServerBlueZDBus.__init__)
    assert 'kwargs.get("adapter"' in init_src and "setup_task" in init_src
    setup_src = inspect.getsource(BlessServerBlueZDBus.setup)
    assert "self.app.StartNotify" in setup_src  # so we hook it after setup, never before


def test_bless_server_api_we_call() -> None:
    s = BlessServerBlueZDBus
    assert has_params(s.add_new_service, "uuid")
    assert has_params(s.add_new_characteristic, "service_uuid", "char_uuid", "properties", "value", "permissions")
    assert has_params(s.update_value, "service_uuid", "char_uuid")
    assert has_params(s.get_characteristic, "uuid")
    assert inspect.iscoroutinefunction(s.start) and inspect.iscoroutinefunction(s.stop)
    assert isinstance(BaseBlessServer.read_request_func, property) and BaseBlessServer.read_request_func.fset
    assert isinstance(BaseBlessServer.write_request_func, property) and BaseBlessServer.write_request_func.fset
    assert "self.write_request_func(characteristic, value)" in inspect.getsource(BaseBlessServer.write_request)
    assert "self.read_request_func(characteristic)" in inspect.getsource(BaseBlessServer.read_request)
    value = bless.BlessGATTCharacteristic.value
    assert isinstance(value, property) and value.fset is not None


def test_bless_flags_we_use() -> None:
    p, a = bless.GATTCharacteristicProperties, bless.GATTAttributePermissions
    assert {p.write.value, p.write_without_response.value, p.notify.value} == {0x08, 0x04, 0x10}
    assert a.readable and a.writeable


# ---------------------------------------------------------------- dbus-next


def test_dbus_next_pieces_we_use() -> None:
    assert has_params(dbus_next.errors.DBusError.__init__, "type_", "text")
    err = dbus_next.errors.DBusError("org.bluez.Error.Failed", "0x81")
    assert (err.type, err.text) == ("org.bluez.Error.Failed", "0x81")
    assert has_params(dbus_next.Message.__init__, "destination", "path", "interface", "member")
    assert {"signature", "body"} <= set(params(dbus_next.Message.__init__))
    for name in ("add_message_handler", "remove_message_handler", "call", "disconnect", "wait_for_disconnect"):
        assert callable(getattr(MessageBus, name))
    assert "bus_type" in params(MessageBus.__init__)
    assert dbus_next.Variant("q", 185).value == 185
    assert callable(ServiceInterface._get_methods)


# ---------------------------------------------------------------- bleak


class _RecordingBackend:
    """A bleak backend class that only records what bleak's front classes pass it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


def test_bleak_scanner_takes_our_arguments_without_deprecation() -> None:
    def on_detect(_device: Any, _adv: Any) -> None:
        pass

    scanner = bleak.BleakScanner(on_detect, service_uuids=["x"], bluez={"adapter": "hci1"},
                                 backend=_RecordingBackend)  # type: ignore[arg-type]
    backend = scanner._backend
    assert backend.args[:2] == (on_detect, ["x"]) and backend.kwargs["bluez"] == {"adapter": "hci1"}
    assert inspect.iscoroutinefunction(bleak.BleakScanner.start)
    assert inspect.iscoroutinefunction(bleak.BleakScanner.stop)


def test_bleak_client_calls_disconnected_callback_with_the_client() -> None:
    seen: list[Any] = []
    client = bleak.BleakClient(BLEDevice("AA", "car", None), disconnected_callback=seen.append,
                               bluez={"adapter": "hci1"}, backend=_RecordingBackend)  # type: ignore[arg-type]
    backend = client._backend
    assert backend.kwargs["bluez"] == {"adapter": "hci1"}
    backend.kwargs["disconnected_callback"]()
    assert seen == [client]


def test_bleak_client_methods_we_call() -> None:
    c = bleak.BleakClient
    assert has_params(c.write_gatt_char, "char_specifier", "data", "response")
    assert has_params(c.start_notify, "char_specifier", "callback")
    assert inspect.iscoroutinefunction(c.disconnect)
    assert isinstance(c.is_connected, property) and isinstance(c.services, property)
    assert {"disconnected_callback", "timeout", "pair", "bluez"} <= set(params(c.__init__))


def test_bleak_gatt_objects_we_read() -> None:
    assert isinstance(BleakGATTCharacteristic.max_write_without_response_size, property)
    assert has_params(BleakGATTCharacteristic.__init__, "obj", "handle", "uuid", "properties",
                      "max_write_without_response_size", "service")
    assert has_params(BleakGATTServiceCollection.get_service, "specifier")
    assert has_params(BleakGATTService.get_characteristic, "uuid")
    assert has_params(BLEDevice.__init__, "address", "name", "details")
    assert {"local_name", "service_uuids", "rssi"} <= set(AdvertisementData._fields)


def test_bleak_att_errors_carry_their_code() -> None:
    assert int(BleakGATTProtocolError(0x81).code) == 0x81
    assert issubclass(BleakGATTProtocolError, BleakError) and issubclass(BleakDBusError, BleakError)


@pytest.mark.parametrize(("name", "text", "code"), [
    ("org.bluez.Error.Failed", "Operation failed with ATT error: 0x81", 0x81),
    ("org.bluez.Error.Failed", "Operation failed with ATT error: 0x80", 0x80),
    ("org.bluez.Error.InvalidArguments", "Invalid Length", 0x0D),
])
def test_bleak_bluez_backend_turns_bluez_write_errors_into_protocol_errors(name: str, text: str, code: int) -> None:
    """The central's half of the app-error path: what bluetoothd answers a failed write with, bleak decodes."""
    from bleak.backends.bluezdbus.utils import assert_gatt_reply
    from dbus_fast import Message, MessageType

    reply = Message(message_type=MessageType.ERROR, error_name=name, reply_serial=1, signature="s", body=[text])
    with pytest.raises(BleakGATTProtocolError) as err:
        assert_gatt_reply(reply)
    assert int(err.value.code) == code


# ---------------------------------------------------------------- bleak-retry-connector


def test_establish_connection_takes_what_we_pass() -> None:
    sig = params(bleak_retry_connector.establish_connection)
    assert sig[:3] == ["client_class", "device", "name"]
    assert {"disconnected_callback", "max_attempts", "use_services_cache", "kwargs"} <= set(sig)
    assert issubclass(bleak_retry_connector.BleakClientWithServiceCache, bleak.BleakClient)
    assert issubclass(bleak_retry_connector.BleakNotFoundError, BleakError)
    assert issubclass(bleak_retry_connector.BleakConnectionError, BleakError)


# ---------------------------------------------------------------- the fakes keep the real shapes


@pytest.mark.parametrize(("fake", "real"), [
    (FakeConnector.__call__, bleak_retry_connector.establish_connection),
    (FakeScanner.__init__, bleak.BleakScanner.__init__),
    (FakeClient.__init__, bleak.BleakClient.__init__),
    (FakeClient.write_gatt_char, bleak.BleakClient.write_gatt_char),
    (FakeClient.start_notify, bleak.BleakClient.start_notify),
])
def test_fakes_have_the_parameters_of_what_they_stand_in_for(fake: Any, real: Any) -> None:
    assert params(fake) == params(real)
