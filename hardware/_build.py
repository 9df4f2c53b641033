"""Entry points for the key server: build_lock, actuate_test and check_hardware (for ``doctor``)."""

from __future__ import annotations

import asyncio
import enum
import importlib
import warnings
from dataclasses import dataclass
from typing import Any

from ._config import ActuatorConfig, Pin, bcm_number
from ._drivers import EventListener
from ._errors import ActuatorError, BackendUnavailableError
from ._sim import SimulatedLock
from ._types import ActuatorStatus, Lock


def build_lock(config: ActuatorConfig, *, pin_factory: Any = None, on_change: EventListener | None = None) -> Lock:
    """A SimulatedLock for ``kind="sim"``, else the gpiozero driver (imported only now), all outputs off."""
    if config.kind == "sim":
        return SimulatedLock(config, on_change=on_change)
    try:
        gpio = importlib.import_module("hardware.gpio")  # lazily: the package imports without gpiozero
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{config.kind} relay needs gpiozero: pip install 'wearable-dkey[pi]' ({exc})"
        ) from exc
    lock: Lock = gpio.build_gpio_lock(config, pin_factory=pin_factory, on_change=on_change)
    return lock


async def actuate_test(lock: Lock, *, hold_s: float = 2.0) -> ActuatorStatus:
    """One unlock with no key, then lock after ``hold_s``: for ``key-server actuate --test``.

    A pulse relay pulses once (its lock() does nothing more); a two-line relay pulses unlock, then lock;
    a latched relay is energised for ``hold_s``. Raises ActuatorError (DoorOpenError if the relock is
    refused because the door is open: the lock is then left unlocked).
    """
    await lock.unlock()
    await asyncio.sleep(hold_s)
    return await lock.lock()


class CheckLevel(enum.Enum):
    """How a doctor finding should be shown."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One ``key-server doctor`` finding about the actuator."""

    name: str
    level: CheckLevel
    detail: str


async def check_hardware(config: ActuatorConfig, *, pin_factory: Any = None) -> list[Check]:
    """Doctor checks that energise nothing: backend, pins claimable, door reading, boot-level risks."""
    checks = [Check("actuator", CheckLevel.OK, config.describe())]
    if config.kind == "sim":
        return checks
    checks.extend(_boot_level_checks(config))
    try:
        factory_detail = _pin_factory_detail(pin_factory)
    except Exception as exc:  # noqa: BLE001  # whatever fails here is a finding to report, not raise
        checks.append(Check("gpio backend", CheckLevel.FAIL, f"no GPIO backend loads ({type(exc).__name__}: {exc}): "
                            "a Pi needs lgpio, from the system package python3-lgpio in a venv made with "
                            "--system-site-packages (docs/DEPLOY.md)"))
        return checks
    checks.append(Check("gpio backend", CheckLevel.OK, factory_detail))
    try:
        lock = build_lock(config, pin_factory=pin_factory)
    except ActuatorError as exc:
        busy = any(word in str(exc).lower() for word in ("in use", "busy"))
        hint = " (is key-server already running? it holds the pins)" if busy else ""
        checks.append(Check("pins", CheckLevel.FAIL, f"{exc}{hint}"))
        return checks
    try:
        status = lock.status()
        checks.append(Check("pins", CheckLevel.OK, "all outputs claimed and de-energised"))
        if config.door_pin is not None:
            checks.append(Check("door sensor", CheckLevel.OK, f"door reads {status.door.label}"))
    finally:
        await lock.aclose()
    return checks


def _pin_factory_detail(pin_factory: Any) -> str:
    """Load gpiozero's pin factory (or describe the given one); fallback warnings become the detail."""
    try:
        from gpiozero import Device
    except ImportError as exc:
        raise BackendUnavailableError("gpiozero is not installed: pip install 'wearable-dkey[pi]'") from exc
    if pin_factory is not None:
        return type(pin_factory).__name__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Device.ensure_pin_factory()
    detail = type(Device.pin_factory).__name__
    if caught:
        detail += " (" + "; ".join(str(w.message) for w in caught) + ")"
    return detail


def _boot_level_checks(config: ActuatorConfig) -> list[Check]:
    """Warn where a Pi's power-on pull default would energise the relay before key-server starts."""
    found = []
    for name, pin in (("unlock", config.unlock_pin), ("lock", config.lock_pin), ("start", config.start_pin)):
        if pin is None:
            continue
        risk = _boot_risk(pin, active_high=config.active_high)
        level = CheckLevel.WARN if risk else CheckLevel.OK
        found.append(Check(f"{name} pin at boot", level, risk or f"GPIO {pin} idles de-energised at power-on"))
    return found


def _boot_risk(pin: Pin, *, active_high: bool) -> str | None:
    """On Pi 1-4, GPIO 0-8 are pulled up and 9-27 pulled down at power-on (until the pin is claimed)."""
    number = bcm_number(pin)
    if number is None or number > 27:
        return None
    pulled_up = number <= 8
    if active_high and pulled_up:
        return (
            f"GPIO {number} is pulled up at power-on: an active-high relay may click on during boot; "
            "add 10 kΩ to GND or use GPIO 9-27"
        )
    if not active_high and not pulled_up:
        return (
            f"GPIO {number} is pulled down at power-on: an active-low relay may click on during boot; "
            "add 10 kΩ to 3.3 V or use GPIO 4-6"
        )
    return None
