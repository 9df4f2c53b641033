"""Passive entry: the hysteresis policy on scripted RSSI traces, its runner, and `key-client auto` end to end."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkey_link.contract import SERVICE_UUID, Advertisement
from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.proximity import Action, Observation, ProximityPolicy, ProximityRunner
from key_client.radios import mock_air

from ..key_server.harness import Harness
from . import Cli

U, L = Action.UNLOCK, Action.LOCK


def replay(trace: list[int | None], policy: ProximityPolicy | None = None, step: float = 0.5) -> list[Action | None]:
    """Feed one reading every `step` seconds; the actions, one per reading."""
    p = policy or ProximityPolicy()
    return [p.observe(rssi, i * step) for i, rssi in enumerate(trace)]


def actions(trace: list[int | None], **kw: float) -> list[tuple[int, Action]]:
    return [(i, a) for i, a in enumerate(replay(trace, **kw)) if a is not None]  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the policy


def test_unlocks_after_the_signal_stays_strong_for_the_dwell_time() -> None:
    # 0.5 s per reading, dwell 2 s: the 5th strong reading in a row (t = 2.0 s after the first) unlocks.
    assert actions([-80, -55, -55, -55, -55, -55, -55]) == [(5, U)]


def test_locks_after_the_signal_is_lost_for_the_lost_time() -> None:
    trace: list[int | None] = [-50] * 5 + [None] * 12
    assert actions(trace) == [(4, U), (15, L)]  # lost from t = 2.5 s (reading 5), lock at 7.5 s (reading 15)


def test_weak_signal_locks_like_a_lost_one() -> None:
    assert actions([-50] * 5 + [-90] * 12) == [(4, U), (15, L)]


def test_never_flaps_around_the_unlock_threshold() -> None:
    hover = [-59, -61] * 40  # one dB either side of -60, for 40 s
    assert actions(hover) == []


def test_never_flaps_around_the_lock_threshold() -> None:
    hover: list[int | None] = [-50] * 5 + [-74, -76] * 40
    assert actions(hover) == [(4, U)]  # once unlocked, dipping below -75 now and then never locks


def test_band_between_thresholds_keeps_the_state() -> None:
    assert actions([-70] * 40) == []  # approaching but not close: nothing
    assert actions([-50] * 5 + [-70] * 40) == [(4, U)]  # stepped back a little: still unlocked


def test_one_missed_advertisement_does_not_lock_or_reset_far_away() -> None:
    trace: list[int | None] = [-50] * 5 + [None, -50] * 20
    assert actions(trace) == [(4, U)]


def test_a_gap_restarts_the_dwell() -> None:
    trace: list[int | None] = [-50, -50, -50, None, -50, -50, -50, -50, -50]
    assert actions(trace) == [(8, U)]


def test_failed_unlock_needs_a_full_dwell_again() -> None:
    p = ProximityPolicy(dwell_s=1.0)
    assert replay([-50, -50, -50], p) == [None, None, U]
    p.failed(U)
    assert not p.near
    assert replay([-50, -50, -50], p) == [None, None, U]


def test_failed_lock_retries_after_another_lost_period() -> None:
    p = ProximityPolicy(dwell_s=0.0, lost_s=1.0)
    assert p.observe(-50, 0.0) is U
    assert [p.observe(None, t) for t in (1.0, 2.0)] == [None, L]
    p.failed(L)
    assert p.near
    assert [p.observe(None, t) for t in (3.0, 4.0)] == [None, L]


@pytest.mark.parametrize("kw", [{"unlock_rssi": -70, "lock_rssi": -70}, {"unlock_rssi": -80, "lock_rssi": -70},
                                {"dwell_s": -1.0}, {"lost_s": 0.0}])
def test_rejects_settings_without_hysteresis(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ProximityPolicy(**kw)  # type: ignore[arg-type]


@given(st.lists(st.one_of(st.none(), st.integers(-100, -30)), max_size=200))
def test_actions_alternate_and_each_one_is_earned(trace: list[int | None]) -> None:
    p = ProximityPolicy(dwell_s=1.0, lost_s=2.0)
    last: Action | None = None
    for i, action in enumerate(replay(trace, p)):
        if action is None:
            continue
        assert action is not last, "two unlocks (or locks) in a row"
        last = action
        if action is U:  # the last 3 readings (1 s at 0.5 s per reading) were all strong
            assert all(r is not None and r >= -60 for r in trace[i - 2 : i + 1]) and i >= 2
        else:
            assert all(r is None or r < -75 for r in trace[i - 4 : i + 1]) and i >= 4


# ---------------------------------------------------------------------- the runner


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


class _Idle:
    """A peripheral handler that does nothing: these tests only look at advertisements."""

    def on_connect(self, link: str, mtu: int) -> None: ...
    def on_subscribe(self, link: str | None) -> None: ...
    def on_write(self, link: str, data: bytes) -> None: ...
    def on_disconnect(self, link: str) -> None: ...


async def run_trace(trace: list[int], act_result: bool = True) -> tuple[list[Observation], list[Action]]:
    """Poll a mock central over a scripted RSSI trace, one reading per 0.5 fake seconds."""
    air = MockAir()
    car = air.peripheral("car", rssi_trace=trace)
    air.peripheral("neighbour", rssi=-30)  # stronger, but not ours: must be ignored
    for p in air._peripherals:
        await p.start(_Idle())
    clock, stop = FakeClock(0.5), asyncio.Event()
    seen: list[Observation] = []
    done: list[Action] = []

    async def act(action: Action) -> bool:
        done.append(action)
        return act_result

    def observed(obs: Observation) -> None:
        seen.append(obs)
        clock.tick()
        if len(seen) == len(trace):
            stop.set()

    runner = ProximityRunner(air.central(), ProximityPolicy(), act, match=lambda a: a.address == car.address,
                             interval=0.0, clock=clock, on_observation=observed)
    await asyncio.wait_for(runner.run(stop), 10)
    return seen, done


async def test_runner_follows_a_scripted_trace_over_the_mock_radio() -> None:
    trace = [-80] * 2 + [-59, -61] * 6 + [-50] * 6 + [-74, -76] * 6 + [-90] * 12
    seen, done = await run_trace(trace)
    assert [o.rssi for o in seen] == trace
    assert done == [U, L]  # no flapping at either threshold
    assert [i for i, o in enumerate(seen) if o.action] == [18, 41]


async def test_runner_retries_an_undelivered_unlock_after_a_new_dwell() -> None:
    _, done = await run_trace([-50] * 12, act_result=False)
    assert done == [U, U]  # at t = 2 s and, after a full new dwell, at t = 4.5 s


class WatchingCentral:
    """A central with watch() like BleakCentral; the test pushes advertisements through the runner's callback."""

    def __init__(self) -> None:
        self.watching = 0

    async def watch(self, service_uuid: str, on_adv) -> None:
        assert service_uuid == SERVICE_UUID
        self.watching += 1
        await asyncio.Event().wait()  # scans until cancelled

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: object = None) -> list[Advertisement]:
        raise AssertionError("a central that can watch is not polled")

    async def connect(self, adv, timeout: float = 10.0):
        raise AssertionError("the runner never connects by itself")

    async def aclose(self) -> None: ...


