"""Smoke test of the ble_vm harness itself, with our own minimal code on both sides: a bless
peripheral (subprocess, hci0) and a bleak central (in-process, hci1) find each other by service
UUID, connect, and exchange notifications and a write over the real BlueZ stack."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ble

HERE = Path(__file__).resolve().parent
# Custom 128-bit UUIDs, unrelated to the product's protocol.
SERVICE = "6b1e0000-7a3c-4d2b-9f1e-b1e5a0c0de00"
CHAR = "6b1e0001-7a3c-4d2b-9f1e-b1e5a0c0de00"
PUSH = b"pushed-on-subscribe"
FindDevice = Callable[..., Awaitable[Any]]
ATTEMPTS = 3  # whole scan+connect+exchange, on transient errors (btvirt/BlueZ flakiness under TCG)


async def exchange(find_device: FindDevice, adapter: str, log: logging.Logger) -> dict[str, float]:
    """One scan, connect, subscribe, write; returns stage durations in seconds."""
    from bleak import BleakClient

    times: dict[str, float] = {}
    t = time.monotonic()
    device = await find_device(SERVICE, adapter, timeout=20.0)
    times["scan"] = time.monotonic() - t
    log.info("found %s after %.2f s", device.address, times["scan"])

    t = time.monotonic()
    async with BleakClient(device, timeout=30.0, bluez={"adapter": adapter}) as client:
        times["connect"] = time.monotonic() - t
        received: asyncio.Queue[bytes] = asyncio.Queue()

        t = time.monotonic()
        await client.start_notify(CHAR, lambda _c, data: received.put_nowait(bytes(data)))
        pushed = await asyncio.wait_for(received.get(), 10.0)
        times["push"] = time.monotonic() - t
        assert pushed == PUSH

        t = time.monotonic()
        await client.write_gatt_char(CHAR, b"ping", response=True)
        reply = await asyncio.wait_for(received.get(), 10.0)
        times["write_rtt"] = time.monotonic() - t
        assert reply == b"echo:ping"
    return times


async def test_scan_connect_push_write_notify(spawn, ble_adapters, ble_log, find_device, forget_devices) -> None:
    assert ble_adapters[:2] == ["hci0", "hci1"], ble_adapters
    from bleak.exc import BleakError

    argv = [sys.executable, HERE / "smoke_peripheral.py", "--adapter", "hci0"]
    argv += ["--service", SERVICE, "--char", CHAR, "--push", PUSH.decode()]
    peripheral = spawn("smoke_peripheral", argv)
    await peripheral.wait_for_output_async("^READY$", timeout=60.0)

    for attempt in range(1, ATTEMPTS + 1):
        try:
            if attempt > 1:  # start the retry from a clean BlueZ state
                await asyncio.to_thread(forget_devices, "hci1")
            times = await exchange(find_device, "hci1", ble_log)
            break
        except (BleakError, TimeoutError) as exc:
            ble_log.warning("attempt %d failed: %s: %s", attempt, type(exc).__name__, exc)
            if attempt == ATTEMPTS:
                raise
            await asyncio.sleep(1.0)
    ble_log.info("RESULT attempt=%d %s", attempt, " ".join(f"{k}={v:.3f}s" for k, v in times.items()))
    assert "write b'ping'" in peripheral.output()
