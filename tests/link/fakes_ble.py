# ruff: noqa: F821, F722, N802 - dbus-next reads D-Bus signatures from string annotations ("s", "a{sv}")
"""Fakes for the ble radio tests, shaped like the real things (test_conformance.py checks the shapes).

Peripheral side: a private dbus-daemon and FakeBlueZ, a stand-in bluetoothd on it that owns org.bluez, exports
an adapter (Adapter1, GattManager1, LEAdvertisingManager1) and devices (Device1), reads a registered GATT
application back like bluetoothd does, and plays centrals by calling the application's WriteValue/StartNotify
with BlueZ's options. Real bless and dbus-next run against it; only bluetoothd and the radio are fake.

Central side: FakeScanner / FakeClient / fake_establish_connection with the signatures of BleakScanner,
BleakClient and bleak_retry_connector.establish_connection, built from real bleak objects (BLEDevice,
AdvertisementData, BleakGATTService/Characteristic, BleakGATTServiceCollection).
"""

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.constants import PropertyAccess
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface, dbus_property, method

from dkey_link.contract import RX_CHAR_UUID, SERVICE_UUID, TX_CHAR_UUID

# ====================================================================== a private D-Bus daemon

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def dbus_daemon_available() -> bool:
    return shutil.which("dbus-daemon") is not None


@contextlib.contextmanager
def private_bus() -> Iterator[str]:
    """Run a throw-away dbus-daemon; yields its address (a short /tmp path: AF_UNIX paths are limited)."""
    tmp = Path(tempfile.mkdtemp(prefix="dkb", dir="/tmp" if os.path.isdir("/tmp") else None))
    sock = tmp / "bus"
    (tmp / "bus.conf").write_text(_BUS_CONFIG.format(socket=sock))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={tmp / 'bus.conf'}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def close_bus(bus: Any) -> None:
    """Disconnect a dbus-next bus and close its socket (dbus-next only shuts it down: a ResourceWarning)."""
    bus.disconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.wait_for_disconnect(), 5)
    bus._stream.close()
    bus._sock.close()


# ====================================================================== FakeBlueZ (bluetoothd stand-in)

ADAPTER_IFACE = "org.bluez.Adapter1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
SERVICE_IFACE = "org.bluez.GattService1"
ADV_IFACE = "org.bluez.LEAdvertisement1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"


class _Adapter1(ServiceInterface):
    def __init__(self, address: str, bluez: "FakeBlueZ | None" = None) -> None:
        super().__init__(ADAPTER_IFACE)
        self._address = address
        self._alias = "fakehost"
        self._powered = True
        self._bluez = bluez
        self.aliases: list[str] = []

    @dbus_property()
    def Alias(self) -> "s":
        return self._alias

    @Alias.setter
    def Alias(self, value: "s"):
        self._alias = value
        self.aliases.append(value)

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self._address

    @dbus_property()
    def Powered(self) -> "b":
        return self._powered

    @Powered.setter
    def Powered(self, value: "b"):
        if self._bluez is not None and self._bluez.refuse_power:
            raise DBusError("org.freedesktop.DBus.Error.AccessDenied", "Rejected send message")
        self._powered = value
        if self._bluez is not None:
            self._bluez.events.append(("powered", value))

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> "as":
        return ["central", "peripheral"]


class _Root(ServiceInterface):
    """Something at "/" so that introspection lists ObjectManager there, as on real BlueZ."""

    def __init__(self) -> None:
        super().__init__("org.bluez.AgentManager1")


class _GattManager1(ServiceInterface):
    def __init__(self, bluez: "FakeBlueZ", adapter: str) -> None:
        super().__init__("org.bluez.GattManager1")
        self._bluez = bluez
        self._adapter = adapter

    @method()
    async def RegisterApplication(self, application: "o", options: "a{sv}"):
        await self._bluez._register_application(self._adapter, application)

    @method()
    def UnregisterApplication(self, application: "o"):
        self._bluez.unregistered_apps.append(application)
        self._bluez.app = None


def _plain(value: Any) -> Any:
    """A D-Bus value with dbus-next Variants unwrapped (service data: {uuid: bytes})."""
    if isinstance(value, dict):
        return {k: _plain(getattr(v, "value", v)) for k, v in value.items()}
    return value


