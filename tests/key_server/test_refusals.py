"""Refusals of unauthenticated requests are counted, not written one by one: a flood costs O(windows) audit rows."""

from __future__ import annotations

import asyncio
import os

import pytest

from key_client.errors import VehicleRefused
from key_server.audit import AuditLog
from key_server.ratelimit import FailureLimiter
from key_server.refusals import OTHER_LINKS, RefusalDigest
from key_server.store import KeyStore
from protocol import Command, KeyPair, Role, split
from protocol import Status as S
from protocol._codec import CommandMessage

from .harness import T0, Harness

Rows = list[tuple[dict[str, object], bytes | None]]


def _digest(max_rows: int = 8) -> tuple[RefusalDigest, Rows]:
    rows: Rows = []
    return RefusalDigest(lambda d, k: rows.append((d, k)), window=60.0, max_rows=max_rows), rows


def test_a_flood_on_one_link_is_one_row_at_link_end() -> None:
    digest, rows = _digest()
    for i in range(1000):
        digest.refused("link-a", i * 0.01, 100 + i // 100, status="DENIED" if i % 2 else "CHALLENGE_INVALID",
                       reason="bad signature" if i % 2 else "unknown challenge", key_id=b"kkkk")
    assert rows == []  # nothing written while the link lives
    digest.end_link("link-a", 10.0)
    [(detail, key_id)] = rows
    assert detail["count"] == 1000 and detail["link"] == "link-a" and (detail["first"], detail["last"]) == (100, 109)
    assert detail["statuses"] == "CHALLENGE_INVALID=500; DENIED=500" and key_id == b"kkkk"


def test_many_fresh_links_write_at_most_max_rows_per_window() -> None:
    digest, rows = _digest(max_rows=8)
    for n in range(200):  # 200 fresh links, one refusal each, within one window
        digest.refused(f"link-{n}", n * 0.1, 100, status="DENIED", reason="unknown key", key_id=bytes(4))
        digest.end_link(f"link-{n}", n * 0.1)
    digest.tick(61.0)  # the window ends
    assert len(rows) == 8
    assert sum(int(d["count"]) for d, _ in rows) == 200  # every refusal accounted for
    assert rows[-1][0]["link"] == OTHER_LINKS and rows[-1][0]["links"] == 193


def test_window_end_writes_live_links_and_a_new_window_starts() -> None:
    digest, rows = _digest()
    digest.refused("a", 0.0, 100, status="DENIED", reason="x")
    digest.tick(59.9)
    assert rows == []
    digest.tick(60.0)
    assert [d["count"] for d, _ in rows] == [1]
    digest.refused("a", 70.0, 110, status="DENIED", reason="x")
    digest.end_link("a", 71.0)
    assert [d["count"] for d, _ in rows] == [1, 1] and digest.pending == 0


def test_reasons_are_bounded() -> None:
    digest, rows = _digest()
    for i in range(50):
        digest.refused("a", 0.0, 100, status="MALFORMED", reason=f"protocol error: junk {i} " + "x" * 200)
    digest.flush()
    [(detail, key_id)] = rows
    assert len(str(detail["reasons"])) < 600 and "other=44" in str(detail["reasons"]) and key_id is None


def _bogus() -> bytes:
    [frame] = split(CommandMessage(KeyPair.generate().key_id, os.urandom(16), Command.UNLOCK, b"",
                                   os.urandom(64)).encode(), 244)
    return frame


async def test_a_thousand_bogus_commands_write_one_audit_row(tmp_path) -> None:
    h = await Harness(tmp_path, limiter=FailureLimiter(1e9, 1e9, 1e9, 1e9)).start()  # every one reaches crypto
    try:
        before = h.audit.head()[0]
        central = h.air.central(mtu=247)
        [adv] = await central.scan(1.0)
        conn = await central.connect(adv)
        answered = asyncio.Event()
        await conn.subscribe(lambda _d: answered.set())
        for _ in range(1000):
            answered.clear()
            await conn.write(_bogus())
            await asyncio.wait_for(answered.wait(), 2.0)
        assert h.service.stats.refused == 1000
        assert h.audit.head()[0] == before  # nothing written per request
        await conn.disconnect()
        await asyncio.sleep(0.01)
        [row] = h.audit.read(after_seq=before)
        assert row.event == "refusals" and row.detail["count"] == 1000 and row.detail["links"] == 1
    finally:
        await h.stop()


async def test_refusals_pending_at_shutdown_are_written(tmp_path) -> None:
    h = await Harness(tmp_path).start()
    central = h.air.central(mtu=247)
    [adv] = await central.scan(1.0)
    conn = await central.connect(adv)
    answered = asyncio.Event()
    await conn.subscribe(lambda _d: answered.set())
    answered.clear()
    await conn.write(_bogus())
    await asyncio.wait_for(answered.wait(), 2.0)
    await h.stop()  # the link is still up
    with KeyStore.open(tmp_path / "keys.db") as store:
        events = [(e.event, dict(e.detail).get("count")) for e in AuditLog(store).read(limit=100)]
    assert ("refusals", 1) in events and events[-1][0] == "server_stop"


async def test_an_enrolled_key_refused_by_policy_keeps_its_own_row(tmp_path) -> None:
    """What an owner wants to see (a guest outside its validity) is not folded into counts."""
    h = await Harness(tmp_path, trusted_clock=True).start()
    try:
        guest = h.enroll(Role.GUEST, "expired guest", valid_until=int(T0) - 10)
        link = await h.connect(guest)
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.UNLOCK)
        assert info.value.status is S.KEY_EXPIRED
        await link.close()
        [row] = [e for e in h.audit.read(limit=100) if e.event == "refused"]
        assert row.key_id == guest.key_id and row.detail["reason"] == "expired"
    finally:
        await h.stop()
