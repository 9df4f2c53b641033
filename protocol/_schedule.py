"""Weekly schedule text: one parser for the vehicle's policy, share certificates and both CLIs. Pure, no I/O.

Schedule text, local wall time in the vehicle's time zone, rules separated by ";":

    Mon-Fri 08:00-18:00; Sat 10:00-14:00
    Fri 22:00-02:00                 (crosses midnight: Fri 22:00 to Sat 02:00)
    Mon,Wed,Fri 07:00-09:00,17:00-19:00
    daily 06:00-23:00               (also: weekdays, weekends)

Days are Mon..Sun (or full names, any case); a range may wrap (Sat-Mon). Times are HH:MM, start inclusive, end
exclusive, 24:00 allowed as an end; an end at or before the start means the window ends the next day.
The key store holds up to MAX_SCHEDULE_LEN characters; a share certificate carries at most MAX_SHARE_SCHEDULE
UTF-8 bytes (PROTOCOL.md §12.1), so a certificate stays within one ATT write at MTU 185.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

MAX_SCHEDULE_LEN: Final = 512
MAX_SHARE_SCHEDULE: Final = 64
_MINUTES_PER_DAY: Final = 24 * 60
_MINUTES_PER_WEEK: Final = 7 * _MINUTES_PER_DAY



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
