"""Passive entry: unlock when the vehicle's signal stays strong, lock when it stays weak or is gone.

WEAKER AGAINST RELAY ATTACKS than pressing `unlock`: a relay (two radios forwarding the link between the
car and your pocket) makes the car look close while you are far away, and the device then unlocks on its
own. The protocol's short challenge lifetime limits how slow a relay may be, but it is no distance bound;
that is why `key-client auto` needs an explicit opt-in (docs/CLIENT.md).

ProximityPolicy is the pure decision (scripted RSSI traces test it); ProximityRunner feeds it from a
central: it polls scan() on sim/mock and listens to advertisements with watch() on ble.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from dkey_link.contract import SERVICE_UUID, Advertisement, Central

log = logging.getLogger("key_client.proximity")


class Action(enum.Enum):
    """What the policy asks the runner to do."""

    UNLOCK = "unlock"
    LOCK = "lock"


@dataclass
class ProximityPolicy:
    """Hysteresis on RSSI: unlock after >= unlock_rssi for dwell_s; lock after < lock_rssi (or lost) for lost_s.

    Readings in the band between the two thresholds keep the current state and restart the pending timer,
    so a signal hovering at either threshold never makes the policy flap.
    """

    unlock_rssi: int = -60
    lock_rssi: int = -75
    dwell_s: float = 2.0
    lost_s: float = 5.0
    near: bool = False  # True once we unlocked (or may have): the next action can only be LOCK
    _since: float | None = field(default=None, init=False, repr=False)  # start of the current qualifying streak

    def __post_init__(self) -> None:
        # Without a gap between the thresholds there is no hysteresis band and noise would flap the lock.
        if self.lock_rssi >= self.unlock_rssi:
            raise ValueError("the lock threshold must be below the unlock threshold (e.g. -75 < -60 dBm)")
        if self.dwell_s < 0 or self.lost_s <= 0:
            raise ValueError("dwell must be >= 0 s and lost > 0 s")

    def observe(self, rssi: int | None, now: float) -> Action | None:
        """Feed one reading (None = vehicle not seen) at monotonic time `now`; returns an action to take, if any."""
        if not self.near:
            qualifies = rssi is not None and rssi >= self.unlock_rssi
            hold, action = self.dwell_s, Action.UNLOCK
        else:
            qualifies = rssi is None or rssi < self.lock_rssi
            hold, action = self.lost_s, Action.LOCK
        if not qualifies:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        if now - self._since < hold:
            return None
        self.near = action is Action.UNLOCK
        self._since = None
        return action

    def failed(self, action: Action) -> None:
        """`action` was NOT delivered: return to the state before it, so a full dwell/lost period re-triggers it."""
        self.near = action is Action.LOCK
        self._since = None


# What the runner calls to act: True if the vehicle acted or may have (never retry), False if the command
# was provably not delivered (retry after the next full dwell/lost period). Raising stops the runner.
Actor = Callable[[Action], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Observation:
    """One tick of the runner: the reading fed to the policy and the action it produced."""

    rssi: int | None
    now: float
    action: Action | None


class ProximityRunner:
    """Feeds a policy from a central's advertisements and performs its actions, until `stop` is set."""

    def __init__(
        self,
        central: Central,
        policy: ProximityPolicy,
        act: Actor,
        *,
        match: Callable[[Advertisement], bool],
        interval: float = 1.0,
        scan_window: float = 1.0,
        stale_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        on_observation: Callable[[Observation], None] | None = None,
    ) -> None:
        self.central = central
        self.policy = policy
        self.act = act
        self.match = match
        self.interval = interval
        self.scan_window = scan_window
        # BLE advertisements arrive irregularly (every 100 ms to 1 s, some lost): a reading counts as
        # "seen" for this long, so one missed advertisement does not start the lock timer.
        self.stale_s = stale_s
        self.clock = clock
        self.on_observation = on_observation
        self._latest: tuple[int, float] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Watch (ble) or poll (sim/mock) until `stop` is set; an exception from `act` ends the run."""
        if callable(getattr(self.central, "watch", None)):
            await self._run_watching(stop)
        else:
            await self._run_polling(stop)

    async def _step(self, rssi: int | None, before_act: Callable[[], Awaitable[None]] | None = None) -> None:
        now = self.clock()
        action = self.policy.observe(rssi, now)
        if self.on_observation is not None:
            self.on_observation(Observation(rssi, now, action))
        if action is None:
            return
        log.info("proximity: %s (RSSI %s)", action.value, rssi)
        if before_act is not None:
            await before_act()
        if not await self.act(action):
            self.policy.failed(action)

    async def _run_polling(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = await self.central.scan(self.scan_window)
            ours = [a.rssi for a in found if self.match(a)]
            await self._step(max(ours) if ours else None)
            await _wait(stop, self.interval)

    def _on_adv(self, adv: Advertisement) -> None:
        if self.match(adv):
            self._latest = (adv.rssi, self.clock())

    async def _run_watching(self, stop: asyncio.Event) -> None:
        watch: Callable[[str, Callable[[Advertisement], None]], Coroutine[Any, Any, None]] = (
            self.central.watch)  # type: ignore[attr-defined]
        task: asyncio.Task[None] | None = None

        async def pause() -> None:
            # BlueZ copes badly with scanning while connecting: stop watching for the exchange.
            nonlocal task
            if task is not None:
                await _cancel(task)
                task = None

        try:
            while not stop.is_set():
                if task is not None and task.done():
                    task.result()  # a dead scanner (adapter gone) must end the run loudly, not read as "lost"
                    task = None
                if task is None:
                    task = asyncio.create_task(watch(SERVICE_UUID, self._on_adv))
                latest = self._latest
                fresh = latest is not None and self.clock() - latest[1] <= self.stale_s
                await self._step(latest[0] if fresh and latest is not None else None, pause)
                await _wait(stop, self.interval)
        finally:
            await pause()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` gets set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):  # not wait_for: it can drop a cancel on Python 3.11
            await stop.wait()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["Action", "Actor", "Observation", "ProximityPolicy", "ProximityRunner"]
