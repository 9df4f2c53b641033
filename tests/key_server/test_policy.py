"""Policy (roles, validity windows, weekly schedules, CLI times) and the GuardedClock that feeds it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from key_server.clock import HIGH_WATER_KEY, GuardedClock
from key_server.policy import (
    PERMISSIONS,
    Command,
    Refusal,
    authorize,
    parse_schedule,
    parse_when,
)
from key_server.store import KeyRecord, KeyStore
from protocol import Role

BERLIN = ZoneInfo("Europe/Berlin")
# Monday 2026-03-02 12:00 UTC (13:00 in Berlin).
MONDAY_NOON = int(datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp())
_PUB = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
)


def key(role: Role = Role.GUEST, *, valid_from: int | None = None, valid_until: int | None = None,
        schedule: str | None = None, revoked_at: int | None = None, public_key: bytes = _PUB) -> KeyRecord:
    return KeyRecord(
        key_id=hashlib.sha256(public_key).digest()[:4],
        public_key=public_key,
        name="k",
        role=role,
        valid_from=valid_from,
        valid_until=valid_until,
        schedule=schedule,
        created_at=0,
        revoked_at=revoked_at,
    )


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: tzinfo = BERLIN) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp())


# ---- roles x commands ---------------------------------------------------------------------------------------

ALLOWED = {
    Role.OWNER: set(Command) - {Command.SESSION},  # SESSION marks a refused SESSION_OPEN; never a command
    Role.DRIVER: {Command.UNLOCK, Command.LOCK, Command.STATUS, Command.START, Command.SET_TIME, Command.WATCH,
                  Command.AD_SECRET},
    Role.GUEST: {Command.UNLOCK, Command.LOCK, Command.STATUS, Command.AD_SECRET},  # every key recognises its car
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("command", list(Command))
def test_role_command_matrix(role: Role, command: Command) -> None:
    expected = None if command in ALLOWED[role] else Refusal.NOT_PERMITTED
    assert authorize(key(role), command, MONDAY_NOON, UTC, trusted=True) is expected
    assert (command in PERMISSIONS[role]) == (command in ALLOWED[role])


@pytest.mark.parametrize("role", list(Role))
def test_unknown_and_revoked(role: Role) -> None:
    assert authorize(None, Command.UNLOCK, MONDAY_NOON, UTC, trusted=True) is Refusal.UNKNOWN_KEY
    assert authorize(key(role, revoked_at=1), Command.UNLOCK, MONDAY_NOON, UTC, trusted=True) is Refusal.REVOKED
    # Revocation wins over everything else.
    rec = key(role, revoked_at=1, valid_until=5, schedule="garbage")
    assert authorize(rec, Command.LIST_KEYS, MONDAY_NOON, UTC, trusted=True) is Refusal.REVOKED


@pytest.mark.parametrize("role", list(Role))
def test_validity_window_applies_to_every_role(role: Role) -> None:
    rec = key(role, valid_from=1000, valid_until=2000)
    assert authorize(rec, Command.UNLOCK, 999, UTC, trusted=True) is Refusal.NOT_YET_VALID
    assert authorize(rec, Command.UNLOCK, 1000, UTC, trusted=True) is None  # start inclusive
    assert authorize(rec, Command.UNLOCK, 1999, UTC, trusted=True) is None
    assert authorize(rec, Command.UNLOCK, 2000, UTC, trusted=True) is Refusal.EXPIRED  # end exclusive
    assert authorize(key(role, valid_until=2000), Command.UNLOCK, 10**10, UTC, trusted=True) is Refusal.EXPIRED
    assert authorize(key(role, valid_from=2000), Command.UNLOCK, 0, UTC, trusted=True) is Refusal.NOT_YET_VALID


def test_guest_with_window_and_schedule() -> None:
    rec = key(Role.GUEST, valid_from=at(2026, 3, 6, 0), valid_until=at(2026, 3, 9, 0),
              schedule="Fri 18:00-24:00; Sat-Sun 08:00-22:00")
    assert authorize(rec, Command.UNLOCK, at(2026, 3, 6, 17, 59), BERLIN, trusted=True) is Refusal.OUTSIDE_SCHEDULE
    assert authorize(rec, Command.UNLOCK, at(2026, 3, 6, 18), BERLIN, trusted=True) is None
    assert authorize(rec, Command.LOCK, at(2026, 3, 7, 7, 59), BERLIN, trusted=True) is Refusal.OUTSIDE_SCHEDULE
    assert authorize(rec, Command.STATUS, at(2026, 3, 8, 21, 59), BERLIN, trusted=True) is None
    assert authorize(rec, Command.START, at(2026, 3, 8, 12), BERLIN, trusted=True) is Refusal.NOT_PERMITTED
    assert authorize(rec, Command.UNLOCK, at(2026, 3, 13, 19), BERLIN, trusted=True) is Refusal.EXPIRED  # next Friday


def test_schedule_uses_the_vehicle_time_zone() -> None:
    rec = key(Role.GUEST, schedule="Mon 13:00-14:00")
    assert authorize(rec, Command.UNLOCK, MONDAY_NOON, BERLIN, trusted=True) is None  # 13:00 in Berlin
    assert authorize(rec, Command.UNLOCK, MONDAY_NOON, UTC, trusted=True) is Refusal.OUTSIDE_SCHEDULE  # 12:00 in UTC


def test_a_schedule_restricts_any_role_and_a_broken_one_refuses() -> None:
    assert authorize(key(Role.DRIVER, schedule="Sun 10:00-11:00"), Command.START, MONDAY_NOON, UTC, trusted=True) \
        is Refusal.OUTSIDE_SCHEDULE
    assert authorize(key(Role.GUEST, schedule="Moonday 10:00-11:00"), Command.UNLOCK, MONDAY_NOON, UTC, trusted=True) \
        is Refusal.OUTSIDE_SCHEDULE


# ---- schedules ----------------------------------------------------------------------------------------------


def dt(weekday: int, hour: int, minute: int = 0) -> datetime:
    """A wall time in the week of Monday 2026-03-02 (weekday 0 = Monday)."""
    return datetime(2026, 3, 2, hour, minute) + timedelta(days=weekday)


def test_schedule_example_from_the_brief() -> None:
    s = parse_schedule("Mon-Fri 08:00-18:00; Sat 10:00-14:00")
    assert s.contains(dt(0, 8)) and s.contains(dt(4, 17, 59))
    assert not s.contains(dt(0, 7, 59)) and not s.contains(dt(2, 18))
    assert s.contains(dt(5, 10)) and not s.contains(dt(5, 14))
    assert not s.contains(dt(6, 12))


def test_window_crossing_midnight() -> None:
    s = parse_schedule("Fri 22:00-02:00")
    assert not s.contains(dt(4, 21, 59))
    assert s.contains(dt(4, 22)) and s.contains(dt(4, 23, 59))
    assert s.contains(dt(5, 0)) and s.contains(dt(5, 1, 59))
    assert not s.contains(dt(5, 2))
    assert not s.contains(dt(3, 23)) and not s.contains(dt(0, 1))


def test_window_crossing_the_end_of_the_week() -> None:
    s = parse_schedule("Sun 23:00-01:00")
    assert s.contains(dt(6, 23, 30)) and s.contains(dt(0, 0, 30)) and s.contains(dt(7, 0, 30))
    assert not s.contains(dt(0, 1)) and not s.contains(dt(6, 22, 59))


def test_schedule_forms() -> None:
    assert parse_schedule("daily 00:00-24:00").windows == ((0, 7 * 1440),)
    assert parse_schedule("weekdays 08:00-09:00").contains(dt(4, 8)) is True
    assert parse_schedule("weekends 08:00-09:00").contains(dt(4, 8)) is False
    wrap = parse_schedule("Sat-Mon 10:00-11:00")
    assert [wrap.contains(dt(d, 10)) for d in range(7)] == [True, False, False, False, False, True, True]
    multi = parse_schedule("monday,WED 07:00-09:00,17:00-19:00;")
    assert multi.contains(dt(2, 18)) and not multi.contains(dt(1, 18)) and not multi.contains(dt(0, 12))
    assert parse_schedule("  Tue   9:30-10:00 ").contains(dt(1, 9, 45))
    assert parse_schedule("Mon 08:00-12:00; Mon 11:00-13:00").windows == ((480, 780),)  # merged
    assert parse_schedule(" Mon 08:00-12:00 ").text == "Mon 08:00-12:00"
    aware = datetime(2026, 3, 2, 8, 30, tzinfo=timezone(timedelta(hours=5)))
    assert parse_schedule("Mon 08:00-09:00").contains(aware)  # its own wall time


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty schedule"),
        (" ; ;", "empty schedule"),
        ("Mon-Fri", "expected days then times"),
        ("Mon 08:00-18:00 extra", "expected days then times"),
        ("Moonday 08:00-18:00", "unknown day 'Moonday'"),
        ("Mon-Fry 08:00-18:00", "unknown day"),
        ("Mon 8-18", "expected HH:MM"),
        ("Mon 08:00", "expected HH:MM-HH:MM"),
        ("Mon 25:00-26:00", "out of range"),
        ("Mon 08:60-09:00", "out of range"),
        ("Mon 24:00-02:00", "out of range"),
        ("Mon 08:00-08:00", "is empty"),
        ("Mon 0８:00-09:00", "expected HH:MM"),  # a full-width digit is not a digit here
        ("Mon 08:00-18:00" * 100, "too long"),
    ],
)
def test_schedule_errors(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_schedule(text)


SCHEDULE_ALPHABET = st.sampled_from(
    list("MonTueWdhFriSatSunDly-,;: 0123456789\t\n") + ["Mon", "Fri", "Sun", "08:00", "24:00", "daily", "-", "٣"]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(SCHEDULE_ALPHABET, max_size=30).map("".join)))
def test_parse_schedule_only_raises_value_error(text: str) -> None:
    try:
        s = parse_schedule(text)
    except ValueError:
        return
    for start, end in s.windows:
        assert 0 <= start < end <= 7 * 1440


@settings(max_examples=300, deadline=None)
@given(
    day=st.integers(0, 6),
    start=st.integers(0, 1439),
    end=st.integers(1, 1440),
    probe=st.integers(0, 7 * 1440 - 1),
)
def test_single_window_matches_a_direct_computation(day: int, start: int, end: int, probe: int) -> None:
    if start == end:
        return
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    text = f"{names[day]} {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    length = end - start if end > start else end + 1440 - start
    offset = (probe - (day * 1440 + start)) % (7 * 1440)
    expected = offset < length
    when = dt(0, 0) + timedelta(minutes=probe)
    assert parse_schedule(text).contains(when) is expected, (text, probe)


# ---- parse_when ---------------------------------------------------------------------------------------------


def test_parse_when_durations() -> None:
    assert parse_when("90m", 1000, UTC) == 1000 + 90 * 60
    assert parse_when("2h", 1000, UTC) == 1000 + 7200
    assert parse_when("3d", 1000, UTC) == 1000 + 3 * 86400
    assert parse_when(" 1W ", 1000, UTC) == 1000 + 7 * 86400
    assert parse_when("+1d12h", 1000, UTC) == 1000 + 36 * 3600


def test_parse_when_dates() -> None:
    assert parse_when("2026-12-24", 0, BERLIN) == at(2026, 12, 24, 0)
    assert parse_when("2026-12-24", 0, BERLIN, end_of_day=True) == at(2026, 12, 25, 0)
    assert parse_when("2026-12-24T18:00", 0, BERLIN) == at(2026, 12, 24, 18)
    assert parse_when("2026-12-24 18:00", 0, UTC) == at(2026, 12, 24, 18, tz=UTC)
    assert parse_when("2026-12-24t18:00:30", 0, UTC) == at(2026, 12, 24, 18, tz=UTC) + 30
    assert parse_when("2026-12-24T18:00Z", 0, BERLIN) == at(2026, 12, 24, 18, tz=UTC)
    assert parse_when("2026-12-24T18:00+01:00", 0, UTC) == at(2026, 12, 24, 17, tz=UTC)


@pytest.mark.parametrize(
    "text", ["", "soon", "0h", "2x", "h", "-2h", "2026-13-01", "2026-02-30", "24/12/2026", "2026-12-24T25:00",
             "9999-12-31", "99999999999999999999w"],
)
def test_parse_when_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"2h|duration|time"):
        parse_when(text, 0, UTC, end_of_day=text == "9999-12-31")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_when_only_raises_value_error(text: str) -> None:
    try:
        parse_when(text, 1_000_000, BERLIN)
    except ValueError:
        pass


# ---- GuardedClock -------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_never_goes_backwards(tmp_path: Path) -> None:
    fake = FakeTime(1000.9)
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=fake)
        assert clock.now() == 1000
        fake.t = 900
        assert clock.now() == 1000
        assert clock.source_behind_by() == 100
        fake.t = 1005
        assert clock.now() == 1005
        assert clock.high_water == 1005


def test_clock_persists_only_when_it_advanced_enough(tmp_path: Path) -> None:
    fake = FakeTime(10_000)
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=fake, persist_every=60)
        clock.now()
        assert s.get_meta(HIGH_WATER_KEY) == "10000"  # first sight of the time: far past an empty mark
        fake.t = 10_060
        clock.now()
        assert s.get_meta(HIGH_WATER_KEY) == "10000"  # not yet "more than 60 s"
        fake.t = 10_061
        clock.now()
        assert s.get_meta(HIGH_WATER_KEY) == "10061"
        fake.t = 10_070
        clock.now()
        clock.close()
        assert s.get_meta(HIGH_WATER_KEY) == "10070"  # flushed at close


def test_clock_set_back_does_not_revive_an_expired_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    guest = key(Role.GUEST, valid_until=5000)
    fake = FakeTime(4000)
    with KeyStore.open(path, create=True) as s:
        s.add_key(guest)
        with GuardedClock(s, source=fake) as clock:
            assert authorize(s.get_key(guest.key_id), Command.UNLOCK, clock.now(), UTC, trusted=True) is None
            fake.t = 5010
            assert authorize(s.get_key(guest.key_id), Command.UNLOCK, clock.now(), UTC, trusted=True) is Refusal.EXPIRED
    # Restart after someone (or a power cut without an RTC) set the clock back.
    fake.t = 4500
    with KeyStore.open(path, create=True) as s:
        clock = GuardedClock(s, source=fake)
        assert clock.now() == 5010
        assert authorize(s.get_key(guest.key_id), Command.UNLOCK, clock.now(), UTC, trusted=True) is Refusal.EXPIRED
        clock.close()


def test_clock_mark_is_shared_and_never_lowered(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with KeyStore.open(path, create=True) as server, KeyStore.open(path, create=True) as cli:
        ahead = GuardedClock(server, source=FakeTime(9000), persist_every=0)
        ahead.now()
        behind = GuardedClock(cli, source=FakeTime(8000), persist_every=0)
        assert behind.now() == 9000  # loaded the other process's mark
        late = GuardedClock(cli, source=FakeTime(100))
        cli.set_meta(HIGH_WATER_KEY, "9500")  # another process moved it on meanwhile
        late.persist()
        assert cli.get_meta(HIGH_WATER_KEY) == "9500"
        assert late.now() == 9500


def test_clock_survives_a_garbled_mark(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        s.set_meta(HIGH_WATER_KEY, "not a number")
        assert GuardedClock(s, source=FakeTime(42)).now() == 42
        with pytest.raises(ValueError):
            GuardedClock(s, persist_every=-1)
