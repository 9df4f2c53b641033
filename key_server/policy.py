"""Who may do what, when: pure decisions over a KeyRecord, a command and the (guarded) time. No I/O.

Order of checks in authorize(): known key, not revoked, a time statement only from a key that is not itself
limited in time, the clock trusted if the key is limited in time (a guest, or any key with a validity window or a
schedule: docs/PROTOCOL.md §5.7), inside its validity window [valid_from, valid_until) (every role), role permits
the command, inside its weekly schedule. A schedule restricts any key that carries one (the CLI offers it for
guests); an unreadable stored schedule refuses (fail closed).

The schedule text and its parser live in protocol/_schedule.py (share certificates carry schedules too); they
are re-exported here so key_server code keeps importing them from policy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Final

from dkey_link.when import parse_when  # the CLI time parser both CLIs share (re-exported)
from key_server.store import KeyRecord
from protocol import MAX_SCHEDULE_LEN, SECURE_COMMANDS, Command, Role, Schedule, parse_schedule

__all__ = [
    "MAX_SCHEDULE_LEN",
    "PERMISSIONS",
    "Refusal",
    "Schedule",
    "authorize",
    "may_state_time",
    "parse_schedule",
    "parse_when",
    "time_limited",
]


class Refusal(enum.StrEnum):
    """Why a command was refused (for the audit log; peers see a uniform refusal, docs/PROTOCOL.md §8.4)."""

    UNKNOWN_KEY = "unknown_key"
    REVOKED = "revoked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NOT_PERMITTED = "not_permitted"
    CLOCK_UNTRUSTED = "clock_untrusted"


PERMISSIONS: Final[Mapping[Role, frozenset[Command]]] = {
    Role.OWNER: SECURE_COMMANDS,
    Role.DRIVER: frozenset({Command.UNLOCK, Command.LOCK, Command.STATUS, Command.START, Command.SET_TIME,
                            Command.WATCH, Command.AD_SECRET}),
    # AD_SECRET: every key that may open the car may recognise it on air (PROTOCOL.md §13).
    Role.GUEST: frozenset({Command.UNLOCK, Command.LOCK, Command.STATUS, Command.AD_SECRET}),
}


def time_limited(rec: KeyRecord) -> bool:
    """True for a key whose use depends on the time: a guest, or any key with a validity window or schedule."""
    return (rec.role is Role.GUEST or rec.valid_from is not None or rec.valid_until is not None
            or rec.schedule is not None)


def may_state_time(rec: KeyRecord) -> bool:
    """True if the key's time statements count (SET_TIME): an unrevoked owner or driver not limited in time.

    A key limited in time would be vouching for its own validity, so its statements never count.
    """
    return not rec.revoked and not time_limited(rec) and Command.SET_TIME in PERMISSIONS.get(rec.role, frozenset())


def authorize(rec: KeyRecord | None, command: Command, now: int, tz: tzinfo, *, trusted: bool) -> Refusal | None:
    """None if `rec` may run `command` at Unix time `now` (wall time in `tz` for schedules), else why not.

    `trusted` says whether the vehicle's clock is confirmed (clock.GuardedClock.trusted); while it is not, a key
    limited in time is refused CLOCK_UNTRUSTED whatever `now` says.
    """
    if rec is None:
        return Refusal.UNKNOWN_KEY
    if rec.revoked:
        return Refusal.REVOKED
    if command is Command.SET_TIME and not may_state_time(rec):
        return Refusal.NOT_PERMITTED
    if not trusted and time_limited(rec):
        return Refusal.CLOCK_UNTRUSTED
    if rec.valid_from is not None and now < rec.valid_from:
        return Refusal.NOT_YET_VALID
    if rec.valid_until is not None and now >= rec.valid_until:
        return Refusal.EXPIRED
    if command not in PERMISSIONS.get(rec.role, frozenset()):
        return Refusal.NOT_PERMITTED
    if rec.schedule is not None:
        try:
            schedule = parse_schedule(rec.schedule)
        except ValueError:
            return Refusal.OUTSIDE_SCHEDULE
        if not schedule.contains(datetime.fromtimestamp(now, tz)):
            return Refusal.OUTSIDE_SCHEDULE
    return None


