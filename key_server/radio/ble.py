"""BLE peripheral on bless 0.3.0 (BlueZ over D-Bus): the vehicle side of `--radio ble`; moves bytes, decides nothing.

bless (https://github.com/kevincar/bless) hands its callbacks no client identity, MTU or offset, and notifies
every subscriber (docs/PROTOCOL.md §1.3). Three hooks close the gap, all running in the event loop thread
(dbus-next is asyncio):
- WriteValue: bluetoothd calls GattCharacteristic1.WriteValue(value, options) with options {device, mtu, link,
  type, offset}; bless's method drops the options. Calls to RX are answered by our bus message handler
  (_on_method_call) before dbus-next dispatches them to any method: when a dbus-next 0.2.3 *method* raises a
  D-Bus error, dbus-next sends the error reply but then also logs it at ERROR level with a traceback (its
  SendReply.__exit__ does not return True), which on a real stack meant a traceback in the journal for every
  refused write, an easy log flood for anyone in radio range. install_write_hook() still replaces bless's
  BlueZGattCharacteristic.WriteValue (dbus-next collects D-Bus methods per class when an object is created, so
  this must happen before the characteristics exist) for any call the handler does not take. The device object
  path is the link id; the first write of a link reports on_mtu(link, mtu) with the MTU BlueZ names. An
  AttError raised by on_write becomes the D-Bus error that BlueZ turns into that ATT error code
  (dbus_error_for). RX has the write property only: BlueZ 5.66 waits for the application's answer only on
  characteristics without write-without-response (gatt-database.c chrc_write_cb) and acknowledges every write
  to such a characteristic itself, so with that property busy (0x80) and rejected (0x81) would never reach the
  central. A Write Command to RX still arrives (BlueZ does not check the property) and is handled alike; its
  central cannot see a refusal, which is logged at DEBUG.
- StartNotify: bluetoothd calls the application's StartNotify for every central's CCC enable (BlueZ 5.66
  gatt-database.c), without identity; bless sets app.StartNotify to a no-op lambda in its setup. Ours calls
  on_subscribe(None): the service pushes a challenge that every subscriber receives (docs/PROTOCOL.md §1.3, §5.1).
- Connections: links come from BlueZ itself, not from writes. A Device1 object under our adapter whose Connected
  property is true (at start: GetManagedObjects; later: InterfacesAdded, or PropertiesChanged(Connected=True))
  reports on_connect(path, 23) before any write, so a central that connects and never writes is idle-dropped
  by the service like any other (disconnect() calls Device1.Disconnect); while it is connected BlueZ does not
  advertise, so it would otherwise lock everyone out. Every connected device on that adapter counts, our
  centrals or not: the adapter must be dedicated to key-server (docs/DEPLOY.md). A write from a device not
  seen connecting (a missed signal) still reports on_connect first.
- Disconnects: Device1 PropertiesChanged(Connected=False) and InterfacesRemoved signals for known links call
  on_disconnect; so does bluetoothd leaving the bus.
- bluetoothd restarts: a crash (BlueZ 5.66 has segfaults on reconnects; seen in tests/ble_vm) or a restart takes
  the registered service and advertisement with it. When org.bluez gets an owner again, the peripheral waits for
  an adapter to be powered and registers everything anew on a fresh bless server (a new bus connection; the old
  one stays open until the new one is up, so the NameOwnerChanged watch never lapses), retrying with backoff
  until it works or stop() is called. The car thus opens again without a restart of key-server.
- Advertising (docs/PROTOCOL.md §13, docs/DEPLOY.md "Privacy on air"): bless 0.3.0 advertises only its first
  service UUID and the name, and sets the adapter alias to the name; its start() and stop() are not used. We
  register our own LEAdvertisement1 object (`_advertisement`): Discoverable (the flags say LE General Discoverable,
  without which BlueZ's unfiltered discovery ignores an advertiser), the service data (AD type 0x21: our 128-bit
  service UUID + the 10-byte token given by advertise_token), LocalName only when one is configured, MinInterval =
  MaxInterval = the configured interval, and ScanResponseServiceUUIDs (BlueZ >= 5.80 with Experimental puts the
  service UUID list in the scan response; older BlueZ ignores the property). Every advertise_token call unregisters
  the old object and registers a new one (a new object path, so nothing of the old one is cached by BlueZ). No
  service UUID list: flags (3 bytes) + service data (2 + 16 + 10) fill the 31 bytes of a legacy advertisement, and
  BlueZ 5.66 builds the scan response from the local name only (src/advertising.c generate_scan_rsp), so a central
  must look for the service UUID among the service-data keys (BlueZ's discovery UUID filter does not match them)
  where the scan response lacks the list. Until the first advertise_token call the advertisement carries the
  service UUID list instead (the key service gives a token before it opens). BlueZ 5.66 applies
  MinInterval/MaxInterval only when bluetoothd runs with `Experimental = true` (BlueZ 5.82: always) and the kernel
  has the extended advertising mgmt commands (Linux >= 5.11); otherwise the kernel's default interval applies
  (main.conf [LE] MinAdvertisementInterval). The adapter alias (the GAP Device Name any connected central can read)
  is set to the local name, or to the same generic GENERIC_DEVICE_NAME on every car when none is configured, never
  the host name.
- The address (docs/DEPLOY.md §8 "The address and the token"): with BlueZ `Privacy`, the kernel gives each extended
  advertising set a new resolvable private address, so a new advertisement per token changes both. On a controller
  it drives with legacy advertising (BlueZ then shows no SupportedSecondaryChannels) the kernel keeps one address
  for 15 min on its own timer, whatever we register; it makes a new one when it powers the controller on. So there
  (and with `renew_legacy_address`) every new token, at start too, goes with a power cycle of the adapter
  (Adapter1.Powered off, on) while the old advertisement is gone, but only while no central is connected:
  `rotation_waits_for_idle` tells the key service to rotate only then.
Characteristics carry no readable value (bless ignores the read offset, so long reads are broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from typing import Any, Final

from dkey_link.contract import (
    DEFAULT_ATT_MTU,
    RX_CHAR_UUID,
    SERVICE_UUID,
    TX_CHAR_UUID,
    AttError,
    AttErrorCode,
    PeripheralHandler,
    RadioError,
    call_handler,
)

from . import SERVER_INSTALL

__all__ = [
    "APP_PATH_PREFIX",
    "UNKNOWN_LINK",
    "DEFAULT_ADVERTISING_INTERVAL_MS",
    "GENERIC_DEVICE_NAME",
    "BlessPeripheral",
    "bluez_interval_ms",
    "bless_missing",
    "dbus_error_for",
    "install_write_hook",
    "probe_bluez",
]

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
DEVICE_IFACE = "org.bluez.Device1"
ADAPTER_IFACE = "org.bluez.Adapter1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
GATT_CHRC_IFACE = "org.bluez.GattCharacteristic1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
ADV_IFACE = "org.bluez.LEAdvertisement1"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
DBUS = "org.freedesktop.DBus"

APP_PATH_PREFIX = "/dkey/"
"""Where our GATT application, service, characteristics and advertisement live on D-Bus (+ the sanitised name)."""

DEFAULT_ADVERTISING_INTERVAL_MS: Final = 152.5
"""Advertising interval by default: a scanning phone sees the car within ~0.15 s (Apple's recommended 152.5 ms)."""
ADVERTISING_INTERVAL_RANGE_MS: Final = (20.0, 10_240.0)
"""Intervals a legacy connectable advertisement may use (Core spec: 0x0020-0x4000 units of 0.625 ms)."""
GENERIC_DEVICE_NAME: Final = "dkey"
"""Adapter alias (GAP Device Name) when no local name is configured: the same on every car, so it links nothing."""
_ADV_UNIT_MS = 0.625

UNKNOWN_LINK = "bluez:unknown-device"
"""Link id of writes whose options name no device (BlueZ has sent `device` since 5.4x; kept for safety)."""

_HOOK_ATTR = "_dkey_write_value"  # set on a bless BlueZGattApplication: our WriteValue handler for its characteristics
_HOOK_MARK = "_dkey_write_hook"  # marks the replaced BlueZGattCharacteristic.WriteValue

_MATCH_RULES = (
    # a device's connection state (Connected=True starts a link, Connected=False ends it)
    f"type='signal',sender='{BLUEZ}',interface='{PROPERTIES_IFACE}',member='PropertiesChanged',"
    f"arg0='{DEVICE_IFACE}'",
    # a device object appearing (a new central; its properties may already say Connected=True)
    f"type='signal',sender='{BLUEZ}',interface='{OBJECT_MANAGER_IFACE}',member='InterfacesAdded'",
    # a device object vanishing (BlueZ removes temporary devices some time after they disconnect)
    f"type='signal',sender='{BLUEZ}',interface='{OBJECT_MANAGER_IFACE}',member='InterfacesRemoved'",
    # bluetoothd leaving or restarting: every link is gone
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{BLUEZ}'",
)

# ATT error code -> the org.bluez.Error name that BlueZ's dbus_error_to_att_ecode() (src/gatt-database.c) maps to it.
_ERROR_NAMES = {
    AttErrorCode.WRITE_NOT_PERMITTED: "org.bluez.Error.NotPermitted",  # -> perm_err, 0x03 for writes
    AttErrorCode.REQUEST_NOT_SUPPORTED: "org.bluez.Error.NotSupported",
    AttErrorCode.INVALID_OFFSET: "org.bluez.Error.InvalidOffset",
    0x08: "org.bluez.Error.NotAuthorized",  # INSUFFICIENT_AUTHORIZATION
    AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH: "org.bluez.Error.InvalidValueLength",
}
# A name BlueZ does not know: 0x0E (Unlikely Error) on every BlueZ since 5.4x. org.bluez.Error.Failed with a code
# outside 0x80-0x9f would also give 0x0E on BlueZ >= 5.66 but 0x80 (our APP_BUSY) on older ones.
_UNLIKELY_ERROR_NAME = "org.bluez.Error.UnlikelyError"


def dbus_error_for(code: int) -> tuple[str, str]:
    """The D-Bus error (name, message) that makes bluetoothd answer a write with ATT error `code`.

    0x80-0x9f: org.bluez.Error.Failed with the code as message (BlueZ >= 5.66 parses it with strtol; older
    BlueZ sends 0x80 for every Failed). 0x03/0x06/0x07/0x08/0x0D have their own names. BlueZ cannot send any
    other code from an external application: those become 0x0E.
    """
    if 0x80 <= code <= 0x9F:
        return "org.bluez.Error.Failed", f"0x{code:02x}"
    name = _ERROR_NAMES.get(code)
    if name is not None:
        return name, f"ATT error 0x{code:02x}"
    return _UNLIKELY_ERROR_NAME, f"ATT error 0x{code:02x} (sent as 0x0e: BlueZ has no D-Bus error for it)"


def _dbus_error(code: int) -> Exception:
    from dbus_next.errors import DBusError

    return DBusError(*dbus_error_for(code))  # type: ignore[no-untyped-call]


def install_write_hook(characteristic_class: type) -> None:
    """Replace bless's BlueZGattCharacteristic.WriteValue with one that passes BlueZ's options on; idempotent.

    The replacement calls `app._dkey_write_value(characteristic, value, options)` when the characteristic's
    application has one, else behaves like bless's own method (app.Write(characteristic, value)), so other
    bless servers in the process keep working.
    """
    original = getattr(characteristic_class, "WriteValue")  # noqa: B009 - `type` has no such attribute for mypy
    if getattr(original, _HOOK_MARK, False):
        return
    from dbus_next.service import method

    def WriteValue(self, value, options):  # type: ignore[no-untyped-def]  # noqa: N802 - the D-Bus member name
        app = self._service.app
        hook = getattr(app, _HOOK_ATTR, None)
        if hook is not None:
            hook(self, value, options)
            return
        write = app.Write
        if write is None:
            raise NotImplementedError
        write(self, value)

    # dbus-next takes the D-Bus signature (aya{sv}, as in bless's method) from the annotations.
    WriteValue.__annotations__ = {"value": "ay", "options": "a{sv}"}
    replacement = method(name="WriteValue")(WriteValue)
    setattr(replacement, _HOOK_MARK, True)
    replacement.bless_original = original  # for the conformance test
    setattr(characteristic_class, "WriteValue", replacement)  # noqa: B010 - a class attribute dbus-next collects


def bluez_interval_ms(interval_ms: float) -> int:
    """The whole milliseconds to give LEAdvertisement1 Min/MaxInterval for `interval_ms` (BlueZ 5.66 truncates
    ms / 0.625 to whole controller units: 153 gives 244 units = 152.5 ms, 152 would give 151.875 ms)."""
    def actual(ms: int) -> float:
        return int(ms / _ADV_UNIT_MS) * _ADV_UNIT_MS

    return min((math.floor(interval_ms), math.ceil(interval_ms)), key=lambda ms: (abs(actual(ms) - interval_ms), ms))


def _advertisement(token: bytes | None, local_name: str, interval_ms: int | None) -> Any:
    """A dbus-next LEAdvertisement1 object: service data SERVICE_UUID -> token (or, without a token, the service
    UUID list), LocalName only if `local_name`, MinInterval = MaxInterval = `interval_ms` (whole ms) unless None."""
    from dbus_next.constants import PropertyAccess
    from dbus_next.service import ServiceInterface, dbus_property, method
    from dbus_next.signature import Variant

    members: dict[str, Any] = {}

    def prop(name: str, signature: str, value: Any) -> None:
        def getter(self: Any) -> Any:
            return value

        getter.__name__ = name  # dbus-next finds the getter on the object by the function's name
        getter.__annotations__ = {"return": signature}  # and reads the D-Bus signature from the annotation
        members[name] = dbus_property(access=PropertyAccess.READ)(getter)

    def release(self: Any) -> None:
        log.debug("ble peripheral: BlueZ released an advertisement")

    release.__name__ = "Release"
    release.__annotations__ = {}  # no D-Bus arguments or result (the module's string annotations would be read)
    members["Release"] = method(name="Release")(release)
    prop("Type", "s", "peripheral")
    # LE General Discoverable in the flags: BlueZ's own discovery drops an advertiser without it whenever the
    # central's discovery filter is BlueZ's default (bleak's Transport=le on an LE-only adapter: tests/deploy_vm s8
    # saw a car advertising flags 0x04 reported by the controller and never by bleak). BlueZ 5.66: Experimental.
    prop("Discoverable", "b", True)
    if interval_ms is not None:
        prop("MinInterval", "u", interval_ms)
        prop("MaxInterval", "u", interval_ms)
    if token is not None:
        prop("ServiceData", "a{sv}", {SERVICE_UUID: Variant("ay", bytes(token))})
        # No room for the UUID list in the advertisement; BlueZ >= 5.80 (experimental) can put it in the scan
        # response, where BlueZ's and bleak's UUID filters find it. BlueZ 5.66 does not read this property.
        prop("ScanResponseServiceUUIDs", "as", [SERVICE_UUID])
    else:
        prop("ServiceUUIDs", "as", [SERVICE_UUID])
    if local_name:
        prop("LocalName", "s", local_name)
    cls = type("DkeyAdvertisement", (ServiceInterface,), members)
    return cls(ADV_IFACE)


def _option(options: Mapping[str, Any], key: str) -> Any:
    """The plain value of one entry of a D-Bus a{sv} options dict (dbus-next gives Variants), or None."""
    found = options.get(key)
    return getattr(found, "value", found)


def _import_bless() -> tuple[Any, type]:
    """bless and its BlueZ characteristic class; RadioError where they cannot work."""
    if not sys.platform.startswith("linux"):
        raise RadioError("the ble peripheral needs Linux with BlueZ (bless's other backends lack the hooks we need)")
    try:
        import bless
        from bless.backends.bluezdbus.dbus.characteristic import BlueZGattCharacteristic
    except ImportError as exc:
        raise RadioError(bless_missing(exc)) from exc
    return bless, BlueZGattCharacteristic


def bless_missing(exc: ImportError) -> str:
    """What to tell a person whose bless import failed: install the vehicle side, or what is broken."""
    if exc.name == "bless":
        return f"the ble radio needs bless, which is not installed: the vehicle install is {SERVER_INSTALL}"
    return f"bless is installed but does not import ({exc}): reinstall the vehicle side with {SERVER_INSTALL}"


class BlessPeripheral:
    """A vehicle-side radio on bless/BlueZ; implements base.Peripheral (notifications reach every subscriber)."""

    notify_targets_one_link = False  # bless's update_value notifies every subscribed central

    def __init__(
        self,
        name: str,
        *,
        adapter: str | None = None,
        local_name: str = "",
        advertising_interval_ms: float = DEFAULT_ADVERTISING_INTERVAL_MS,
        loop: asyncio.AbstractEventLoop | None = None,
        call_timeout: float = 5.0,
        renew_legacy_address: bool = True,
    ) -> None:
        low, high = ADVERTISING_INTERVAL_RANGE_MS
        if not low <= advertising_interval_ms <= high:
            raise RadioError(f"advertising interval {advertising_interval_ms} ms is outside {low:g}-{high:g} ms")
        self.name = name
        self.adapter = adapter
        self.local_name = local_name  # advertised (and the GAP Device Name) only when not empty
        self.advertising_interval_ms = advertising_interval_ms
        self._token: bytes | None = None  # the advertised token (advertise_token); None: the service UUID list
        self._adv: Any = None  # our registered LEAdvertisement1 object (on the current server's bus), or None
        self._adv_count = 0  # advertisements registered so far: each gets a new object path
        self._adv_lock = asyncio.Lock()  # one (un)registration at a time: advertise_token vs. a re-registration
        self.interval_applied = True  # False once BlueZ refused our interval: later advertisements go without it
        self._loop = loop
        self._call_timeout = call_timeout
        self._server: Any = None
        self._handler: PeripheralHandler | None = None
        self._links: dict[str, int] = {}  # device object path -> ATT MTU reported (23 until a write names it)
        self._adapter_path: str | None = None  # our adapter's object path: its Device1 children are our links
        self._bluez_owner: str | None = None  # unique bus name of bluetoothd: only it may end our links
        self._rx: Any = None  # bless's BlueZGattCharacteristic for RX, whose WriteValue calls _on_method_call answers
        self._recovery: asyncio.Task[None] | None = None  # re-registration after bluetoothd came back
        self._recover_again = False  # bluetoothd changed owner again while a re-registration was under way
        self.subscriptions = 0  # StartNotify calls seen (CCC enables of any central)
        self.registrations = 0  # successful registrations with bluetoothd (1 + re-registrations after restarts)
        self.recovery_backoff = (0.5, 10.0)  # first and longest pause between re-registration attempts, s
        self.power_wait = 10.0  # how long a re-registration waits for a powered adapter before trying anyway, s
        self.renew_legacy_address = renew_legacy_address  # power-cycle a legacy advertiser with every token
        self.legacy_advertising: bool | None = None  # learned from BlueZ at start; None: not known
        self.address_renewals = 0  # power cycles done for a new address

    @property
    def links(self) -> tuple[str, ...]:
        """Device object paths of the connected centrals (BlueZ's Device1 Connected, or a write from them)."""
        return tuple(self._links)

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def rotation_waits_for_idle(self) -> bool:
        """True when a new token needs a power cycle of the adapter for a new address (legacy advertising), which
        would cut connected centrals: the key service then rotates only while none is connected."""
        return self.renew_legacy_address and self.legacy_advertising is True

    @property
    def token(self) -> bytes | None:
        """The token advertised (or to advertise at start); None before the first advertise_token."""
        return self._token

    # ------------------------------------------------------------------ lifecycle

    async def start(self, handler: PeripheralHandler) -> None:
        """Register the GATT service with BlueZ, advertise (module docstring), deliver events to `handler`."""
        if self._server is not None:
            raise RadioError(f"ble peripheral {self.name} already started")
        if not re.sub("[^A-Za-z0-9_]", "", self.name):  # bless builds its D-Bus object paths from the name
            raise RadioError(f"peripheral name {self.name!r} needs at least one ASCII letter, digit or '_'")
        _, characteristic_class = _import_bless()
        install_write_hook(characteristic_class)
        where = self.adapter or "the default adapter"
        self._handler = handler
        try:
            server = await self._new_server()
        except BaseException as exc:
            self._handler = None
            if not isinstance(exc, Exception):
                raise
            raise RadioError(f"could not start the BLE peripheral on {where}: {exc or type(exc).__name__}") from exc
        self._server = server
        self.registrations += 1
        log.info("ble peripheral %r advertising %s on %s (name %s, every %g ms)", self.name, SERVICE_UUID, where,
                 repr(self.local_name) if self.local_name else "none", self.advertising_interval_ms)

    async def advertise_token(self, token: bytes) -> None:
        """Advertise `token` in the service data from now on: a new advertisement object replaces the old one.

        Before start() the token is kept for it. RadioError if BlueZ refuses the new advertisement.
        """
        self._token = bytes(token)
        server = self._server
        if server is None:
            return
        async with self._adv_lock:
            if server is not self._server:  # stopped or swapped meanwhile: the new server advertised the new token
                return
            try:
                await self._unregister_advertisement(server)
                if self.rotation_waits_for_idle and not self._links:
                    await self._renew_address(server)
                await self._register_advertisement(server)
            except Exception as exc:
                raise RadioError(f"could not advertise the new token: {exc or type(exc).__name__}") from exc

    async def _new_server(self) -> Any:
        """A bless server with our service registered and advertised; on any failure its bus is closed again."""
        bless, _ = _import_bless()
        server: Any = None
        try:
            kwargs = {"adapter": self.adapter} if self.adapter else {}
            # BlessServer schedules its D-Bus setup on the loop in __init__: create it inside the running loop.
            server = bless.BlessServer(name=self.name, loop=self._loop or asyncio.get_running_loop(), **kwargs)
            await self._build(server, bless)
        except BaseException:  # cancelled too: never leave a half-registered application behind
            await self._close_bus(server)
            raise
        return server

    async def _build(self, server: Any, bless: Any) -> None:
        server.read_request_func = _read_nothing
        server.write_request_func = _write_bypassed_hook
        await server.setup_task  # bless's D-Bus setup: system bus, application object, adapter lookup
        # bless exports under /org/bluez/<name>, bluetoothd's namespace. A bleak central on the same machine
        # (bleak 3.1 matches InterfacesAdded by arg0path=/org/bluez/ from any sender) then takes our GATT
        # service for a remote one and logs a KeyError traceback (no "Device" property). Ours is our own.
        server.app.base_path = APP_PATH_PREFIX + re.sub("[^A-Za-z0-9_]", "", self.name)
        await server.add_new_service(SERVICE_UUID)
        app = server.app
        setattr(app, _HOOK_ATTR, self._on_write_value)
        app.StartNotify = self._on_start_notify  # bless's setup installed a no-op; it is called with None
        props, perms = bless.GATTCharacteristicProperties, bless.GATTAttributePermissions
        # Write only: with write-without-response BlueZ would acknowledge every write itself (module docstring).
        await server.add_new_characteristic(SERVICE_UUID, RX_CHAR_UUID, props.write, None, perms.writeable)
        await server.add_new_characteristic(SERVICE_UUID, TX_CHAR_UUID, props.notify, None, perms.readable)
        rx = server.get_characteristic(RX_CHAR_UUID)
        self._rx = getattr(rx, "gatt", None)
        self._adapter_path = str(server.adapter.path)  # bless picked it (the named one, else BlueZ's first)
        await self._watch_links(server.bus)
        # bless's start() would also register its own advertisement (services[0] + the name, module docstring)
        server.bus.export(app.path, app)
        await app.register(server.adapter)  # GattManager1.RegisterApplication
        await self._set_alias(server)
        connected = await self._learn_advertising_mode(server.bus)
        async with self._adv_lock:
            if self.rotation_waits_for_idle and not connected:
                await self._renew_address(server)  # a new token at every start: a new address with it
            await self._register_advertisement(server)
        await self._adopt_connected(server.bus)

    async def _learn_advertising_mode(self, bus: Any) -> bool:
        """Set legacy_advertising from BlueZ's view of our adapter; True if a device is connected to it."""
        objects = await self._objects_or_warn(bus, "ask BlueZ how it advertises")  # unknown: no address renewal
        if objects is None:
            return False
        ours = [a for a in _adapters(objects) if a["path"] == self._adapter_path]
        mode = ours[0]["extended_advertising"] if ours else None
        self.legacy_advertising = None if mode is None else not mode
        if self.legacy_advertising and self.renew_legacy_address:
            log.info("ble peripheral %r: %s advertises the legacy way: powering it off and on with every new token "
                     "(when no device is connected), for a new private address (docs/DEPLOY.md §8)", self.name,
                     self._adapter_path.rsplit("/", 1)[-1] if self._adapter_path else "the adapter")
        prefix = (self._adapter_path or "") + "/"
        return any(path.startswith(prefix) for path in _connected_devices(objects))

    async def _renew_address(self, server: Any) -> None:
        """Power our adapter off and on (module docstring: the kernel then makes a new private address). A failure
        is logged once and ends the renewals: advertising must go on, from the old address if need be."""
        from dbus_next.signature import Variant

        iface = server.adapter.get_interface(PROPERTIES_IFACE)
        try:
            for on in (False, True):
                async with asyncio.timeout(self._call_timeout):
                    await iface.call_set(ADAPTER_IFACE, "Powered", Variant("b", on))
        except Exception as exc:  # noqa: BLE001 - e.g. refused by D-Bus policy: keep advertising
            self.renew_legacy_address = False
            log.warning("ble peripheral %r: could not power the adapter off and on for a new address (%s); the "
                        "address now changes only every 15 min on the kernel's timer (docs/DEPLOY.md §8)",
                        self.name, exc or type(exc).__name__)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._call_timeout):
                    await iface.call_set(ADAPTER_IFACE, "Powered", Variant("b", True))
            return
        await self._wait_powered(server.bus)
        self.address_renewals += 1
        log.debug("ble peripheral %r: adapter powered off and on for a new address", self.name)

    async def _set_alias(self, server: Any) -> None:
        """Adapter alias = the local name or GENERIC_DEVICE_NAME: BlueZ serves it as the GAP Device Name."""
        from dbus_next.signature import Variant

        alias = self.local_name or GENERIC_DEVICE_NAME
        iface = server.adapter.get_interface(PROPERTIES_IFACE)
        async with asyncio.timeout(self._call_timeout):
            await iface.call_set(ADAPTER_IFACE, "Alias", Variant("s", alias))

    async def _register_advertisement(self, server: Any) -> None:
        """Export a new LEAdvertisement1 object with the current token and register it with BlueZ.

        If BlueZ refuses it with our interval, register it again without one (the kernel's default interval):
        a car found a second later beats a car nobody finds (the interval is the only optional part of it).
        """
        interval = bluez_interval_ms(self.advertising_interval_ms) if self.interval_applied else None
        try:
            await self._register_one(server, interval)
        except Exception as exc:  # noqa: BLE001 - retried without the interval; raised if that fails too
            if not self.interval_applied:
                raise
            log.warning("ble peripheral %r: BlueZ refused the advertisement with a %g ms interval (%s); "
                        "advertising at the kernel's default interval instead (docs/DEPLOY.md)", self.name,
                        self.advertising_interval_ms, exc or type(exc).__name__)
            self.interval_applied = False
            await self._register_one(server, None)

    async def _register_one(self, server: Any, interval_ms: int | None) -> None:
        self._adv_count += 1
        adv = _advertisement(self._token, self.local_name, interval_ms)
        path = f"{server.app.base_path}/adv{self._adv_count}"
        server.bus.export(path, adv)
        manager = server.adapter.get_interface(ADV_MANAGER_IFACE)
        try:
            async with asyncio.timeout(self._call_timeout):
                await manager.call_register_advertisement(path, {})
        except BaseException:
            server.bus.unexport(path, adv)
            raise
        self._adv = (path, adv)
        log.debug("ble peripheral %r: advertisement %s registered (%s, interval %s)", self.name, path,
                  "token" if self._token is not None else "service UUID list",
                  f"{interval_ms} ms" if interval_ms is not None else "the kernel's")

    async def _unregister_advertisement(self, server: Any) -> None:
        """Unregister and unexport our advertisement, if any; BlueZ's refusal (already gone) is logged only."""
        current, self._adv = self._adv, None
        if current is None:
            return
        path, adv = current
        try:
            manager = server.adapter.get_interface(ADV_MANAGER_IFACE)
            async with asyncio.timeout(self._call_timeout):
                await manager.call_unregister_advertisement(path)
        except Exception as exc:  # noqa: BLE001 - e.g. bluetoothd restarted and forgot it: nothing to undo
            log.debug("ble peripheral %r: UnregisterAdvertisement %s: %s", self.name, path, exc)
        finally:
            with contextlib.suppress(Exception):
                server.bus.unexport(path, adv)

    async def stop(self) -> None:
        """Disconnect every known central, stop advertising, unregister the service; idempotent."""
        server = self._server
        if server is None:
            return
        self._server = None
        recovery, self._recovery = self._recovery, None
        if recovery is not None and not recovery.done():
            recovery.cancel()
            with contextlib.suppress(BaseException):
                await recovery
        links = [link for link in self._links if link.startswith("/")]
        if links:
            await asyncio.gather(*(self._call_disconnect(server, link) for link in links))
        try:
            async with self._adv_lock:
                await self._unregister_advertisement(server)
            async with asyncio.timeout(self._call_timeout):
                await server.app.unregister(server.adapter)  # GattManager1.UnregisterApplication
            server.bus.unexport(server.app.path, server.app)
        except Exception as exc:  # noqa: BLE001 - closing the bus below makes bluetoothd drop both anyway
            log.warning("ble peripheral %r: unregistering from BlueZ failed: %s", self.name,
                        exc or type(exc).__name__)
        await self._close_bus(server)
        for link in list(self._links):
            self._forget(link)
        self._handler = None

    async def _close_bus(self, server: Any) -> None:
        bus = getattr(server, "bus", None)
        if server is not None and bus is None:  # setup never reached the bus: make sure its task is not orphaned
            task = getattr(server, "setup_task", None)
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
            bus = getattr(server, "bus", None)
        if bus is None:
            return
        with contextlib.suppress(Exception):
            bus.remove_message_handler(self._on_bus_message)
        try:
            await _disconnect_bus(bus, self._call_timeout)
        except Exception as exc:  # noqa: BLE001 - best effort: the process may be exiting anyway
            log.debug("ble peripheral %r: closing the system bus: %s", self.name, exc)

    # ------------------------------------------------------------------ Peripheral

    async def notify(self, data: bytes, link: str | None = None) -> None:
        """Notify TX to every subscribed central (`link` cannot be honoured); BlueZ truncates to MTU-3."""
        server = self._server
        if server is None:
            raise RadioError(f"ble peripheral {self.name} is not running")
        characteristic = server.get_characteristic(TX_CHAR_UUID)
        if characteristic is None:
            raise RadioError("TX characteristic missing")
        characteristic.value = bytearray(data)
        try:
            ok = server.update_value(SERVICE_UUID, TX_CHAR_UUID)  # emits PropertiesChanged(Value); BlueZ notifies
        except Exception as exc:
            raise RadioError(f"notify failed: {exc}") from exc
        if not ok:
            raise RadioError("bless could not update the TX value")

    async def disconnect(self, link: str) -> None:
        """Ask BlueZ to drop the central at device path `link`; unknown links are ignored."""
        server = self._server
        if server is None or link not in self._links:
            return
        ok = not link.startswith("/") or await self._call_disconnect(server, link)
        self._forget(link)  # usually the Connected=False signal has already done it
        if not ok and await self._still_connected(server, link):
            # Still there: report it anew, so the service's idle timeout runs again and retries the disconnect
            # (forgotten, it would hold the adapter unwatched: BlueZ does not advertise meanwhile).
            self._connected(link)

    async def _call_disconnect(self, server: Any, link: str) -> bool:
        """Ask BlueZ to drop the device at `link`; False if BlueZ refused or did not answer."""
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        try:
            async with asyncio.timeout(self._call_timeout):
                reply = await server.bus.call(
                    Message(destination=BLUEZ, path=link, interface=DEVICE_IFACE, member="Disconnect")
                )
        except Exception as exc:  # noqa: BLE001 - the link may already be gone
            log.info("ble peripheral: Disconnect %s failed: %s", link, exc or type(exc).__name__)
            return False
        if reply is not None and reply.message_type is MessageType.ERROR:
            log.info("ble peripheral: Disconnect %s: %s %s", link, reply.error_name, reply.body)
            return False
        return True

    async def _still_connected(self, server: Any, link: str) -> bool:
        """BlueZ's Device1.Connected of `link` (False if it cannot be read: the device is gone)."""
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        try:
            async with asyncio.timeout(self._call_timeout):
                reply = await server.bus.call(Message(destination=BLUEZ, path=link, interface=PROPERTIES_IFACE,
                                                      member="Get", signature="ss", body=[DEVICE_IFACE, "Connected"]))
        except Exception:  # noqa: BLE001 - no answer: treat as gone
            return False
        return (reply is not None and reply.message_type is not MessageType.ERROR
                and getattr(reply.body[0], "value", None) is True)

    # ------------------------------------------------------------------ hooks (D-Bus callbacks, in the loop)

    def _on_write_value(self, characteristic: Any, value: bytes, options: Mapping[str, Any]) -> None:
        """Our GattCharacteristic1.WriteValue: one ATT write (request or command) from the central options[device]."""
        handler = self._handler
        if handler is None or str(characteristic.UUID).lower() != RX_CHAR_UUID:
            raise _dbus_error(AttErrorCode.REQUEST_NOT_SUPPORTED)
        if _option(options, "offset"):  # BlueZ merges long writes into one call; a partial one is not ours
            raise _dbus_error(AttErrorCode.INVALID_OFFSET)
        link = _option(options, "device") or UNKNOWN_LINK
        link = str(link)
        mtu = _option(options, "mtu")
        mtu = int(mtu) if isinstance(mtu, int) and mtu >= DEFAULT_ATT_MTU else DEFAULT_ATT_MTU
        known = self._links.get(link)
        if known is None:  # a connection we did not see (a missed signal): report it now
            self._links[link] = mtu
            self._call("on_connect", link, mtu)
        elif mtu > known:
            self._links[link] = mtu
            self._call("on_mtu", link, mtu)
        try:
            handler.on_write(link, bytes(value))
        except AttError as exc:
            log.debug("ble peripheral %r: refused a write of %d bytes from %s: ATT error 0x%02x (%s)", self.name,
                      len(value), link, exc.code, exc)
            raise _dbus_error(exc.code) from None
        except Exception:
            log.exception("ble peripheral %r: handler.on_write raised", self.name)
            raise _dbus_error(AttErrorCode.UNLIKELY_ERROR) from None

    def _on_start_notify(self, _characteristic: None) -> None:
        """bless's app.StartNotify slot: a central enabled notifications on TX (which one, BlueZ does not say)."""
        self.subscriptions += 1
        self._call("on_subscribe", None)

    def _on_method_call(self, msg: Any) -> Any:
        """Answer bluetoothd's WriteValue calls on RX; None (not ours) for every other method call.

        A D-Bus error raised here is sent by dbus-next as the reply without the ERROR log and traceback it adds
        when a method raises (see the module docstring); a true result tells dbus-next the call is handled.
        """
        from dbus_next.constants import MessageFlag
        from dbus_next.errors import DBusError
        from dbus_next.message import Message

        if (msg.member == "Set" and msg.interface == PROPERTIES_IFACE and msg.body[:1] == [ADV_IFACE]
                and msg.path.startswith(APP_PATH_PREFIX) and msg.path.rsplit("/", 1)[-1].startswith("adv")):
            # bluetoothd (experimental mode) tells the advertisement the TX power the controller chose, while it
            # registers it (before RegisterAdvertisement returns); we have no such property (we ask for none),
            # and dbus-next would log its refusal with a traceback.
            return Message.new_method_return(msg)
        rx = self._rx
        if (rx is None or msg.member != "WriteValue" or msg.interface != GATT_CHRC_IFACE
                or msg.path != getattr(rx, "path", None) or msg.signature != "aya{sv}"):
            return None
        value, options = msg.body
        no_reply = bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED)  # bluetoothd acknowledged the ATT write itself
        try:
            self._on_write_value(rx, bytes(value), options)
        except DBusError:
            if no_reply:
                return True
            raise
        return True if no_reply else Message.new_method_return(msg)

    def _on_bus_message(self, msg: Any) -> Any:
        """Every message of bless's bus connection passes here first: our RX's WriteValue calls
        (_on_method_call), and our match rules' signals.

        Returns None for every message it does not answer: a true value tells dbus-next it was handled.
        """
        from dbus_next.constants import MessageType

        if msg.message_type is MessageType.METHOD_CALL:
            return self._on_method_call(msg)
        if msg.message_type is not MessageType.SIGNAL:
            return None
        body = msg.body
        if msg.member == "PropertiesChanged" and msg.interface == PROPERTIES_IFACE:
            if self._from_bluez(msg) and len(body) >= 2 and body[0] == DEVICE_IFACE:
                connected = body[1].get("Connected")
                if connected is not None and connected.value is False and msg.path in self._links:
                    log.debug("ble peripheral: %s disconnected", msg.path)
                    self._forget(msg.path)
                elif connected is not None and connected.value is True:
                    self._connected(msg.path)
        elif msg.member == "InterfacesAdded" and msg.interface == OBJECT_MANAGER_IFACE:
            if len(body) >= 2 and DEVICE_IFACE in body[1] and self._from_bluez(msg):
                connected = body[1][DEVICE_IFACE].get("Connected")
                if connected is not None and connected.value is True:
                    self._connected(body[0])
        elif msg.member == "InterfacesRemoved" and msg.interface == OBJECT_MANAGER_IFACE:
            if len(body) >= 2 and body[0] in self._links and DEVICE_IFACE in body[1] and self._from_bluez(msg):
                self._forget(body[0])
        elif msg.member == "NameOwnerChanged" and msg.interface == DBUS and msg.sender == DBUS:
            if len(body) >= 3 and body[0] == BLUEZ:
                old, new = body[1], body[2]
                self._bluez_owner = new or None
                if old:
                    log.error("ble peripheral %r: bluetoothd left the system bus; the key service is gone until it "
                              "is back", self.name)
                    for link in list(self._links):
                        self._forget(link)
                if new and old != new:
                    self._start_recovery()
        return None

    # ------------------------------------------------------------------ bluetoothd restarts

    def _start_recovery(self) -> None:
        """bluetoothd (re)appeared on the bus: register the service again, once, in the background."""
        if self._server is None:
            return
        self._recover_again = True
        if self._recovery is not None and not self._recovery.done():
            return  # the running task sees the flag and registers once more with the newest bluetoothd
        log.warning("ble peripheral %r: bluetoothd is on the system bus again; registering the key service anew",
                    self.name)
        self._recovery = asyncio.get_running_loop().create_task(self._reregister(), name="ble-reregister")

    async def _reregister(self) -> None:
        """Until it works (or stop() cancels): wait for a powered adapter, build a new server, swap it in."""
        pause, longest = self.recovery_backoff
        attempt = 0
        while self._server is not None and self._bluez_owner is not None:  # gone again: its return restarts us
            attempt += 1
            self._recover_again = False
            old = self._server
            await self._wait_powered(old.bus)
            try:
                server = await self._new_server()
            except Exception as exc:  # noqa: BLE001 - bluetoothd may still be coming up; try again
                log.warning("ble peripheral %r: registering again failed (attempt %d): %s; next try in %.1f s",
                            self.name, attempt, exc or type(exc).__name__, pause)
                await asyncio.sleep(pause)
                pause = min(longest, pause * 2)
                continue
            if self._server is not old:  # stopped meanwhile (stop() cancels us, but be sure)
                await self._close_bus(server)
                return
            self._server = server
            await self._close_bus(old)  # its objects died with the old bluetoothd
            self.registrations += 1
            log.warning("ble peripheral %r: advertising %s again after bluetoothd restarted", self.name,
                        SERVICE_UUID)
            if not self._recover_again:
                return

    async def _wait_powered(self, bus: Any) -> None:
        """Return once BlueZ shows our adapter (any, if none is named) powered, or after `power_wait` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.power_wait
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(self._call_timeout):
                    objects = await _managed_objects(bus)
            except Exception as exc:  # noqa: BLE001 - bluetoothd still starting; poll again
                log.debug("ble peripheral: waiting for a powered adapter: %s", exc or type(exc).__name__)
            else:
                for adapter in _adapters(objects):
                    if adapter["powered"] and (self.adapter is None or adapter["name"] == self.adapter):
                        return
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------------ helpers

    async def _watch_links(self, bus: Any) -> None:
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        async with asyncio.timeout(self._call_timeout):
            reply = await bus.call(Message(destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
                                           member="GetNameOwner", signature="s", body=[BLUEZ]))
            if reply is None or reply.message_type is MessageType.ERROR:
                raise RadioError("bluetoothd (org.bluez) is not on the system bus")
            self._bluez_owner = reply.body[0]
            for rule in _MATCH_RULES:
                reply = await bus.call(Message(destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
                                               member="AddMatch", signature="s", body=[rule]))
                if reply is None or reply.message_type is MessageType.ERROR:
                    raise RadioError(f"D-Bus AddMatch failed: {reply.body if reply else 'no reply'}")
        bus.add_message_handler(self._on_bus_message)

    def _from_bluez(self, msg: Any) -> bool:
        return self._bluez_owner is None or msg.sender == self._bluez_owner

    def _ours(self, path: str) -> bool:
        """True if `path` is a device object of our adapter (/org/bluez/hciN/dev_XX_..., nothing below it)."""
        prefix = f"{self._adapter_path}/dev_"
        return self._adapter_path is not None and path.startswith(prefix) and "/" not in path[len(prefix):]

    def _connected(self, path: str) -> None:
        """BlueZ says a device of our adapter is connected: a new link, reported before any write."""
        if self._handler is None or path in self._links or not self._ours(path):
            return
        log.debug("ble peripheral: %s connected", path)
        self._links[path] = DEFAULT_ATT_MTU
        self._call("on_connect", path, DEFAULT_ATT_MTU)

    async def _objects_or_warn(self, bus: Any, what: str) -> Mapping[str, Mapping[str, Mapping[str, Any]]] | None:
        """BlueZ's object tree, or None after a warning that we could not `what`."""
        try:
            async with asyncio.timeout(self._call_timeout):
                return await _managed_objects(bus)
        except Exception as exc:  # noqa: BLE001 - the caller goes on without it
            log.warning("ble peripheral %r: could not %s: %s", self.name, what, exc or type(exc).__name__)
            return None

    async def _adopt_connected(self, bus: Any) -> None:
        """Report the devices already connected to our adapter (e.g. a central that stayed through a restart)."""
        objects = await self._objects_or_warn(bus, "list connected devices")  # the signals report later ones
        if objects is None:
            return
        for path in _connected_devices(objects):
            self._connected(path)

    def _forget(self, link: str) -> None:
        if self._links.pop(link, None) is not None:
            self._call("on_disconnect", link)

    def _call(self, method: str, *args: object) -> None:
        """Run a handler callback; a handler bug must not break bluetoothd's call into us."""
        call_handler(log, f"ble peripheral {self.name!r}", self._handler, method, *args)


