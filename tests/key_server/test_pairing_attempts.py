"""Issue 10, pairing: every attempt on a code leaves a trace, counts against the code and the limiter, and a
live slot costs the vehicle the same work as an empty one."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_client.errors import VehicleRefused
from key_server.audit import AuditEntry, AuditLog
from key_server.cli import main
from key_server.clock import GuardedClock
from key_server.enrollment import Enrollment
from key_server.store import KeyStore
from protocol import KeyPair, Role
from protocol import Status as S

from .harness import Harness

T0 = 1_800_000_000


@pytest.fixture
async def h(tmp_path: Path):
    harness = await Harness(tmp_path).start()
    yield harness
    await harness.stop()


def wrong(code: str) -> str:
    """The same slot, the wrong six secret digits: what a guesser types."""
    return code[:2] + f"{(int(code[2:]) + 1) % 10**6:06d}"


async def settle(done: Callable[[], bool]) -> None:
    """Let the server's bookkeeping for a link that just left run (it is scheduled, not awaited by anyone)."""
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the server never finished its bookkeeping")


async def guess_and_leave(h: Harness, code: str, slot: int) -> None:
    """The attack: PAIR_START, check the vehicle's confirmation, and disconnect without a word (§6.4)."""
    link = await h.connect(KeyPair.generate(), pinned=False)
    with pytest.raises(VehicleRefused) as info:
        await link.pair(code, slot)  # the device finds confirm_v wrong and sends nothing more
    assert info.value.status is S.PAIRING_REFUSED
    await link.close()


def pairing_rows(h: Harness) -> list[AuditEntry]:
    return [e for e in h.audit.read(limit=1000) if e.event.startswith("pair")]


async def test_guesser_who_disconnects_after_checking_the_confirmation_is_audited_counted_and_limited(
    h: Harness,
) -> None:
    code = h.new_code(name="owner's new phone", attempts=5)
    slot = int(code[:2])
    await guess_and_leave(h, wrong(code), slot)
    await settle(lambda: h.service.stats.pairings_abandoned == 1)
    start, failed = pairing_rows(h)
    assert (start.event, dict(start.detail)) == ("pair_start", {"slot": slot, "live": True,
                                                                "name": "owner's new phone"})
    assert (failed.event, dict(failed.detail)) == ("pair_failed", {"slot": slot, "live": True,
                                                                   "reason": "abandoned"})
    [pending] = h.store.list_pairings(int(h.wall))
    assert (pending.attempts_left, pending.failures) == (4, 1)  # spent, and counted as a wrong try
    assert h.service.limiter.failures == 1


async def test_five_guessers_who_disconnect_kill_the_code_and_each_leaves_two_rows(h: Harness) -> None:
    code = h.new_code(attempts=5)
    slot = int(code[:2])
    for n in range(1, 6):
        await guess_and_leave(h, wrong(code), slot)
        await settle(lambda n=n: h.service.stats.pairings_abandoned == n)  # type: ignore[misc]
    assert h.store.list_pairings(int(h.wall)) == [] and h.store._pairing_row(slot) is None
    rows = pairing_rows(h)
    assert [e.event for e in rows] == ["pair_start", "pair_failed"] * 5  # bounded: two rows per attempt
    assert {dict(e.detail).get("reason") for e in rows[1::2]} == {"abandoned"}
    assert h.service.limiter.failures == 5


async def test_honest_pairing_after_a_guess_still_works_and_pair_list_showed_the_guess(h: Harness) -> None:
    code = h.new_code(role=Role.DRIVER, name="Maya's watch", attempts=5)
    slot = int(code[:2])
    await guess_and_leave(h, wrong(code), slot)
    await settle(lambda: h.service.stats.pairings_abandoned == 1)
    [pending] = h.store.list_pairings(int(h.wall))
    assert pending.failures == 1  # what `key-server pair --list` shows in WRONG
    watch = KeyPair.generate()
    link = await h.connect(watch, pinned=False)
    paired = await link.pair(code, slot)
    await link.close()
    assert paired.vehicle_public_key == h.identity.public_bytes
    assert h.store.get_key(watch.key_id) is not None and h.service.stats.pairings_abandoned == 1
    assert [e.event for e in pairing_rows(h)] == ["pair_start", "pair_failed", "pair_start", "pair"]
    assert h.service.limiter.failures == 1  # the honest device cost nothing


async def test_probing_an_empty_slot_is_audited_like_a_live_one(h: Harness) -> None:
    code = h.new_code()
    empty = (int(code[:2]) + 1) % 100
    await guess_and_leave(h, f"{empty:02d}123456", empty)
    await settle(lambda: h.service.stats.pairings_abandoned == 1)
    start, failed = pairing_rows(h)
    assert dict(start.detail) == {"slot": empty, "live": False, "name": None}
    assert dict(failed.detail) == {"slot": empty, "live": False, "reason": "abandoned"}
    assert h.service.limiter.failures == 1
    assert h.store.list_pairings(int(h.wall))[0].failures == 0  # the live code next door is untouched