class _LEAdvertisingManager1(ServiceInterface):
    def __init__(self, bluez: "FakeBlueZ", adapter: str) -> None:
        super().__init__("org.bluez.LEAdvertisingManager1")
        self._bluez = bluez
        self._adapter = adapter

    @method()
    async def RegisterAdvertisement(self, advertisement: "o", options: "a{sv}"):
        await self._bluez._register_advertisement(self._adapter, advertisement)

    @method()
    def UnregisterAdvertisement(self, service: "o"):
        self._bluez.advertisements.pop(service, None)
        self._bluez.events.append(("unregister", service))

    @dbus_property(access=PropertyAccess.READ)
    def ActiveInstances(self) -> "y":
        return len(self._bluez.advertisements)

    @dbus_property(access=PropertyAccess.READ)
    def SupportedInstances(self) -> "y":
        return 5 - len(self._bluez.advertisements)


class _ExtendedLEAdvertisingManager1(_LEAdvertisingManager1):
    """BlueZ adds SupportedSecondaryChannels only for a controller the kernel drives with extended advertising."""

    @dbus_property(access=PropertyAccess.READ)
    def SupportedSecondaryChannels(self) -> "as":
        return ["1M", "2M"]


class FakeDevice(ServiceInterface):
    """org.bluez.Device1 of one connected central."""

    def __init__(self, address: str, connected: bool = True) -> None:
        super().__init__("org.bluez.Device1")
        self._address = address
        self._connected = connected
        self.disconnect_calls = 0
        self.refuse_disconnect = False  # answer Disconnect with an error and stay connected

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self._address

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> "b":
        return self._connected

    @method()
    def Disconnect(self):
        self.disconnect_calls += 1
        if self.refuse_disconnect:
            raise DBusError("org.bluez.Error.Failed", "Operation failed")
        self.set_connected(False)

    def set_connected(self, value: bool) -> None:
        self._connected = value
        self.emit_properties_changed({"Connected": value})


