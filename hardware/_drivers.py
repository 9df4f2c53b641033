"""The relay drivers: pulse, two-line and latched, written against the Relay/BinaryInput seam.

The same classes drive gpiozero pins (``hardware.gpio``) and the fakes of the simulated lock, so the
simulation has exactly the real timing and fail-safe behaviour. Who ends an energising:

- the Output's own watchdog thread, at the deadline (see ``_output.py``): nothing on the event loop can
  delay it;
- the async code, after ``asyncio.sleep`` and in ``finally``: errors and cancellation end a pulse at once;
- ``shutdown()``: the signal handler and the atexit hook (see ``_failsafe.py``).

Overlapping commands: a command arriving while the same line is mid-pulse shares that pulse (so a burst of
unlocks is one pulse, never a longer one); pulses of a two-line relay are serialised, and the other line
is switched off before a line is energised, so lock and unlock are never energised together.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, ClassVar

from protocol import DoorState, LockState

from . import _failsafe
from ._backend import BinaryInput, Relay
from ._config import ActuatorConfig, RelayKind
from ._door import DoorSensor, TimerFactory, thread_timer
from ._errors import ActuatorError, ActuatorFault, DoorOpenError, LockClosedError, NotConfiguredError
from ._output import Output
from ._types import ActuatorEvent, ActuatorStatus, DoorChanged, LockChanged, OutputChanged

_logger = logging.getLogger(__name__)

EventListener = Callable[[ActuatorEvent], None]

# The pulse timer; a module global so tests can make a pulse fail part-way through.
_sleep = asyncio.sleep


class _Outcome(enum.Enum):
    """How a pulse ended, as seen by the commands that shared it."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"  # energised, then ended early by an error or cancellation
    NOT_STARTED = "not started"  # cancelled or failed before the line was energised


class _PulseLine:
    """Pulses one output; a command arriving mid-pulse shares that pulse instead of starting another."""

    def __init__(self, output: Output, pulse_s: float, serial: asyncio.Lock) -> None:
        self._output = output
        self._pulse_s = pulse_s
        self._serial = serial  # shared by every line of one lock: one pulse at a time
        self._pending: asyncio.Future[_Outcome] | None = None

    async def pulse(
        self,
        *,
        before: Callable[[], None] | None = None,
        done: Callable[[_Outcome], None] | None = None,
    ) -> None:
        """Energise for ``pulse_s`` (or join the pulse in progress); de-energise on every way out."""
        if self._pending is not None:
            # shield: a joiner that is cancelled must not cancel the pulse it joined
            outcome = await asyncio.shield(self._pending)
            if outcome is not _Outcome.COMPLETED:
                raise ActuatorFault(
                    f"the {self._output.name} pulse this command joined was {outcome.value}",
                    output=self._output.name,
                    may_have_acted=outcome is _Outcome.INTERRUPTED,
                )
            return
        pending = self._pending = asyncio.get_running_loop().create_future()
        outcome = _Outcome.NOT_STARTED
        try:
            async with self._serial:
                if before is not None:
                    before()
                outcome = _Outcome.INTERRUPTED  # from here the line may be on (a failed write included)
                try:
                    self._output.energise(self._pulse_s)
                except LockClosedError:
                    outcome = _Outcome.NOT_STARTED  # refused before any write
                    raise
                try:
                    await _sleep(self._pulse_s)
                finally:
                    # The Output's watchdog ends the pulse on time even if this never runs (stuck loop);
                    # this ends it at once on cancellation or an error, and is a no-op otherwise.
                    self._output.de_energise()
                outcome = _Outcome.COMPLETED
        finally:
            self._pending = None
            if done is not None:
                done(outcome)
            if not pending.done():
                pending.set_result(outcome)