# ---------------------------------------------------------------------------------------------- equal work


@pytest.fixture
def enrollment(tmp_path: Path) -> Iterator[Enrollment]:
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        clock = GuardedClock(store, source=lambda: T0)
        clock.now()  # the first call may persist the clock's mark: keep it out of what is compared
        yield Enrollment(store, AuditLog(store), clock, b"\xca\xfe\xf0\x0d")


def store_work(enrollment: Enrollment, action: Callable[[], object]) -> list[str]:
    """The SQL statements `action` runs, with their values blanked (what differs is data, not work)."""
    statements: list[str] = []
    db: sqlite3.Connection = enrollment.store._conn()
    db.set_trace_callback(statements.append)
    try:
        action()
    finally:
        db.set_trace_callback(None)
    blank = re.compile(r"[Xx]'[0-9A-Fa-f]*'|'(?:[^']|'')*'|\b-?\d+(?:\.\d+)?\b|\bNULL\b")
    return [blank.sub("?", s) for s in statements]


def test_a_prober_cannot_tell_a_live_slot_from_an_empty_one_by_the_store_work(enrollment: Enrollment) -> None:
    ticket, _ = enrollment.issue(role=Role.OWNER, name="phone", expires_at=T0 + 600, key_valid_from=None,
                                 key_valid_until=None, schedule=None, attempts=5)
    live, empty = ticket.slot, (ticket.slot + 1) % 100
    live_start = store_work(enrollment, lambda: enrollment.begin(live))
    empty_start = store_work(enrollment, lambda: enrollment.begin(empty))
    assert live_start == empty_start
    assert live_start.count("COMMIT") == 1 and live_start[0] == "BEGIN IMMEDIATE"  # one durable write each
    assert any(s.startswith("UPDATE pairings") for s in live_start)
    # The failure after a wrong guess too: the same statements for the code and for a decoy.
    [pending] = enrollment.pending()
    live_fail = store_work(enrollment, lambda: enrollment.failed(live, prs=pending.prs, live=True, reason="x"))
    empty_fail = store_work(enrollment, lambda: enrollment.failed(empty, prs=bytes(32), live=False, reason="x"))
    assert live_fail == empty_fail and live_fail.count("COMMIT") == 1
    assert enrollment.pending()[0].failures == 1


def test_a_failure_counts_only_against_the_code_it_was_for(enrollment: Enrollment) -> None:
    """A failure reported after its code was cancelled must not count against whatever code holds the slot now."""
    ticket, _ = enrollment.issue(role=Role.OWNER, name="new", expires_at=T0 + 600, key_valid_from=None,
                                 key_valid_until=None, schedule=None, attempts=5)
    enrollment.failed(ticket.slot, prs=bytes(range(32)), live=True, reason="abandoned")  # an older code's PRS
    assert enrollment.pending()[0].failures == 0


def test_pair_list_shows_the_wrong_tries_against_each_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == ExitCode.OK
    assert main(["--state-dir", str(state), "pair", "--name", "guessed at", "--json"]) == ExitCode.OK
    slot = json.loads(capsys.readouterr().out.splitlines()[-1])["slot"]
    with KeyStore.open(state / "keys.db") as store:  # what the server does for a guesser who left mid-PAKE
        enrollment = Enrollment(store, AuditLog(store), GuardedClock(store), b"\xca\xfe\xf0\x0d")
        spent = enrollment.begin(slot)
        assert spent is not None
        enrollment.failed(slot, prs=spent.prs, live=True, reason="abandoned")
    assert main(["--state-dir", str(state), "pair", "--list", "--json"]) == ExitCode.OK
    [row] = json.loads(capsys.readouterr().out)
    assert (row["slot"], row["attempts_left"], row["wrong_attempts"]) == (slot, 4, 1)
    assert main(["--state-dir", str(state), "pair", "--list"]) == ExitCode.OK
    header, line = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[-2:] == ["TRIES", "WRONG"] and line.split()[-2:] == ["4", "1"]


def test_a_store_from_before_the_count_keeps_its_codes_with_no_wrong_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import key_server.store as store_mod

    path = tmp_path / "keys.db"
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        with KeyStore.open(path, create=True) as old:
            assert old.schema_version() == 1
            with old.transaction():  # a version-1 pending code, written the way version 1 wrote it
                old._execute("INSERT INTO pairings (slot, prs, role, name, expires_at, key_valid_from, "
                             "key_valid_until, schedule, attempts_left, created_at) "
                             "VALUES (7, ?, 'guest', 'old code', ?, NULL, NULL, NULL, 3, ?)", (bytes(32), T0 + 600, T0))
    with KeyStore.open(path) as store:
        assert store.schema_version() == store_mod.SCHEMA_VERSION
        [pending] = store.list_pairings(T0)
        assert (pending.slot, pending.attempts_left, pending.failures) == (7, 3, 0)
