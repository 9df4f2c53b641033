"""DoorSensor: a reed switch input, debounced by waiting for the line to settle.

We debounce here rather than with gpiozero's ``bounce_time``: that option ignores edges for a while after
the first one (RPi.GPIO semantics, gpiozero issue #378), so a bounce at the end of the window can leave
the reported state wrong until the next real change, and MockPin does not implement it at all. Here every
edge restarts a timer and the level is read only once it has been stable for ``debounce_s``: a flapping
reed switch produces one change, to the level it settles at.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from protocol import DoorState

from ._backend import BinaryInput
from ._types import DoorChanged

_logger = logging.getLogger(__name__)


class Timer(Protocol):
    """What DoorSensor needs of a timer: ``threading.Timer`` fits; tests pass a manual one."""

    def start(self) -> None:
        """Start counting down."""
        ...

    def cancel(self) -> None:
        """Stop; the callback will not run (unless it already started)."""
        ...


TimerFactory = Callable[[float, Callable[[], None]], Timer]
DoorListener = Callable[[DoorChanged], None]


def thread_timer(delay_s: float, callback: Callable[[], None]) -> Timer:
    """A daemon ``threading.Timer`` (a pending debounce must not hold up interpreter exit)."""
    timer = threading.Timer(delay_s, callback)
    timer.daemon = True
    return timer


class DoorSensor:
    """Debounced door state from a raw input line; ``state`` only changes once the line has settled."""

    def __init__(
        self,
        raw: BinaryInput,
        *,
        open_is_high: bool,
        debounce_s: float,
        listener: DoorListener | None = None,
        timer_factory: TimerFactory = thread_timer,
    ) -> None:
        self._raw = raw
        self._open_is_high = open_is_high
        self._debounce_s = debounce_s
        self._listener = listener
        self._timer_factory = timer_factory
        self._lock = threading.Lock()
        self._timer: Timer | None = None
        self._token: object | None = None
        self._closed = False
        # The first reading is believed at once: there is no earlier state to protect from a bounce.
        self._state = self._to_state(raw.read())
        raw.set_edge_callback(self._on_edge)

    @property
    def state(self) -> DoorState:
        """The last settled state."""
        return self._state

    def close(self) -> None:
        """Stop watching the line and release it; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._token = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._raw.set_edge_callback(None)
        self._raw.close()

    def _to_state(self, high: bool) -> DoorState:
        return DoorState.OPEN if high == self._open_is_high else DoorState.CLOSED

    def _on_edge(self) -> None:
        """Any thread: the line changed (perhaps a bounce); (re)start the settle timer."""
        events: list[DoorChanged] = []
        with self._lock:
            if self._closed:
                return
            if self._debounce_s <= 0:
                events = self._settle_locked()
            else:
                token = object()
                timer = self._timer_factory(self._debounce_s, lambda: self._settle(token))
                if self._timer is not None:
                    self._timer.cancel()
                self._timer, self._token = timer, token
                timer.start()
        self._dispatch(events)

    def _settle(self, token: object) -> None:
        """Timer thread: no edge for ``debounce_s``; believe the level now on the line."""
        with self._lock:
            if token is not self._token or self._closed:
                return  # a later edge restarted the wait
            self._timer = self._token = None
            events = self._settle_locked()
        self._dispatch(events)

    def _settle_locked(self) -> list[DoorChanged]:
        new = self._to_state(self._raw.read())
        if new == self._state:
            return []
        self._state = new
        return [DoorChanged(time.monotonic(), new)]

    def _dispatch(self, events: list[DoorChanged]) -> None:
        if self._listener is None:
            return
        for event in events:
            try:
                self._listener(event)
            except Exception:
                _logger.exception("door listener failed")
