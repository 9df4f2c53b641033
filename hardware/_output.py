"""Output: a relay line that is only ever energised for a bounded time. Every energising goes through here.

Design notes (the safety core of the package):

1. Every energising has an absolute deadline: ``min(now + requested, on_since + max_on)``, where
   ``on_since`` is taken just before the line is switched on. A second request while energised may move
   the deadline later, never past ``on_since + max_on``, so repeated unlocks, a loop in a caller or a bug
   cannot keep a coil on longer than ``max_on``.
2. The deadline is enforced by a watchdog thread, not by the event loop. The async drivers also
   de-energise (after their ``asyncio.sleep``, and in ``finally`` on errors and cancellation), but if the
   loop is stuck -- a blocking call, a deadlock, a CPU-bound handler -- the watchdog still fires.
   We chose this over gpiozero's ``blink(n=1, background=True)``: its thread leaves the pin *on* when it
   is stopped mid-pulse (``_blink_device`` breaks out without writing off, and gpiozero's own atexit hook
   stops blink threads that way), only ``DigitalOutputDevice`` has it, it cannot express "hold until
   told, but at most N" for latched and start outputs, and it would not cover the simulated lock.
   One long-lived thread per output, rather than a ``threading.Timer`` per energising: it is started
   with the Output (so ``energise()`` never depends on starting a thread), and it waits for the
   absolute deadline, so a timer started before a delayed write cannot end a pulse early.
3. Switching happens under an RLock, because the watchdog, the event loop and the signal fail-safe may
   all switch the same line. Re-entrant because a signal handler runs in the main thread and may
   interrupt an ``energise()`` that already holds it; ``energise()`` re-checks after writing (note 4).
4. ``shutdown()`` latches: once the fail-safe has run, ``energise()`` refuses, and an ``energise()`` that
   was interrupted by the fail-safe mid-write switches the line back off before raising.
5. A write that fails leaves the line "maybe on": after a failed "off" the deadline stays set and the
   watchdog keeps retrying, once a second, until a write succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._backend import Relay
from ._errors import ActuatorFault, LockClosedError
from ._types import OutputChanged

_logger = logging.getLogger(__name__)

OutputListener = Callable[[OutputChanged], None]

# After a failed switch-off the watchdog retries this often: soon enough to matter, rare enough not to
# flood the log while a GPIO chip is gone.
_RETRY_S = 1.0


class Output:
    """A Relay that can only be energised with a deadline no later than ``max_on_s`` after it went on."""

    def __init__(self, relay: Relay, *, max_on_s: float, listener: OutputListener | None = None) -> None:
        if not max_on_s > 0:
            raise ValueError("max_on_s must be positive")
        self._relay = relay
        self._max_on_s = max_on_s
        self._listener = listener
        self._lock = threading.RLock()  # re-entrant: see note 3
        self._wake = threading.Condition(self._lock)
        self._on_since: float | None = None
        self._deadline: float | None = None
        self._capped = False  # the current deadline is the max_on cap, not what was asked for
        self._disabled = False
        self._stopping = False
        self.capped_expiries = 0  # how often the cap, not the request, ended an energising
        self._watchdog = threading.Thread(target=self._watch, name=f"relay-watchdog-{relay.name}", daemon=True)
        self._watchdog.start()  # daemon: a pending deadline must not hold up exit; atexit de-energises

    @property
    def name(self) -> str:
        """The output's role: "unlock", "lock" or "start"."""
        return self._relay.name

    @property
    def max_on_s(self) -> float:
        """The hard cap on one energising, in seconds."""
        return self._max_on_s

    @property
    def energised(self) -> bool:
        """Whether the line is (believed) energised now."""
        return self._on_since is not None

    @property
    def deadline(self) -> float | None:
        """The monotonic time at which the watchdog will de-energise the line, or None when off."""
        return self._deadline

    @property
    def disabled(self) -> bool:
        """Whether shutdown() has latched this output off."""
        return self._disabled

    def energise(self, for_s: float) -> None:
        """Energise now (or extend) until ``now + for_s``, clamped to ``max_on_s`` after it went on."""
        if not for_s > 0:
            raise ValueError("for_s must be positive")
        events: list[OutputChanged] = []
        with self._lock:
            if self._disabled:
                raise LockClosedError(f"output {self.name!r} is shut down")
            first = self._on_since is None
            if first:
                on_since = time.monotonic()  # before the write: the cap counts from the earliest "on"
                try:
                    self._relay.set(True)
                except Exception as exc:
                    self._force_off_after_failure(on_since)
                    raise ActuatorFault(f"could not energise {self.name!r}: {exc}", output=self.name) from exc
                self._on_since = on_since
            else:
                assert self._on_since is not None
                on_since = self._on_since
            now = time.monotonic()  # after the write: a pulse lasts for_s from when the line is on
            wanted, cap = now + for_s, on_since + self._max_on_s
            self._deadline = min(wanted, cap)
            # "Capped" means the request asked for more than the allowance, not that the write took time.
            self._capped = for_s > self._max_on_s if first else wanted > cap
            self._wake.notify()
            if first:
                events.append(OutputChanged(now, self.name, True))
            if self._disabled:  # note 4: the fail-safe ran in this thread while we were writing
                events.extend(self._switch_off_locked())
                self._dispatch(events)
                raise LockClosedError(f"output {self.name!r} is shut down")
        self._dispatch(events)

    def de_energise(self) -> None:
        """Switch the line off now (no-op when off); raises ActuatorFault if the GPIO write fails."""
        with self._lock:
            events = self._switch_off_locked()
        self._dispatch(events)

    def shutdown(self) -> None:
        """De-energise and latch off for good; never raises (it runs in signal handlers and at exit)."""
        events: list[OutputChanged] = []
        with self._lock:
            self._disabled = True
            try:
                events = self._switch_off_locked()
            except Exception:
                _logger.critical("could not de-energise %r during shutdown", self.name, exc_info=True)
        self._dispatch(events)

    def close(self) -> None:
        """shutdown(), stop the watchdog, then release the line."""
        self.shutdown()
        with self._lock:
            if self._deadline is not None:
                return  # the switch-off failed: keep the line and the watchdog retrying (note 5)
            self._stopping = True
            self._wake.notify()
            try:
                self._relay.close()
            except Exception:
                _logger.exception("could not release %r", self.name)

    def _watch(self) -> None:
        """Watchdog thread: sleep until the current deadline, then switch off (notes 2 and 5)."""
        while True:
            events: list[OutputChanged] = []
            with self._lock:
                if self._stopping:
                    return
                if self._deadline is None:
                    self._wake.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                capped = self._capped
                if capped:
                    self.capped_expiries += 1  # before the line reads "off", so readers never miss it
                try:
                    events = self._switch_off_locked()
                except Exception:
                    _logger.critical("deadline passed but could not de-energise %r", self.name, exc_info=True)
                    self._deadline = time.monotonic() + _RETRY_S
                    continue
            if capped:
                _logger.warning("%s reached its maximum on-time of %g s; de-energised", self.name, self._max_on_s)
            self._dispatch(events)

    def _switch_off_locked(self) -> list[OutputChanged]:
        """Write off; the caller holds the lock. On a failed write the deadline stays (note 5)."""
        if self._on_since is None:
            return []
        try:
            self._relay.set(False)
        except Exception as exc:
            raise ActuatorFault(f"could not de-energise {self.name!r}: {exc}", output=self.name) from exc
        self._on_since = None
        self._deadline = None
        self._capped = False
        return [OutputChanged(time.monotonic(), self.name, False)]

    def _force_off_after_failure(self, on_since: float) -> None:
        """After a failed write of "on" the line state is unknown: write off, or leave the watchdog retrying."""
        try:
            self._relay.set(False)
        except Exception:
            _logger.critical("could not de-energise %r after a failed write", self.name, exc_info=True)
            self._on_since = on_since  # maybe on: report it so, and let the watchdog retry (note 5)
            self._deadline = time.monotonic() + _RETRY_S
            self._wake.notify()

    def _dispatch(self, events: list[OutputChanged]) -> None:
        """Tell the listener, outside the lock; a failing listener never breaks a switch-off."""
        if self._listener is None:
            return
        for event in events:
            try:
                self._listener(event)
            except Exception:
                _logger.exception("output listener failed")
