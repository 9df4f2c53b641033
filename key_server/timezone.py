"""The vehicle's time zone for guest schedules and CLI dates: [server] timezone, else the system's local zone."""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["local_zone", "named_zone", "vehicle_zone"]


def named_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError saying what is allowed if this system does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # ValueError: a path-like or malformed key
        raise ValueError(f"[server] timezone {name!r} is not a time zone this system knows: use an IANA name "
                         "like 'Europe/Berlin' (see /usr/share/zoneinfo), or leave it out for the local zone") from exc


def local_zone() -> tzinfo:
    """The system's current local zone (re-read each time: the Pi's zone may change while the server runs)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None  # astimezone() always attaches one
    return tz


def vehicle_zone(name: str | None) -> tzinfo:
    """named_zone(name) if a zone is configured, else the local zone as of now."""
    return named_zone(name) if name else local_zone()