class FakeBlueZ:
    """A bluetoothd stand-in on a private bus: what bless registers, and centrals' calls into it."""

    def __init__(self, address: str, adapters: tuple[str, ...] = ("hci0",), legacy: tuple[str, ...] = ()) -> None:
        self.address = address
        self.adapter_names = adapters
        self.legacy = legacy  # adapters driven with legacy advertising; the others have extended advertising
        self.events: list[tuple[str, object]] = []  # ("powered", bool), ("register"/"unregister", path), in order
        self.refuse_power = False  # answer a Powered Set with an error (as a D-Bus policy would)
        self.bus: Any = None
        self.adapters: dict[str, _Adapter1] = {}
        self.devices: dict[str, FakeDevice] = {}
        self.app: tuple[str, str] | None = None  # (unique bus name, object path) of the registered application
        self.app_adapter: str | None = None
        self.tree: dict[str, dict[str, dict[str, Any]]] = {}
        self.chars: dict[str, tuple[str, list[str]]] = {}  # uuid -> (object path, flags)
        self.services: dict[str, tuple[str, bool]] = {}  # uuid -> (object path, primary)
        self.advertisements: dict[str, dict[str, Any]] = {}  # path -> its properties (plain values) + adapter
        self.advertisement_log: list[dict[str, Any]] = []  # every advertisement registered, in order
        self.tx_power_replies: list[MessageType] = []  # answers to those TxPower Set calls
        self.refuse_intervals = False  # as Linux 6.1 with btvirt: "Not Supported" for MinInterval/MaxInterval
        self.unregistered_apps: list[str] = []
        self.notifications: list[bytes] = []
        self.fail_advertising: str | None = None
        self.advertising_delay = 0.0
        self._senders: dict[str, str] = {}  # object path in a Register* call -> caller's unique name
        self._notify_rule: str | None = None

    async def start(self) -> "FakeBlueZ":
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._spy)
        for i, name in enumerate(self.adapter_names):
            path = f"/org/bluez/{name}"
            self.adapters[name] = _Adapter1(f"00:00:00:00:00:{i:02X}", self)
            self.bus.export(path, self.adapters[name])
            self.bus.export(path, _GattManager1(self, name))
            manager = _LEAdvertisingManager1 if name in self.legacy else _ExtendedLEAdvertisingManager1
            self.bus.export(path, manager(self, name))
        self.bus.export("/", _Root())  # bluetoothd's ObjectManager lives at "/"; bless introspects it there
        await self.bus.request_name("org.bluez")
        return self

    async def stop(self) -> None:
        if self.bus is not None:
            await close_bus(self.bus)
            self.bus = None

    def _spy(self, msg: Message) -> None:
        if msg.message_type is MessageType.METHOD_CALL and msg.member in ("RegisterApplication",
                                                                            "RegisterAdvertisement"):
            self._senders[msg.body[0]] = msg.sender
        elif (msg.message_type is MessageType.SIGNAL and self.app is not None and msg.sender == self.app[0]
              and msg.member == "PropertiesChanged" and msg.path == self.char_path(TX_CHAR_UUID)
              and msg.body[0] == CHAR_IFACE and "Value" in msg.body[1]):
            self.notifications.append(bytes(msg.body[1]["Value"].value))
        return None

    async def _call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> Message:
        reply = await self.bus.call(Message(destination=destination, path=path, interface=interface,
                                            member=member, signature=signature, body=body or []))
        assert reply is not None
        return reply

    async def _register_application(self, adapter: str, path: str) -> None:
        sender = self._senders[path]
        reply = await self._call(sender, path, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        if reply.message_type is MessageType.ERROR:
            raise DBusError("org.bluez.Error.Failed", f"GetManagedObjects: {reply.body}")
        self.tree = reply.body[0]
        for obj_path, ifaces in self.tree.items():
            if CHAR_IFACE in ifaces:
                props = ifaces[CHAR_IFACE]
                self.chars[props["UUID"].value] = (obj_path, list(props["Flags"].value))
            if SERVICE_IFACE in ifaces:
                props = ifaces[SERVICE_IFACE]
                self.services[props["UUID"].value] = (obj_path, props["Primary"].value)
        self.app = (sender, path)
        self.app_adapter = adapter
        # bluetoothd follows the application's PropertiesChanged to send notifications
        self._notify_rule = (f"type='signal',sender='{sender}',interface='{PROPS_IFACE}',"
                             f"member='PropertiesChanged'")
        await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch",
                         "s", [self._notify_rule])

    async def _register_advertisement(self, adapter: str, path: str) -> None:
        if self.fail_advertising:
            raise DBusError("org.bluez.Error.Failed", self.fail_advertising)
        if self.advertising_delay:
            await asyncio.sleep(self.advertising_delay)
        sender = self._senders[path]
        found: dict[str, Any] = {"adapter": adapter}
        # bluetoothd reads every property of the object (GDBusProxy) and builds the advertising data from them
        reply = await self._call(sender, path, PROPS_IFACE, "GetAll", "s", [ADV_IFACE])
        if reply.message_type is MessageType.ERROR:
            raise DBusError("org.bluez.Error.Failed", f"cannot read the advertisement: {reply.body}")
        found.update({key: _plain(value.value) for key, value in reply.body[0].items()})
        # bluetoothd 5.66 in experimental mode tells the object the TX power chosen, before the registration ends
        reply = await self._call(sender, path, PROPS_IFACE, "Set", "ssv", [ADV_IFACE, "TxPower", Variant("n", 7)])
        self.tx_power_replies.append(reply.message_type)
        if self.refuse_intervals and "MinInterval" in found:
            raise DBusError("org.bluez.Error.Failed", "Failed to register advertisement")
        self.advertisements[path] = found
        self.advertisement_log.append(found)
        self.events.append(("register", path))

    def char_path(self, uuid: str) -> str:
        return self.chars[uuid][0]

    # ------------------------------------------------------------------ playing centrals

    def add_device(self, name: str = "dev_AA_BB_CC_DD_EE_01", adapter: str | None = None, *,
                   connected: bool = True) -> str:
        """A central's Device1 object (connected, unless told otherwise), announced with InterfacesAdded like
        bluetoothd does; returns its object path (the peripheral's link id)."""
        path = f"/org/bluez/{adapter or self.app_adapter or self.adapter_names[0]}/{name}"
        self.devices[path] = FakeDevice(name[4:].replace("_", ":"), connected)
        self.bus.export(path, self.devices[path])
        return path

    def remove_device(self, path: str) -> None:
        """BlueZ forgets the device object (emits InterfacesRemoved)."""
        self.bus.unexport(path)
        self.devices.pop(path, None)

    async def write(
        self,
        device: str | None,
        data: bytes,
        *,
        mtu: int | None = 185,
        command: bool = False,
        offset: int | None = None,
        uuid: str = RX_CHAR_UUID,
    ) -> tuple[str, str] | None:
        """One ATT write as bluetoothd forwards it; the D-Bus error (name, text) of the answer, or None."""
        assert self.app is not None, "no application registered"
        options: dict[str, Variant] = {"link": Variant("s", "LE"), "type": Variant("s", "command" if command
                                                                                     else "request")}
        if device is not None:
            options["device"] = Variant("o", device)
        if mtu is not None:
            options["mtu"] = Variant("q", mtu)
        if offset is not None:
            options["offset"] = Variant("q", offset)
        reply = await self._call(self.app[0], self.char_path(uuid), CHAR_IFACE, "WriteValue", "aya{sv}",
                                 [bytes(data), options])
        if reply.message_type is MessageType.ERROR:
            return reply.error_name or "", reply.body[0] if reply.body else ""
        return None

    async def start_notify(self) -> tuple[str, str] | None:
        """A central's CCC enable on TX, as bluetoothd forwards it (no device identity)."""
        assert self.app is not None
        reply = await self._call(self.app[0], self.char_path(TX_CHAR_UUID), CHAR_IFACE, "StartNotify")
        if reply.message_type is MessageType.ERROR:
            return reply.error_name or "", reply.body[0] if reply.body else ""
        return None

    async def release_name(self) -> None:
        """bluetoothd leaves the bus (crash or restart)."""
        await self.bus.release_name("org.bluez")