async def test_runner_uses_watch_when_the_central_has_it() -> None:
    clock, stop = FakeClock(0.5), asyncio.Event()
    central = WatchingCentral()
    done: list[Action] = []
    ticks = itertools.count()
    # Readings per tick; None = no advertisement (stale after 3 s, so locking starts 3 s after the last one).
    plan: list[int | None] = [-50] * 6 + [None] * 20

    async def act(action: Action) -> bool:
        done.append(action)
        return True

    def observed(obs: Observation) -> None:
        i = next(ticks)
        clock.tick()
        if i + 1 < len(plan) and plan[i + 1] is not None:
            runner._on_adv(Advertisement("AA", "car", (SERVICE_UUID,), plan[i + 1]))
            runner._on_adv(Advertisement("BB", "other", (SERVICE_UUID,), -20))
        if i + 1 >= len(plan):
            stop.set()

    runner = ProximityRunner(central, ProximityPolicy(), act, match=lambda a: a.address == "AA",  # type: ignore[arg-type]
                             interval=0.0, clock=clock, on_observation=observed)
    runner._on_adv(Advertisement("AA", "car", (SERVICE_UUID,), plan[0]))  # type: ignore[arg-type]
    await asyncio.wait_for(runner.run(stop), 10)
    assert done == [U, L]
    assert central.watching == 3  # scanning paused for each action's exchange, resumed after it


# ---------------------------------------------------------------------- `key-client auto` end to end




@pytest.fixture
async def run(h: Harness, tmp_path, capsys):
    with mock_air(h.air):
        cli = Cli(tmp_path / "kc", capsys)
        assert (await cli("pair", h.new_code(name="laptop"))).code == ExitCode.OK
        yield cli


def lock_events(h: Harness) -> list[str]:
    return [str(e.event) for e in h.audit.read() if str(e.event) in ("unlock", "lock")]


FAST = ["--dwell", "0.2", "--lost", "0.3", "--interval", "0.05"]


async def test_auto_needs_an_explicit_opt_in(run: Cli, h: Harness) -> None:
    r = await run("auto", "--for", "0.1")
    assert r.code == ExitCode.USAGE and "relay" in r.err and "--i-understand-relay-risk" in r.err
    assert lock_events(h) == []


async def test_auto_unlocks_near_and_locks_when_walking_away(run: Cli, h: Harness) -> None:
    h.peripheral.set_rssi(-45)

    async def walk_away() -> None:
        for _ in range(500):  # wait for the unlock, then step out of range
            if lock_events(h) == ["unlock"]:
                break
            await asyncio.sleep(0.02)
        h.peripheral.set_rssi(-90)

    walker = asyncio.create_task(walk_away())
    r = await run("--json", "auto", "--i-understand-relay-risk", *FAST, "--for", "3")
    await walker
    assert r.code == ExitCode.OK, r.err
    assert lock_events(h) == ["unlock", "lock"]
    assert [o["event"] for o in r.json()] == ["unlock", "lock"]
    assert "auto for test-car" in r.err


async def test_auto_opt_in_from_config_and_no_flapping_at_the_threshold(run: Cli, h: Harness) -> None:
    (run.keychain / "config.toml").write_text("[auto]\nrelay_risk_accepted = true\nunlock_rssi = -60\n")
    h.peripheral.set_rssi_trace([-59, -61] * 200)
    r = await run("auto", *FAST, "--for", "1.0")
    assert r.code == ExitCode.OK, r.err
    assert lock_events(h) == []


async def test_auto_stops_when_the_key_is_revoked(run: Cli, h: Harness) -> None:
    (entry_key,) = [k.key_id for k in h.store.list_keys()]
    h.store.revoke_key(entry_key, int(h.wall), force=True)
    h.peripheral.set_rssi(-40)
    r = await run("auto", "--i-understand-relay-risk", *FAST, "--for", "5")
    assert r.code == ExitCode.DENIED and "refused this key" in r.err
