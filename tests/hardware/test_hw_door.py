"""DoorSensor debouncing on a MockFactory pin: a flapping reed switch gives one change, once it settles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from hardware import DoorChanged, DoorState, FakeInput
from hardware._door import DoorSensor
from hardware.gpio import GpioInput

from .hwkit import ManualTimers, wait_until

DOOR = 5


@pytest.fixture
def sensor(factory: MockFactory, timers: ManualTimers) -> Iterator[tuple[DoorSensor, list[DoorChanged]]]:
    """A reed switch to GND on GPIO5 with the pull-up: open door = HIGH; 50 ms debounce on manual timers."""
    events: list[DoorChanged] = []
    door = DoorSensor(
        GpioInput(DOOR, pull="up", pin_factory=factory),
        open_is_high=True,
        debounce_s=0.05,
        listener=events.append,
        timer_factory=timers,
    )
    yield door, events
    door.close()


def test_first_reading_is_believed_at_once(sensor: tuple[DoorSensor, list[DoorChanged]]) -> None:
    door, events = sensor
    assert door.state is DoorState.OPEN  # pulled up, no magnet: open
    assert events == []


def test_flapping_switch_reports_one_change_after_it_settles(
    sensor: tuple[DoorSensor, list[DoorChanged]], factory: MockFactory, timers: ManualTimers
) -> None:
    door, events = sensor
    pin = factory.pin(DOOR)
    for _ in range(5):  # the door closing: the reed switch bounces
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    before = door.state
    assert len(timers.live()) == 1  # every edge restarted the one settle timer
    assert timers.created == 11
    timers.fire()
    assert (before, door.state) == (DoorState.OPEN, DoorState.CLOSED)  # nothing believed while it moved
    assert [e.door for e in events] == [DoorState.CLOSED]


def test_bounce_that_settles_back_reports_nothing(
    sensor: tuple[DoorSensor, list[DoorChanged]], factory: MockFactory, timers: ManualTimers
) -> None:
    door, events = sensor
    pin = factory.pin(DOOR)
    pin.drive_low()
    pin.drive_high()  # a knock on the door: the switch glitched and came back
    timers.fire()
    assert door.state is DoorState.OPEN
    assert events == []


def test_close_stops_the_settle_timer_and_releases_the_pin(
    sensor: tuple[DoorSensor, list[DoorChanged]], factory: MockFactory, timers: ManualTimers
) -> None:
    door, events = sensor
    factory.pin(DOOR).drive_low()
    door.close()
    timers.fire()
    assert events == [] and door.state is DoorState.OPEN
    GpioInput(DOOR, pull="up", pin_factory=factory).close()  # the pin is free again


@pytest.mark.parametrize(
    ("pull", "open_is_high", "expected"),
    [("up", True, DoorState.OPEN), ("down", True, DoorState.CLOSED), ("down", False, DoorState.OPEN)],
)
def test_pull_and_polarity(factory: MockFactory, pull: Any, open_is_high: bool, expected: DoorState) -> None:
    door = DoorSensor(GpioInput(DOOR, pull=pull, pin_factory=factory), open_is_high=open_is_high, debounce_s=0.05)
    assert door.state is expected
    door.close()


def test_floating_input_is_read_raw(factory: MockFactory) -> None:
    door = DoorSensor(GpioInput(DOOR, pull="none", pin_factory=factory), open_is_high=True, debounce_s=0)
    factory.pin(DOOR).drive_high()
    assert door.state is DoorState.OPEN
    door.close()


async def test_flapping_with_real_timers_settles_once(factory: MockFactory) -> None:
    events: list[DoorChanged] = []
    # 200 ms of stability needed; the flapping below takes microseconds, so no change is believed mid-way.
    door = DoorSensor(
        GpioInput(DOOR, pull="up", pin_factory=factory), open_is_high=True, debounce_s=0.2, listener=events.append
    )
    pin = factory.pin(DOOR)
    for _ in range(20):
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    await wait_until(lambda: len(events) == 1)
    assert door.state is DoorState.CLOSED and events[0].door is DoorState.CLOSED
    door.close()


def test_fake_input_drives_the_same_debouncer(timers: ManualTimers) -> None:
    raw = FakeInput(level=False)
    door = DoorSensor(raw, open_is_high=True, debounce_s=0.05, timer_factory=timers)
    raw.drive(True)
    before = door.state
    timers.fire()
    assert (before, door.state) == (DoorState.CLOSED, DoorState.OPEN)
    door.close()
