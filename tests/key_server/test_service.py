"""The key server end to end over the mock radio, driven by the real client driver."""

from __future__ import annotations

import asyncio

import pytest

from key_client.errors import OutcomeUnknown, VehicleRefused
from key_server.ratelimit import FailureLimiter
from protocol import (
    Command,
    KeyPair,
    LockState,
    Role,
    decode_key_page,
    list_keys_args,
    read_audit_args,
    revoke_args,
)
from protocol import Status as S

from .harness import Harness, unlock


@pytest.fixture
async def h(tmp_path):
    harness = await Harness(tmp_path).start()
    yield harness
    await harness.stop()


@pytest.fixture
async def ht(tmp_path):
    """A vehicle whose clock a trusted source confirmed at start: for tests of guests and windows."""
    harness = await Harness(tmp_path, trusted_clock=True).start()
    yield harness
    await harness.stop()


@pytest.mark.parametrize("mtu", [23, 247])
async def test_unlock_and_lock(h: Harness, mtu: int) -> None:
    phone = h.enroll()
    assert (await unlock(h, phone, mtu=mtu)).lock is LockState.UNLOCKED
    assert (await unlock(h, phone, Command.LOCK, mtu=mtu)).lock is LockState.LOCKED
    assert [e.event for e in h.audit.read()][-4:] == ["actuate", "unlock", "actuate", "lock"]
    assert h.store.get_key(phone.key_id).last_used_at == h.wall


async def test_pairing_with_a_one_time_code(h: Harness) -> None:
    code = h.new_code(role=Role.DRIVER, name="Maya's watch")
    watch = KeyPair.generate()
    link = await h.connect(watch, pinned=False)
    paired = await link.pair(code, int(code[:2]))
    await link.close()
    assert paired.vehicle_public_key == h.identity.public_bytes
    rec = h.store.get_key(watch.key_id)
    assert rec is not None and rec.role is Role.DRIVER and rec.name == "Maya's watch"
    assert (await unlock(h, watch)).lock is LockState.UNLOCKED


async def test_pairing_code_cannot_be_reused(h: Harness) -> None:
    code = h.new_code()
    first = await h.connect(KeyPair.generate(), pinned=False)
    await first.pair(code, int(code[:2]))
    await first.close()
    second = await h.connect(KeyPair.generate(), pinned=False)
    with pytest.raises(VehicleRefused) as info:
        await second.pair(code, int(code[:2]))
    await second.close()
    assert info.value.status is S.PAIRING_REFUSED


async def test_too_many_wrong_codes_kill_the_slot(h: Harness) -> None:
    code = h.new_code(attempts=3)
    wrong = code[:2] + f"{(int(code[2:]) + 1) % 10**6:06d}"
    for _ in range(3):
        link = await h.connect(KeyPair.generate(), pinned=False)
        with pytest.raises(VehicleRefused):
            await link.pair(wrong, int(code[:2]))
        await link.close()
    h.service.limiter = FailureLimiter()  # not testing the rate limit here
    link = await h.connect(KeyPair.generate(), pinned=False)
    with pytest.raises(VehicleRefused) as info:
        await link.pair(code, int(code[:2]))  # even the right code is dead now
    await link.close()
    assert info.value.status is S.PAIRING_REFUSED
    assert not h.store.list_pairings(int(h.wall))


async def test_expired_pairing_code_is_refused(h: Harness) -> None:
    code = h.new_code(expires_in=60)
    h.wall += 61
    link = await h.connect(KeyPair.generate(), pinned=False)
    with pytest.raises(VehicleRefused):
        await link.pair(code, int(code[:2]))
    await link.close()


