"""A wall clock that never goes backwards, even across restarts (docs/DEPLOY.md §9, docs/THREAT_MODEL.md §4.6).

A Raspberry Pi has no real-time clock: after a power cut it boots with whatever time it saved last (or 1970)
until NTP answers, and anyone with a shell can set the clock back. Expiry must survive both, so the server asks
this clock, which returns max(system time, highest time ever seen) and persists that high-water mark in the key
store. The mark is written when it has advanced by more than `persist_every` seconds and at close, so a crash
loses at most that much; call now() from a periodic tick so the mark keeps up while nobody unlocks.

The flip side: a clock set far into the future (a bad NTP answer) pushes the mark there and expires keys early;
clearing the mark (meta key HIGH_WATER_KEY) is then an owner's explicit repair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["DEFAULT_PERSIST_EVERY", "HIGH_WATER_KEY", "GuardedClock", "HighWaterStore"]

HIGH_WATER_KEY: Final = "time_high_water"
DEFAULT_PERSIST_EVERY: Final = 60


class HighWaterStore(Protocol):
    """The part of KeyStore the clock needs."""

    def get_meta(self, k: str) -> str | None:
        """Read a metadata value."""
        ...

    def max_meta_int(self, k: str, v: int) -> int:
        """Raise the stored integer to at least `v`; return the stored value."""
        ...


class GuardedClock:
    """Integer Unix seconds that never decrease: max(time source, persisted high-water mark)."""

    def __init__(
        self,
        store: HighWaterStore,
        *,
        source: Callable[[], float] = time.time,
        persist_every: int = DEFAULT_PERSIST_EVERY,
    ) -> None:
        """Load the persisted high-water mark from `store`; `source` is the system clock (injectable for tests)."""
        if persist_every < 0:
            raise ValueError("persist_every must be >= 0")
        self._store = store
        self._source = source
        self._persist_every = persist_every
        stored = store.get_meta(HIGH_WATER_KEY)
        try:
            persisted = int(stored) if stored is not None else 0
        except ValueError:
            persisted = 0  # a garbled mark only loses the protection; refusing every key would be worse
        self._persisted = persisted
        self._high = persisted

    def now(self) -> int:
        """The current guarded time in whole seconds; persists the mark when it has advanced enough."""
        t = math.floor(self._source())
        if t > self._high:
            self._high = t
            if self._high - self._persisted > self._persist_every:
                self.persist()
        return self._high

    def persist(self) -> None:
        """Write the high-water mark now (never lowering a mark another process wrote)."""
        stored = self._store.max_meta_int(HIGH_WATER_KEY, self._high)
        self._high = max(self._high, stored)
        self._persisted = self._high

    @property
    def high_water(self) -> int:
        """The highest time seen so far (in memory; may be ahead of what is persisted)."""
        return self._high

    def source_behind_by(self) -> int:
        """How many seconds the system clock is behind the mark (0 if not): worth a warning in `doctor`."""
        return max(0, self._high - math.floor(self._source()))

    def close(self) -> None:
        """Persist the mark if it moved since the last write; call before closing the store (idempotent)."""
        if self._high > self._persisted:
            self.persist()

    def __enter__(self) -> GuardedClock:
        """Use the clock as a context manager that persists on exit."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Persist the mark."""
        self.close()
