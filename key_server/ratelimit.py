"""Rate limits, pure (time is passed in): failed attempts per link and globally, and actuations per key.

Admission control (docs/THREAT_MODEL.md §4.7): every message of every link, its first included, is admitted only
while its link's bucket and the global bucket each hold a token; every failure spends one token from both. The
service asks right before a queued message reaches crypto, so at most `burst + rate * t` failing messages reach
crypto in `t` seconds, globally, however many links or reconnects carry them. So that a flood cannot lock out the
owner's phone, a message naming an enrolled key may also be admitted from that key's own small lane while the
global bucket is empty; a spoofer who learnt a key id (it travels in clear) burns that key's lane and nothing
else, so the bound grows by one lane per key id an attacker knows. Separately, every key spends from its own
bucket for each command that moves the vehicle, so a valid key cannot toggle the relay as fast as the link allows.
Buckets refill continuously.
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
# Admission caps (key_server/service.py): complete messages one link may have waiting (an honest device waits for
# each answer, so it never has more than one), links served at once, and how long one link may stay connected.
LINK_QUEUE = 4
MAX_LINKS = 8
MAX_LINK_LIFETIME = 300.0
# The lane of one enrolled key id when the global bucket is empty: an honest device fails rarely.
KEY_BURST = 3
KEY_RATE = 0.2
# Per-link buckets kept at most (links are forgotten on disconnect; this bounds the map whatever happens).
MAX_TRACKED_LINKS = 256
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

    def wait(self, now: float) -> float:
        """Seconds until the bucket holds one token again (0 if it holds one now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

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
    key_burst: float = KEY_BURST
    key_rate: float = KEY_RATE
    max_tracked: int = MAX_TRACKED_LINKS
    failures: int = 0  # every failure reported so far (for stats and tests)
    _links: dict[str, Bucket] = field(default_factory=dict)
    _global: Bucket | None = None
    _lanes: dict[bytes, Bucket] = field(default_factory=dict)  # enrolled key ids only; bounded by max_tracked

    def _global_bucket(self) -> Bucket:
        if self._global is None:
            self._global = Bucket(self.global_burst, self.global_rate)
        return self._global

    def allow(self, link: str, now: float, key_id: bytes | None = None) -> bool:
        """True if a message from `link` may be processed now (its link's and the global bucket hold a token).

        `key_id`: the enrolled key the message names, if any; its lane admits it while the global bucket is empty.
        """
        bucket = self._links.get(link)
        if bucket is not None and bucket.available(now) < 1:
            return False
        # Every link, a fresh one too: reconnecting must not buy a way around the global budget.
        if self._global_bucket().available(now) >= 1:
            return True
        return key_id is not None and self._lane(key_id).available(now) >= 1

    def link_allows(self, link: str, now: float) -> bool:
        """True if `link`'s own bucket holds a token (the cheap check as a write arrives, before a message is whole)."""
        bucket = self._links.get(link)
        return bucket is None or bucket.available(now) >= 1

    def _lane(self, key_id: bytes) -> Bucket:
        lane = self._lanes.get(key_id)
        if lane is None:
            if len(self._lanes) >= self.max_tracked:  # bounded memory: the oldest lane goes
                del self._lanes[next(iter(self._lanes))]
            lane = self._lanes[key_id] = Bucket(self.key_burst, self.key_rate)
        return lane

    def failed(self, link: str, now: float, key_id: bytes | None = None) -> None:
        """Record one failure (bad frame, bad signature, stale challenge, wrong or abandoned code) from `link`.

        `key_id` is what `allow` was given: when the global bucket is empty the failure is charged to that lane.
        """
        self.failures += 1
        bucket = self._links.get(link)
        if bucket is None:
            if len(self._links) >= self.max_tracked:  # bounded memory: the oldest bucket goes (global still holds)
                del self._links[next(iter(self._links))]
            bucket = self._links[link] = Bucket(self.link_burst, self.link_rate)
        bucket.take(now)
        if not self._global_bucket().take(now) and key_id is not None:
            self._lane(key_id).take(now)

    def forget(self, link: str) -> None:
        """Drop a link's bucket when it disconnects (its failures stay spent in the global bucket)."""
        self._links.pop(link, None)

    @property
    def tracked(self) -> int:
        """Per-link buckets and key lanes held now (for tests and benchmarks: bounded memory)."""
        return len(self._links) + len(self._lanes)


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

    def retry_after(self, key_id: bytes, now: float) -> float:
        """Seconds until `key_id` may act again (0 if it may now)."""
        bucket = self._buckets.get(key_id)
        return 0.0 if bucket is None else bucket.wait(now)

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