async def test_revoked_device_is_refused_and_others_still_work(h: Harness) -> None:
    owner, stolen = h.enroll(Role.OWNER, "laptop"), h.enroll(Role.DRIVER, "phone")
    assert (await unlock(h, stolen)).lock is LockState.UNLOCKED
    h.store.revoke_key(stolen.key_id, int(h.wall))  # what `key-server revoke` does, from another process
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, stolen)
    assert info.value.status is S.DENIED and info.value.authenticated and not info.value.may_have_succeeded
    assert (await unlock(h, owner)).lock is LockState.UNLOCKED


async def test_owner_revokes_over_confidential_session_and_open_session_ends(h: Harness) -> None:
    owner, phone = h.enroll(Role.OWNER, "laptop"), h.enroll(Role.OWNER, "phone")
    victim = await h.connect(phone)
    await victim.open_secure()
    admin = await h.connect(owner)
    await admin.open_secure()
    await admin.secure(Command.REVOKE_KEY, revoke_args(phone.key_id))
    assert h.store.get_key(phone.key_id).revoked  # committed before the answer came back
    for _ in range(50):
        if not victim.conn.is_connected:
            break
        await asyncio.sleep(0.01)
    assert not victim.conn.is_connected, "the revoked key's open session must end at once"
    total, keys = decode_key_page((await admin.secure(Command.LIST_KEYS, list_keys_args())).data)
    assert total == 2 and {k.name for k in keys if k.revoked_at} == {"phone"}
    await admin.close()
    await victim.close()


async def test_cli_revocation_ends_an_open_session(h: Harness) -> None:
    phone = h.enroll(Role.OWNER)
    link = await h.connect(phone)
    await link.open_secure()
    h.store.revoke_key(phone.key_id, int(h.wall), force=True)
    for _ in range(100):
        if not link.conn.is_connected:
            break
        await asyncio.sleep(0.01)
    assert not link.conn.is_connected
    assert h.service.stats.sessions_ended_by_revocation == 1


async def test_last_owner_can_never_revoke_itself_over_the_air(h: Harness) -> None:
    owner = h.enroll(Role.OWNER)
    link = await h.connect(owner)
    await link.open_secure()
    with pytest.raises(VehicleRefused) as info:
        await link.secure(Command.REVOKE_KEY, revoke_args(owner.key_id))
    assert info.value.status is S.LAST_OWNER
    with pytest.raises(VehicleRefused) as info:  # force is for the Pi's CLI only
        await link.secure(Command.REVOKE_KEY, revoke_args(owner.key_id, force=True))
    assert info.value.status is S.BAD_REQUEST
    assert not h.store.get_key(owner.key_id).revoked  # type: ignore[union-attr]
    await link.close()


async def test_guest_outside_window_and_schedule(ht: Harness) -> None:
    h = ht
    weekend = h.enroll(Role.GUEST, "brother", valid_from=int(h.wall) + 3600, valid_until=int(h.wall) + 7200)
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, weekend)
    assert info.value.status is S.KEY_NOT_YET_VALID and info.value.temporary
    h.wall += 3600
    assert (await unlock(h, weekend)).lock is LockState.UNLOCKED
    h.wall += 3600
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, weekend)
    assert info.value.status is S.KEY_EXPIRED


async def test_guest_may_not_start_or_read_keys(ht: Harness) -> None:
    h = ht
    guest = h.enroll(Role.GUEST, "guest")
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, guest, Command.START)
    assert info.value.status is S.NOT_PERMITTED
    link = await h.connect(guest)
    await link.open_secure()
    with pytest.raises(VehicleRefused):
        await link.secure(Command.LIST_KEYS, list_keys_args())
    with pytest.raises(VehicleRefused):
        await link.secure(Command.READ_AUDIT, read_audit_args())
    await link.close()


async def test_clock_set_back_does_not_revive_an_expired_key(ht: Harness) -> None:
    h = ht
    guest = h.enroll(Role.GUEST, valid_until=int(h.wall) + 100)
    h.wall += 200
    with pytest.raises(VehicleRefused):
        await unlock(h, guest)
    h.wall -= 1000  # the Pi rebooted without RTC and NTP has not run
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, guest)
    assert info.value.status is S.KEY_EXPIRED


