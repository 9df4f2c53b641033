"""The one vocabulary: commands, roles, lock and door states, as wire codes with their text names.

Each concept is one IntEnum, defined here and imported everywhere (store, policy, audit, service, both CLIs,
hardware). The value is the wire code (PROTOCOL.md §5.3, §6.4, §5.5); the text name (`label`) is what people,
the key store and JSON see. `Role("owner")` and `Role(1)` name the same member, and `str()`/f-strings give the
label, so a member never shows up as a bare number in a message.
"""

from __future__ import annotations

import enum
from typing import Any


class _Labelled(enum.IntEnum):
    """An IntEnum whose text form is its lower-case name, accepted back by the constructor."""

    @property
    def label(self) -> str:
        """The text name: 'unlock', 'owner', 'locked'."""
        return self.name.lower()

    @classmethod
    def _missing_(cls, value: Any) -> Any:
        # Called only when `value` is not a wire code: accept the text name (the store and the CLIs use it).
        if isinstance(value, str):
            text = value.strip().lower().replace("-", "_")
            for member in cls:
                if member.name.lower() == text:
                    return member
        return None

    @classmethod
    def labels(cls) -> list[str]:
        """Every text name, in wire-code order (for `choices=` and error messages)."""
        return [m.label for m in cls]

    @classmethod
    def label_of(cls, code: int) -> str:
        """The text name of a wire code, or 'unknown (N)' for a code this implementation does not know."""
        try:
            return cls(code).label
        except ValueError:
            return f"unknown ({code})"

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)


class Command(_Labelled):
    """Command codes (PROTOCOL.md §5.3)."""

    SESSION = 0x00  # not a command: marks the answer to a refused SESSION_OPEN
    UNLOCK = 0x01
    LOCK = 0x02
    STATUS = 0x03
    START = 0x04
    LIST_KEYS = 0x10
    REVOKE_KEY = 0x11
    READ_AUDIT = 0x12
    SET_TIME = 0x13  # an owner's or driver's statement of the current time (PROTOCOL.md §5.7)
    ISSUE_CODE = 0x14  # owner: a pairing code for a new device, issued remotely (PROTOCOL.md §5.3)
    EDIT_KEY = 0x15  # owner: change a key's name, role, validity window or schedule
    WATCH = 0x16  # owner, driver: lock/door/start changes pushed for the rest of the session (PROTOCOL.md §9.6)
    AD_SECRET = 0x17  # any active key: the vehicle's advertising secret, sealed in the session (PROTOCOL.md §13)
    ROTATE_SECRET = 0x18  # owner: replace the advertising secret; the answer is the new one (PROTOCOL.md §13.1)


# STATUS is secure-only: its report (lock, door, start output) says whether the car is open (PROTOCOL.md §5).
FAST_COMMANDS = frozenset({Command.UNLOCK, Command.LOCK, Command.START})
SECURE_COMMANDS = frozenset(Command) - {Command.SESSION}
ACTUATING_COMMANDS = frozenset({Command.UNLOCK, Command.LOCK, Command.START})  # never resent blindly


class Role(_Labelled):
    """A key's role (PROTOCOL.md §6.4): owner manages keys and reads the audit log; guest is time-limited."""

    OWNER = 1
    DRIVER = 2
    GUEST = 3


class KeyState(_Labelled):
    """A key's state as the vehicle computes it with its guarded time, in a key record (PROTOCOL.md §5.4)."""

    UNKNOWN = 0  # a key record without the state field (an older vehicle)
    ACTIVE = 1
    NOT_YET_VALID = 2
    EXPIRED = 3
    REVOKED = 4


class Via(_Labelled):
    """How a key was enrolled (PROTOCOL.md §5.4): a pairing code, an owner's share, or at the vehicle itself."""

    CODE = 1
    SHARE = 2
    VEHICLE = 3  # `key-server init` or the vehicle's own CLI


class LockState(_Labelled):
    """What the lock is doing, as the actuator believes it and a status record reports it (PROTOCOL.md §5.5)."""

    # Not known: a two-line car before its first command, a toggling fob/garage button, an interrupted pulse.
    UNKNOWN = 0
    LOCKED = 1
    UNLOCKED = 2


class DoorState(_Labelled):
    """The debounced door sensor reading, as a status record reports it; UNKNOWN when no sensor is wired."""

    UNKNOWN = 0
    CLOSED = 1
    OPEN = 2