# ====================================================================== bleak fakes (central side)


def ble_device(address: str = "AA:BB:CC:DD:EE:01", name: str | None = "car") -> BLEDevice:
    return BLEDevice(address, name, {"path": f"/org/bluez/hci1/dev_{address.replace(':', '_')}"})


def adv_data(name: str | None = "car", rssi: int = -50, uuids: tuple[str, ...] = (SERVICE_UUID,),
             service_data: dict[str, bytes] | None = None) -> AdvertisementData:
    return AdvertisementData(
        local_name=name,
        manufacturer_data={},
        service_data=service_data or {},
        service_uuids=list(uuids),
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )


class FakeScanner:
    """BleakScanner's shape: replays `script` [(delay, BLEDevice, AdvertisementData)] to the callback once started."""

    instances: list["FakeScanner"] = []
    script: list[tuple[float, BLEDevice, AdvertisementData]] = []
    fail_start: Exception | None = None

    def __init__(self, detection_callback=None, service_uuids=None, scanning_mode="active", *, bluez=None, cb=None,
                 backend=None, **kwargs) -> None:
        self.detection_callback = detection_callback
        self.service_uuids = service_uuids
        self.scanning_mode = scanning_mode
        self.bluez = bluez or {}
        self.kwargs = kwargs
        self.started = False
        self.stopped = False
        self._timers: list[asyncio.TimerHandle] = []
        FakeScanner.instances.append(self)

    @classmethod
    def reset(cls, script: list[tuple[float, BLEDevice, AdvertisementData]] | None = None) -> None:
        cls.instances = []
        cls.script = list(script or [])
        cls.fail_start = None

    async def start(self) -> None:
        if FakeScanner.fail_start is not None:
            raise FakeScanner.fail_start
        self.started = True
        loop = asyncio.get_running_loop()
        for delay, device, adv in self.script:
            self._timers.append(loop.call_later(delay, self._emit, device, adv))

    def _emit(self, device: BLEDevice, adv: AdvertisementData) -> None:
        if self.started and not self.stopped and self.detection_callback is not None:
            self.detection_callback(device, adv)

    async def stop(self) -> None:
        self.stopped = True
        for t in self._timers:
            t.cancel()