async def _disconnect_bus(bus: Any, timeout: float) -> None:
    """Disconnect a dbus-next bus and close its socket (dbus-next 0.2.3 only shuts it down: an fd leak)."""
    try:
        bus.disconnect()
        async with asyncio.timeout(timeout):
            await bus.wait_for_disconnect()
    finally:
        for name in ("_stream", "_sock"):
            with contextlib.suppress(Exception):
                getattr(bus, name).close()


async def _managed_objects(bus: Any) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
    """BlueZ's object tree (org.bluez GetManagedObjects at "/"); RadioError if bluetoothd does not answer."""
    from dbus_next.constants import MessageType
    from dbus_next.message import Message

    reply = await bus.call(Message(destination=BLUEZ, path="/", interface=OBJECT_MANAGER_IFACE,
                                   member="GetManagedObjects"))
    if reply is None or reply.message_type is MessageType.ERROR:
        raise RadioError(f"GetManagedObjects: {reply.error_name if reply else 'no reply'}")
    objects: Mapping[str, Mapping[str, Mapping[str, Any]]] = reply.body[0]
    return objects


def _read_nothing(characteristic: Any, **_kwargs: Any) -> bytearray:
    """bless's read_request_func: nothing of ours is readable (bless ignores read offsets)."""
    return bytearray()


