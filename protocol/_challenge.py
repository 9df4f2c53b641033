"""The vehicle's book of outstanding challenges: random, expiring, single-use per key (PROTOCOL.md §5.1).

A challenge may be redeemed once by each key id. Freshness is what a challenge is for, and a signature
binds the key id, so a replayed message (same key, same challenge) is refused while two devices that
heard the same broadcast challenge (bless notifies every subscriber) can both use it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ._codec import CHALLENGE_LEN
from ._errors import ChallengeError

DEFAULT_CHALLENGE_TTL = 5.0  # seconds; short enough that recorded challenges are useless, long enough for a watch
DEFAULT_CAPACITY = 256  # outstanding challenges kept; the oldest is forgotten first
PAIRING = b"pairing"  # the redeemer name pairing uses: one pairing attempt per challenge
EXPIRED = "expired"  # ChallengeError reasons: the vehicle answers both with CHALLENGE_INVALID (PROTOCOL.md §8.4)
UNKNOWN_OR_USED = "unknown or already used"
CHALLENGE_REASONS = frozenset({EXPIRED, UNKNOWN_OR_USED})


@dataclass(slots=True)
class _Entry:
    expiry: float
    used_by: set[bytes] = field(default_factory=set)


class ChallengeBook:
    """Issues challenges and redeems each at most once per key, before it expires; pure, time is passed in."""

    def __init__(self, ttl: float = DEFAULT_CHALLENGE_TTL, capacity: int = DEFAULT_CAPACITY,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._rng = rng
        self._issued: OrderedDict[bytes, _Entry] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, now: float) -> bytes:
        """A fresh challenge, valid until now + ttl."""
        self.purge(now)
        while len(self._issued) >= self.capacity:
            self._issued.popitem(last=False)
        challenge = self._rng(CHALLENGE_LEN)
        self._issued[challenge] = _Entry(now + self.ttl)
        return challenge

    def check(self, challenge: bytes, now: float, key_id: bytes) -> None:
        """Raise ChallengeError unless `challenge` is outstanding, unexpired and unused by `key_id`."""
        entry = self._issued.get(challenge)
        if entry is None:
            raise ChallengeError(UNKNOWN_OR_USED)
        if now > entry.expiry:
            del self._issued[challenge]
            raise ChallengeError(EXPIRED)
        if key_id in entry.used_by:
            raise ChallengeError(UNKNOWN_OR_USED)

    def redeem(self, challenge: bytes, now: float, key_id: bytes) -> None:
        """Check `challenge` and mark it used by `key_id`, so that key can never redeem it again."""
        self.check(challenge, now, key_id)
        self._issued[challenge].used_by.add(key_id)

    def purge(self, now: float) -> None:
        """Forget expired challenges (a forgotten challenge is unknown, so still refused)."""
        while self._issued:
            oldest, entry = next(iter(self._issued.items()))
            if entry.expiry >= now:
                break
            del self._issued[oldest]