class RelayLock:
    """Common machinery of the relay drivers: outputs, door sensor, status, events and the fail-safe."""

    kind: ClassVar[RelayKind]
    lines: ClassVar[tuple[str, ...]]  # the lock outputs this kind needs, besides the optional "start"

    def __init__(
        self,
        config: ActuatorConfig,
        relays: Mapping[str, Relay],
        *,
        door: BinaryInput | None = None,
        on_change: EventListener | None = None,
        door_timer_factory: TimerFactory = thread_timer,
    ) -> None:
        if config.relay_kind != self.kind:
            raise ValueError(f"{type(self).__name__} cannot drive a {config.relay_kind} config")
        expected = set(self.lines)
        if not expected <= set(relays) <= expected | {"start"}:
            raise ValueError(f"{self.kind} needs relays {sorted(expected)} (+ optional 'start'), got {sorted(relays)}")
        self._config = config
        self._on_change = on_change
        self._mutex = threading.Lock()  # guards _reported: state is recomputed from watchdog threads too
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._outputs = {
            name: Output(
                relay,
                max_on_s=config.start_on_s if name == "start" else config.max_on_s,
                listener=self._on_output,
            )
            for name, relay in relays.items()
        }
        self._start = self._outputs.get("start")
        self._door: DoorSensor | None = None
        if door is not None:
            try:
                self._door = DoorSensor(
                    door,
                    open_is_high=config.door_open_is_high,
                    debounce_s=config.debounce_ms / 1000,
                    listener=self._on_door,
                    timer_factory=door_timer_factory,
                )
            except BaseException:
                for output in self._outputs.values():
                    output.close()  # stop the watchdogs and release the relays (closing twice is harmless)
                raise
        self._reported = self._lock_state()
        _failsafe.register(self)

    @property
    def config(self) -> ActuatorConfig:
        """The configuration this lock was built from."""
        return self._config

    @property
    def outputs(self) -> Mapping[str, Output]:
        """The bounded outputs by role ("unlock", "lock", "start")."""
        return dict(self._outputs)

    @property
    def closed(self) -> bool:
        """Whether shutdown() or aclose() has run."""
        return self._closed

    def status(self) -> ActuatorStatus:
        """The current status; never blocks, never touches an output."""
        return ActuatorStatus(
            lock=self._lock_state(),
            door=DoorState.UNKNOWN if self._door is None else self._door.state,
            start_enabled=self._start is not None and self._start.energised,
        )

    async def unlock(self) -> ActuatorStatus:
        """Unlock; returns once the relay has done its job; raises ActuatorError."""
        return await self._command("unlock", self._unlock)

    async def lock(self) -> ActuatorStatus:
        """Lock; raises DoorOpenError when refusing because the door is open."""
        return await self._command("lock", self._lock)

    async def start_enable(self) -> ActuatorStatus:
        """Energise start-enable for ``start_on_s``; raises NotConfiguredError if it is not wired."""
        start = self._start
        if start is None:
            raise NotConfiguredError("start-enable is not wired (set start_pin)")

        async def energise() -> None:
            if not start.energised:  # a repeat is a no-op: the window is a hard cap, not a lease to renew
                start.energise(self._config.start_on_s)

        return await self._command("start-enable", energise)

    def shutdown(self) -> None:
        """De-energise every output now and refuse further commands; synchronous and signal-safe."""
        self._closed = True
        for output in self._outputs.values():
            output.shutdown()

    async def aclose(self) -> None:
        """De-energise everything, stop background tasks and release the pins; idempotent."""
        self.shutdown()  # first, synchronously: nothing below may delay de-energising
        try:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for output in self._outputs.values():
                output.close()
            if self._door is not None:
                self._door.close()
            _failsafe.unregister(self)

    async def __aenter__(self) -> RelayLock:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._config.describe()}{' closed' if self._closed else ''}>"

    # -- for the subclasses --------------------------------------------------------------------------

    def _lock_state(self) -> LockState:
        raise NotImplementedError

    async def _unlock(self) -> None:
        raise NotImplementedError

    async def _lock(self) -> None:
        raise NotImplementedError

    async def _command(self, name: str, op: Callable[[], Awaitable[None]]) -> ActuatorStatus:
        """Run ``op``; anything unexpected becomes an ActuatorFault after every lock output is switched off."""
        if self._closed:
            raise LockClosedError("the lock is closed")
        try:
            await op()
        except ActuatorError:
            raise
        except Exception as exc:
            self._lock_outputs_off_quietly()
            raise ActuatorFault(f"{name} failed: {exc}") from exc
        return self.status()

    def _lock_outputs_off_quietly(self) -> None:
        """Error path: de-energise the lock lines, logging (not raising) a failure to do so."""
        for name, output in self._outputs.items():
            if name != "start":
                try:
                    output.de_energise()
                except ActuatorError:
                    _logger.critical("could not de-energise %r on an error path", name, exc_info=True)

    def _refuse_if_door_open(self) -> None:
        if self._config.refuse_lock_when_open and self._door is not None and self._door.state is DoorState.OPEN:
            raise DoorOpenError(self._door.state)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task that aclose() cancels and awaits."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, event: ActuatorEvent) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(event)
        except Exception:
            _logger.exception("on_change callback failed")

    def _refresh(self) -> None:
        """Emit LockChanged if the lock state moved; called from any thread after anything changes."""
        with self._mutex:
            new = self._lock_state()
            if new is self._reported:
                return
            self._reported = new
        self._emit(LockChanged(time.monotonic(), new))

    def _on_output(self, event: OutputChanged) -> None:
        self._emit(event)
        self._refresh()

    def _on_door(self, event: DoorChanged) -> None:
        self._emit(event)


