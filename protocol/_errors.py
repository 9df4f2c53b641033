"""The protocol's one exception tree, split by who is at fault (see PROTOCOL.md §8)."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Result status codes carried in RESULT, secure responses and ERROR messages (PROTOCOL.md §8)."""

    OK = 0x00
    DENIED = 0x01  # uniform: unknown key, bad signature, revoked key; never says which
    CHALLENGE_INVALID = 0x02  # unknown, used or expired challenge: fetch a fresh one and retry
    NOT_PERMITTED = 0x03  # authenticated, but the key's role does not allow this command
    KEY_EXPIRED = 0x04
    KEY_NOT_YET_VALID = 0x05
    OUTSIDE_SCHEDULE = 0x06
    BUSY = 0x07  # rate-limited: retry later
    ACTUATOR_FAILED = 0x08  # authorised, but the lock reported a fault: it may have moved
    DOOR_OPEN = 0x09  # lock refused while the door is open
    NOT_SUPPORTED = 0x0A  # unknown command, or an output that is not wired
    BAD_REQUEST = 0x0B  # arguments malformed for this command
    PAIRING_REFUSED = 0x0C  # uniform: unknown, expired or exhausted pairing slot, or wrong code
    MALFORMED = 0x0D  # the message did not decode or was not expected now
    INTERNAL_ERROR = 0x0E
    CLOCK_UNTRUSTED = 0x0F  # a time-limited key, while the vehicle's clock is not yet confirmed (§5.7)
    NO_CHANGE = 0x10  # the request changes nothing (already revoked, list not newer, key already enrolled)
    LAST_OWNER = 0x11  # refused: it would leave the vehicle without an active owner

    @property
    def may_have_acted(self) -> bool:
        """True if, after this status, the vehicle may have moved the lock (PROTOCOL.md §8)."""
        return self in _MAY_HAVE_ACTED

    @property
    def temporary(self) -> bool:
        """True if a retry (with a fresh challenge, or a little later) can cure this status."""
        return self in _TEMPORARY


# Statuses after which the vehicle may have moved the lock; everything else means it did nothing.
_MAY_HAVE_ACTED = frozenset({Status.OK, Status.ACTUATOR_FAILED, Status.INTERNAL_ERROR})
# Statuses that a retry (with a fresh challenge, or a little later) can cure. NO_CHANGE and LAST_OWNER are not:
# the same request gets the same answer until something else changes the vehicle's key store.
_TEMPORARY = frozenset({Status.CHALLENGE_INVALID, Status.BUSY, Status.OUTSIDE_SCHEDULE, Status.KEY_NOT_YET_VALID,
                        Status.CLOCK_UNTRUSTED})


class KeyProtocolError(Exception):
    """Base of every error this package raises."""


class LocalProtocolError(KeyProtocolError):
    """We (the caller of this package) did something the protocol does not allow."""


class RemoteProtocolError(KeyProtocolError):
    """The peer sent something the protocol does not allow."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes that are not a well-formed message: unknown version or type, bad length, trailing bytes."""


class FramingError(RemoteProtocolError, ValueError):
    """A GATT chunk that does not fit the framing: bad header, sequence gap, oversize or expired message."""


class AuthenticationError(RemoteProtocolError):
    """A signature, MAC or AEAD tag did not verify."""


class ReplayError(RemoteProtocolError):
    """A counter or challenge was seen before, or is not the one expected."""


class ChallengeError(RemoteProtocolError):
    """A challenge is unknown, already used or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"challenge {reason}")
        self.reason = reason


class CommandFailed(KeyProtocolError):
    """The vehicle answered a command with a status other than OK (device side)."""

    def __init__(self, status: Status, *, authenticated: bool) -> None:
        super().__init__(f"vehicle refused: {status.name.lower().replace('_', ' ')}")
        self.status = status
        self.authenticated = authenticated

    @property
    def may_have_succeeded(self) -> bool:
        """True if the vehicle may have acted despite the failure (an unauthenticated answer proves nothing)."""
        return self.status in _MAY_HAVE_ACTED or not self.authenticated

    @property
    def temporary(self) -> bool:
        """True if trying again (with a fresh challenge or later) may succeed."""
        return self.status in _TEMPORARY