def _write_bypassed_hook(characteristic: Any, value: Any, **_kwargs: Any) -> None:
    """bless's write_request_func, reached only if our WriteValue hook was not in place: refuse, loudly."""
    log.error("ble peripheral: a write reached bless's own handler (WriteValue hook missing); dropped")
    raise _dbus_error(AttErrorCode.UNLIKELY_ERROR)


# ---------------------------------------------------------------------- doctor


def _connected_devices(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The object paths of the devices BlueZ shows connected, sorted (values may be dbus-next Variants)."""
    found = []
    for path, interfaces in sorted(objects.items()):
        connected = interfaces.get(DEVICE_IFACE, {}).get("Connected")
        if getattr(connected, "value", connected) is True:
            found.append(path)
    return found


def _adapters(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Summarise the adapters in an org.bluez GetManagedObjects answer (values may be dbus-next Variants)."""

    def plain(props: Mapping[str, Any]) -> dict[str, Any]:
        return {k: getattr(v, "value", v) for k, v in props.items()}

    found = []
    for path, interfaces in sorted(objects.items()):
        if ADAPTER_IFACE not in interfaces:
            continue
        adapter = plain(interfaces[ADAPTER_IFACE])
        adv = plain(interfaces.get(ADV_MANAGER_IFACE, {}))
        found.append({
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "address": adapter.get("Address"),
            "alias": adapter.get("Alias"),
            "powered": adapter.get("Powered"),
            "roles": list(adapter.get("Roles", [])),
            "gatt_server": GATT_MANAGER_IFACE in interfaces,
            "advertising": ADV_MANAGER_IFACE in interfaces,
            "active_advertisements": adv.get("ActiveInstances"),
            "supported_advertisements": adv.get("SupportedInstances"),
            # BlueZ shows SupportedSecondaryChannels only where the kernel offers a secondary PHY, i.e. only on
            # controllers it drives with extended advertising (docs/DEPLOY.md §8: what the address does then)
            "extended_advertising": (bool(list(adv.get("SupportedSecondaryChannels", [])))
                                     if ADV_MANAGER_IFACE in interfaces else None),
        })
    return found


async def _bluetoothd_version(timeout: float) -> str | None:
    """`bluetoothd --version` of the installed daemon (the running one may differ after an upgrade)."""
    candidates = [shutil.which("bluetoothd"), "/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd",
                  "/usr/sbin/bluetoothd"]
    exe = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if exe is None:
        return None
    try:
        async with asyncio.timeout(timeout):
            proc = await asyncio.create_subprocess_exec(
                exe, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            out, _ = await proc.communicate()
    except (OSError, TimeoutError):
        return None
    version = out.decode(errors="replace").strip()
    return version or None


async def probe_bluez(timeout: float = 3.0) -> dict[str, Any]:
    """What `key-server doctor` reports about the Bluetooth stack; never raises.

    Keys: system_bus (reachable), bluez (org.bluez owned), adapters (list of dicts: name, path, address, alias,
    powered, roles, gatt_server, advertising, active_/supported_advertisements, extended_advertising: True, False,
    or None without an advertising manager), bluez_version (from
    `bluetoothd --version`, or None), error (why something is missing, or None).
    """
    report: dict[str, Any] = {"system_bus": False, "bluez": False, "adapters": [], "bluez_version": None,
                              "error": None}
    report["bluez_version"] = await _bluetoothd_version(timeout)
    try:
        from dbus_next.aio.message_bus import MessageBus
        from dbus_next.constants import BusType, MessageType
        from dbus_next.message import Message
    except ImportError as exc:
        report["error"] = f"dbus-next is not installed: {exc}"
        return report
    bus: Any = None
    try:
        async with asyncio.timeout(timeout):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            report["system_bus"] = True
            reply = await bus.call(Message(destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
                                           member="NameHasOwner", signature="s", body=[BLUEZ]))
            if reply.message_type is MessageType.ERROR or not reply.body[0]:
                report["error"] = "bluetoothd is not running (nobody owns org.bluez on the system bus)"
                return report
            report["bluez"] = True
            try:
                objects = await _managed_objects(bus)
            except RadioError as exc:
                report["error"] = f"BlueZ refused {exc}"
                return report
            report["adapters"] = _adapters(objects)
            if not report["adapters"]:
                report["error"] = "BlueZ reports no Bluetooth adapter"
    except Exception as exc:  # noqa: BLE001 - a diagnosis, not an operation: report whatever went wrong
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if bus is not None:
            with contextlib.suppress(Exception):
                await _disconnect_bus(bus, timeout)
    return report

