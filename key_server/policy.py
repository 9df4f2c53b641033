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
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final

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
                            Command.WATCH}),
    Role.GUEST: frozenset({Command.UNLOCK, Command.LOCK, Command.STATUS}),
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


# ------------------------------------------------------------------------------------------------------------
# times given on the command line

_DURATION_RE: Final = re.compile(r"\+?((?:[0-9]+[mhdw])+)", re.ASCII)
_DURATION_PART_RE: Final = re.compile(r"([0-9]+)([mhdw])", re.ASCII)
_UNIT_SECONDS: Final[Mapping[str, int]] = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9]{2}:?[0-9]{2})?)?", re.ASCII | re.IGNORECASE
)
_MAX_DURATION: Final = 100 * 366 * 86400
_WHEN_HELP: Final = (
    "use a date (2026-12-24), a date and time (2026-12-24T18:00, local time unless it has an offset) "
    "or a duration from now (90m, 2h, 3d, 1w, 1d12h)"
)


def parse_when(text: str, now: int, tz: tzinfo, *, end_of_day: bool = False) -> int:
    """A CLI time ("2026-12-24", "2026-12-24T18:00", "90m", "2h", "3d", "1w") as Unix seconds.

    Durations count from `now`. A bare date means its 00:00 in `tz`, or with end_of_day=True the end of that
    day (the next 00:00), which suits an exclusive `--expires` bound. ValueError with a hint otherwise.
    """
    value = text.strip().lower()
    duration = _DURATION_RE.fullmatch(value)
    if duration is not None:
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(duration.group(1)))
        if seconds <= 0:
            raise ValueError(f"duration {text!r} must be longer than zero")
        if seconds > _MAX_DURATION:
            raise ValueError(f"duration {text!r} is longer than a hundred years")
        return now + seconds
    if _ISO_RE.fullmatch(value) is None:
        raise ValueError(f"cannot read {text!r} as a time: {_WHEN_HELP}")
    iso = value.upper().replace("Z", "+00:00")
    try:
        if len(iso) == 10:
            day = date.fromisoformat(iso)
            if end_of_day:
                day += timedelta(days=1)
            moment = datetime.combine(day, time(0, 0), tzinfo=tz)
        else:
            moment = datetime.fromisoformat(iso)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
        return int(moment.timestamp())
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"cannot read {text!r} as a time ({exc}): {_WHEN_HELP}") from None
