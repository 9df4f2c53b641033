"""The application layer (key_client.app.DeviceApp) called directly, as the CLI and the proximity runner do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dkey_link.mock import MockAir
from key_client.app import AUDIT_PAGE, KEY_PAGE, DeviceApp, RadioChoice
from key_client.errors import OutcomeUnknown, VehicleRefused
from protocol import Command, LockState, Role

from ..key_server.harness import Harness


async def no_passphrase(prompt: str, confirm: bool) -> bytes:
    raise AssertionError("no key here is protected")


def device_app(h: Harness, tmp_path: Path, air: MockAir | None = None) -> DeviceApp:
    return DeviceApp(tmp_path / "kc", RadioChoice("mock"), passphrase=no_passphrase, scan_time=1.0,
                     central_factory=lambda: (air or h.air).central(name="key-client"))


async def test_pair_then_command_returns_the_vehicles_report(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    entry = await app.pair(h.new_code(role=Role.OWNER, name="laptop"), name="van")
    assert entry.name == "van" and entry.vehicle_id == h.identity.key_id
    done = await app.command(Command.UNLOCK)
    # A fast-path answer carries no report (PROTOCOL.md §5.3): OK is the answer, the lock really moved.
    assert done.command is Command.UNLOCK and done.report is None and h.lock.status().lock is LockState.UNLOCKED
    assert done.entry.address_hint == h.peripheral.address
    assert [e.name for e in app.vehicles()[1]] == ["van"]


async def test_keys_and_audit_are_read_across_pages(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code(name="laptop"))
    for i in range(KEY_PAGE * 2 + 5):
        h.enroll(Role.GUEST, f"guest-{i}")
    listing = await app.keys()
    assert len(listing.keys) == KEY_PAGE * 2 + 6 and len({k.key_id for k in listing.keys}) == len(listing.keys)
    for _ in range(AUDIT_PAGE + 20):
        h.audit.append("status", ts=int(h.wall))
    records = (await app.audit(limit=AUDIT_PAGE + 10, after=3)).records
    assert [r.seq for r in records] == list(range(4, 4 + AUDIT_PAGE + 10))
    newest = (await app.audit(limit=5)).records
    first = newest[0].seq  # the newest five when it was read (reads are audited too, once the link ends)
    assert [r.seq for r in newest] == list(range(first, first + 5)) and first > records[-1].seq


async def _read_audit_count(h: Harness, since: int) -> int:
    """How many READ_AUDIT requests the vehicle answered in sessions that ended after entry `since`."""
    for _ in range(200):  # the vehicle audits a session's reads when it sees the link end: wait for that
        if not h.service.links:
            break
        await asyncio.sleep(0.01)
    rows = [dict(e.detail) for e in h.audit.read(after_seq=since, limit=1000) if e.event == "admin"]
    return sum(int(d["count"]) for d in rows if d.get("command") == "read_audit")


async def test_audit_stops_reading_at_the_head_and_adds_one_entry(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code(name="laptop"))
    for _ in range(5):  # few enough for one page (a page holds what fits in one message, at most AUDIT_PAGE)
        h.audit.append("status", ts=int(h.wall))
    head = h.audit.head()[0]
    records = (await app.audit(limit=10_000, after=0)).records
    assert [r.seq for r in records] == list(range(1, head + 1))
    assert await _read_audit_count(h, head) == 1  # one page held it all and ended at the head: no empty page
    assert h.audit.head()[0] == head + 1  # the whole read left one entry behind, not one per page
    head = h.audit.head()[0]
    newest = (await app.audit(limit=10_000)).records  # "the newest N" asks for the head first: two requests
    assert newest[-1].seq == head and await _read_audit_count(h, head) == 2
    assert h.audit.head()[0] == head + 1


async def test_a_driver_key_is_refused_owner_commands_in_plain_words(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code(role=Role.DRIVER))
    with pytest.raises(VehicleRefused, match="only owner keys"):
        await app.keys()


async def test_cancelled_after_the_unlock_was_written_is_outcome_unknown(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code())
    reached = asyncio.Event()
    real_unlock = h.lock.unlock

    async def unlock():  # type: ignore[no-untyped-def]
        h.air.latency_down = 60.0  # the answer is on its way back, but not within this test
        reached.set()
        return await real_unlock()

    h.lock.unlock = unlock  # type: ignore[method-assign]
    task = asyncio.create_task(app.command(Command.UNLOCK))
    await asyncio.wait_for(reached.wait(), 10)
    task.cancel()  # what Ctrl-C does to the command's task
    with pytest.raises(OutcomeUnknown, match="interrupted after the unlock command was sent") as err:
        async with asyncio.timeout(1.0):  # at once: not after the answer timeout, nor the next link check
            await task
    assert err.value.may_have_succeeded
    h.air.latency_down = 0.0


async def test_cancelled_before_anything_was_sent_stays_cancelled(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code())
    commands = h.service.stats.commands
    empty = MockAir()  # nobody advertises: the command is still looking for its vehicle
    task = asyncio.create_task(device_app(h, tmp_path, empty).command(Command.UNLOCK))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.service.stats.commands == commands


async def test_rejects_a_listener_reading_the_lock_and_door_state_from_status(h: Harness, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` reads the report inside the confidential session: nothing the vehicle sends carries it in clear."""
    from protocol import MAX_MESSAGE, Reassembler, decode
    from protocol._codec import Result, SecureResponse

    h.trust_clock()  # a guest's key is limited in time: it works only once the vehicle trusts its clock
    app = device_app(h, tmp_path)
    await app.pair(h.new_code(role=Role.GUEST, name="guest watch"))  # any role, not only owners
    await app.command(Command.UNLOCK)
    heard: list[bytes] = []
    real_notify = h.peripheral.notify

    async def listening_notify(chunk: bytes, link: str | None = None) -> None:
        heard.append(chunk)  # what a radio listener in range receives
        await real_notify(chunk, link)

    monkeypatch.setattr(h.peripheral, "notify", listening_notify)
    done = await app.command(Command.STATUS)
    # The honest case: the owner of the key still learns it.
    assert done.report is not None and done.report.lock is LockState.UNLOCKED
    rx = Reassembler(MAX_MESSAGE, 5.0)
    messages = [decode(m) for ch in heard if (m := rx.feed(ch, 0.0)) is not None]
    assert any(isinstance(m, SecureResponse) for m in messages)
    assert not any(isinstance(m, Result) and m.data for m in messages), "a status report travelled in clear"


