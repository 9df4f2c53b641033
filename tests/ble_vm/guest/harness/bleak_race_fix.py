"""Test-only work-around for a bleak/BlueZ race on slow (emulated) CPUs. Never product code.

What happens: on the central's adapter, bluetoothd sometimes sees the ATT channel come up before
the kernel's "device connected" management event. It then marks the device connected without
emitting ``PropertiesChanged(Connected=True)`` (its log says "Device ... is already connected").
A ``Get`` of ``Device1.Connected`` answers True, but bleak only follows signals: its cached value
stays False, and right after BlueZ resolves the services bleak's ``_wait_for_services_discovery``
concludes "failed to discover services, device disconnected" and drops a working link. Measured
in the ble_vm guest: 4 of 6 connections (bleak 3.1, BlueZ 5.66). The product must survive it by
retrying; a test that wants to exercise something else uses this patch.

The patch, before bleak's own wait: if bleak's cache says not connected, wait briefly for the
signal, then ask BlueZ, and if it answers True, correct bleak's cache.

Used by the guest conftest for in-process centrals, and by ``sitecustomize.py`` beside this file
for subprocesses started with ``bleak_race_fix=True``.
"""

from __future__ import annotations

import asyncio
import logging

_SIGNAL_WAIT_S = 1.0
log = logging.getLogger("ble_vm.bleak_race_fix")


def install() -> None:
    """Patch bleak's BlueZ manager; idempotent. Fails loudly if bleak's internals moved."""
    from bleak.backends.bluezdbus import defs, manager
    from dbus_fast import Message, MessageType

    cls = manager.BlueZManager
    original = cls._wait_for_services_discovery
    if getattr(original, "_ble_vm_patched", False):
        return
    for name in ("_wait_condition", "_get_device_property"):
        if not hasattr(cls, name):
            raise RuntimeError(f"bleak changed: BlueZManager.{name} is gone; revisit bleak_race_fix")

    async def _connected_per_bluez(self: manager.BlueZManager, device_path: str) -> bool:
        reply = await self._bus.call(
            Message(
                destination=defs.BLUEZ_SERVICE,
                path=device_path,
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[defs.DEVICE_INTERFACE, "Connected"],
            )
        )
        return reply.message_type == MessageType.METHOD_RETURN and bool(reply.body[0].value)

    async def _wait_for_services_discovery(self: manager.BlueZManager, device_path: str) -> None:
        if not self._get_device_property(device_path, defs.DEVICE_INTERFACE, "Connected"):
            try:
                await asyncio.wait_for(self._wait_condition(device_path, "Connected", True), _SIGNAL_WAIT_S)
            except TimeoutError:
                if await _connected_per_bluez(self, device_path):
                    log.warning("BlueZ never signalled Connected=True for %s; correcting bleak's cache", device_path)
                    self._properties[device_path][defs.DEVICE_INTERFACE]["Connected"] = True
        await original(self, device_path)

    _wait_for_services_discovery._ble_vm_patched = True  # type: ignore[attr-defined]
    cls._wait_for_services_discovery = _wait_for_services_discovery  # type: ignore[method-assign]
