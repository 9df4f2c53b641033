"""Issue 10 items 1 and 7 over the real BlueZ stack: silent and hogging centrals are dropped, and refusals reach
the central. A vehicle of its own (`key-server run --radio ble` on hci0) with short, test-sized limits:
`server.link_idle_timeout` 8 s, `rate_limit.max_link_lifetime` 60 s (the smallest allowed), `link_burst` 2, and one
actuation per key then one every 2 minutes. The owner's watch is `key-client` on hci1; the raw centrals are bleak in
this process on hci2 (test code, with the harness's bleak patch).

Figures go to $BLE_VM_OUT/hog.json and the test log: seconds from the silent central's connection (the vehicle's
"connected" log line) to its drop, from the drop to the vehicle being seen advertising again (fresh scans on hci2),
and the owner's unlock after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import forget_devices, make_run_cli
from dkey_rig import RX_UUID, SERVICE_UUID, TX_UUID, Device, Vehicle

from dkey_link.exit_codes import ExitCode

pytestmark = [pytest.mark.ble, pytest.mark.timeout(240)]

VEHICLE_NAME = "DkeyVmHog"
IDLE_TIMEOUT = 8.0
LIFETIME = 60.0
SWEEP_SLACK = 6.0  # the sweeper runs every 0.5 s; BlueZ's Disconnect and its signal take a moment under TCG
PRODUCT_RACE_FIX = os.environ.get("BLE_VM_PRODUCT_RACE_FIX") == "1"
CHALLENGE_REQUEST = bytes.fromhex("8000020101")  # one chunk: a whole CHALLENGE_REQUEST (PROTOCOL.md §3.4)


@pytest.fixture(scope="module")
def out_dir() -> Path:
    return Path(os.environ["BLE_VM_OUT"])


@pytest.fixture(scope="module")
def mrun_cli(out_dir: Path) -> Callable[..., Any]:
    return make_run_cli(out_dir)


@pytest.fixture(scope="module")
def vehicle(module_spawn, mrun_cli, tmp_path_factory) -> Iterator[Vehicle]:
    forget_devices()
    v = Vehicle(tmp_path_factory.mktemp("hogvehicle") / "state", VEHICLE_NAME, module_spawn, mrun_cli)
    v.init()
    config = v.state_dir / "config.toml"
    text = config.read_text()
    for old, new in (("link_idle_timeout = 30.0", f"link_idle_timeout = {IDLE_TIMEOUT}"),
                     ("max_link_lifetime = 300.0", f"max_link_lifetime = {LIFETIME}"),
                     ("link_burst = 5", "link_burst = 2"),
                     ("actuation_burst = 6", "actuation_burst = 1"),
                     ("actuation_per_minute = 12.0", "actuation_per_minute = 0.5")):
        assert old in text, f"sample config changed: no {old!r}"
        text = text.replace(old, new)
    config.write_text(text)
    v.start()
    yield v
    assert "Traceback" not in v.output(), "key-server logged a traceback"


@pytest.fixture(scope="module")
def owner(vehicle: Vehicle, tmp_path_factory, mrun_cli, out_dir: Path) -> Device:
    dev = Device(tmp_path_factory.mktemp("hogowner") / "keychain", "hci1", mrun_cli, out_dir, PRODUCT_RACE_FIX)
    run = dev.run("pair", vehicle.pair_code("owner", "owner-watch"), "--name", "car", label="hog-pair-owner")
    assert run.rc == ExitCode.OK, run.result.stderr
    return dev


def _server_time(vehicle: Vehicle, pattern: str, since: float) -> float | None:
    """Wall-clock time of the first server log line matching `pattern` at or after `since`."""
    regex = re.compile(pattern)
    for line in vehicle.lines():
        if line.ts >= since - 0.002 and regex.search(line.message):
            return line.ts
    return None


async def _raw_connect(find_device, ble_log, on_drop: Callable[[], None]) -> Any:
    """A generic bleak central on hci2, connected to the vehicle (retried: BlueZ under TCG needs it at times)."""
    from bleak import BleakClient

    for attempt in range(1, 4):
        try:
            device = await find_device(SERVICE_UUID, "hci2", timeout=30.0)
            client = BleakClient(device, timeout=30.0, bluez={"adapter": "hci2"},
                                 disconnected_callback=lambda _c: on_drop())
        except Exception as exc:  # noqa: BLE001 - retried, then raised
            ble_log.warning("raw central attempt %d: no vehicle seen: %r", attempt, exc)
            if attempt == 3:
                raise
            continue
        try:
            await client.connect()
            return client
        except Exception as exc:  # noqa: BLE001 - retried, then raised
            ble_log.warning("raw central attempt %d failed: %r", attempt, exc)
            with contextlib.suppress(Exception):
                await client.disconnect()  # closes bleak's D-Bus socket of the failed attempt
            if attempt == 3:
                raise
            await asyncio.to_thread(forget_devices, "hci2")
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def test_a_silent_central_is_dropped_and_the_owner_then_unlocks(vehicle: Vehicle, owner: Device,
                                                                      find_device, ble_log, out_dir: Path) -> None:
    """A raw central connects and never writes (no subscription either). Before, bless learnt of a link only at
    its first write: this central was never dropped and, since BlueZ does not advertise while it is connected,
    nobody else could find the car. Now the vehicle sees it from BlueZ (Device1 Connected), drops it after the
    idle timeout, advertises again, and the owner's watch unlocks."""
    since = time.time()
    dropped_at: list[float] = []
    client = await _raw_connect(find_device, ble_log, lambda: dropped_at.append(time.time()))
    dropped_at.clear()  # only this connection's drop counts
    connected_at = time.time()
    try:
        assert await _until(lambda: bool(dropped_at) or not client.is_connected, IDLE_TIMEOUT + 20), \
            "the silent central is still connected"
    finally:
        await client.disconnect()  # also after the vehicle dropped it: only this closes bleak's own D-Bus socket
    dropped = dropped_at[0] if dropped_at else time.time()
    link_start = _server_time(vehicle, r"^ble peripheral: /org/bluez/hci0/dev_\S+ connected$", since)
    assert link_start is not None, "the vehicle never logged the silent central's connection"
    vehicle_drop = _server_time(vehicle, r"^dropping /org/bluez/hci0/dev_\S+: idle for", link_start)
    assert vehicle_drop is not None, "the vehicle never dropped the silent central as idle"
    silent_for = dropped - link_start
    ble_log.info("silent central: vehicle saw it at +%.2f s after the test start, bleak connected at +%.2f s; the "
                 "vehicle dropped it %.2f s after it connected, the central saw the drop after %.2f s",
                 link_start - since, connected_at - since, vehicle_drop - link_start, silent_for)
    assert IDLE_TIMEOUT <= vehicle_drop - link_start <= IDLE_TIMEOUT + 1.5, vehicle_drop - link_start
    assert IDLE_TIMEOUT <= silent_for <= IDLE_TIMEOUT + SWEEP_SLACK, silent_for

    await find_device(SERVICE_UUID, "hci2", timeout=30.0)  # advertising again: a fresh scan sees the car
    advertising_after = time.time() - dropped

    t = time.time()
    run = await asyncio.to_thread(owner.run, "unlock", label="hog-unlock-after-silent")
    assert run.rc == ExitCode.OK, run.result.stderr
    assert [ln for ln in vehicle.actuator_events(t) if "unlock energised" in ln.message]
    figures = {"idle_timeout_s": IDLE_TIMEOUT, "connect_to_vehicle_drop_s": round(vehicle_drop - link_start, 2),
               "connect_to_drop_seen_by_central_s": round(silent_for, 2),
               "drop_to_seen_advertising_s": round(advertising_after, 2),
               "unlock_after_s": run.record()["seconds"], "unlock_cycles": run.cycles}
    ble_log.info("figures: %s", figures)
    print(f"silent central: dropped {vehicle_drop - link_start:.2f} s after connecting (the central saw it after "
          f"{silent_for:.2f} s; idle timeout {IDLE_TIMEOUT:g} s); seen "
          f"advertising {advertising_after:.2f} s after the drop; the owner's unlock then took "
          f"{figures['unlock_after_s']} s ({run.cycles} cycle(s))")
    _save(out_dir, "silent", figures)


