"""SimulatedLock: the real drivers over FakeRelays, with the history the demo prints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hardware import (
    ActuatorConfig,
    DoorChanged,
    DoorOpenError,
    DoorState,
    LockChanged,
    LockState,
    NotConfiguredError,
    OutputChanged,
    SimulatedLock,
    actuate_test,
    build_lock,
)

from .hwkit import wait_until

Make = Callable[..., SimulatedLock]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    built: list[SimulatedLock] = []

    def factory(config: ActuatorConfig | None = None, **kwargs: Any) -> SimulatedLock:
        sim = SimulatedLock(config, **kwargs)
        built.append(sim)
        return sim

    yield factory
    for sim in built:
        await sim.aclose()


def outputs(sim: SimulatedLock) -> list[tuple[str, bool]]:
    return [(name, energised) for _, name, energised in sim.output_history()]


async def test_default_is_a_simulated_two_line_car_with_door_and_start(make: Make) -> None:
    sim = build_lock(ActuatorConfig())
    assert isinstance(sim, SimulatedLock)
    try:
        assert sim.status().lock is LockState.UNKNOWN
        assert sim.status().door is DoorState.CLOSED
        await sim.unlock()
        await sim.lock()
        await sim.start_enable()
        assert outputs(sim) == [("unlock", True), ("unlock", False), ("lock", True), ("lock", False), ("start", True)]
    finally:
        await sim.aclose()
    assert outputs(sim)[-1] == ("start", False)  # closing de-energised it


async def test_history_has_timestamps_and_lock_changes_in_order(make: Make) -> None:
    seen: list[Any] = []
    sim = make(ActuatorConfig(pulse_ms=30), on_change=seen.append)
    await sim.unlock()
    history = sim.history
    assert seen == history
    assert [type(e) for e in history] == [OutputChanged, OutputChanged, LockChanged]
    assert [e.at for e in history] == sorted(e.at for e in history)
    (t_on, _, _), (t_off, _, _) = sim.output_history()
    assert t_off - t_on >= 0.03 - 0.005  # the same pulse length as the real driver
    sim.clear_history()
    assert sim.history == []


async def test_sim_pulse_overlaps_like_the_real_one(make: Make) -> None:
    sim = make(ActuatorConfig(simulate="pulse", pulse_ms=50))
    await asyncio.gather(sim.unlock(), sim.unlock())
    assert outputs(sim) == [("unlock", True), ("unlock", False)]
    assert sim.relays["unlock"].states[-1][1] is False


async def test_sim_relock_timing(make: Make) -> None:
    sim = make(ActuatorConfig(simulate="latched", relock_after_s=0.05))
    assert (await sim.unlock()).lock is LockState.UNLOCKED
    await wait_until(lambda: any(isinstance(e, LockChanged) and e.lock is LockState.LOCKED for e in sim.history))
    assert [e.lock for e in sim.history if isinstance(e, LockChanged)] == [LockState.UNLOCKED, LockState.LOCKED]


async def test_sim_door_refusal(make: Make) -> None:
    sim = make(ActuatorConfig(refuse_lock_when_open=True, debounce_ms=0))
    sim.set_door(DoorState.OPEN)
    with pytest.raises(DoorOpenError):
        await sim.lock()
    assert outputs(sim) == []
    sim.set_door(DoorState.CLOSED)
    await sim.lock()
    assert [e.door for e in sim.history if isinstance(e, DoorChanged)] == [DoorState.OPEN, DoorState.CLOSED]


async def test_sim_door_is_debounced_like_the_real_one(make: Make) -> None:
    sim = make(ActuatorConfig(debounce_ms=50))
    sim.set_door(DoorState.OPEN)
    assert sim.status().door is DoorState.CLOSED
    await wait_until(lambda: sim.status().door is DoorState.OPEN)


async def test_sim_without_optional_outputs(make: Make) -> None:
    sim = make(start_output=False, door_sensor=False)
    with pytest.raises(NotConfiguredError):
        await sim.start_enable()
    assert sim.status().door is DoorState.UNKNOWN
    with pytest.raises(ValueError, match="no door sensor"):
        sim.set_door(DoorState.OPEN)


async def test_a_real_config_can_be_dry_run(make: Make) -> None:
    real = ActuatorConfig(kind="pulse", unlock_pin=17, pulse_ms=20, door_pin=5)
    sim = make(real)
    assert set(sim.relays) == {"unlock"}  # as wired: no start pin
    assert sim.status().door is DoorState.CLOSED
    await sim.unlock()
    assert outputs(sim) == [("unlock", True), ("unlock", False)]


@pytest.mark.parametrize(
    ("simulate", "expected"),
    [
        ("pulse", [("unlock", True), ("unlock", False)]),
        ("two-line", [("unlock", True), ("unlock", False), ("lock", True), ("lock", False)]),
        ("latched", [("unlock", True), ("unlock", False)]),
    ],
)
async def test_actuate_test_is_one_cycle_ending_locked(make: Make, simulate: Any, expected: list[Any]) -> None:
    sim = make(ActuatorConfig(simulate=simulate, pulse_ms=20))
    status = await actuate_test(sim, hold_s=0.01)
    assert outputs(sim) == expected
    assert status.lock is LockState.LOCKED


async def test_actuate_test_reports_a_refused_relock(make: Make) -> None:
    sim = make(ActuatorConfig(pulse_ms=20, refuse_lock_when_open=True, debounce_ms=0))
    sim.set_door(DoorState.OPEN)
    with pytest.raises(DoorOpenError):
        await actuate_test(sim, hold_s=0.01)
    assert sim.status().lock is LockState.UNLOCKED  # said so by the error: left unlocked