async def test_an_owners_unlock_states_the_time_when_the_vehicle_asks_so_guests_work_again(h: Harness,
                                                                                          tmp_path: Path) -> None:
    """After a power cut the vehicle asks for the time in its answer; the owner's device states it on that link."""
    from key_client.errors import VehicleRefused
    from protocol import Status

    notes: list[str] = []
    guest = h.enroll(Role.GUEST, "guest", valid_until=1_800_003_600)
    app = DeviceApp(tmp_path / "kc", RadioChoice("mock"), passphrase=no_passphrase, scan_time=1.0,
                    central_factory=lambda: h.air.central(name="key-client"), note=notes.append,
                    wall=lambda: 1_800_000_000.5)
    await app.pair(h.new_code(role=Role.OWNER, name="phone"))
    h.wall = 0  # the vehicle rebooted with its clock at zero (no RTC, no network): not trusted
    link = await h.connect(guest)
    with pytest.raises(VehicleRefused) as info:
        await link.command(Command.UNLOCK)
    await link.close()
    assert info.value.status is Status.CLOCK_UNTRUSTED and "an owner's device fixes this by connecting" in str(
        info.value)
    done = await app.command(Command.UNLOCK)  # no extra step for the person
    # The fast path's answer carried only the time_wanted hint; the device stated the time on the same link.
    assert done.report is None and h.lock.status().lock is LockState.UNLOCKED
    assert done.clock is not None and done.clock.trusted and done.clock.time == 1_800_000_000
    assert h.clock.trusted and any("now trusted" in n for n in notes)
    link = await h.connect(guest)
    assert (await link.command(Command.UNLOCK)).status is Status.OK
    await link.close()
    again = await app.command(Command.LOCK)
    assert again.report is None and again.clock is None  # trusted: no hint, nothing more is sent


async def test_set_time_reports_a_refused_statement_with_the_vehicles_time(h: Harness, tmp_path: Path) -> None:
    app = DeviceApp(tmp_path / "kc", RadioChoice("mock"), passphrase=no_passphrase, scan_time=1.0,
                    central_factory=lambda: h.air.central(name="key-client"), wall=lambda: h.wall - 3600)
    await app.pair(h.new_code(role=Role.OWNER, name="phone"))
    stated = await app.set_time()  # this device's clock is an hour slow
    assert not stated.accepted and stated.clock.time == int(h.wall) and not stated.clock.trusted
    fixed = DeviceApp(tmp_path / "kc", RadioChoice("mock"), passphrase=no_passphrase, scan_time=1.0,
                      central_factory=lambda: h.air.central(name="key-client"), wall=lambda: h.wall + 60)
    ok = await fixed.set_time()
    assert ok.accepted and ok.clock.trusted and ok.clock.time == int(h.wall) + 60


async def test_a_guest_asking_to_set_the_time_is_told_who_may(h: Harness, tmp_path: Path) -> None:
    app = device_app(h, tmp_path)
    await app.pair(h.new_code(role=Role.GUEST, name="guest watch"))
    with pytest.raises(VehicleRefused) as info:
        await app.set_time()
    assert "only owner and driver keys" in str(info.value) and not h.clock.trusted
