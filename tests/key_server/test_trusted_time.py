"""Trusted time (docs/PROTOCOL.md §5.7): a vehicle that boots in the past refuses time-limited keys until an RTC,
NTP or an owner's or driver's statement confirms its clock; statements are bounded and never move time back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from hardware import ActuatorConfig, SimulatedLock
from key_client.driver import VehicleLink
from key_client.errors import VehicleRefused
from key_server.audit import AuditLog
from key_server.clock import (
    EARLIEST,
    HIGH_WATER_KEY,
    NTP_MAX_ERROR_US,
    SKEW,
    GuardedClock,
    ProbeResult,
    Source,
    ntp_probe,
    rtc_probe,
)
from key_server.commands import KeyCommands, to_status_report
from key_server.keyadmin import KeyAdmin
from key_server.store import KeyRecord, KeyStore
from protocol import ClockReport, Command, KeyPair, LockState, Role, Status, StatusReport, set_time_args
from protocol._payloads import TIME_WANTED_HINT

from .harness import T0, Harness

HOUR = 3600
DAY = 86_400


async def fast(h: Harness, device: KeyPair, cmd: Command = Command.UNLOCK) -> StatusReport:
    """One fast-path command on a fresh link; VehicleRefused if refused."""
    link = await h.connect(device)
    try:
        result = await link.command(cmd)
    finally:
        await link.close()
    # A fast-path RESULT carries at most the time_wanted hint (PROTOCOL.md §5.3): the state is the lock's own.
    assert result.data in (b"", TIME_WANTED_HINT)
    return replace(to_status_report(h.lock.status()), time_wanted=StatusReport.decode(result.data).time_wanted)


async def state_time(h: Harness, device: KeyPair, at: int) -> tuple[Status, ClockReport | None]:
    """SET_TIME `at` in a confidential session: the status and, when there is one, the clock report."""
    link: VehicleLink = await h.connect(device)
    try:
        await link.open_secure()
        result = await link.secure(Command.SET_TIME, set_time_args(at),
                                   accept=frozenset(Status))
        return result.status, ClockReport.decode(result.data) if result.data else None
    finally:
        await link.close()


async def refused(h: Harness, device: KeyPair) -> Status:
    with pytest.raises(VehicleRefused) as info:
        await fast(h, device)
    return info.value.status


async def reboot(tmp_path: Path, old: Harness, *, wall: float, **kw: object) -> Harness:
    """Stop `old` (persisting its mark), power off, boot on the same key store with the system clock at `wall`."""
    await old.stop()
    return await Harness(tmp_path, wall=wall, **kw).start()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- power cuts


async def test_a_guest_expired_during_a_72_hour_power_cut_is_refused_until_an_owner_states_the_time(
        tmp_path: Path) -> None:
    h = await Harness(tmp_path, trusted_clock=True).start()
    guest = h.enroll(Role.GUEST, "guest", valid_until=int(h.wall) + HOUR)
    owner = h.enroll(Role.OWNER, "owner")
    assert (await fast(h, guest)).lock is LockState.UNLOCKED  # honest use before the cut
    # Off for 72 h; no RTC, no network: the Pi boots with its clock at zero.
    h = await reboot(tmp_path, h, wall=0)
    try:
        status = await refused(h, guest)
        assert status is Status.CLOCK_UNTRUSTED and status.temporary  # not KEY_EXPIRED: the vehicle cannot know
        # The owner just unlocks; the answer asks for the time, and the owner's device states it.
        report = await fast(h, owner)
        assert report.lock is LockState.UNLOCKED and report.time_wanted
        true_time = T0 + 72 * HOUR
        status, clock = await state_time(h, owner, true_time)
        assert status is Status.OK and clock == ClockReport(true_time, True)
        assert await refused(h, guest) is Status.KEY_EXPIRED
        assert not (await fast(h, owner)).time_wanted  # trusted now: no more asking
        rows = [e for e in h.audit.read(after_seq=0, limit=1000) if e.event == "set_time"]
        assert rows and rows[-1].detail["verdict"] == "confirmed" and rows[-1].detail["stated"] == true_time
    finally:
        await h.stop()


async def test_a_guest_valid_for_a_week_is_let_in_after_a_1_hour_cut_once_the_owner_connected(tmp_path: Path) -> None:
    h = await Harness(tmp_path, trusted_clock=True).start()
    guest = h.enroll(Role.GUEST, "guest", valid_until=int(h.wall) + 7 * DAY)
    owner = h.enroll(Role.OWNER, "owner")
    h = await reboot(tmp_path, h, wall=0)
    try:
        assert await refused(h, guest) is Status.CLOCK_UNTRUSTED
        assert (await fast(h, owner, Command.LOCK)).time_wanted
        assert (await state_time(h, owner, T0 + HOUR))[0] is Status.OK
        assert (await fast(h, guest)).lock is LockState.UNLOCKED
    finally:
        await h.stop()


async def test_owners_and_drivers_without_a_window_work_while_the_clock_is_untrusted(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=0).start()
    try:
        for role in (Role.OWNER, Role.DRIVER):
            report = await fast(h, h.enroll(role, role.label))
            assert report.lock is LockState.UNLOCKED and report.time_wanted
        windowed = h.enroll(Role.DRIVER, "rental", valid_until=T0 + DAY)
        scheduled = h.enroll(Role.DRIVER, "weekdays", schedule="daily 00:00-24:00")
        assert await refused(h, windowed) is Status.CLOCK_UNTRUSTED
        assert await refused(h, scheduled) is Status.CLOCK_UNTRUSTED
    finally:
        await h.stop()


def test_a_refusal_as_expired_is_durable_before_it_is_sent(tmp_path: Path) -> None:
    """A power cut right after the refusal must not let the key back in (the 60 s persist window)."""
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        wall = [float(T0)]
        clock = GuardedClock(store, source=lambda: wall[0], persist_every=60)
        assert clock.confirm(T0, Source.RTC)
        guest = KeyPair.generate()
        store.add_key(KeyRecord(guest.key_id, guest.public_bytes, "guest", Role.GUEST, None, T0 + 10, None, T0))
        commands = KeyCommands(KeyAdmin(store, AuditLog(store), clock),
                               SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=1)))
        wall[0] = T0 + 30  # past the key's end, within the 60 s the mark may lag behind
        outcome = asyncio.run(commands.run(guest.key_id, Command.UNLOCK, b""))
        assert outcome.status is Status.KEY_EXPIRED
        # What a power cut now would leave on disk, read by another connection as a reboot would:
        with KeyStore.open(tmp_path / "keys.db") as after_cut:
            assert int(after_cut.get_meta(HIGH_WATER_KEY) or 0) >= T0 + 30


# ---------------------------------------------------------------------------------------------- statements


async def test_a_guests_statement_is_not_permitted_and_changes_nothing(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=0).start()
    try:
        guest = h.enroll(Role.GUEST, "guest", valid_until=T0 + DAY)
        status, clock = await state_time(h, guest, T0)
        assert status is Status.NOT_PERMITTED and clock is None and not h.clock.trusted
        plain_guest = h.enroll(Role.GUEST, "no window")  # a guest is limited in time even without a window
        status, clock = await state_time(h, plain_guest, T0)
        assert status is Status.NOT_PERMITTED and clock is None and not h.clock.trusted
        windowed_owner = h.enroll(Role.OWNER, "owner until Friday", valid_until=T0 + DAY)
        assert (await state_time(h, windowed_owner, T0))[0] is Status.NOT_PERMITTED and not h.clock.trusted
    finally:
        await h.stop()


async def test_a_drivers_statement_counts_within_its_shorter_bound(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=T0).start()  # system clock = mark = T0, not trusted
    try:
        driver = h.enroll(Role.DRIVER, "driver")
        status, clock = await state_time(h, driver, T0 + 4 * DAY)  # further than a driver may move it
        assert status is Status.BAD_REQUEST and clock == ClockReport(T0, False) and not h.clock.trusted
        status, clock = await state_time(h, driver, T0 + 2 * DAY)
        assert status is Status.OK and clock == ClockReport(T0 + 2 * DAY, True)
    finally:
        await h.stop()


async def test_an_owners_statement_too_far_back_or_forward_is_refused_with_the_vehicles_time(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=T0).start()
    try:
        owner = h.enroll(Role.OWNER, "owner")
        behind = await state_time(h, owner, T0 - SKEW - 1)
        assert behind == (Status.BAD_REQUEST, ClockReport(T0, False))
        ahead = await state_time(h, owner, T0 + 367 * DAY)
        assert ahead == (Status.BAD_REQUEST, ClockReport(T0, False))
        assert (await state_time(h, owner, EARLIEST - 1))[0] is Status.BAD_REQUEST
        assert not h.clock.trusted and h.clock.now() == T0  # refused statements moved nothing
        slightly_behind = await state_time(h, owner, T0 - 30)  # within the skew: confirms, never goes back
        assert slightly_behind == (Status.OK, ClockReport(T0, True))
        # Trusted now: a statement may no longer move it further than the skew.
        assert (await state_time(h, owner, T0 + HOUR))[0] is Status.BAD_REQUEST
        rows = [e.detail for e in h.audit.read(after_seq=0, limit=1000) if e.event == "set_time"]
        assert [r["verdict"] for r in rows] == ["behind", "too far ahead", "before 2026", "confirmed",
                                                "too far ahead"]
    finally:
        await h.stop()


async def test_malformed_statements_are_bad_requests(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=T0).start()
    try:
        owner = h.enroll(Role.OWNER, "owner")
        link = await h.connect(owner)
        await link.open_secure()
        for args in (b"", b"\x00" * 7, b"\xff" * 8):
            with pytest.raises(VehicleRefused) as info:
                await link.secure(Command.SET_TIME, args)
            assert info.value.status is Status.BAD_REQUEST
        await link.close()
        assert not h.clock.trusted
    finally:
        await h.stop()


async def test_a_vehicle_that_counts_no_driver_statements_refuses_them(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=T0, statements={Role.OWNER: 366 * DAY}).start()
    try:
        driver = h.enroll(Role.DRIVER, "driver")
        assert not (await fast(h, driver)).time_wanted  # its statement would not count: not asked
        assert (await state_time(h, driver, T0))[0] is Status.NOT_PERMITTED and not h.clock.trusted
    finally:
        await h.stop()


async def test_set_time_on_the_fast_path_is_not_supported(tmp_path: Path) -> None:
    h = await Harness(tmp_path, wall=T0).start()
    try:
        link = await h.connect(h.enroll(Role.OWNER, "owner"))
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.SET_TIME, set_time_args(T0))
        assert info.value.status is Status.NOT_SUPPORTED and not h.clock.trusted
        await link.close()
    finally:
        await h.stop()


# ---------------------------------------------------------------------------------------------- the clock


class Fake:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_once_trusted_the_time_runs_on_the_monotonic_clock_and_never_back(tmp_path: Path) -> None:
    system, mono = Fake(0), Fake(500.0)
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=system, monotonic=mono)
        assert clock.confirm(T0, Source.OWNER) and clock.trusted
        mono.t += 100
        assert clock.now() == T0 + 100  # the system clock still reads 1970: time runs on since the confirmation
        system.t = T0 + 5000  # forward only ever expires keys early: taken
        assert clock.now() == T0 + 5000
        system.t = 0
        assert clock.now() == T0 + 5000


def test_a_new_clock_starts_untrusted_even_with_a_mark(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        with GuardedClock(s, source=Fake(T0)) as clock:
            assert clock.confirm(T0, Source.RTC)
        assert not GuardedClock(s, source=Fake(T0)).trusted


def rtc_dir(tmp_path: Path, **rtcs: str | None) -> Path:
    root = tmp_path / "rtc"
    for name, value in rtcs.items():
        (root / name).mkdir(parents=True)
        if value is not None:
            (root / name / "since_epoch").write_text(value + "\n")
            (root / name / "hctosys").write_text("1\n")
    return root


def test_a_readable_rtc_confirms_the_clock(tmp_path: Path) -> None:
    root = rtc_dir(tmp_path, rtc0=None, rtc1=str(T0 + 72 * HOUR))  # rtc0 unreadable, rtc1 fine
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        s.set_meta(HIGH_WATER_KEY, str(T0))
        clock = GuardedClock(s, source=Fake(0), probes={Source.RTC: rtc_probe(root)})
        assert not clock.trusted
        clock.refresh()
        assert clock.trusted and clock.trusted_by is Source.RTC and clock.now() == T0 + 72 * HOUR


@pytest.mark.parametrize("reading", [str(T0 - HOUR), "946684800", "garbage"])  # behind the mark, 2000, unreadable
def test_an_rtc_that_lost_its_time_confirms_nothing(tmp_path: Path, reading: str) -> None:
    root = rtc_dir(tmp_path, rtc0=reading)
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        s.set_meta(HIGH_WATER_KEY, str(T0))
        clock = GuardedClock(s, source=Fake(0), probes={Source.RTC: rtc_probe(root)})
        clock.refresh()
        assert not clock.trusted
        [(name, said)] = clock.describe()
        assert name is Source.RTC and said.time is None


def test_no_rtc_at_all_confirms_nothing(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=Fake(T0), probes={Source.RTC: rtc_probe(tmp_path / "none")})
        clock.refresh()
        assert not clock.trusted


def test_a_synchronised_ntp_clock_confirms_and_an_unsynchronised_one_does_not(tmp_path: Path) -> None:
    state = {"maxerror": NTP_MAX_ERROR_US}  # what the kernel reports after boot with no NTP daemon
    probe = ntp_probe(adjtimex=lambda: (5, state["maxerror"]), synchronized_file=tmp_path / "synchronized",
                      system=Fake(T0 + 10))
    mono = Fake(0.0)
    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=Fake(T0 + 10), probes={Source.NTP: probe}, monotonic=mono)
        clock.refresh()
        assert not clock.trusted
        state["maxerror"] = 250_000  # the daemon synchronised: maximum error 0.25 s
        clock.refresh()
        assert not clock.trusted  # probes are asked at most every few seconds
        mono.t += 10
        clock.refresh()
        assert clock.trusted and clock.trusted_by is Source.NTP


async def test_the_service_asks_its_sources_at_start_and_audits_the_confirmation(tmp_path: Path) -> None:
    root = rtc_dir(tmp_path, rtc0=str(T0))
    h = await Harness(tmp_path, wall=0, probes={Source.RTC: rtc_probe(root)}).start()
    try:
        assert h.clock.trusted
        guest = h.enroll(Role.GUEST, "guest", valid_until=T0 + HOUR)
        assert (await fast(h, guest)).lock is LockState.UNLOCKED
        rows = [e for e in h.audit.read(after_seq=0, limit=100) if e.event == "clock_trusted"]
        assert len(rows) == 1 and rows[0].detail["source"] == "rtc"
    finally:
        await h.stop()


# ---------------------------------------------------------------------------------------------- config and doctor


def _doctor(tmp_path: Path, clock_table: str) -> dict[str, tuple[str, str]]:
    from key_server.cli import main as cli_main
    from key_server.config import load_config
    from key_server.doctor import run_checks

    assert cli_main(["--state-dir", str(tmp_path), "init"]) == 0
    path = tmp_path / "config.toml"
    path.write_text('[server]\nradio = "sim"\n\n[clock]\n' + clock_table)
    checks = asyncio.run(run_checks(load_config(path, tmp_path)))
    return {c.name: (c.level, c.detail) for c in checks}


def test_doctor_reports_each_trusted_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checks = _doctor(tmp_path, "trust_rtc = false\ntrust_ntp = false\ntrust_system = true\n")
    assert checks["clock source system"][0] == "ok" and "clock source rtc" not in checks
    assert "owner or driver device" in checks["clock source devices"][1] and "clock trust" not in checks


def test_doctor_warns_when_nothing_can_confirm_the_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = "".join(f"trust_{s} = false\n" for s in ("rtc", "ntp", "owner", "driver", "system"))
    checks = _doctor(tmp_path, off)
    assert checks["clock trust"][0] == "warn" and "always refused" in checks["clock trust"][1]


def test_clock_options_are_checked(tmp_path: Path) -> None:
    from key_server.config import ConfigError, load_config

    path = tmp_path / "config.toml"
    path.write_text('[clock]\ndriver_max_forward = "10m"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, tmp_path)
    assert info.value.key == "clock.driver_max_forward"
    path.write_text('[clock]\ntrust_driver = false\nowner_max_forward = "30d"\n')
    opts = load_config(path, tmp_path).clock
    assert not opts.trust_driver and opts.owner_max_forward_s == 30 * DAY and Source.RTC in opts.probes()
    from key_server.runner import statement_bounds

    assert statement_bounds(opts) == {Role.OWNER: 30 * DAY}


# ---------------------------------------------------------------------------------------------- wire forms


def test_time_wanted_and_the_clock_report_round_trip() -> None:
    from protocol import DecodeError, DoorState, parse_set_time_args, with_time_wanted

    plain = StatusReport(LockState.LOCKED, DoorState.CLOSED, False)
    assert plain.encode() == bytes.fromhex("300101310101320100")  # unchanged when not asked
    wanted = with_time_wanted(plain.encode())
    assert wanted == bytes.fromhex("300101310101320100330101") and StatusReport.decode(wanted).time_wanted
    assert StatusReport.decode(with_time_wanted(b"")).time_wanted
    assert ClockReport.decode(ClockReport(T0, False).encode()) == ClockReport(T0, False)
    for bad in (b"", bytes.fromhex("600800000000000000ff"), bytes.fromhex("6008000000006b49d200610102")):
        with pytest.raises(DecodeError):
            ClockReport.decode(bad)
    assert parse_set_time_args(set_time_args(T0)) == T0


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="adjtimex is Linux's")
def test_the_real_adjtimex_can_be_read_without_privilege() -> None:
    from key_server.clock import read_adjtimex

    rc, maxerror = read_adjtimex()
    assert 0 <= rc <= 5 and maxerror >= 0


def test_re_confirming_a_trusted_clock_does_not_write_to_disk_each_time(tmp_path: Path) -> None:
    """The RTC is asked every few seconds: only the first confirmation is written at once (SD card wear)."""
    reading = {"t": str(T0)}
    root = tmp_path / "rtc" / "rtc0"
    root.mkdir(parents=True)

    def probe() -> ProbeResult:
        (root / "since_epoch").write_text(reading["t"])
        return rtc_probe(tmp_path / "rtc")()

    with KeyStore.open(tmp_path / "k.db", create=True) as s:
        clock = GuardedClock(s, source=Fake(0), probes={Source.RTC: probe}, persist_every=60)
        clock.refresh(force=True)
        assert clock.trusted and s.get_meta(HIGH_WATER_KEY) == str(T0)
        reading["t"] = str(T0 + 30)
        clock.refresh(force=True)
        assert clock.now() >= T0 + 30 and s.get_meta(HIGH_WATER_KEY) == str(T0)  # within persist_every: not yet
