"""The pin-level backend seam: a ``Relay`` output and a ``BinaryInput``, with in-memory fakes.

Like gpiozero's pin factories, the drivers never know which backend they drive: ``hardware.gpio`` holds
the gpiozero implementations, and the fakes here record a timestamped history for the simulated lock
and for tests. Nothing in this module does I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Relay(Protocol):
    """One relay line; ``set(True)`` energises the coil whatever the board's polarity."""

    @property
    def name(self) -> str:
        """The output's role: "unlock", "lock" or "start"."""
        ...

    def set(self, energised: bool) -> None:
        """Drive the line; may raise (a GPIO error), in which case its state is unknown."""
        ...

    def close(self) -> None:
        """Release the line; on a Pi it then floats, so the pull resistor decides (docs/HARDWARE.md)."""
        ...


@runtime_checkable
class BinaryInput(Protocol):
    """One raw input line, e.g. a reed switch; the debouncing lives above it, in DoorSensor."""

    def read(self) -> bool:
        """The raw level now: True is high."""
        ...

    def set_edge_callback(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (from any thread) on every level change, bounces included."""
        ...

    def close(self) -> None:
        """Stop reporting edges and release the line."""
        ...


class FakeRelay:
    """An in-memory relay that records ``(monotonic_time, energised)`` on every change, like MockPin."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._energised = False
        self._closed = False
        self._mutex = threading.Lock()
        self.states: list[tuple[float, bool]] = [(time.monotonic(), False)]  # starts de-energised

    @property
    def name(self) -> str:
        """The output's role."""
        return self._name

    @property
    def energised(self) -> bool:
        """The simulated coil state."""
        return self._energised

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def set(self, energised: bool) -> None:
        """Record a change of state; setting the current state again records nothing."""
        with self._mutex:
            if self._closed:
                raise RuntimeError(f"relay {self._name!r} is closed")
            if energised != self._energised:
                self._energised = energised
                self.states.append((time.monotonic(), energised))

    def close(self) -> None:
        """Release the fake line; a released line counts as de-energised (the pull resistor's job)."""
        with self._mutex:
            self._closed = True


class FakeInput:
    """An in-memory input line that tests and the simulated lock drive with ``drive(level)``."""

    def __init__(self, level: bool = False) -> None:
        self._level = level
        self._callback: Callable[[], None] | None = None

    def read(self) -> bool:
        """The level last driven."""
        return self._level

    def set_edge_callback(self, callback: Callable[[], None] | None) -> None:
        """Install the edge callback (called synchronously from ``drive``)."""
        self._callback = callback

    def drive(self, level: bool) -> None:
        """Change the level; an actual change fires the edge callback, as a real pin would."""
        if level != self._level:
            self._level = level
            if self._callback is not None:
                self._callback()

    def close(self) -> None:
        """Stop reporting edges."""
        self._callback = None
