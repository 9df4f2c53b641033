"""Minimal bless GATT peripheral for the ble_vm smoke test (our own code, not the product's).

One service with one write+notify characteristic:
  - when a central subscribes (enables notifications), it notifies ``--push`` at once;
  - each write of V is answered with a notification ``echo:`` + V.
Prints READY once it advertises, runs until SIGTERM/SIGINT, then unregisters cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from bless import BlessServer, GATTAttributePermissions, GATTCharacteristicProperties

T0 = time.monotonic()


def log(*parts: object) -> None:
    print(f"[peripheral +{time.monotonic() - T0:6.2f}s]", *parts, flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="hci0")
    parser.add_argument("--service", required=True)
    parser.add_argument("--char", required=True)
    parser.add_argument("--push", default="pushed-on-subscribe")
    parser.add_argument("--name", default="BleVmSmoke")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = BlessServer(name=args.name, loop=loop, adapter=args.adapter)

    def notify(value: bytes) -> None:
        server.get_characteristic(args.char).value = bytearray(value)
        ok = server.update_value(args.service, args.char)  # emits PropertiesChanged -> notification
        log("notify", value, "ok" if ok else "FAILED")

    def on_read(characteristic, **_kwargs):  # bless passes the characteristic and options
        return characteristic.value

    def on_write(characteristic, value, **_kwargs):
        log("write", bytes(value))
        notify(b"echo:" + bytes(value))

    server.read_request_func = on_read
    server.write_request_func = on_write
    await server.add_new_service(args.service)
    await server.add_new_characteristic(
        args.service,
        args.char,
        GATTCharacteristicProperties.read | GATTCharacteristicProperties.write | GATTCharacteristicProperties.notify,
        bytearray(b""),
        GATTAttributePermissions.readable | GATTAttributePermissions.writeable,
    )
    await server.start()

    # bless sets app.StartNotify to a no-op. bluetoothd calls StartNotify on our D-Bus object when a
    # central writes the characteristic's CCC descriptor (every central, every subscription), so
    # this is the hook for "push a value on subscription".
    def on_subscribe(_unused: None) -> None:
        log("subscribed")
        notify(args.push.encode())

    server.app.StartNotify = on_subscribe
    log("advertising on", args.adapter)
    print("READY", flush=True)

    await stop.wait()
    log("stopping")
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
