"""An owner manages keys from its device over the confidential session (issue 12): ISSUE_CODE, EDIT_KEY, REVOKE_KEY
with its flags, LIST_KEYS with states; drivers and guests get NOT_PERMITTED. Each attack beside its honest case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from key_client.driver import VehicleLink
from key_client.errors import VehicleRefused
from protocol import (
    Command,
    IssuedCode,
    KeyEdit,
    KeyInfo,
    KeyPair,
    KeyState,
    PairingTerms,
    Role,
    Via,
    decode_key_page,
    list_keys_args,
    revoke_args,
)
from protocol import Status as S

from .harness import Harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness(tmp_path, trusted_clock=True).start()
    yield harness
    await harness.stop()


async def session(h: Harness, device: KeyPair) -> VehicleLink:
    link = await h.connect(device)
    await link.open_secure()
    return link


async def ask(h: Harness, device: KeyPair, cmd: Command, args: bytes = b"") -> tuple[S, bytes]:
    """One secure command in a fresh session: (status, data), refusals included."""
    link = await session(h, device)
    try:
        result = await link.secure(cmd, args, accept=frozenset(S))
        return result.status, result.data
    finally:
        await link.close()


async def listing(h: Harness, owner: KeyPair) -> dict[str, KeyInfo]:
    status, data = await ask(h, owner, Command.LIST_KEYS, list_keys_args())
    assert status is S.OK
    return {k.name: k for k in decode_key_page(data)[1]}


def audit_rows(h: Harness) -> list[tuple[str, bytes | None, dict[str, object]]]:
    return [(e.event, e.key_id, dict(e.detail)) for e in h.audit.read(limit=1000)]


# ---------------------------------------------------------------------------------------------- ISSUE_CODE


async def test_an_owner_issues_a_code_remotely_and_the_new_device_pairs_with_it(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    terms = PairingTerms(Role.GUEST, "Tom", code_ttl=600, attempts=3, valid_until=int(h.wall) + 86400,
                         schedule="daily 08:00-20:00")
    status, data = await ask(h, owner, Command.ISSUE_CODE, terms.encode())
    assert status is S.OK
    issued = IssuedCode.decode(data)
    assert issued.expires_at == int(h.wall) + 600
    [pending] = h.store.list_pairings(int(h.wall))
    assert (pending.issued_by, pending.role, pending.schedule) == (owner.key_id, Role.GUEST, "daily 08:00-20:00")
    laptop = KeyPair.generate()
    link = await h.connect(laptop, pinned=False)
    await link.pair(issued.code, int(issued.code[:2]))
    await link.close()
    rec = h.store.get_key(laptop.key_id)
    assert rec is not None and (rec.via, rec.enrolled_by, rec.role) == ("code", owner.key_id, Role.GUEST)
    code_row = next(r for r in audit_rows(h) if r[2].get("action") == "pair_code")
    assert code_row[2]["by"] == owner.key_id.hex() and code_row[1] == owner.key_id
    listed = await listing(h, owner)
    assert (listed["Tom"].via, listed["Tom"].enrolled_by, listed["Tom"].state) == (Via.CODE, owner.key_id,
                                                                                   KeyState.ACTIVE)


@pytest.mark.parametrize("role", [Role.DRIVER, Role.GUEST])
async def test_a_driver_or_guest_cannot_issue_codes_or_edit_keys(h: Harness, role: Role) -> None:
    h.enroll(Role.OWNER, "phone")
    other = h.enroll(Role.GUEST, "victim")
    asker = h.enroll(role, "asker")
    before = (h.store.list_pairings(int(h.wall)), h.store.get_key(other.key_id))
    terms = PairingTerms(Role.OWNER, "mine now", code_ttl=600, attempts=3).encode()
    assert (await ask(h, asker, Command.ISSUE_CODE, terms))[0] is S.NOT_PERMITTED
    edit = KeyEdit(asker.key_id, role=Role.OWNER).encode()  # escalating itself
    assert (await ask(h, asker, Command.EDIT_KEY, edit))[0] is S.NOT_PERMITTED
    assert (await ask(h, asker, Command.EDIT_KEY, KeyEdit(other.key_id, name="x").encode()))[0] is S.NOT_PERMITTED
    assert (await ask(h, asker, Command.REVOKE_KEY, revoke_args(other.key_id)))[0] is S.NOT_PERMITTED
    assert (h.store.list_pairings(int(h.wall)), h.store.get_key(other.key_id)) == before
    assert h.store.get_key(asker.key_id).role is role  # type: ignore[union-attr]


async def test_issue_code_refuses_a_dead_key_and_admin_commands_stay_off_the_fast_path(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    dead = PairingTerms(Role.GUEST, "late", code_ttl=600, attempts=3, valid_until=int(h.wall) - 1)
    assert (await ask(h, owner, Command.ISSUE_CODE, dead.encode()))[0] is S.BAD_REQUEST
    assert (await ask(h, owner, Command.ISSUE_CODE, b"\x41\x01"))[0] is S.BAD_REQUEST
    link = await h.connect(owner)
    with pytest.raises(VehicleRefused) as info:
        await link.command(Command.ISSUE_CODE, PairingTerms(Role.GUEST, "x", 600, 3).encode())
    assert info.value.status is S.NOT_SUPPORTED
    await link.close()
    assert h.store.list_pairings(int(h.wall)) == []


# ---------------------------------------------------------------------------------------------- EDIT_KEY


async def test_an_owner_edits_a_key_and_gets_its_new_record(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    guest = h.enroll(Role.GUEST, "guest", valid_until=int(h.wall) + 60, schedule="daily 06:00-23:00")
    edit = KeyEdit(guest.key_id, name="Tom", valid_until=int(h.wall) + 7200, clear_schedule=True)
    status, data = await ask(h, owner, Command.EDIT_KEY, edit.encode())
    assert status is S.OK
    info = KeyInfo.decode(data)
    assert (info.name, info.valid_until, info.schedule, info.state) == ("Tom", int(h.wall) + 7200, None,
                                                                        KeyState.ACTIVE)
    rec = h.store.get_key(guest.key_id)
    assert rec is not None and (rec.name, rec.schedule) == ("Tom", None)
    [row] = [r for r in audit_rows(h) if r[0] == "edit_key"]
    assert row[1] == guest.key_id and row[2]["by"] == owner.key_id.hex()


async def test_the_last_active_owner_cannot_be_demoted_over_the_air(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    for edit in (KeyEdit(owner.key_id, role=Role.DRIVER), KeyEdit(owner.key_id, valid_until=int(h.wall))):
        assert (await ask(h, owner, Command.EDIT_KEY, edit.encode()))[0] is S.LAST_OWNER
    assert h.store.get_key(owner.key_id).role is Role.OWNER  # type: ignore[union-attr]
    # With a second owner it may step down (the honest case).
    h.enroll(Role.OWNER, "tablet")
    assert (await ask(h, owner, Command.EDIT_KEY, KeyEdit(owner.key_id, role=Role.DRIVER).encode()))[0] is S.OK
    assert h.store.get_key(owner.key_id).role is Role.DRIVER  # type: ignore[union-attr]


async def test_edit_key_with_a_contradiction_or_unknown_key_is_a_bad_request(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    # valid_from set and cleared: the encoder refuses it, so build the bytes by hand.
    contradictory = KeyEdit(owner.key_id, valid_from=int(h.wall)).encode() + b"\x66\x01\x01"
    assert (await ask(h, owner, Command.EDIT_KEY, contradictory))[0] is S.BAD_REQUEST
    assert (await ask(h, owner, Command.EDIT_KEY, KeyEdit(b"\x00" * 4, name="x").encode()))[0] is S.BAD_REQUEST


# ---------------------------------------------------------------------------------------------- REVOKE_KEY


async def test_revoking_an_already_revoked_key_is_no_change_and_writes_nothing(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    guest = h.enroll(Role.GUEST, "guest")
    assert (await ask(h, owner, Command.REVOKE_KEY, revoke_args(guest.key_id)))[0] is S.OK
    revoked_at = h.store.get_key(guest.key_id).revoked_at  # type: ignore[union-attr]
    await asyncio.sleep(0.05)  # the first session's counted reads are written when it ends
    counter, rows = h.store.change_counter(), len(audit_rows(h))
    h.wall += 10
    assert (await ask(h, owner, Command.REVOKE_KEY, revoke_args(guest.key_id)))[0] is S.NO_CHANGE
    await asyncio.sleep(0.05)
    assert h.store.change_counter() == counter and len(audit_rows(h)) == rows
    assert h.store.get_key(guest.key_id).revoked_at == revoked_at  # type: ignore[union-attr]


async def test_revoking_an_owner_phone_with_shares_revokes_what_it_shared_without_it_they_stay(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "home tablet")
    phone = h.enroll(Role.OWNER, "stolen phone")
    watch, guest = KeyPair.generate(), KeyPair.generate()
    for kp, name in ((watch, "watch"), (guest, "guest")):
        from key_server.store import KeyRecord

        h.store.add_key(KeyRecord(kp.key_id, kp.public_bytes, name, Role.DRIVER, None, None, None, int(h.wall),
                                  via="share", enrolled_by=phone.key_id, share_serial=kp.key_id * 2))
    # The honest case: without WITH_SHARES the phone goes, its shares stay and still unlock.
    watch_link = await session(h, watch)
    assert (await ask(h, owner, Command.REVOKE_KEY, revoke_args(phone.key_id)))[0] is S.OK
    assert not h.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]
    assert (await watch_link.secure(Command.STATUS)).status is S.OK
    # The owner decides the shares go too: the watch's open session ends, the guest is refused.
    status, _ = await ask(h, owner, Command.REVOKE_KEY, revoke_args(phone.key_id, with_shares=True))
    assert status is S.OK
    assert h.store.get_key(watch.key_id).revoked and h.store.get_key(guest.key_id).revoked  # type: ignore[union-attr]
    for _ in range(100):
        if not watch_link.conn.is_connected:
            break
        await asyncio.sleep(0.01)
    assert not watch_link.conn.is_connected
    with pytest.raises(VehicleRefused) as info:
        await ask(h, guest, Command.STATUS)
    assert info.value.status is S.DENIED
    shares = [r for r in audit_rows(h) if r[2].get("share_of") == phone.key_id.hex()]
    assert {r[1] for r in shares} == {watch.key_id, guest.key_id}
    assert all(r[2]["by"] == owner.key_id.hex() for r in shares)


# ---------------------------------------------------------------------------------------------- LIST_KEYS


async def test_listing_shows_real_states_schedule_and_enrolment(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    h.enroll(Role.GUEST, "past guest", valid_from=int(h.wall) - 7200, valid_until=int(h.wall) - 3600)
    h.enroll(Role.GUEST, "future guest", valid_from=int(h.wall) + 3600, schedule="Sat-Sun 08:00-22:00")
    gone = h.enroll(Role.DRIVER, "gone")
    h.store.revoke_key(gone.key_id, int(h.wall))
    listed = await listing(h, owner)
    assert {n: k.state for n, k in listed.items()} == {
        "phone": KeyState.ACTIVE, "past guest": KeyState.EXPIRED, "future guest": KeyState.NOT_YET_VALID,
        "gone": KeyState.REVOKED}
    assert listed["future guest"].schedule == "Sat-Sun 08:00-22:00" and listed["phone"].via is Via.CODE


async def test_issue_code_with_an_empty_name_or_no_free_slot(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    assert (await ask(h, owner, Command.ISSUE_CODE, PairingTerms(Role.GUEST, "", 600, 3).encode()))[0] is S.BAD_REQUEST
    for n in range(100):
        h.new_code(Role.GUEST, f"code {n}")
    status, data = await ask(h, owner, Command.ISSUE_CODE, PairingTerms(Role.GUEST, "one more", 600, 3).encode())
    assert (status, data) == (S.BUSY, b"")
    assert len(h.store.list_pairings(int(h.wall))) == 100


async def test_edit_of_a_revoked_key_is_no_change_and_an_empty_edit_writes_nothing(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    guest = h.enroll(Role.GUEST, "guest")
    status, data = await ask(h, owner, Command.EDIT_KEY, KeyEdit(guest.key_id, name="guest").encode())
    assert status is S.OK and KeyInfo.decode(data).name == "guest"
    h.store.revoke_key(guest.key_id, int(h.wall))
    await asyncio.sleep(0.05)
    rows, counter = len(audit_rows(h)), h.store.change_counter()
    assert (await ask(h, owner, Command.EDIT_KEY, KeyEdit(guest.key_id, name="back").encode()))[0] is S.NO_CHANGE
    await asyncio.sleep(0.05)
    assert h.store.get_key(guest.key_id).name == "guest"  # type: ignore[union-attr]
    assert h.store.change_counter() == counter
    assert audit_rows(h)[rows:] == []  # NO_CHANGE: not even an "admin" row
