"""Child process for test_hw_failsafe: drives a relay on mock pins until a signal or exit ends it.

A MockPin's state lives in this process, so it prints the pin history as JSON lines for the parent:
``{"tag": ..., "states": [...]}``. Run with GPIOZERO_PIN_FACTORY=mock. Modes:

- ``pulse``: a long pulse under asyncio.run, with install_signal_failsafe(); the parent signals it.
- ``stuck``: the same, then the event loop is blocked by a busy loop; only the signal handler can act.
- ``exit``: a latched relay left energised and the lock never closed; the process just ends.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import signal
import sys

import gpiozero  # imported before our atexit hook below, as the server would
from gpiozero import Device

import hardware

PIN = 17


def report(tag: str) -> None:
    states = [bool(s.state) for s in Device.pin_factory.pin(PIN).states]
    print(json.dumps({"tag": tag, "states": states}), flush=True)


async def main(mode: str) -> None:
    if mode == "exit":
        lock = hardware.build_lock(hardware.ActuatorConfig(kind="latched", unlock_pin=PIN))
        await lock.unlock()
        report("energised")
        return  # no aclose(): the atexit hook must de-energise
    energised = asyncio.Event()

    def on_change(event: hardware.ActuatorEvent) -> None:
        if isinstance(event, hardware.OutputChanged) and event.energised:
            energised.set()  # called on the loop thread: energise() runs there

    config = hardware.ActuatorConfig(kind="pulse", unlock_pin=PIN, pulse_ms=20_000, max_on_ms=30_000)
    lock = hardware.build_lock(config, on_change=on_change)
    hardware.install_signal_failsafe(lock)
    task = asyncio.create_task(lock.unlock())
    await energised.wait()
    if mode == "stuck":
        try:  # entered before READY: the signal may arrive as soon as the parent reads it
            print("READY", flush=True)
            while True:  # a stuck event loop: no await, no callback, no task will run again
                pass
        except SystemExit:
            report("in-handler")  # before any finally or task cancellation ran
            raise
    print("READY", flush=True)
    await task


if __name__ == "__main__":
    assert gpiozero  # the import above is for its atexit ordering
    # A child of a background shell job inherits SIGINT ignored (and install_signal_failsafe leaves ignored
    # signals alone); a foreground program or a systemd service has Python's default. Be the latter.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode = sys.argv[1]
    if mode == "exit":
        # Registered before the lock's hook, so it runs after it (atexit is last-in, first-out).
        atexit.register(report, "at-exit")
    try:
        asyncio.run(main(mode))
    finally:
        report("final")