async def test_a_raw_central_sees_rejected_then_busy(vehicle: Vehicle, find_device, ble_log, out_dir: Path) -> None:
    """A generic central writing garbage now sees the vehicle's ATT errors (RX is write-with-response only):
    0x81 for each bad frame, then 0x80 once its link's failure budget (link_burst 2) is spent."""
    from key_client.radio.ble import _att_code

    client = await _raw_connect(find_device, ble_log, lambda: None)
    outcomes: list[str] = []
    try:
        for frame in (b"\x05" + b"\xaa" * 10, b"\x80\xff\xff" + b"\x00" * 30, b"\x05" + b"\xaa" * 10):
            try:
                await client.write_gatt_char(RX_UUID, frame, response=True)
                outcomes.append("acknowledged")
            except Exception as exc:  # noqa: BLE001 - the outcome is what we record
                code = _att_code(exc)
                outcomes.append(f"0x{code:02x}" if code is not None else f"{type(exc).__name__}: {exc}")
    finally:
        await client.disconnect()
    ble_log.info("garbage outcomes: %s", outcomes)
    _save(out_dir, "raw_refusals", {"outcomes": outcomes})
    assert outcomes == ["0x81", "0x81", "0x80"], outcomes
    assert vehicle.running


def test_a_rate_limited_owner_hears_busy_and_when(vehicle: Vehicle, owner: Device, out_dir: Path) -> None:
    """One actuation per key, then one every 2 minutes: the next unlock is refused with a signed BUSY naming the
    wait, and key-client says so in plain words (exit 7). Before, such refusals at the radio level never reached
    the client over BlueZ."""
    # The budget refills one actuation per 120 s, and a key-client run under TCG can take a minute (retried
    # connects): an OK run empties the bucket, so the run after it is refused.
    t = time.time()
    for n in range(1, 4):
        run = owner.run("unlock", label=f"hog-unlock-busy-{n}")
        assert run.rc in (ExitCode.OK, ExitCode.BUSY), (run.rc, run.result.stderr)
        if run.rc == ExitCode.BUSY:
            break
        t = time.time()
    assert run.rc == ExitCode.BUSY, (run.rc, run.result.stderr)
    words = re.search(r"the vehicle is busy: this key has moved it too often; try again in (\d+) s",
                      run.result.stderr)
    assert words, run.result.stderr
    assert 1 <= int(words.group(1)) <= 120, words.group(0)  # the vehicle's own figure: at most one refill period
    assert run.obj["ok"] is False and run.obj["may_have_succeeded"] is False and run.obj["temporary"] is True
    assert not [ln for ln in vehicle.actuator_events(t) if "energised" in ln.message], "a refused unlock moved"
    _save(out_dir, "busy", {"stderr_words": words.group(0), "exit": run.rc})


