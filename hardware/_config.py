"""ActuatorConfig: every actuator option with a safe default, validated before any pin is touched."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from ._errors import ActuatorConfigError

Kind = Literal["sim", "pulse", "two-line", "latched"]
RelayKind = Literal["pulse", "two-line", "latched"]
DoorPull = Literal["up", "down", "none"]
Pin = int | str  # BCM number (17) or any name gpiozero accepts ("GPIO17", "BOARD11")

# A pulse drives a strike, a fob button or a car's trigger wire: none needs more than a second or two,
# and a solenoid held longer overheats.
DEFAULT_PULSE_MAX_ON_MS = 2_000
# A latched relay is energised for as long as the lock stays unlocked: the cap is the longest unlock.
DEFAULT_LATCHED_MAX_ON_MS = 60_000
# Beyond an hour a relay is a switch, not a key; a typo in the config must not make it one.
MAX_ON_CEILING_S = 3_600.0

_BCM_NAME = re.compile(r"^(?:GPIO|BCM)?(\d+)$", re.IGNORECASE)


def bcm_number(pin: Pin) -> int | None:
    """The BCM number for ``17``, ``"17"``, ``"GPIO17"`` or ``"BCM17"``; None for other pin names."""
    if isinstance(pin, int):
        return pin
    match = _BCM_NAME.match(pin.strip())
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class ActuatorConfig:
    """How the lock is wired. Defaults are a simulated two-line car lock; see docs/HARDWARE.md."""

    kind: Kind = "sim"
    simulate: RelayKind = "two-line"  # what kind="sim" behaves like
    unlock_pin: Pin | None = None  # pulse, latched: the relay; two-line: the unlock line
    lock_pin: Pin | None = None  # two-line only: the lock line
    active_high: bool = True  # False for the common active-low relay boards (IN pulled low = energised)
    pulse_ms: int = 500  # pulse and two-line: how long a pulse energises its line
    max_on_ms: int | None = None  # hard cap on any one energising; None: 2 s for pulses, 60 s latched
    pulse_relatches: bool = True  # pulse: True for a strike (locked again after the pulse), False for a toggle
    relock_after_s: float | None = None  # two-line: pulse "lock" this long after an unlock; latched: release
    start_pin: Pin | None = None  # optional start-enable output
    start_on_s: float = 120.0  # how long start-enable stays energised (its own hard cap too)
    door_pin: Pin | None = None  # optional reed switch input
    door_open_is_high: bool = True  # reed switch to GND with a pull-up: open door = switch open = HIGH
    door_pull: DoorPull = "up"
    debounce_ms: int = 50  # the door input must be stable this long before its state is believed
    refuse_lock_when_open: bool = False  # lock() raises DoorOpenError while the door is open

    def __post_init__(self) -> None:
        """Reject anything invalid or unsafe with an ActuatorConfigError that names the option and its value."""
        _check_choice("kind", self.kind, get_args(Kind))
        _check_choice("simulate", self.simulate, get_args(RelayKind))
        _check_choice("door_pull", self.door_pull, get_args(DoorPull))
        for name in ("active_high", "pulse_relatches", "door_open_is_high", "refuse_lock_when_open"):
            if not isinstance(getattr(self, name), bool):
                raise ActuatorConfigError(name, getattr(self, name), "not true or false", "true or false")
        for name in ("unlock_pin", "lock_pin", "start_pin", "door_pin"):
            _check_pin(name, getattr(self, name))
        _check_number("pulse_ms", self.pulse_ms, low=1, high=MAX_ON_CEILING_S * 1000)
        if self.max_on_ms is not None:
            _check_number("max_on_ms", self.max_on_ms, low=1, high=MAX_ON_CEILING_S * 1000)
        _check_number("start_on_s", self.start_on_s, low=0.001, high=MAX_ON_CEILING_S)
        _check_number("debounce_ms", self.debounce_ms, low=0, high=10_000)
        if self.relock_after_s is not None:
            _check_number("relock_after_s", self.relock_after_s, low=0.001, high=MAX_ON_CEILING_S)
        self._check_kind_rules()

    def _check_kind_rules(self) -> None:
        """Rules that depend on the relay kind: which pins are needed and how the timings relate."""
        kind = self.relay_kind
        max_on_ms = self.max_on_s * 1000
        if kind in ("pulse", "two-line") and self.pulse_ms > max_on_ms:
            raise ActuatorConfigError("pulse_ms", self.pulse_ms, f"exceeds max_on_ms ({_plain(max_on_ms)})",
                                      f"at most max_on_ms ({_plain(max_on_ms)}); raise max_on_ms for a longer pulse")
        if kind == "pulse" and self.relock_after_s is not None:
            raise ActuatorConfigError("relock_after_s", self.relock_after_s,
                                      "does not apply to a pulse relay (it has nothing to re-lock)",
                                      "leave it out for a pulse relay")
        if kind == "latched" and self.relock_after_s is not None and self.relock_after_s * 1000 > max_on_ms:
            raise ActuatorConfigError(
                "relock_after_s", self.relock_after_s,
                f"exceeds max_on_ms ({_plain(max_on_ms)} ms): a latched relay is energised while unlocked, "
                "so raise max_on_ms too", f"at most {_plain(max_on_ms / 1000)} s, or a larger max_on_ms")
        if self.kind == "sim":
            return  # a simulated lock has every output and a door sensor; pins are ignored
        if self.unlock_pin is None:
            raise ActuatorConfigError("unlock_pin", None, f"a {kind} relay needs unlock_pin", _PIN_ALLOWED)
        if kind == "two-line" and self.lock_pin is None:
            raise ActuatorConfigError("lock_pin", None, "a two-line relay needs lock_pin", _PIN_ALLOWED)
        if kind != "two-line" and self.lock_pin is not None:
            raise ActuatorConfigError("lock_pin", self.lock_pin, f"only used by a two-line relay, not {kind}",
                                      'leave it out unless kind = "two-line"')
        if self.refuse_lock_when_open and self.door_pin is None:
            raise ActuatorConfigError("refuse_lock_when_open", True, "needs door_pin",
                                      "false, or set door_pin to the door sensor's pin")
        seen: dict[object, str] = {}
        for name in ("unlock_pin", "lock_pin", "start_pin", "door_pin"):
            pin: Pin | None = getattr(self, name)
            if pin is None:
                continue
            number = bcm_number(pin)
            same = number if number is not None else str(pin).strip().upper()  # 17 == "GPIO17" == "BCM17"
            if same in seen:
                raise ActuatorConfigError(name, pin, f"the same pin as {seen[same]}",
                                          "a pin no other actuator option uses")
            seen[same] = name

    @property
    def relay_kind(self) -> RelayKind:
        """The behaviour in force: ``kind``, or ``simulate`` for a simulated lock."""
        return self.simulate if self.kind == "sim" else self.kind

    @property
    def max_on_s(self) -> float:
        """The hard cap on one energising of the lock outputs, in seconds."""
        if self.max_on_ms is not None:
            return self.max_on_ms / 1000
        default = DEFAULT_LATCHED_MAX_ON_MS if self.relay_kind == "latched" else DEFAULT_PULSE_MAX_ON_MS
        return default / 1000

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> ActuatorConfig:
        """Build from a TOML table (``-`` or ``_`` in keys); unknown keys are an ActuatorConfigError, not ignored."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {str(k).replace("-", "_"): v for k, v in data.items()}
        for key, value in values.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ActuatorConfigError(key, value, f"unknown actuator option{hint}", ", ".join(names))
        return cls(**values)  # type: ignore[arg-type]  # each value is checked in __post_init__

    def describe(self) -> str:
        """One line for logs and ``key-server doctor``: kind, pins, polarity and timings."""
        if self.kind == "sim":
            return f"simulated {self.relay_kind} lock (no GPIO)"
        parts = [f"{self.kind} relay", f"unlock GPIO {self.unlock_pin}"]
        if self.lock_pin is not None:
            parts.append(f"lock GPIO {self.lock_pin}")
        parts.append("active-high" if self.active_high else "active-low")
        if self.kind != "latched":
            parts.append(f"pulse {self.pulse_ms} ms")
        parts.append(f"max on {self.max_on_s * 1000:g} ms")
        if self.relock_after_s is not None:
            parts.append(f"relock after {self.relock_after_s:g} s")
        if self.start_pin is not None:
            parts.append(f"start GPIO {self.start_pin} for {self.start_on_s:g} s")
        if self.door_pin is not None:
            parts.append(f"door GPIO {self.door_pin}")
        return ", ".join(parts)


_PIN_ALLOWED = 'a BCM pin number (17) or a pin name ("GPIO17", "BOARD11")'


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ActuatorConfigError(name, value, "not one of the choices",
                                  "one of " + ", ".join(f'"{c}"' for c in choices))


def _check_pin(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ActuatorConfigError(name, value, "not a pin", _PIN_ALLOWED)
    if isinstance(value, int) and value < 0:
        raise ActuatorConfigError(name, value, "negative", _PIN_ALLOWED)
    if isinstance(value, str) and not value.strip():
        raise ActuatorConfigError(name, value, "empty", _PIN_ALLOWED)


def _plain(number: float) -> str:
    """3600000 rather than 3.6e+06: a person copies the bound into the config file."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _check_number(name: str, value: object, *, low: float, high: float) -> None:
    allowed = f"a number from {_plain(low)} to {_plain(high)}"
    # bool is an int subclass: `true` must not pass as 1 ms; NaN compares false with everything.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ActuatorConfigError(name, value, "not a finite number", allowed)
    if value < low:
        raise ActuatorConfigError(name, value, "too small", allowed)
    if value > high:
        raise ActuatorConfigError(name, value, "too large", allowed)
