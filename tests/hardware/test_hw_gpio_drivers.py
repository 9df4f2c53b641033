"""The gpiozero drivers on MockFactory pins: exact pin histories for every command and failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

import hardware
from hardware import (
    ActuatorConfig,
    ActuatorFault,
    DoorOpenError,
    DoorState,
    HardwareUnavailableError,
    LockChanged,
    LockClosedError,
    LockState,
    NotConfiguredError,
    OutputChanged,
    build_lock,
)
from hardware._drivers import RelayLock, TwoLineLock

from .hwkit import changes, states, wait_until

UNLOCK, LOCK, START, DOOR = 17, 27, 22, 5
G_UNLOCK, G_LOCK = f"GPIO{UNLOCK}", f"GPIO{LOCK}"

Build = Callable[..., Any]


@pytest.fixture
async def build(factory: MockFactory) -> AsyncIterator[Build]:
    """Build GPIO locks on the mock factory; every one is closed after the test."""
    built: list[RelayLock] = []

    def make(on_change: Any = None, **options: Any) -> Any:
        lock = build_lock(ActuatorConfig(**options), pin_factory=factory, on_change=on_change)
        assert isinstance(lock, RelayLock)
        built.append(lock)
        return lock

    yield make
    for lock in built:
        await lock.aclose()


def pulse(**extra: Any) -> dict[str, Any]:
    return {"kind": "pulse", "unlock_pin": UNLOCK, "pulse_ms": 30, **extra}


def two_line(**extra: Any) -> dict[str, Any]:
    return {"kind": "two-line", "unlock_pin": UNLOCK, "lock_pin": LOCK, "pulse_ms": 30, **extra}


def latched(**extra: Any) -> dict[str, Any]:
    return {"kind": "latched", "unlock_pin": UNLOCK, **extra}


def pin_is_on(factory: MockFactory, pin: int, active_high: bool = True) -> Callable[[], bool]:
    return lambda: factory.pin(pin).state == active_high


def block_event_loop_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Deliberately block the calling thread (the event loop) while polling; True if ``predicate`` held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


# -- each driver: unlock and lock ------------------------------------------------------------------------


async def test_pulse_unlock_is_one_pulse_and_relatches(build: Build, factory: MockFactory) -> None:
    lock = build(**pulse())
    assert lock.status().lock is LockState.LOCKED
    status = await lock.unlock()
    assert states(factory, UNLOCK) == [False, True, False]
    assert status.lock is LockState.LOCKED  # a strike relatches: success is "did not raise"
    assert (await lock.lock()).lock is LockState.LOCKED
    assert states(factory, UNLOCK) == [False, True, False]  # lock() had nothing to drive


async def test_pulse_toggle_device_reports_unknown(build: Build) -> None:
    lock = build(**pulse(pulse_relatches=False))
    assert (await lock.unlock()).lock is LockState.UNKNOWN


async def test_pulse_lock_ends_a_pulse_early(build: Build, factory: MockFactory) -> None:
    lock = build(**pulse(pulse_ms=300))
    task = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    assert lock.status().lock is LockState.UNLOCKED
    await lock.lock()
    assert factory.pin(UNLOCK).state is False  # at once, not at the end of the 300 ms
    await task
    assert states(factory, UNLOCK) == [False, True, False]


async def test_two_line_unlock_then_lock_pulses_each_line(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line())
    assert lock.status().lock is LockState.UNKNOWN  # the car's state is not known before a command
    assert (await lock.unlock()).lock is LockState.UNLOCKED
    assert (await lock.lock()).lock is LockState.LOCKED
    assert states(factory, UNLOCK) == [False, True, False]
    assert states(factory, LOCK) == [False, True, False]
    assert changes(factory) == [(G_UNLOCK, True), (G_UNLOCK, False), (G_LOCK, True), (G_LOCK, False)]


async def test_latched_holds_while_unlocked(build: Build, factory: MockFactory) -> None:
    lock = build(**latched())
    assert (await lock.unlock()).lock is LockState.UNLOCKED
    assert states(factory, UNLOCK) == [False, True]
    assert (await lock.lock()).lock is LockState.LOCKED
    assert states(factory, UNLOCK) == [False, True, False]


async def test_latched_relocks_after_the_configured_time(build: Build, factory: MockFactory) -> None:
    events: list[Any] = []
    lock = build(events.append, **latched(relock_after_s=0.05))
    await lock.unlock()
    # the timer thread switches off, then tells on_change: wait for the last event, not the pin
    await wait_until(lambda: any(isinstance(e, LockChanged) and e.lock is LockState.LOCKED for e in events))
    assert lock.status().lock is LockState.LOCKED
    assert states(factory, UNLOCK) == [False, True, False]
    assert [e.lock for e in events if isinstance(e, LockChanged)] == [LockState.UNLOCKED, LockState.LOCKED]
    assert lock.outputs["unlock"].capped_expiries == 0  # the relock, not the cap, ended it


async def test_two_line_auto_relock_pulses_the_lock_line(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(relock_after_s=0.05))
    await lock.unlock()
    await wait_until(lambda: lock.status().lock is LockState.LOCKED)
    assert changes(factory) == [(G_UNLOCK, True), (G_UNLOCK, False), (G_LOCK, True), (G_LOCK, False)]


async def test_explicit_lock_cancels_the_pending_relock(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(relock_after_s=0.2))
    await lock.unlock()
    await lock.lock()
    assert isinstance(lock, TwoLineLock)
    await wait_until(lambda: not lock._tasks)  # the relock task is gone: cancelled, not waiting
    assert states(factory, LOCK) == [False, True, False]


# -- active-low boards and the initial state -------------------------------------------------------------


@pytest.mark.parametrize("options", [pulse(), two_line(), latched()], ids=["pulse", "two-line", "latched"])
@pytest.mark.parametrize("active_high", [True, False], ids=["active-high", "active-low"])
async def test_outputs_start_de_energised_and_follow_polarity(
    build: Build, factory: MockFactory, options: dict[str, Any], active_high: bool
) -> None:
    lock = build(**options, active_high=active_high, start_pin=START)
    for pin in (UNLOCK, START) + ((LOCK,) if options["kind"] == "two-line" else ()):
        assert factory.pin(pin).function == "output"
        assert factory.pin(pin).state == (not active_high)  # de-energised from the moment it is claimed
    factory.changes.clear()
    await lock.unlock()
    if options["kind"] == "latched":
        await lock.lock()
    assert changes(factory) == [(G_UNLOCK, active_high), (G_UNLOCK, not active_high)]


async def test_active_low_pin_history_is_inverted(build: Build, factory: MockFactory) -> None:
    lock = build(**pulse(active_high=False))
    await lock.unlock()
    # floating before it is claimed, driven HIGH (off) on claim, LOW (on) for the pulse, HIGH again
    assert states(factory, UNLOCK) == [False, True, False, True]


# -- cancellation and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [pulse(), two_line()], ids=["pulse", "two-line"])
async def test_cancelled_pulse_de_energises_at_once(
    build: Build, factory: MockFactory, options: dict[str, Any]
) -> None:
    lock = build(**{**options, "pulse_ms": 3000, "max_on_ms": 5000})
    task = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert states(factory, UNLOCK) == [False, True, False]
    on_time = factory.pin(UNLOCK).states[-1].timestamp
    assert on_time < 2.5  # ended by the cancellation, long before the 3 s pulse would have
    expected = LockState.UNKNOWN if options["kind"] == "two-line" else LockState.LOCKED
    assert lock.status().lock is expected  # two-line: the car may or may not have seen the edge


@pytest.mark.parametrize("options", [pulse(), two_line()], ids=["pulse", "two-line"])
async def test_exception_mid_pulse_de_energises_and_says_it_may_have_acted(
    build: Build, factory: MockFactory, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    lock = build(**options)

    async def failing_sleep(delay: float) -> None:
        await asyncio.sleep(0.01)
        raise OSError("simulated failure mid-pulse")

    monkeypatch.setattr("hardware._drivers._sleep", failing_sleep)
    with pytest.raises(ActuatorFault) as caught:
        await lock.unlock()
    assert caught.value.may_have_acted
    assert isinstance(caught.value.__cause__, OSError)
    assert states(factory, UNLOCK) == [False, True, False]
    monkeypatch.undo()
    await lock.unlock()  # the driver is still usable
    assert states(factory, UNLOCK) == [False, True, False, True, False]


class FlakyPin(MockPin):  # type: ignore[misc]  # gpiozero ships no type hints
    """A MockPin whose writes of the energised level fail while ``fail`` is set."""

    fail = False

    def _set_state(self, value: bool) -> None:
        if self.fail and value:
            raise OSError("simulated GPIO write failure")
        super()._set_state(value)


async def test_failed_gpio_write_leaves_the_line_off(build: Build, factory: MockFactory) -> None:
    pin = factory.pin(UNLOCK, pin_class=FlakyPin)
    lock = build(**pulse())
    pin.fail = True
    with pytest.raises(ActuatorFault) as caught:
        await lock.unlock()
    assert caught.value.output == "unlock"
    assert states(factory, UNLOCK) == [False]
    assert not lock.outputs["unlock"].energised and lock.outputs["unlock"].deadline is None
    pin.fail = False
    await lock.unlock()
    assert states(factory, UNLOCK) == [False, True, False]


# -- overlapping commands --------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [pulse(), two_line()], ids=["pulse", "two-line"])
async def test_overlapping_unlocks_share_one_pulse(build: Build, factory: MockFactory, options: dict[str, Any]) -> None:
    lock = build(**{**options, "pulse_ms": 100})
    results = await asyncio.gather(lock.unlock(), lock.unlock(), lock.unlock())
    assert states(factory, UNLOCK) == [False, True, False]  # one pulse, not three, and not a longer one
    assert len({r.lock for r in results}) == 1


async def test_overlapping_unlocks_schedule_one_relock(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(relock_after_s=0.05))
    await asyncio.gather(lock.unlock(), lock.unlock())
    assert len([t for t in lock._tasks if not t.cancelling()]) == 1
    await wait_until(lambda: not lock._tasks)
    assert states(factory, LOCK) == [False, True, False]


async def test_lock_during_an_unlock_pulse_waits_and_never_overlaps(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(pulse_ms=100))
    unlocking = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    final = await lock.lock()
    await unlocking
    assert changes(factory) == [(G_UNLOCK, True), (G_UNLOCK, False), (G_LOCK, True), (G_LOCK, False)]
    assert final.lock is LockState.LOCKED


async def test_joiner_of_a_cancelled_pulse_is_told_it_may_have_acted(build: Build, factory: MockFactory) -> None:
    lock = build(**pulse(pulse_ms=1000))
    owner = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    joiner = asyncio.create_task(lock.unlock())
    await asyncio.sleep(0)
    owner.cancel()
    with pytest.raises(ActuatorFault) as caught:
        await joiner
    assert caught.value.may_have_acted
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert states(factory, UNLOCK) == [False, True, False]


# -- the hard maximum on-time ----------------------------------------------------------------------------


async def test_repeated_unlocks_cannot_hold_a_latched_relay_past_max_on(build: Build, factory: MockFactory) -> None:
    # Each unlock asks for another 0.4 s; the cap allows 0.4 s from the moment the relay went on.
    lock = build(**latched(relock_after_s=0.4, max_on_ms=400))
    await lock.unlock()
    await lock.unlock()  # at once: this request is trimmed by the cap
    give_up = time.monotonic() + 10
    while factory.pin(UNLOCK).state:  # a caller (or a bug) that keeps asking, every 20 ms
        await lock.unlock()
        await asyncio.sleep(0.02)
        assert time.monotonic() < give_up, "never de-energised"
    # The first energising ended at the cap (a later unlock may legitimately start a new one).
    assert states(factory, UNLOCK)[:3] == [False, True, False]
    on_time = factory.pin(UNLOCK).states[2].timestamp
    assert 0.39 <= on_time < 0.4 + 2.0  # generous upper bound for a loaded machine
    assert lock.outputs["unlock"].capped_expiries >= 1
    await lock.lock()


async def test_a_stuck_event_loop_cannot_extend_a_pulse(build: Build, factory: MockFactory) -> None:
    lock = build(**pulse(pulse_ms=50))
    task = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    # The loop is now blocked: only the Output's timer thread can end the pulse.
    assert block_event_loop_until(lambda: not factory.pin(UNLOCK).state)
    await task
    assert states(factory, UNLOCK) == [False, True, False]


async def test_a_stuck_event_loop_cannot_hold_a_latched_relay(build: Build, factory: MockFactory) -> None:
    lock = build(**latched(relock_after_s=0.05))
    await lock.unlock()
    assert block_event_loop_until(lambda: lock.status().lock is LockState.LOCKED)
    assert states(factory, UNLOCK) == [False, True, False]


def test_a_pulse_longer_than_max_on_is_refused_before_any_pin_is_touched(factory: MockFactory) -> None:
    with pytest.raises(hardware.ActuatorConfigError, match="max_on_ms"):
        ActuatorConfig(**pulse(pulse_ms=3000))  # default cap 2000 ms
    assert UNLOCK not in {p.number for p in factory.pins}


# -- door sensor, start-enable ---------------------------------------------------------------------------


async def test_lock_refused_while_door_open(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(door_pin=DOOR, debounce_ms=0, refuse_lock_when_open=True))
    door = factory.pin(DOOR)
    assert lock.status().door is DoorState.OPEN  # pulled up, reed switch open: no magnet
    with pytest.raises(DoorOpenError) as caught:
        await lock.lock()
    assert not caught.value.may_have_acted
    assert states(factory, LOCK) == [False]
    door.drive_low()  # magnet at the switch: door closed
    assert (await lock.lock()).door is DoorState.CLOSED
    assert states(factory, LOCK) == [False, True, False]


async def test_door_open_does_not_block_lock_unless_configured(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(door_pin=DOOR, debounce_ms=0))
    assert (await lock.lock()).door is DoorState.OPEN
    assert states(factory, LOCK) == [False, True, False]


async def test_auto_relock_is_skipped_while_the_door_is_open(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(door_pin=DOOR, debounce_ms=0, refuse_lock_when_open=True, relock_after_s=0.05))
    await lock.unlock()
    await wait_until(lambda: not lock._tasks)
    assert states(factory, LOCK) == [False]
    assert lock.status().lock is LockState.UNLOCKED


async def test_door_changes_are_reported(build: Build, factory: MockFactory) -> None:
    events: list[Any] = []
    lock = build(events.append, **latched(door_pin=DOOR, debounce_ms=0))
    factory.pin(DOOR).drive_low()
    factory.pin(DOOR).drive_high()
    assert [e.door for e in events if isinstance(e, hardware.DoorChanged)] == [DoorState.CLOSED, DoorState.OPEN]
    assert lock.status().door is DoorState.OPEN


async def test_start_enable_window_ends_by_itself(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(start_pin=START, start_on_s=0.05))
    assert (await lock.start_enable()).start_enabled
    await wait_until(lambda: not lock.status().start_enabled)
    assert states(factory, START) == [False, True, False]


async def test_start_enable_repeat_does_not_extend(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(start_pin=START, start_on_s=0.3))
    await lock.start_enable()
    deadline = lock.outputs["start"].deadline
    await lock.start_enable()
    assert lock.outputs["start"].deadline == deadline
    assert states(factory, START) == [False, True]


async def test_start_enable_without_a_start_pin(build: Build) -> None:
    lock = build(**pulse())
    with pytest.raises(NotConfiguredError):
        await lock.start_enable()


# -- closing ---------------------------------------------------------------------------------------------


async def test_aclose_mid_pulse_de_energises_and_releases_the_pins(build: Build, factory: MockFactory) -> None:
    lock = build(**two_line(pulse_ms=1000, start_pin=START))
    await lock.start_enable()
    task = asyncio.create_task(lock.unlock())
    await wait_until(pin_is_on(factory, UNLOCK))
    await lock.aclose()
    assert not factory.pin(UNLOCK).state and not factory.pin(START).state
    await asyncio.gather(task, return_exceptions=True)
    await lock.aclose()  # idempotent
    with pytest.raises(LockClosedError):
        await lock.unlock()
    again = build(**two_line(start_pin=START))  # the pins were released
    await again.unlock()


async def test_shutdown_is_synchronous_and_final(build: Build, factory: MockFactory) -> None:
    lock = build(**latched())
    await lock.unlock()
    lock.shutdown()
    assert states(factory, UNLOCK) == [False, True, False]
    with pytest.raises(LockClosedError):
        await lock.unlock()


async def test_a_failed_build_releases_the_pins_it_claimed(build: Build) -> None:
    with pytest.raises(HardwareUnavailableError):
        build(**two_line(lock_pin=99))  # no GPIO99 on the board
    build(**two_line())  # GPIO17 was released


async def test_pins_in_use_are_reported(build: Build) -> None:
    build(**pulse())
    with pytest.raises(HardwareUnavailableError, match="in use"):
        build(**pulse())


async def test_events_reach_on_change_in_order(build: Build) -> None:
    events: list[Any] = []
    lock = build(events.append, **two_line())
    await lock.unlock()
    assert [(type(e).__name__, getattr(e, "output", None)) for e in events] == [
        ("OutputChanged", "unlock"),
        ("OutputChanged", "unlock"),
        ("LockChanged", None),
    ]
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert isinstance(events[0], OutputChanged) and events[0].energised
