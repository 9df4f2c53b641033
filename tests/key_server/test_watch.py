"""WATCH (issue 12): a connected owner or driver gets each lock, door and start-enable change pushed, sealed in its
confidential session, as it happens; guests may not watch; a revoked watcher stops hearing anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from key_client.driver import VehicleLink
from key_client.errors import VehicleRefused
from protocol import Command, DoorState, KeyPair, LockState, Role, StateChanged, StatusReport
from protocol import Status as S

from .harness import Harness, unlock


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness(tmp_path, trusted_clock=True).start()
    yield harness
    await harness.stop()


async def watch(h: Harness, device: KeyPair) -> tuple[VehicleLink, StatusReport]:
    link = await h.connect(device)
    await link.open_secure()
    answer = await link.secure(Command.WATCH)
    return link, StatusReport.decode(answer.data)


async def pushed(link: VehicleLink, timeout: float = 2.0) -> StatusReport:
    event = await link._next((StateChanged,), timeout)
    assert isinstance(event, StateChanged)
    return event.report


async def no_push(link: VehicleLink) -> None:
    with pytest.raises(TimeoutError):
        await link._next((StateChanged,), 0.2)


async def test_a_watcher_hears_another_keys_unlock_and_lock_as_they_happen(h: Harness) -> None:
    owner, driver = h.enroll(Role.OWNER, "phone"), h.enroll(Role.DRIVER, "car key")
    link, first = await watch(h, owner)
    assert first == StatusReport(LockState.UNKNOWN, DoorState.CLOSED, False)
    await unlock(h, driver)
    assert (await pushed(link)).lock is LockState.UNLOCKED
    await unlock(h, driver, Command.LOCK)
    assert (await pushed(link)).lock is LockState.LOCKED
    await no_push(link)  # one push per change, nothing more
    assert h.service.stats.watch_pushes == 2
    await link.close()
    [row] = [e for e in h.audit.read(limit=1000) if dict(e.detail).get("command") == "watch"]
    assert (row.event, row.key_id, dict(row.detail)) == ("admin", owner.key_id, {"command": "watch", "status": "OK"})


async def test_door_and_start_changes_are_pushed_and_each_change_counts(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    link, _ = await watch(h, owner)
    h.lock.set_door(DoorState.OPEN)
    assert (await pushed(link)).door is DoorState.OPEN
    h.lock.set_door(DoorState.CLOSED)
    assert (await pushed(link)).door is DoorState.CLOSED  # a change straight back is still a change
    await unlock(h, h.enroll(Role.DRIVER, "car key"), Command.START)
    assert (await pushed(link)).start_enabled
    # The watcher's own requests still work while it watches.
    assert StatusReport.decode((await link.secure(Command.STATUS)).data).start_enabled
    await link.close()


async def test_a_driver_may_watch_a_guest_may_not(h: Harness) -> None:
    driver, guest = h.enroll(Role.DRIVER, "car key"), h.enroll(Role.GUEST, "guest")
    link, _ = await watch(h, driver)
    await link.close()
    link = await h.connect(guest)
    await link.open_secure()
    with pytest.raises(VehicleRefused) as info:
        await link.secure(Command.WATCH)
    assert info.value.status is S.NOT_PERMITTED
    await unlock(h, h.enroll(Role.OWNER, "phone"))
    await no_push(link)  # refused: it hears nothing
    await link.close()


async def test_a_session_that_did_not_ask_hears_nothing(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    link = await h.connect(owner)
    await link.open_secure()
    await unlock(h, h.enroll(Role.DRIVER, "car key"))
    await no_push(link)
    assert h.service.stats.watch_pushes == 0
    await link.close()


async def test_a_revoked_watcher_is_dropped_and_hears_no_more(h: Harness) -> None:
    owner, watcher = h.enroll(Role.OWNER, "phone"), h.enroll(Role.DRIVER, "stolen")
    link, _ = await watch(h, watcher)
    h.store.revoke_key(watcher.key_id, int(h.wall))  # `key-server revoke` from another process
    for _ in range(100):
        if not link.conn.is_connected:
            break
        await asyncio.sleep(0.02)
    assert not link.conn.is_connected
    await unlock(h, owner)
    assert h.service.stats.watch_pushes == 0


async def test_watch_takes_no_arguments(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    link = await h.connect(owner)
    await link.open_secure()
    with pytest.raises(VehicleRefused) as info:
        await link.secure(Command.WATCH, b"\x00")
    assert info.value.status is S.BAD_REQUEST
    await unlock(h, h.enroll(Role.DRIVER, "car key"))
    await no_push(link)
    await link.close()


async def test_a_watching_link_is_not_dropped_as_idle(tmp_path: Path) -> None:
    now = [0.0]
    h = await Harness(tmp_path, trusted_clock=True, monotonic=lambda: now[0]).start()
    try:
        owner = h.enroll(Role.OWNER, "phone")
        idle = await h.connect(h.enroll(Role.DRIVER, "idle"))
        link, _ = await watch(h, owner)
        now[0] += h.service.config.link_idle_timeout + 1
        h.service.sweep()
        await asyncio.sleep(0.05)
        assert link.conn.is_connected and not idle.conn.is_connected
        now[0] += h.service.config.max_link_lifetime  # the lifetime cap still bounds a watcher
        h.service.sweep()
        await asyncio.sleep(0.05)
        assert not link.conn.is_connected
    finally:
        await h.stop()


async def test_a_watcher_whose_key_stops_being_allowed_hears_no_more(h: Harness) -> None:
    """WATCH is authorized at every push: a driver demoted to guest, or whose window ended, stops hearing."""
    owner = h.enroll(Role.OWNER, "phone")
    demoted = h.enroll(Role.DRIVER, "demoted")
    windowed = h.enroll(Role.DRIVER, "weekend", valid_until=int(h.wall) + 60)
    demoted_link, _ = await watch(h, demoted)
    windowed_link, _ = await watch(h, windowed)
    await unlock(h, owner)
    assert (await pushed(demoted_link)).lock is LockState.UNLOCKED  # the honest case: both hear it
    assert (await pushed(windowed_link)).lock is LockState.UNLOCKED
    h.service.admin.edit_key(demoted.key_id, by="cli", role=Role.GUEST)
    h.wall += 60
    await unlock(h, owner, Command.LOCK)
    await no_push(demoted_link)
    await no_push(windowed_link)
    await demoted_link.close()
    await windowed_link.close()