def gatt(rx_size: int | Callable[[], int] = 182, *, with_service: bool = True) -> BleakGATTServiceCollection:
    """A discovered GATT database with our service (RX write, TX notify), from real bleak classes."""
    services = BleakGATTServiceCollection()
    if not with_service:
        other = BleakGATTService(None, 1, "0000180f-0000-1000-8000-00805f9b34fb")
        services.add_service(other)
        return services
    svc = BleakGATTService(None, 10, SERVICE_UUID)
    services.add_service(svc)
    size = rx_size if callable(rx_size) else (lambda: rx_size)
    services.add_characteristic(
        BleakGATTCharacteristic(("rx",), 11, RX_CHAR_UUID, ["write"], size, svc))
    services.add_characteristic(BleakGATTCharacteristic(("tx",), 13, TX_CHAR_UUID, ["notify"], lambda: 20, svc))
    return services


class FakeClient:
    """BleakClient's shape (the subset we use); the test scripts failures and plays notifications."""

    services_to_offer: BleakGATTServiceCollection | None = None

    def __init__(self, address_or_ble_device, disconnected_callback=None, services=None, *, timeout=30, pair=False,
                 bluez=None, winrt=None, backend=None, **kwargs) -> None:
        self.device = address_or_ble_device
        self.address = getattr(address_or_ble_device, "address", str(address_or_ble_device))
        self.disconnected_callback = disconnected_callback
        self.bluez = bluez or {}
        self.kwargs = kwargs
        self._connected = False
        self._services = FakeClient.services_to_offer or gatt()
        self.writes: list[tuple[Any, bytes, bool | None]] = []
        self.notify_callbacks: list[Callable[[BleakGATTCharacteristic, bytearray], None]] = []
        self.write_error: BaseException | None = None
        self.notify_error: BaseException | None = None
        self.disconnect_calls = 0

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def services(self) -> BleakGATTServiceCollection:
        return self._services

    async def connect(self, **kwargs: Any) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self.disconnect_calls += 1
        self.drop()

    def drop(self) -> None:
        """The link went down (either side): bleak calls the disconnected callback with the client."""
        if self._connected:
            self._connected = False
            if self.disconnected_callback is not None:
                self.disconnected_callback(self)

    async def write_gatt_char(self, char_specifier, data, response=None) -> None:
        if not self._connected:
            from bleak.exc import BleakError

            raise BleakError("Not connected")
        if self.write_error is not None:
            raise self.write_error
        self.writes.append((char_specifier, bytes(data), response))

    async def start_notify(self, char_specifier, callback, *, bluez=None, cb=None, **kwargs) -> None:
        if self.notify_error is not None:
            raise self.notify_error
        self.notify_char = char_specifier
        self.notify_callbacks.append(callback)

    def notify(self, data: bytes) -> None:
        """The vehicle notified TX."""
        for cb in self.notify_callbacks:
            cb(self.notify_char, bytearray(data))


class FakeConnector:
    """Stands in for bleak_retry_connector.establish_connection (same parameters); records every call."""

    def __init__(self, *, error: BaseException | None = None, delay: float = 0.0,
                 drop_during_connect: bool = False) -> None:
        self.error = error
        self.delay = delay
        self.drop_during_connect = drop_during_connect
        self.calls: list[dict[str, Any]] = []
        self.clients: list[FakeClient] = []

    async def __call__(self, client_class, device, name, disconnected_callback=None, max_attempts=4,
                       cached_services=None, ble_device_callback=None, use_services_cache=True, pair=False,
                       **kwargs):
        self.calls.append({"client_class": client_class, "device": device, "name": name,
                           "disconnected_callback": disconnected_callback, "max_attempts": max_attempts,
                           "use_services_cache": use_services_cache, "kwargs": kwargs})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        client = client_class(device, disconnected_callback=disconnected_callback, pair=pair, **kwargs)
        if self.drop_during_connect:  # a failed first attempt: bleak calls the callback, then retries
            client._connected = True
            client.drop()
        await client.connect()
        self.clients.append(client)
        return client
