"""Failed-attempt rate limits: per link and global token buckets, pure (time is passed in).

A link that has never failed is always let through, so a flood from elsewhere cannot lock out an honest
phone; a link that has failed spends from its own bucket and, while the global bucket is empty, is
refused before any crypto runs. Buckets refill continuously.
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
