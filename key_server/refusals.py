"""Refusals of unauthenticated requests, counted per link and window instead of one audit row each.

A bad signature, an unknown key id, a stale challenge or a malformed message proves nothing about who sent it, and
a flood of them must not fill (or wear out) the SD card: each refusal is only counted here, in memory, under the
link it came from, and written as one `refusals` audit row ("N refused from link X between T1 and T2", with the
statuses and reasons counted) when the link ends, when the window ends, and when the server stops. At most
`max_rows` such rows are written per window; past that, tallies are folded into one row for "other links", so a
flood writes O(windows) rows however many requests or fresh links carry it (docs/THREAT_MODEL.md, "The audit log").

What stays one row per event is written elsewhere, at once: everything an enrolled key did or was refused after
its signature verified (policy refusals: expired, revoked, outside its schedule, not permitted), pairing attempts,
revocations. Pure: time is passed in; the rows go to `write`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .audit import DetailValue

__all__ = ["MAX_REASONS", "MAX_ROWS_PER_WINDOW", "REFUSAL_WINDOW", "RefusalDigest"]

REFUSAL_WINDOW: Final = 60.0  # seconds; an owner reading the log sees a flood by the minute
MAX_ROWS_PER_WINDOW: Final = 8  # rows one window may write before further tallies fold into "other links"
MAX_REASONS: Final = 6  # distinct reasons kept per row (a reason can carry a parser's message); the rest: "other"
MAX_REASON_LEN: Final = 60
OTHER_LINKS: Final = "other links"

# (detail, key_id) -> None: writes one audit row (failures are the writer's to swallow: AuditLog.record).
Writer = Callable[[dict[str, DetailValue], "bytes | None"], None]


@dataclass(slots=True)
class _Tally:
    """The refusals of one source in the current window."""

    count: int = 0
    links: int = 1
    first: int = 0  # wall-clock seconds of the first and the last refusal counted
    last: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    key_ids: set[bytes | None] = field(default_factory=set)

    def add(self, wall: int, status: str, reason: str, key_id: bytes | None) -> None:
        if not self.count:
            self.first = wall
        self.count += 1
        self.last = max(self.last, wall)
        self.statuses[status] += 1
        reason = reason[:MAX_REASON_LEN]
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons["other"] += 1
        if len(self.key_ids) <= 1:  # only "one key id, or several" matters
            self.key_ids.add(key_id)

    def merge(self, other: _Tally) -> None:
        if not self.count:
            self.first = other.first
        self.first = min(self.first, other.first)
        self.count += other.count
        self.links += other.links
        self.last = max(self.last, other.last)
        self.statuses.update(other.statuses)
        for reason, n in other.reasons.items():
            key = reason if reason in self.reasons or len(self.reasons) < MAX_REASONS else "other"
            self.reasons[key] += n
        self.key_ids |= other.key_ids


class RefusalDigest:
    """Counts refusals per link; writes one row per link and window, at most `max_rows` rows per window."""

    def __init__(self, write: Writer, *, window: float = REFUSAL_WINDOW, max_rows: int = MAX_ROWS_PER_WINDOW) -> None:
        """Write rows through `write`; a window lasts `window` seconds of the monotonic clock passed to the calls."""
        if window <= 0 or max_rows < 1:
            raise ValueError("window must be positive and max_rows at least 1")
        self._write = write
        self.window = window
        self.max_rows = max_rows
        self._tallies: dict[str, _Tally] = {}
        self._overflow: _Tally | None = None
        self._opened: float | None = None  # monotonic start of the current window; None: no refusal pending
        self._rows = 0  # rows written in the current window
        self.rows_written = 0  # in all (for tests and benchmarks)

    def refused(self, link: str, mono: float, wall: int, *, status: str, reason: str,
                key_id: bytes | None = None) -> None:
        """Count one refusal from `link` (nothing is written now)."""
        self.tick(mono)
        if self._opened is None:
            self._opened, self._rows = mono, 0
        self._tallies.setdefault(link, _Tally()).add(wall, status, reason, key_id)

    def end_link(self, link: str, mono: float) -> None:
        """The link ended: write its tally now (or fold it into "other links" if this window wrote its share)."""
        self.tick(mono)
        tally = self._tallies.pop(link, None)
        if tally is not None:
            self._emit(link, tally)

    def tick(self, mono: float) -> None:
        """End the window if it is over: every tally is written (links still connected count again afresh)."""
        if self._opened is not None and mono - self._opened >= self.window:
            self.flush()

    def flush(self) -> None:
        """Write everything counted so far and start a new window (at window end and when the server stops)."""
        tallies, self._tallies = self._tallies, {}
        for link, tally in tallies.items():
            self._emit(link, tally)
        overflow, self._overflow = self._overflow, None
        if overflow is not None:
            self._row(OTHER_LINKS, overflow)
        self._opened, self._rows = None, 0

    @property
    def pending(self) -> int:
        """Refusals counted and not yet written."""
        return sum(t.count for t in self._tallies.values()) + (self._overflow.count if self._overflow else 0)

    def _emit(self, link: str, tally: _Tally) -> None:
        # One slot is kept for the "other links" row, so a window never writes more than max_rows rows.
        if self._overflow is None and self._rows < self.max_rows - 1:
            self._row(link, tally)
            self._rows += 1
        elif self._overflow is None:
            self._overflow = tally
        else:
            self._overflow.merge(tally)

    def _row(self, link: str, tally: _Tally) -> None:
        key_ids = tally.key_ids
        key_id = next(iter(key_ids)) if len(key_ids) == 1 else None  # every refusal named the same key id
        self.rows_written += 1
        self._write({
            "link": link, "links": tally.links, "count": tally.count, "first": tally.first, "last": tally.last,
            "statuses": _counts(tally.statuses), "reasons": _counts(tally.reasons),
        }, key_id)


def _counts(counter: Counter[str]) -> str:
    """'a=3; b=1', most frequent first."""
    return "; ".join(f"{k}={n}" for k, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