class PulseLock(RelayLock):
    """One relay pulsed to unlock: a door strike (re-locks by itself), a fob button, a garage opener.

    ``lock()`` only ends a pulse early: there is nothing to drive, so the door check does not apply.
    The state is UNLOCKED while energised, then LOCKED (``pulse_relatches``) or UNKNOWN (a toggle).
    """

    kind = "pulse"
    lines = ("unlock",)

    def __init__(
        self,
        config: ActuatorConfig,
        relays: Mapping[str, Relay],
        *,
        door: BinaryInput | None = None,
        on_change: EventListener | None = None,
        door_timer_factory: TimerFactory = thread_timer,
    ) -> None:
        super().__init__(config, relays, door=door, on_change=on_change, door_timer_factory=door_timer_factory)
        self._line = _PulseLine(self._outputs["unlock"], config.pulse_ms / 1000, asyncio.Lock())

    def _lock_state(self) -> LockState:
        if self._outputs["unlock"].energised:
            return LockState.UNLOCKED
        return LockState.LOCKED if self._config.pulse_relatches else LockState.UNKNOWN

    async def _unlock(self) -> None:
        await self._line.pulse()

    async def _lock(self) -> None:
        self._outputs["unlock"].de_energise()


class TwoLineLock(RelayLock):
    """Separate lock and unlock lines, pulsed like a car's central-locking trigger wires.

    The car latches the state, so we report the last completed command (UNKNOWN before the first one and
    after an interrupted pulse). ``relock_after_s`` pulses "lock" that long after an unlock, unless the
    door is open and ``refuse_lock_when_open`` is set.
    """

    kind = "two-line"
    lines = ("unlock", "lock")

    def __init__(
        self,
        config: ActuatorConfig,
        relays: Mapping[str, Relay],
        *,
        door: BinaryInput | None = None,
        on_change: EventListener | None = None,
        door_timer_factory: TimerFactory = thread_timer,
    ) -> None:
        self._state = LockState.UNKNOWN  # before super().__init__, which reads it
        super().__init__(config, relays, door=door, on_change=on_change, door_timer_factory=door_timer_factory)
        serial = asyncio.Lock()  # one pulse at a time across both lines: the interlock
        pulse_s = config.pulse_ms / 1000
        self._unlock_line = _PulseLine(self._outputs["unlock"], pulse_s, serial)
        self._lock_line = _PulseLine(self._outputs["lock"], pulse_s, serial)
        self._relock_task: asyncio.Task[None] | None = None

    def _lock_state(self) -> LockState:
        return self._state

    async def _unlock(self) -> None:
        self._cancel_relock()
        await self._unlock_line.pulse(before=self._outputs["lock"].de_energise, done=self._finish(LockState.UNLOCKED))
        self._cancel_relock()  # commands that shared this pulse schedule one relock between them
        if self._config.relock_after_s is not None:
            self._relock_task = self._spawn(self._relock_later(self._config.relock_after_s))

    async def _lock(self) -> None:
        self._refuse_if_door_open()
        self._cancel_relock()
        await self._pulse_lock()

    async def _pulse_lock(self) -> None:
        await self._lock_line.pulse(before=self._outputs["unlock"].de_energise, done=self._finish(LockState.LOCKED))

    def _finish(self, target: LockState) -> Callable[[_Outcome], None]:
        """What a finished pulse means for the reported state: the target, unknown, or no change."""

        def done(outcome: _Outcome) -> None:
            if outcome is _Outcome.COMPLETED:
                self._state = target
            elif outcome is _Outcome.INTERRUPTED:
                self._state = LockState.UNKNOWN  # the car may or may not have seen the edge
            self._refresh()

        return done

    def _cancel_relock(self) -> None:
        task, self._relock_task = self._relock_task, None
        if task is not None:
            task.cancel()

    async def _relock_later(self, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            # Committed: from here a new unlock waits for this lock pulse instead of cancelling it half-way.
            if self._relock_task is asyncio.current_task():
                self._relock_task = None
            if self._config.refuse_lock_when_open and self._door is not None and self._door.state is DoorState.OPEN:
                _logger.info("auto-relock skipped: the door is open")
                return
            await self._pulse_lock()
        except LockClosedError:
            pass
        except Exception:
            _logger.exception("auto-relock failed")


class LatchedLock(RelayLock):
    """One relay held energised while unlocked (a fail-secure strike, a mag-lock's release).

    The Output's deadline is the relock: ``relock_after_s``, or ``max_on_s`` when that is unset. A repeated
    unlock extends the deadline but never past ``max_on_s`` after the relay went on.
    """

    kind = "latched"
    lines = ("unlock",)

    def _lock_state(self) -> LockState:
        return LockState.UNLOCKED if self._outputs["unlock"].energised else LockState.LOCKED

    async def _unlock(self) -> None:
        hold_s = self._config.relock_after_s
        self._outputs["unlock"].energise(hold_s if hold_s is not None else self._config.max_on_s)

    async def _lock(self) -> None:
        self._refuse_if_door_open()
        self._outputs["unlock"].de_energise()


DRIVERS: Mapping[RelayKind, type[RelayLock]] = {
    "pulse": PulseLock,
    "two-line": TwoLineLock,
    "latched": LatchedLock,
}
