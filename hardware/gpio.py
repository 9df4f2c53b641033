"""The gpiozero backend: GpioRelay and GpioInput, and the builder for the GPIO drivers.

Importing this module imports gpiozero (install the ``[pi]`` extra; a Pi 5 needs lgpio). Tests and
laptops use gpiozero's MockFactory: ``GPIOZERO_PIN_FACTORY=mock`` or ``pin_factory=MockFactory()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, OutputDevice

from ._backend import BinaryInput, Relay
from ._config import ActuatorConfig, DoorPull, Pin
from ._drivers import DRIVERS, EventListener, RelayLock
from ._errors import BackendUnavailableError, HardwareUnavailableError

_PULL_UP: dict[DoorPull, bool | None] = {"up": True, "down": False, "none": None}


class GpioRelay:
    """A relay on one GPIO through gpiozero's OutputDevice; driven to de-energised on construction."""

    def __init__(self, name: str, pin: Pin, *, active_high: bool, pin_factory: Any = None) -> None:
        self._name = name
        # initial_value=False drives the line to "off" (HIGH on an active-low board) right after it becomes an
        # output; None would keep whatever level the pin had, which can be "on". gpiozero's lgpio pin claims the
        # output at level 0 first: a few ms "on" on an active-low board (docs/HARDWARE.md, "Start-up glitch").
        self._device = OutputDevice(pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)

    @property
    def name(self) -> str:
        """The output's role."""
        return self._name

    @property
    def device(self) -> Any:
        """The gpiozero OutputDevice (tests read ``device.pin.states`` from a MockPin)."""
        return self._device

    def set(self, energised: bool) -> None:
        """Energise or de-energise; gpiozero applies the board's polarity."""
        if energised:
            self._device.on()
        else:
            self._device.off()

    def close(self) -> None:
        """Release the pin (it then floats: the pull resistor holds the relay off)."""
        self._device.close()


class GpioInput:
    """A raw input line through gpiozero's DigitalInputDevice, with no gpiozero debouncing."""

    def __init__(self, pin: Pin, *, pull: DoorPull, pin_factory: Any = None) -> None:
        pull_up = _PULL_UP[pull]
        # gpiozero needs active_state for a floating input; we only read the raw level anyway.
        extra = {"active_state": True} if pull_up is None else {}
        self._device = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory, **extra)

    @property
    def device(self) -> Any:
        """The gpiozero DigitalInputDevice (tests drive ``device.pin`` on a MockPin)."""
        return self._device

    def read(self) -> bool:
        """The raw level: True is high."""
        return bool(self._device.pin.state)

    def set_edge_callback(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` on every edge (gpiozero calls it from its own thread on a real Pi)."""
        self._device.when_activated = callback
        self._device.when_deactivated = callback

    def close(self) -> None:
        """Release the pin."""
        self._device.close()


def _backend_missing(exc: Exception) -> bool:
    """Whether gpiozero failed for want of a pin factory (a missing module), not over a pin (busy, invalid)."""
    from gpiozero import BadPinFactory

    return isinstance(exc, ImportError | BadPinFactory)


def build_gpio_lock(
    config: ActuatorConfig, *, pin_factory: Any = None, on_change: EventListener | None = None
) -> RelayLock:
    """Claim the configured pins (outputs de-energised) and return the driver; on failure release them."""
    if config.kind == "sim":
        raise ValueError("a simulated config has no pins; use SimulatedLock")
    relays: dict[str, Relay] = {}
    door: BinaryInput | None = None
    try:
        try:
            for name, pin in (("unlock", config.unlock_pin), ("lock", config.lock_pin), ("start", config.start_pin)):
                if pin is not None:
                    relays[name] = GpioRelay(name, pin, active_high=config.active_high, pin_factory=pin_factory)
            if config.door_pin is not None:
                door = GpioInput(config.door_pin, pull=config.door_pull, pin_factory=pin_factory)
        except Exception as exc:  # gpiozero: BadPinFactory, GPIOPinInUse, PinInvalidPin, lgpio errors...
            if _backend_missing(exc):
                raise BackendUnavailableError(
                    f"no GPIO backend loads ({type(exc).__name__}: {exc}): a Pi needs lgpio, from the system package "
                    "python3-lgpio in a venv made with --system-site-packages (docs/DEPLOY.md)") from exc
            raise HardwareUnavailableError(f"could not open the GPIO pins: {type(exc).__name__}: {exc}") from exc
        return DRIVERS[config.relay_kind](config, relays, door=door, on_change=on_change)
    except BaseException:
        parts: list[Relay | BinaryInput] = [*relays.values(), *([door] if door is not None else [])]
        for part in parts:
            with contextlib.suppress(Exception):  # keep the original error
                part.close()
        raise
