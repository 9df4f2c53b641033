"""Issue 10, admission control: floods are cut at the budget before any crypto, and honest devices still get in.

Crypto is counted where it happens: every signature verification the vehicle session runs (protocol._vehicle.verify)
and every answer it signs (VehicleSession._signed_result); a bogus COMMAND costs at least the signed refusal.
No assertion depends on timing: the limiter's refill rates are set so low that a slow machine cannot earn a token.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

import protocol._vehicle as vehicle_session
from dkey_link.contract import AttError, AttErrorCode
from dkey_link.mock import MockConnection
from key_client.errors import VehicleRefused
from key_server.audit import AuditEvent
from key_server.ratelimit import FailureLimiter
from protocol import Command, KeyPair, LockState, split
from protocol import Status as S
from protocol._codec import CommandMessage

from .harness import Harness, unlock

SLOW = 0.0001  # tokens per second: none is earned while a test runs


def _limiter(link_burst: float = 5, global_burst: float = 30, key_burst: float = 3) -> FailureLimiter:
    return FailureLimiter(link_burst=link_burst, link_rate=SLOW, global_burst=global_burst, global_rate=SLOW,
                          key_burst=key_burst, key_rate=SLOW)


@pytest.fixture
def crypto(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature verification and every signature the vehicle's sessions make, as they make them."""
    calls: list[str] = []
    real_verify = vehicle_session.verify
    real_sign = vehicle_session.VehicleSession._signed_result

    def verify(public: object, signature: bytes, data: bytes) -> None:
        calls.append("verify")
        real_verify(public, signature, data)  # type: ignore[arg-type]

    def signed_result(self: vehicle_session.VehicleSession, *args: object, **kw: object) -> object:
        calls.append("sign")
        return real_sign(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(vehicle_session, "verify", verify)
    monkeypatch.setattr(vehicle_session.VehicleSession, "_signed_result", signed_result)
    return calls


def _bogus(key_id: bytes | None = None) -> bytes:
    """A well-formed COMMAND with a made-up challenge and signature: it costs a verification if processed."""
    kid = key_id or KeyPair.generate().key_id
    [frame] = split(CommandMessage(kid, os.urandom(16), Command.UNLOCK, b"", os.urandom(64)).encode(), 244)
    return frame


async def _attacker(h: Harness) -> tuple[MockConnection, list[bytes]]:
    central = h.air.central(mtu=247)
    [adv] = await central.scan(1.0)
    conn = await central.connect(adv)
    notes: list[bytes] = []
    await conn.subscribe(notes.append)
    return conn, notes  # type: ignore[return-value]


async def _one_bogus_link(h: Harness, key_id: bytes | None = None) -> None:
    """A fresh link with one bogus COMMAND, its first message; leaves once it is answered (signed, or BUSY)."""
    conn, notes = await _attacker(h)
    seen = len(notes)
    await conn.write(_bogus(key_id))
    await _until(lambda: len(notes) > seen)
    await conn.disconnect()


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(500):  # wait for the loop to get there, not for a time
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def _idle(h: Harness) -> bool:
    return all(c.session.queued == 0 and (c.task is None or c.task.done()) for c in h.service.links.values())


def _refused_rows(h: Harness, after: int) -> int:
    """Refusals the audit log accounts for since `after` (aggregated rows, flushed now), checking they are few."""
    h.service.refusals.flush()
    rows = [e for e in h.audit.read(after_seq=after, limit=1000) if e.event in (AuditEvent.REFUSED,
                                                                                  AuditEvent.REFUSALS)]
    assert len(rows) <= h.service.refusals.max_rows  # one window's share, whatever the number of refusals
    return sum(int(e.detail.get("count", 1) or 0) for e in rows)


async def test_pipelined_bogus_commands_are_cut_at_the_budget_before_crypto(tmp_path, crypto) -> None:
    h = await Harness(tmp_path, limiter=_limiter(link_burst=5)).start()
    try:
        before = h.audit.head()[0]
        conn, _ = await _attacker(h)
        frame = _bogus()
        for _ in range(2000):  # without response: nothing waits for the vehicle
            await conn.write(frame, response=False)
        stats = h.service.stats
        await _until(lambda: stats.admitted + stats.rate_limited == 2000 and _idle(h))  # every one seen
        assert len(crypto) == stats.admitted == stats.refused <= 5  # one signed refusal each, bogus challenges
        assert _refused_rows(h, before) == stats.refused  # every message that reached crypto counted, in few rows
        assert stats.peak_queue <= h.service.config.link_queue
        assert stats.queue_full >= 2000 - h.service.config.link_queue - 5  # the rest answered ATT busy, unqueued
        await conn.disconnect()
    finally:
        await h.stop()


async def test_a_long_queue_is_shed_at_dequeue_without_crypto(tmp_path, crypto) -> None:
    h = await Harness(tmp_path, limiter=_limiter(link_burst=3), link_queue=64).start()
    try:
        before = h.audit.head()[0]
        conn, notes = await _attacker(h)
        challenge_note = len(notes)
        for _ in range(64):
            await conn.write(_bogus(), response=False)
        stats = h.service.stats
        await _until(lambda: stats.admitted + stats.rate_limited == 64 and _idle(h))
        assert len(crypto) == stats.admitted == 3
        assert stats.shed == 61 and stats.queue_full == 0
        assert _refused_rows(h, before) == 3
        await _until(lambda: len(notes) >= challenge_note + 64)  # every request answered: 3 signed, 61 BUSY
        await conn.disconnect()
    finally:
        await h.stop()


async def test_a_pipelining_link_gets_att_busy_past_its_queue_cap(tmp_path) -> None:
    h = await Harness(tmp_path, link_queue=2).start()
    try:
        conn, _ = await _attacker(h)
        central = next(iter(h.service.links.values()))
        for _ in range(2):  # two writes in one turn of the loop, as a pipelining radio delivers them
            h.service.on_write(central.link, _bogus())
        with pytest.raises(AttError) as info:
            h.service.on_write(central.link, _bogus())
        assert info.value.code == AttErrorCode.APP_BUSY
        assert central.session.queued == 2 and h.service.stats.queue_full == 1
        await conn.disconnect()
    finally:
        await h.stop()


async def test_fresh_links_share_the_global_budget(tmp_path, crypto) -> None:
    h = await Harness(tmp_path, limiter=_limiter(global_burst=30)).start()
    try:
        before = h.audit.head()[0]
        for _ in range(200):  # every reconnect a new link, each with one bogus command: its first message
            await _one_bogus_link(h)
        await _until(lambda: not h.service.links)
        assert len(crypto) == h.service.stats.admitted == 30
        assert h.service.stats.shed == 170
        assert _refused_rows(h, before) == 30
        assert h.service.limiter.tracked == 0  # every link's bucket freed with the link
    finally:
        await h.stop()


async def test_an_honest_client_still_unlocks_during_the_flood(tmp_path, crypto) -> None:
    h = await Harness(tmp_path, limiter=_limiter(global_burst=10)).start()
    try:
        phone = h.enroll()
        pipeliner, _ = await _attacker(h)
        for _ in range(20):  # fresh links empty the global budget
            await _one_bogus_link(h)
        await _until(lambda: _idle(h))
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                await pipeliner.write(_bogus(), response=False)
                await asyncio.sleep(0)

        task = asyncio.create_task(flood())
        try:
            for _ in range(3):
                assert (await unlock(h, phone)).lock is LockState.UNLOCKED
        finally:
            stop.set()
            await task
        assert h.service.stats.shed >= 1  # the flood was being shed meanwhile
        assert len(crypto) == 10 + 3 * 2  # the global budget, then only the phone's: one verify and one signature
        await pipeliner.disconnect()
    finally:
        await h.stop()


async def test_a_spoofed_key_id_burns_only_that_keys_lane(tmp_path, crypto) -> None:
    h = await Harness(tmp_path, limiter=_limiter(global_burst=5, key_burst=3)).start()
    try:
        phone, watch = h.enroll(name="phone"), h.enroll(name="watch")
        for _ in range(20):  # the phone's key id, sniffed, in bogus commands from fresh links
            await _one_bogus_link(h, phone.key_id)
        # The global budget and the phone's lane, nothing more; each costs a verification (a sniffed key id makes
        # the vehicle look the key up) only when its challenge is live, so count what was spent, not its kind.
        assert h.service.stats.admitted == 5 + 3
        assert crypto.count("sign") == 5 + 3
        with pytest.raises(VehicleRefused) as info:
            await unlock(h, phone)
        assert info.value.status is S.BUSY
        assert (await unlock(h, watch)).lock is LockState.UNLOCKED  # another key's lane is untouched
    finally:
        await h.stop()


async def test_links_past_the_cap_are_dropped(tmp_path) -> None:
    h = await Harness(tmp_path, max_links=2).start()
    try:
        conns = [(await _attacker(h))[0] for _ in range(2)]
        third = h.air.central(mtu=247)
        [adv] = await third.scan(1.0)
        late = await third.connect(adv)
        await _until(lambda: not late.is_connected)
        assert len(h.service.links) == 2 and h.service.stats.links_refused >= 1
        for conn in conns:
            await conn.disconnect()
        phone = h.enroll()
        await _until(lambda: not h.service.links)
        assert (await unlock(h, phone)).lock is LockState.UNLOCKED  # a freed slot serves the next device
    finally:
        await h.stop()


async def test_a_link_past_its_lifetime_is_dropped_even_if_busy(tmp_path) -> None:
    now = [1000.0]
    h = await Harness(tmp_path, max_link_lifetime=60, monotonic=lambda: now[0]).start()
    try:
        conn, _ = await _attacker(h)
        now[0] += 59
        next(iter(h.service.links.values())).last_activity = now[0]  # it keeps itself busy: never idle
        h.service.sweep()
        assert conn.is_connected and h.service.stats.links_expired == 0
        now[0] += 2
        next(iter(h.service.links.values())).last_activity = now[0]
        h.service.sweep()
        await _until(lambda: not conn.is_connected)
        assert h.service.stats.links_expired == 1 and not h.service.links
    finally:
        await h.stop()


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(max_tracked=16)
    for i in range(1000):
        limiter.failed(f"link{i}", float(i), key_id=i.to_bytes(4, "big"))
    assert limiter.tracked <= 32
    for i in range(1000):
        limiter.forget(f"link{i}")
    assert limiter.tracked <= 16  # only key lanes (one per enrolled key id) remain
