"""The vehicle's book of outstanding challenges: random, single-use, expiring (PROTOCOL.md §5.1)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

from ._codec import CHALLENGE_LEN
from ._errors import ChallengeError

DEFAULT_TTL = 5.0  # seconds; short enough that recorded challenges are useless, long enough for a watch
DEFAULT_CAPACITY = 256  # outstanding challenges kept; the oldest is forgotten first


class ChallengeBook:
    """Issues challenges and redeems each at most once, before it expires; pure, time is passed in."""

    def __init__(self, ttl: float = DEFAULT_TTL, capacity: int = DEFAULT_CAPACITY,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._rng = rng
        self._issued: OrderedDict[bytes, float] = OrderedDict()  # challenge -> expiry, oldest first

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, now: float) -> bytes:
        """A fresh challenge, valid until now + ttl."""
        self.purge(now)
        while len(self._issued) >= self.capacity:
            self._issued.popitem(last=False)
        challenge = self._rng(CHALLENGE_LEN)
        self._issued[challenge] = now + self.ttl
        return challenge

    def check(self, challenge: bytes, now: float) -> None:
        """Raise ChallengeError unless `challenge` is outstanding and unexpired; consumes nothing."""
        expiry = self._issued.get(challenge)
        if expiry is None:
            raise ChallengeError("unknown or already used")
        if now > expiry:
            del self._issued[challenge]
            raise ChallengeError("expired")

    def redeem(self, challenge: bytes, now: float) -> None:
        """Check and consume `challenge`, so it can never be redeemed again."""
        self.check(challenge, now)
        del self._issued[challenge]

    def purge(self, now: float) -> None:
        """Forget expired challenges."""
        while self._issued:
            oldest, expiry = next(iter(self._issued.items()))
            if expiry >= now:
                break
            del self._issued[oldest]
