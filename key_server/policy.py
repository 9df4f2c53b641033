"""Who may do what, when: pure decisions over a KeyRecord, a command and the (guarded) time. No I/O.

Order of checks in authorize(): known key, not revoked, a time statement only from a key that is not itself
limited in time, the clock trusted if the key is limited in time (a guest, or any key with a validity window or a
schedule: docs/PROTOCOL.md §5.7), inside its validity window [valid_from, valid_until) (every role), role permits
the command, inside its weekly schedule. A schedule restricts any key that carries one (the CLI offers it for
guests); an unreadable stored schedule refuses (fail closed).

Schedule text, local wall time in the vehicle's time zone, rules separated by ";":

    Mon-Fri 08:00-18:00; Sat 10:00-14:00
    Fri 22:00-02:00                 (crosses midnight: Fri 22:00 to Sat 02:00)
    Mon,Wed,Fri 07:00-09:00,17:00-19:00
    daily 06:00-23:00               (also: weekdays, weekends)

Days are Mon..Sun (or full names, any case); a range may wrap (Sat-Mon). Times are HH:MM, start inclusive, end
exclusive, 24:00 allowed as an end; an end at or before the start means the window ends the next day.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final

from key_server.store import KeyRecord
from protocol import SECURE_COMMANDS, Command, Role

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
    Role.DRIVER: frozenset({Command.UNLOCK, Command.LOCK, Command.STATUS, Command.START, Command.SET_TIME}),
    Role.GUEST: frozenset({Command.UNLOCK, Command.LOCK, Command.STATUS}),
}

MAX_SCHEDULE_LEN: Final = 512
_MINUTES_PER_DAY: Final = 24 * 60
_MINUTES_PER_WEEK: Final = 7 * _MINUTES_PER_DAY


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
# weekly schedules


@dataclass(frozen=True, slots=True)
class Schedule:
    """A weekly schedule: half-open intervals in minutes since Monday 00:00, sorted and merged."""

    text: str
    windows: tuple[tuple[int, int], ...]

    def contains(self, dt: datetime) -> bool:
        """True if the wall-clock time of `dt` (its own weekday/hour/minute) falls inside the schedule."""
        minute = dt.weekday() * _MINUTES_PER_DAY + dt.hour * 60 + dt.minute
        return any(start <= minute < end for start, end in self.windows)


_DAYS: Final[Mapping[str, int]] = {
    **{name: i for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))},
    **{
        name: i
        for i, name in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
    },
}
_DAY_GROUPS: Final[Mapping[str, tuple[int, ...]]] = {
    "daily": tuple(range(7)),
    "weekdays": (0, 1, 2, 3, 4),
    "weekends": (5, 6),
}
_TIME_RE: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})", re.ASCII)
_EXAMPLE: Final = 'e.g. "Mon-Fri 08:00-18:00; Sat 10:00-14:00"'


@functools.lru_cache(maxsize=256)
def parse_schedule(text: str) -> Schedule:
    """Parse schedule text (module docstring); ValueError with a readable message if it is not valid."""
    if len(text) > MAX_SCHEDULE_LEN:
        raise ValueError(f"schedule is too long (at most {MAX_SCHEDULE_LEN} characters)")
    rules = [rule.strip() for rule in text.split(";")]
    if not any(rules):
        raise ValueError(f"empty schedule: give days and times, {_EXAMPLE}")
    intervals: list[tuple[int, int]] = []
    for rule in rules:
        if not rule:
            continue  # tolerate a trailing ";"
        parts = rule.split()
        if len(parts) != 2:
            raise ValueError(f"cannot read {rule!r}: expected days then times, like \"Mon-Fri 08:00-18:00\"")
        days = _parse_days(parts[0])
        for start, end in _parse_times(parts[1]):
            # An end at or before the start runs into the next day; the week wraps from Sunday to Monday.
            length = end - start if end > start else end + _MINUTES_PER_DAY - start
            for day in days:
                begin = day * _MINUTES_PER_DAY + start
                finish = begin + length
                if finish <= _MINUTES_PER_WEEK:
                    intervals.append((begin, finish))
                else:
                    intervals.append((begin, _MINUTES_PER_WEEK))
                    intervals.append((0, finish - _MINUTES_PER_WEEK))
    return Schedule(text=text.strip(), windows=_merge(intervals))


def _parse_days(spec: str) -> list[int]:
    """'Mon-Fri', 'Sat', 'Mon,Wed', 'Sat-Mon' (wraps), 'daily', 'weekdays', 'weekends' -> day numbers (Mon=0)."""
    days: list[int] = []
    for item in spec.split(","):
        word = item.strip().lower()
        if word in _DAY_GROUPS:
            days.extend(_DAY_GROUPS[word])
            continue
        first, dash, last = word.partition("-")
        start = _day(first, item)
        if not dash:
            days.append(start)
            continue
        stop = _day(last, item)
        span = (stop - start) % 7
        days.extend((start + i) % 7 for i in range(span + 1))
    return sorted(set(days))


def _day(word: str, context: str) -> int:
    """A single day name to its number, or ValueError naming the bad item."""
    try:
        return _DAYS[word]
    except KeyError:
        hint = "use Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range like Mon-Fri, daily, weekdays or weekends"
        raise ValueError(f"unknown day {context!r}: {hint}") from None


def _parse_times(spec: str) -> list[tuple[int, int]]:
    """'08:00-18:00' or '07:00-09:00,17:00-19:00' -> (start, end) minutes of the day; end may be <= start."""
    windows: list[tuple[int, int]] = []
    for item in spec.split(","):
        first, dash, last = item.partition("-")
        if not dash:
            raise ValueError(f"cannot read time window {item!r}: expected HH:MM-HH:MM, like 08:00-18:00")
        start = _minutes(first, item, allow_24=False)
        end = _minutes(last, item, allow_24=True)
        if start == end:
            raise ValueError(f"time window {item!r} is empty: use 00:00-24:00 for a whole day")
        windows.append((start, end))
    return windows


def _minutes(text: str, context: str, *, allow_24: bool) -> int:
    """'HH:MM' -> minutes since midnight; '24:00' only where allowed (as an end)."""
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"cannot read time {text!r} in {context!r}: expected HH:MM (24-hour), like 08:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if allow_24 and hours == 24 and minutes == 0:
        return _MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        raise ValueError(f"time {text!r} in {context!r} is out of range (00:00-23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def _merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort and merge overlapping or touching half-open intervals."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


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