@pytest.mark.parametrize("n", [2, 20])
async def test_many_centrals_at_once(tmp_path, n: int) -> None:
    h = await Harness(tmp_path, max_links=n).start()
    try:
        await _many_centrals(h, n)
    finally:
        await h.stop()


async def _many_centrals(h: Harness, n: int) -> None:
    devices = [h.enroll(Role.DRIVER, f"d{i}") for i in range(n)]
    reports = await asyncio.gather(*(unlock(h, d, Command.STATUS) for d in devices))
    assert len(reports) == n
    assert h.service.stats.commands == n


async def test_many_centrals_on_a_broadcasting_backend(tmp_path) -> None:
    """bless notifies every subscriber: each client must still get only its own answers."""
    h = await Harness(tmp_path, broadcast=True).start()
    try:
        devices = [h.enroll(Role.DRIVER, f"d{i}") for i in range(5)]
        reports = await asyncio.gather(*(unlock(h, d, Command.STATUS) for d in devices))
        assert len(reports) == 5
    finally:
        await h.stop()


async def test_disconnect_mid_command_leaves_outcome_unknown(h: Harness) -> None:
    phone = h.enroll()
    link = await h.connect(phone, mtu=23)
    h.air.disconnect_after_writes(6)  # the 6th (last) chunk of the unlock arrives, then the link drops
    with pytest.raises(OutcomeUnknown) as info:
        await link.command(Command.UNLOCK, timeout=0.5)
    assert info.value.may_have_succeeded
    await link.close()
    await asyncio.sleep(0.05)
    # Whether the vehicle acted on the orphaned command or dropped it with the link, the audit log says so.
    moved = any(energised for _, out, energised in h.lock.output_history() if out == "unlock")
    assert moved == ("unlock" in [e.event for e in h.audit.read()])
    assert (await unlock(h, phone)).lock is LockState.UNLOCKED  # the server is fine afterwards


async def test_garbage_frames_do_not_crash_the_server(h: Harness) -> None:
    phone = h.enroll()
    central = h.air.central(mtu=247)
    [adv] = await central.scan(1.0)
    conn = await central.connect(adv)
    await conn.subscribe(lambda _b: None)
    for junk in (b"\x00", b"\x80\x00\x05\x01\x02\x03\x04\x05", b"\x80" + b"\xff" * 50, bytes(range(200))):
        try:
            await conn.write(junk)
        except Exception:
            pass
    await conn.disconnect()
    assert (await unlock(h, phone)).lock is LockState.UNLOCKED


async def test_flood_of_failed_attempts_trips_the_limit_and_honest_clients_still_get_in(tmp_path) -> None:
    h = await Harness(tmp_path, limiter=FailureLimiter(link_burst=3, link_rate=0.5, global_burst=10,
                                                      global_rate=5)).start()
    try:
        phone = h.enroll()
        intruder = KeyPair.generate()  # not enrolled
        link = await h.connect(intruder)
        refusals = busy = 0
        for _ in range(10):
            try:
                await link.command(Command.UNLOCK, timeout=0.5)
            except VehicleRefused as exc:
                refusals += exc.status is S.DENIED
                busy += exc.status is S.BUSY
        await link.close()
        assert refusals == 3 and busy >= 1, (refusals, busy)
        assert h.service.stats.rate_limited >= 1
        assert (await unlock(h, phone)).lock is LockState.UNLOCKED  # a link that never failed gets in
    finally:
        await h.stop()


async def test_owner_reads_audit_over_confidential_session(h: Harness) -> None:
    from protocol import decode_audit_page

    owner = h.enroll()
    await unlock(h, owner)
    link = await h.connect(owner)
    await link.open_secure()
    head, records = decode_audit_page((await link.secure(Command.READ_AUDIT, read_audit_args(0, 50))).data)
    await link.close()
    head.verify(h.identity.private_key.public_key(), h.identity.key_id)  # signed by the vehicle key
    assert head.seq >= 2 and head.entry_hash == records[-1].entry_hash and "unlock" in [r.event for r in records]
    assert h.audit.verify().ok


