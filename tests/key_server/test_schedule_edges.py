"""Schedule and CLI-time edges (key_server/policy.py): merging, several windows a day, 24:00, the longest duration.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md). parse_schedule is cached, so each
test here clears the cache first: the parser itself runs, whatever an earlier test parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from key_server.policy import parse_schedule, parse_when


@pytest.fixture(autouse=True)
def _fresh_parser() -> Iterator[None]:
    parse_schedule.cache_clear()
    yield
    parse_schedule.cache_clear()


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    """Monday 2026-03-02 plus `day` days, at hour:minute UTC."""
    return datetime(2026, 3, 2 + day, hour, minute, tzinfo=UTC)


def test_overlapping_and_touching_windows_merge_into_one() -> None:
    assert parse_schedule("Mon 08:00-12:00; Mon 11:00-13:00").windows == ((480, 780),)
    assert parse_schedule("Mon 08:00-10:00; Mon 10:00-12:00").windows == ((480, 720),)  # touching: one window
    assert parse_schedule("Mon 08:00-12:00; Mon 09:00-10:00").windows == ((480, 720),)  # contained: kept whole
    three = parse_schedule("Mon 08:00-09:00; Mon 08:30-10:00; Mon 09:30-11:00; Tue 08:00-09:00")
    assert three.windows == ((480, 660), (1440 + 480, 1440 + 540))


def test_several_windows_in_one_rule_are_each_honoured() -> None:
    s = parse_schedule("Mon 07:00-09:00,17:00-19:00")
    assert s.windows == ((420, 540), (1020, 1140))
    assert s.contains(_at(0, 8)) and s.contains(_at(0, 18)) and not s.contains(_at(0, 12))


def test_24_00_ends_a_window_at_midnight_and_nothing_later() -> None:
    s = parse_schedule("Fri 20:00-24:00")
    assert s.windows == ((4 * 1440 + 1200, 5 * 1440),)
    assert s.contains(_at(4, 23, 59)) and not s.contains(_at(5, 0, 0))
    for bad in ("Fri 20:00-24:01", "Fri 20:00-25:00", "Fri 24:00-23:00"):
        with pytest.raises(ValueError, match="out of range"):
            parse_schedule(bad)


def test_time_errors_name_the_window_they_are_in() -> None:
    with pytest.raises(ValueError, match=r"time '25:00' in '25:00-26:00'"):
        parse_schedule("Mon 25:00-26:00")
    with pytest.raises(ValueError, match=r"time '26:00' in '08:00-26:00'"):
        parse_schedule("Mon 08:00-26:00")


def test_the_longest_duration_is_a_hundred_366_day_years_and_not_a_minute_more() -> None:
    longest = 100 * 366 * 86400
    assert parse_when("36600d", 1000, UTC) == 1000 + longest
    with pytest.raises(ValueError, match="hundred years"):
        parse_when("36600d1m", 1000, UTC)
    assert parse_when("1m", 1000, UTC) == 1060  # the shortest
    with pytest.raises(ValueError, match="longer than zero"):
        parse_when("0m", 1000, UTC)


def test_a_day_group_followed_by_more_days_keeps_them_all() -> None:
    s = parse_schedule("weekends,Wed 10:00-11:00")
    assert [s.contains(_at(d, 10)) for d in range(7)] == [False, False, True, False, False, True, True]


def test_a_day_range_wraps_over_the_end_of_the_week() -> None:
    s = parse_schedule("Sat-Mon 10:00-11:00")
    assert [s.contains(_at(d, 10)) for d in range(7)] == [True, False, False, False, False, True, True]
    assert s.windows == ((600, 660), (5 * 1440 + 600, 5 * 1440 + 660), (6 * 1440 + 600, 6 * 1440 + 660))
    assert not s.contains(_at(0, 9))  # Monday is day 0 of the week, not a day 7 that wraps into Monday morning


def test_a_bad_range_end_names_the_whole_item() -> None:
    with pytest.raises(ValueError, match="unknown day 'Mon-Fry'"):
        parse_schedule("Mon-Fry 08:00-18:00")
