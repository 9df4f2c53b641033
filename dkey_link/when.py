"""Times given on a command line ("2026-12-24", "2026-12-24T18:00", "90m", "3d"), read the same way by both CLIs.

One parser for both CLIs: `key-server pair --expires` and `edit` (through key_server.policy, in the vehicle's
time zone), `key-client share --until`, `issue-code` and `edit` (in the device's local time zone).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final

__all__ = ["WHEN_HELP", "parse_when"]

_DURATION_RE: Final = re.compile(r"\+?((?:[0-9]+[mhdw])+)", re.ASCII)
_DURATION_PART_RE: Final = re.compile(r"([0-9]+)([mhdw])", re.ASCII)
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9]{2}:?[0-9]{2})?)?", re.ASCII | re.IGNORECASE
)
_MAX_DURATION: Final = 100 * 366 * 86400
WHEN_HELP: Final = (
    "use a date (2026-12-24), a date and time (2026-12-24T18:00, local time unless it has an offset) "
    "or a duration from now (90m, 2h, 3d, 1w, 1d12h)"
)


def parse_when(text: str, now: int, tz: tzinfo | None = None, *, end_of_day: bool = False) -> int:
    """A CLI time as Unix seconds; durations count from `now`, a bare date is its 00:00 in `tz` (None: local),
    or with end_of_day the next 00:00 (an exclusive end bound). ValueError with a hint otherwise."""
    tz = tz or datetime.now().astimezone().tzinfo
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
        raise ValueError(f"cannot read {text!r} as a time: {WHEN_HELP}")
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
        raise ValueError(f"cannot read {text!r} as a time ({exc}): {WHEN_HELP}") from None
