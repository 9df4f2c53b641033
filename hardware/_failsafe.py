"""Process-level fail-safe: de-energise on SIGTERM/SIGINT and at interpreter exit.

Every lock registers itself here when built, and leaves at ``aclose()``. The reference is strong on
purpose: a lock dropped without ``aclose()`` must still be driven off at exit, not garbage-collected (gpiozero
would then close its pins without driving them off). Two hooks call each lock's synchronous ``shutdown()``:

- ``atexit``: registered after gpiozero is imported, so (atexit runs last-registered first) our hook
  drives every relay off *before* gpiozero's own hook closes the devices; closing alone only releases
  the line, which then floats (lgpio leaves a freed line as an input with no pull; docs/HARDWARE.md).
- ``install_signal_failsafe()``: a plain ``signal.signal`` handler, not ``loop.add_signal_handler``. The
  latter runs the callback on the event loop, so a stuck loop would never de-energise; a ``signal``
  handler runs in the main thread between two bytecodes, whatever the loop is doing. Without any
  handler, SIGTERM kills Python outright and skips atexit.

Neither helps against SIGKILL, a kernel panic or a power cut: for those the pull resistor in
docs/HARDWARE.md holds the relay input at "off" while nothing drives the pin.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Protocol

_logger = logging.getLogger(__name__)


class SupportsShutdown(Protocol):
    """Anything with a synchronous, signal-safe ``shutdown()`` (every Lock in this package)."""

    def shutdown(self) -> None:
        """De-energise everything now and refuse further commands."""
        ...


_live: set[SupportsShutdown] = set()
_registry_lock = threading.Lock()
_atexit_state = {"registered": False, "after_gpiozero": False}


def register(lock: SupportsShutdown) -> None:
    """Cover ``lock`` by the atexit hook and by signal handlers installed without an explicit lock."""
    with _registry_lock:
        _live.add(lock)
        # Register (again) once gpiozero is loaded, so that our hook runs before gpiozero's (LIFO).
        gpiozero_loaded = "gpiozero" in sys.modules
        if not _atexit_state["registered"] or (gpiozero_loaded and not _atexit_state["after_gpiozero"]):
            atexit.register(shutdown_all)
            _atexit_state["registered"] = True
            _atexit_state["after_gpiozero"] = gpiozero_loaded


def unregister(lock: SupportsShutdown) -> None:
    """Forget a closed lock."""
    with _registry_lock:
        _live.discard(lock)


def live_locks() -> list[SupportsShutdown]:
    """The locks built and not yet closed in this process."""
    with _registry_lock:
        return list(_live)


def shutdown_all() -> None:
    """De-energise every live lock; never raises (runs at exit and in signal handlers)."""
    for lock in live_locks():
        try:
            lock.shutdown()
        except Exception:
            _logger.critical("fail-safe shutdown of %r failed", lock, exc_info=True)


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def install_signal_failsafe(
    lock: SupportsShutdown | None = None,
    *,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    on_signal: Callable[[int], None] | None = None,
) -> Callable[[], None]:
    """Make each signal de-energise first, synchronously; returns a function restoring the old handlers.

    After ``shutdown()`` (of ``lock``, or of every live lock when None) the handler calls
    ``on_signal(signum)`` if given; otherwise it chains to the previous Python handler (SIGINT's
    KeyboardInterrupt, asyncio.Runner's Ctrl-C handling, the server's own); otherwise it raises
    ``SystemExit(128 + signum)``, so ``finally`` blocks and atexit still run. Signals currently ignored
    (SIG_IGN) are left alone. Call it from the main thread, after any ``loop.add_signal_handler`` for
    the same signals: that call would replace this handler (the loop's callback still runs, because
    the loop's wakeup fd sees every signal).
    """
    previous: dict[int, _Handler] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if lock is None:
            shutdown_all()
        else:
            try:
                lock.shutdown()
            except Exception:
                _logger.critical("fail-safe shutdown on signal %d failed", signum, exc_info=True)
        if on_signal is not None:
            on_signal(signum)
            return
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
            return
        raise SystemExit(128 + signum)

    for sig in signals:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:
            continue
        previous[sig] = current
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    return restore
