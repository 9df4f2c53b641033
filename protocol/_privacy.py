"""Privacy on air: the vehicle's advertising secret and the rotating token it advertises (PROTOCOL.md §13).

The vehicle advertises `prand || HMAC-SHA256(secret, transcript(label, prand))[0:6]` with a fresh random
`prand` at every start and every rotation. Its own devices hold the secret and recognise the token; anyone
else sees 10 random-looking bytes that change each time. No clock is involved: the vehicle has no trusted
time after a power cut, and a time-derived token would repeat across boots.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ._crypto import transcript
from ._errors import DecodeError
from ._tlv import decode_fields, encode_fields

LABEL_AD_TOKEN = b"dkey/1 advertising token"
PRAND_LEN = 4
TOKEN_MAC_LEN = 6
TOKEN_LEN = PRAND_LEN + TOKEN_MAC_LEN  # 10 bytes: fits a legacy advertisement beside the 128-bit UUID
AD_SECRET_LEN = 16
MAX_GENERATION = 0xFFFFFFFF
_TAG_GENERATION = 0x67
_TAG_SECRET = 0x68

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class AdSecret:
    """A vehicle's advertising secret and its generation (1 at `init`, +1 at every rotation)."""

    generation: int
    secret: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.generation <= MAX_GENERATION:
            raise ValueError(f"generation must be 1..{MAX_GENERATION}")
        if len(self.secret) != AD_SECRET_LEN:
            raise ValueError(f"an advertising secret is {AD_SECRET_LEN} bytes")

    def __repr__(self) -> str:
        return f"AdSecret(generation={self.generation}, secret=<{AD_SECRET_LEN} bytes>)"  # never print the secret

    @classmethod
    def generate(cls, generation: int = 1, rng: Callable[[int], bytes] = os.urandom) -> AdSecret:
        """A fresh random secret of `generation`."""
        return cls(generation, rng(AD_SECRET_LEN))

    def rotated(self, rng: Callable[[int], bytes] = os.urandom) -> AdSecret:
        """The next generation with a fresh secret; ValueError once the generation counter is exhausted."""
        if self.generation >= MAX_GENERATION:
            raise ValueError("the advertising secret's generation is exhausted")
        return AdSecret.generate(self.generation + 1, rng)

    def encode(self) -> bytes:
        """The AD_SECRET record: 0x67 generation (u32), 0x68 secret (16 bytes)."""
        return encode_fields([(_TAG_GENERATION, self.generation.to_bytes(4, "big")), (_TAG_SECRET, self.secret)])

    @classmethod
    def decode(cls, data: bytes) -> AdSecret:
        """Parse an AD_SECRET record; DecodeError if malformed or incomplete."""
        f = decode_fields(data, {_TAG_GENERATION: (4, 4), _TAG_SECRET: (AD_SECRET_LEN, AD_SECRET_LEN)})
        if not {_TAG_GENERATION, _TAG_SECRET} <= f.keys():
            raise DecodeError("advertising secret record lacks a field")
        generation = int.from_bytes(f[_TAG_GENERATION], "big")
        if generation == 0:
            raise DecodeError("advertising secret generation 0")
        return cls(generation, f[_TAG_SECRET])

    def pack(self) -> bytes:
        """`generation (u32) || secret`: the 20 bytes a share URI's `a=` parameter carries."""
        return self.generation.to_bytes(4, "big") + self.secret

    @classmethod
    def unpack(cls, raw: bytes) -> AdSecret:
        """Parse pack()'s 20 bytes; ValueError if the length or generation is wrong."""
        if len(raw) != 4 + AD_SECRET_LEN:
            raise ValueError(f"an advertising secret is {4 + AD_SECRET_LEN} bytes packed, not {len(raw)}")
        return cls(int.from_bytes(raw[:4], "big"), raw[4:])


def _token_mac(secret: bytes, prand: bytes) -> bytes:
    return hmac.new(secret, transcript(LABEL_AD_TOKEN, prand), hashlib.sha256).digest()[:TOKEN_MAC_LEN]


def make_token(secret: bytes, prand: bytes | None = None) -> bytes:
    """The 10-byte advertising token: prand (4 random bytes unless given) || HMAC(secret, transcript)[0:6]."""
    if len(secret) != AD_SECRET_LEN:
        raise ValueError(f"an advertising secret is {AD_SECRET_LEN} bytes")
    if prand is None:
        prand = os.urandom(PRAND_LEN)
    if len(prand) != PRAND_LEN:
        raise ValueError(f"prand is {PRAND_LEN} bytes")
    return prand + _token_mac(secret, prand)


def resolve_token(token: bytes | None, secrets: Mapping[K, bytes]) -> K | None:
    """The key of the first secret that made `token`, or None (a wrong length or no match)."""
    if token is None or len(token) != TOKEN_LEN:
        return None
    prand, mac = token[:PRAND_LEN], token[PRAND_LEN:]
    for key, secret in secrets.items():
        if len(secret) == AD_SECRET_LEN and hmac.compare_digest(_token_mac(secret, prand), mac):
            return key
    return None