async def test_long_pulse_is_answered_while_the_relay_is_still_energised(tmp_path) -> None:
    """A door strike held for seconds must not make the phone time out: the answer comes while it is held."""
    from hardware import ActuatorConfig, SimulatedLock

    h = Harness(tmp_path, lock=SimulatedLock(ActuatorConfig(kind="sim", simulate="pulse", unlock_pin=None,
                                                            pulse_ms=1500, max_on_ms=2000)), reply_after=0.05)
    await h.start()
    try:
        phone = h.enroll()
        report = await unlock(h, phone)
        assert report.lock is LockState.UNLOCKED
        assert any(r.energised for r in h.lock.relays.values()), "answered after the pulse had ended"
    finally:
        await h.stop()


async def test_link_lost_during_the_pulse_is_still_audited(tmp_path) -> None:
    from hardware import ActuatorConfig, SimulatedLock

    # reply_after 5 s: answer only when the pulse ends
    h = Harness(tmp_path, lock=SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=300)), reply_after=5.0)
    await h.start()
    try:
        phone = h.enroll()
        link = await h.connect(phone)
        task = asyncio.create_task(link.command(Command.UNLOCK, timeout=2.0))
        for _ in range(200):
            if any(r.energised for r in h.lock.relays.values()):
                break
            await asyncio.sleep(0.005)
        for lid in h.air.links:
            h.air.drop(lid)  # out of range while the strike is held
        with pytest.raises(OutcomeUnknown):
            await task
        await link.close()
        for _ in range(100):
            if "unlock" in [e.event for e in h.audit.read()]:
                break
            await asyncio.sleep(0.01)
        assert "unlock" in [e.event for e in h.audit.read()]
    finally:
        await h.stop()


async def _until_gone(h: Harness) -> None:
    for _ in range(200):  # the mock radio reports the disconnect on the loop: wait for it, not for a time
        if not h.service.links:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the vehicle never saw the central leave")


async def test_reads_are_audited_once_per_session_with_a_count(h: Harness) -> None:
    owner = h.enroll()
    link = await h.connect(owner)
    await link.open_secure()
    before = h.audit.head()[0]
    for _ in range(30):
        await link.secure(Command.READ_AUDIT, read_audit_args(0, 5))
    for _ in range(2):
        await link.secure(Command.LIST_KEYS, list_keys_args())
    assert h.audit.head()[0] == before  # reading writes nothing row by row: the newest entries are not reads
    await link.close()
    await _until_gone(h)
    rows = [(e.event, e.key_id, dict(e.detail)) for e in h.audit.read(after_seq=before)]
    assert rows == [("admin", owner.key_id, {"command": "list_keys", "status": "OK", "count": 2}),
                    ("admin", owner.key_id, {"command": "read_audit", "status": "OK", "count": 30})]


async def test_reads_still_open_when_the_server_stops_are_counted(tmp_path) -> None:
    h = await Harness(tmp_path).start()
    owner = h.enroll()
    link = await h.connect(owner)
    await link.open_secure()
    await link.secure(Command.READ_AUDIT, read_audit_args(0, 5))
    await h.service.stop()
    events = [(e.event, dict(e.detail).get("count")) for e in h.audit.read(after_seq=0, limit=100)]
    await h.stop()
    assert events[-2:] == [("admin", 1), ("server_stop", None)]


async def test_an_unlock_is_still_audited_at_once(h: Harness) -> None:
    owner = h.enroll()
    before = h.audit.head()[0]
    await unlock(h, owner)
    assert [e.event for e in h.audit.read(after_seq=before)] == ["actuate", "unlock"]