async def test_a_central_that_keeps_busy_is_dropped_at_the_lifetime_cap(vehicle: Vehicle, find_device, ble_log,
                                                                         out_dir: Path) -> None:
    """A hog that stays active (a valid CHALLENGE_REQUEST every 3 s, never idle) is still dropped once it has been
    connected for rate_limit.max_link_lifetime."""
    since = time.time()
    dropped_at: list[float] = []
    client = await _raw_connect(find_device, ble_log, lambda: dropped_at.append(time.time()))
    dropped_at.clear()
    challenges: list[bytes] = []
    writes = 0
    try:
        await client.start_notify(TX_UUID, lambda _c, data: challenges.append(bytes(data)))
        while client.is_connected and time.time() - since < LIFETIME + 30:
            try:
                await client.write_gatt_char(RX_UUID, CHALLENGE_REQUEST, response=True)
                writes += 1
            except Exception as exc:  # noqa: BLE001 - the drop races the write
                ble_log.info("write failed (dropped?): %r", exc)
                break
            await asyncio.sleep(3.0)
        assert await _until(lambda: bool(dropped_at) or not client.is_connected, 10)
    finally:
        await client.disconnect()  # also after the vehicle dropped it: only this closes bleak's own D-Bus socket
    dropped = dropped_at[0] if dropped_at else time.time()
    link_start = _server_time(vehicle, r"^ble peripheral: /org/bluez/hci0/dev_\S+ connected$", since)
    assert link_start is not None
    vehicle_drop = _server_time(vehicle, r"^dropping /org/bluez/hci0/dev_\S+: connected for .* \(max_link_lifetime\)",
                                link_start)
    assert vehicle_drop is not None, "the vehicle never dropped the hog at the lifetime cap"
    lived = dropped - link_start
    ble_log.info("busy hog: %d writes, %d notification chunks, dropped %.2f s after connecting", writes,
                 len(challenges), lived)
    _save(out_dir, "hog_lifetime", {"lifetime_s": LIFETIME,
                                    "connect_to_vehicle_drop_s": round(vehicle_drop - link_start, 2),
                                    "connect_to_drop_seen_by_central_s": round(lived, 2), "writes": writes})
    print(f"busy hog: dropped {vehicle_drop - link_start:.2f} s after connecting (the central saw it after "
          f"{lived:.2f} s; lifetime cap {LIFETIME:g} s), after {writes} writes")
    assert writes >= 10, "the hog was not kept busy"
    assert LIFETIME <= vehicle_drop - link_start <= LIFETIME + 1.5, vehicle_drop - link_start
    assert LIFETIME <= lived <= LIFETIME + SWEEP_SLACK, lived


def _save(out_dir: Path, key: str, value: dict[str, Any]) -> None:
    path = out_dir / "hog.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))

