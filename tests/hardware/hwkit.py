"""Helpers for the hardware tests: a cross-pin change log for MockFactory, manual timers, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin


class RecordingPin(MockPin):  # type: ignore[misc]  # gpiozero ships no type hints
    """A MockPin that also appends ``(monotonic, pin_name, state)`` to its factory's ``changes`` log.

    MockPin.states are per pin with relative timestamps; the shared log gives the order across pins
    (lock line off before unlock line on, and so on).
    """

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed:
            self.factory.changes.append((time.monotonic(), self.info.name, bool(value)))
        return changed


def states(factory: MockFactory, pin: int) -> list[bool]:
    """The pin's level history (the first entry is its level before gpiozero claimed it)."""
    return [bool(s.state) for s in factory.pin(pin).states]


def changes(factory: MockFactory) -> list[tuple[str, bool]]:
    """Every level change across all pins, in order, as (pin name, level)."""
    return [(name, state) for _, name, state in factory.changes]


class ManualTimer:
    """A timer that fires only when the test says so."""

    def __init__(self, delay_s: float, callback: Callable[[], None], owner: ManualTimers) -> None:
        self.delay_s = delay_s
        self.callback = callback
        self.owner = owner
        self.cancelled = False

    def start(self) -> None:
        self.owner.pending.append(self)

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """A timer factory for DoorSensor; ``fire()`` runs every live timer."""

    def __init__(self) -> None:
        self.pending: list[ManualTimer] = []
        self.created = 0

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> Any:
        self.created += 1
        return ManualTimer(delay_s, callback, self)

    def live(self) -> list[ManualTimer]:
        return [t for t in self.pending if not t.cancelled]

    def fire(self) -> None:
        timers, self.pending = self.pending, []
        for timer in timers:
            if not timer.cancelled:
                timer.callback()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll until ``predicate()``; the generous timeout only bounds a hang, it is never the assertion."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
