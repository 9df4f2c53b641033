"""Rate limits, pure (time is passed in): failed attempts per link and globally, and actuations per key.

A link that has never failed is always let through, so a flood from elsewhere cannot lock out an honest
phone; a link that has failed spends from its own bucket and, while the global bucket is empty, is
refused before any crypto runs. Separately, every key spends from its own bucket for each command that moves
the vehicle, so a valid key cannot toggle the relay as fast as the link allows. Buckets refill continuously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Defaults: an honest device fails rarely (a stale challenge now and then), so 5 failures in a burst
# and one every 2 s afterwards never bites it, while a flooder gets ~0.5 verifications/s per link.
LINK_BURST = 5
LINK_RATE = 0.5
# Across all links: 30 failures in a burst, 5 per second after, bounds the CPU spent on bogus signatures.
GLOBAL_BURST = 30
GLOBAL_RATE = 5.0
# Per key, for unlock, lock and start: a person unlocks, locks, perhaps fumbles a few times; 6 in a row and then
# one every 5 s (12 a minute) never bites that, nor passive entry, while a relay toggled as fast as the link allows
# stops after 6 and then moves at most 12 times a minute (relays and door strikes wear out, and heat up).
ACTUATION_BURST = 6
ACTUATION_PER_MINUTE = 12.0
# Refused actuations of one key are audited as a count, in at most one row per this many seconds.
ACTUATION_REPORT_EVERY = 60.0


@dataclass(slots=True)
class Bucket:
    """A token bucket: `take` spends one token if there is one."""

    burst: float
    rate: float
    tokens: float = -1.0
    stamp: float = 0.0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
            return
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, now: float) -> float:
        """Tokens available now."""
        self._refill(now)
        return self.tokens

    def take(self, now: float) -> bool:
        """Spend one token; False if the bucket is empty."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(slots=True)
class FailureLimiter:
    """Decides cheaply whether a link may be heard; failures are reported with `failed`."""

    link_burst: float = LINK_BURST
    link_rate: float = LINK_RATE
    global_burst: float = GLOBAL_BURST
    global_rate: float = GLOBAL_RATE
    failures: int = 0  # every failure reported so far (for stats and tests)
    _links: dict[str, Bucket] = field(default_factory=dict)
    _global: Bucket | None = None

    def _global_bucket(self) -> Bucket:
        if self._global is None:
            self._global = Bucket(self.global_burst, self.global_rate)
        return self._global

    def allow(self, link: str, now: float) -> bool:
        """True if a message from `link` may be processed now."""
        bucket = self._links.get(link)
        if bucket is None:
            return True  # never failed: always heard
        if bucket.available(now) < 1:
            return False
        return self._global_bucket().available(now) >= 1

    def failed(self, link: str, now: float) -> None:
        """Record one failure (bad frame, bad signature, stale challenge, wrong or abandoned code) from `link`."""
        self.failures += 1
        bucket = self._links.setdefault(link, Bucket(self.link_burst, self.link_rate))
        bucket.take(now)
        self._global_bucket().take(now)

    def forget(self, link: str) -> None:
        """Drop a link's bucket when it disconnects (a new connection starts clean)."""
        self._links.pop(link, None)


@dataclass(slots=True)
class _Tally:
    """Refusals of one key not yet in the audit log, and when the last count was written."""

    unreported: int = 0
    reported_at: float | None = None


@dataclass(slots=True)
class ActuationLimiter:
    """Per-key token buckets for commands that move the vehicle, and the tallies that keep their audit small."""

    burst: float = ACTUATION_BURST
    per_minute: float = ACTUATION_PER_MINUTE
    report_every: float = ACTUATION_REPORT_EVERY
    _buckets: dict[bytes, Bucket] = field(default_factory=dict)  # one per authorised key: bounded by the store
    _tallies: dict[bytes, _Tally] = field(default_factory=dict)

    def allow(self, key_id: bytes, now: float) -> bool:
        """Spend one of `key_id`'s actuations; False (and tallied) if it has none left."""
        bucket = self._buckets.setdefault(key_id, Bucket(self.burst, self.per_minute / 60))
        if bucket.take(now):
            return True
        self._tallies.setdefault(key_id, _Tally()).unreported += 1
        return False

    def to_report(self, key_id: bytes, now: float, *, flush: bool = False) -> int:
        """How many refusals of `key_id` to audit now in one row (0: none yet).

        The first refusal of a spell is reported at once; later ones are counted and reported at most every
        `report_every` seconds, or with `flush` (the key got through again, or the server stops).
        """
        tally = self._tallies.get(key_id)
        if tally is None or not tally.unreported:
            return 0
        if not flush and tally.reported_at is not None and now - tally.reported_at < self.report_every:
            return 0
        count, tally.unreported, tally.reported_at = tally.unreported, 0, now
        return count

    def flush_all(self, now: float) -> dict[bytes, int]:
        """Every key's unreported refusals, reported now (for shutdown)."""
        due = {key_id: self.to_report(key_id, now, flush=True) for key_id in list(self._tallies)}
        return {key_id: n for key_id, n in due.items() if n}
