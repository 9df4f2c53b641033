"""Shares and revocation lists end to end through the vehicle (issue 12, PROTOCOL.md §12): a device presents its
owner-signed certificate after the CHALLENGE and then unlocks; an owner's or driver's device delivers a list after
its RESULT. Every attack beside the honest case, all through the real session service on the mock radio."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dkey_link.contract import LinkLost
from key_client.driver import VehicleLink
from key_client.errors import VehicleRefused
from protocol import (
    LIST_WITH_SHARES,
    Command,
    KeyPair,
    LocalProtocolError,
    RevocationList,
    RevocationsAnswered,
    Role,
    ShareAnswered,
    ShareCertificate,
    revoke_args,
)
from protocol import Status as S
from protocol._codec import SharePresent
from protocol._framing import split

from .harness import Harness, unlock


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness(tmp_path, trusted_clock=True).start()
    yield harness
    await harness.stop()


def share(h: Harness, issuer: KeyPair, subject: KeyPair, *, role: Role = Role.DRIVER, vehicle: bytes | None = None,
          valid_until: int | None = None, name: str = "watch") -> ShareCertificate:
    vid = h.identity.key_id if vehicle is None else vehicle
    until = int(h.wall) + 86400 if valid_until is None else valid_until
    if role is Role.OWNER:
        return ShareCertificate(b"\x07" * 8, vid, issuer.key_id, subject.public_bytes, role, name, int(h.wall) - 60,
                                until, None).signed_by(issuer)
    return ShareCertificate.issue(issuer, vid, subject.public_bytes, role, name, int(h.wall) - 60, until)


async def present(h: Harness, holder: KeyPair, raw: bytes, *, hostile: bool = False) -> tuple[VehicleLink, S]:
    """Connect as `holder`, present the certificate bytes after the CHALLENGE; the link stays open.

    `hostile` skips the device session's own check that the certificate names this vehicle.
    """
    link = await h.connect(holder)
    await link.wait_challenge()
    if hostile:
        link.session._own_record = lambda parse, raw, what: parse(raw)  # type: ignore[method-assign]
    link.session.present_share(raw)
    await link._flush()
    answer = await link._next((ShareAnswered,), 5.0)
    assert isinstance(answer, ShareAnswered) and answer.key_id == holder.key_id
    return link, answer.status


async def enroll_by_share(h: Harness, holder: KeyPair, cert: ShareCertificate) -> S:
    """Present, then (OK or NO_CHANGE) unlock on the same link as the device would; the share's status."""
    link, status = await present(h, holder, cert.encode())
    try:
        if status in (S.OK, S.NO_CHANGE):
            assert (await link.command(Command.UNLOCK)).status is S.OK
        return status
    finally:
        await link.close()


async def deliver(h: Harness, carrier: KeyPair, rlist: RevocationList) -> tuple[int, S]:
    """A carrier's unlock, then the list after the RESULT in the same connection: (version held, status)."""
    link = await h.connect(carrier)
    try:
        assert (await link.command(Command.UNLOCK)).status is S.OK
        link.session.send_revocations(rlist.encode())
        await link._flush()
        answer = await link._next((RevocationsAnswered,), 5.0)
        assert isinstance(answer, RevocationsAnswered) and answer.issuer_id == rlist.issuer_id
        return answer.version, answer.status
    finally:
        await link.close()


def rl(h: Harness, issuer: KeyPair, version: int, *entries: tuple[bytes, int],
       vehicle: bytes | None = None) -> RevocationList:
    return RevocationList.issue(issuer, h.identity.key_id if vehicle is None else vehicle, version, int(h.wall),
                                list(entries))


def state(h: Harness) -> tuple[object, ...]:
    """What a share or list could change (not last use: the carrier's own unlock writes that)."""
    return ([dataclasses.replace(k, last_used_at=None) for k in h.store.list_keys()], h.store.revocation_lists(),
            [e for e in h.audit.read(limit=1000) if e.event in ("pair", "revocations", "revoke")])


# ---------------------------------------------------------------------------------------------- enrolment


async def test_the_watch_enrolls_by_share_and_unlocks_with_the_pi_untouched(h: Harness) -> None:
    phone = h.enroll(Role.OWNER, "Maya's phone")
    watch = KeyPair.generate()
    assert await enroll_by_share(h, watch, share(h, phone, watch, name="Maya's watch")) is S.OK
    rec = h.store.get_key(watch.key_id)
    assert rec is not None and (rec.role, rec.via, rec.enrolled_by, rec.name) == (
        Role.DRIVER, "share", phone.key_id, "Maya's watch")
    assert h.service.stats.shares_enrolled == 1
    # Presented again by a device whose keychain was not updated: NO_CHANGE, and it still unlocks.
    assert await enroll_by_share(h, watch, share(h, phone, watch)) is S.NO_CHANGE
    # From now on it is an ordinary key: no certificate needed.
    assert (await unlock(h, watch)).lock.label == "unlocked"


async def test_a_shared_key_can_open_a_confidential_session_right_after_presenting(h: Harness) -> None:
    """The first contact may be a session (a shared driver's `watch`, an owner command): same challenge, no extra."""
    phone = h.enroll(Role.OWNER, "phone")
    watch = KeyPair.generate()
    link, status = await present(h, watch, share(h, phone, watch).encode())
    assert status is S.OK
    await link.open_secure()
    assert (await link.secure(Command.STATUS)).status is S.OK
    assert (await link.secure(Command.WATCH)).status is S.OK  # a shared driver may watch
    await link.close()


@pytest.mark.parametrize(("attack", "status"), [
    ("forged signature", S.DENIED), ("issuer not an owner", S.DENIED), ("issuer revoked", S.DENIED),
    ("role escalation", S.NOT_PERMITTED), ("expired", S.KEY_EXPIRED), ("wrong vehicle", S.DENIED),
    ("guest shares", S.DENIED),
])
async def test_a_bad_share_enrolls_nothing_and_the_key_cannot_unlock(h: Harness, attack: str, status: S) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    watch = KeyPair.generate()
    cert = share(h, owner, watch)
    if attack == "forged signature":
        cert = dataclasses.replace(cert, role=Role.GUEST if cert.role is Role.DRIVER else Role.DRIVER)
    elif attack == "issuer not an owner":
        cert = share(h, h.enroll(Role.DRIVER, "driver"), watch)
    elif attack == "issuer revoked":
        h.enroll(Role.OWNER, "tablet")
        h.store.revoke_key(owner.key_id, int(h.wall))
    elif attack == "role escalation":
        cert = share(h, owner, watch, role=Role.OWNER)
    elif attack == "expired":
        cert = share(h, owner, watch, valid_until=int(h.wall))
    elif attack == "wrong vehicle":
        cert = share(h, owner, watch, vehicle=b"\x0b\xad\xca\xfe")
    elif attack == "guest shares":
        cert = share(h, h.enroll(Role.GUEST, "guest"), watch)
    before = state(h)
    if attack == "wrong vehicle":  # an honest device's session refuses to send it...
        link = await h.connect(watch)
        await link.wait_challenge()
        with pytest.raises(LocalProtocolError):
            link.session.present_share(cert.encode())
        await link.close()
    link, answered = await present(h, watch, cert.encode(), hostile=True)  # ...a hostile one sends it anyway
    assert answered is status
    # A DENIED share is charged to the link like a bad signature (the refused unlock below adds its own).
    assert h.service.limiter.failures == (1 if status is S.DENIED else 0)
    with pytest.raises(VehicleRefused) as info:
        await link.command(Command.UNLOCK)
    assert info.value.status is S.DENIED
    await link.close()
    assert state(h) == before
    # The honest case beside it: the owner's genuine share enrolls (unless the owner itself was revoked).
    if attack != "issuer revoked":
        assert await enroll_by_share(h, watch, share(h, owner, watch)) is S.OK


async def test_a_share_is_refused_while_the_clock_is_untrusted(tmp_path: Path) -> None:
    h = await Harness(tmp_path).start()
    try:
        owner = h.enroll(Role.OWNER, "phone")
        watch = KeyPair.generate()
        link, status = await present(h, watch, share(h, owner, watch).encode())
        await link.close()
        assert status is S.CLOCK_UNTRUSTED and h.store.get_key(watch.key_id) is None
        assert h.service.limiter.failures == 0  # an honest device is not throttled for the vehicle's clock
        h.trust_clock()
        assert await enroll_by_share(h, watch, share(h, owner, watch)) is S.OK
    finally:
        await h.stop()


async def test_a_share_replayed_after_revocation_is_denied(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    watch = KeyPair.generate()
    cert = share(h, owner, watch)
    assert await enroll_by_share(h, watch, cert) is S.OK
    h.store.revoke_key(watch.key_id, int(h.wall))
    link, status = await present(h, watch, cert.encode())
    await link.close()
    assert status is S.DENIED and h.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]


async def test_a_malformed_certificate_is_a_protocol_error_and_changes_nothing(h: Harness) -> None:
    owner = h.enroll(Role.OWNER, "phone")
    watch = KeyPair.generate()
    good = share(h, owner, watch).encode()
    link = await h.connect(watch)
    await link.wait_challenge()
    before = state(h)
    with contextlib.suppress(LinkLost):  # the vehicle answers ERROR and drops the link at once
        for chunk in split(SharePresent(certificate=good[:-1]).encode(), 100):  # the signature cut short
            await link.conn.write(chunk, response=True)
    for _ in range(100):
        if not link.conn.is_connected:
            break
        await asyncio.sleep(0.01)
    assert not link.conn.is_connected and h.service.stats.protocol_errors == 1
    assert state(h) == before
    await link.close()


# ---------------------------------------------------------------------------------------------- lists


async def test_the_phone_revokes_the_watch_offline_and_its_next_unlock_carries_the_list(h: Harness) -> None:
    phone = h.enroll(Role.OWNER, "phone")
    watch = KeyPair.generate()
    assert await enroll_by_share(h, watch, share(h, phone, watch)) is S.OK
    watch_link = await h.connect(watch)
    await watch_link.open_secure()  # the watch is connected when the list arrives: its session must end
    assert await deliver(h, phone, rl(h, phone, 1, (watch.key_id, 0))) == (1, S.OK)
    assert h.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]
    for _ in range(100):
        if not watch_link.conn.is_connected:
            break
        await asyncio.sleep(0.01)
    assert not watch_link.conn.is_connected
    with pytest.raises(VehicleRefused) as info:
        await unlock(h, watch)
    assert info.value.status is S.DENIED
    rows = [e for e in h.audit.read(limit=1000) if e.event == "revocations"]
    assert [dict(r.detail)["revoked"] for r in rows] == [watch.key_id.hex()]


async def test_a_driver_carries_an_owners_list_but_a_list_signed_by_a_driver_is_denied(h: Harness) -> None:
    phone = h.enroll(Role.OWNER, "phone")
    car_key = h.enroll(Role.DRIVER, "family driver")
    guest = h.enroll(Role.GUEST, "guest")
    before = state(h)
    assert await deliver(h, car_key, rl(h, car_key, 1, (guest.key_id, 0))) == (0, S.DENIED)
    assert state(h) == before
    assert await deliver(h, car_key, rl(h, phone, 1, (guest.key_id, 0))) == (1, S.OK)  # carried for the owner
    assert h.store.get_key(guest.key_id).revoked  # type: ignore[union-attr]


async def test_an_older_or_rolled_back_list_changes_nothing(h: Harness) -> None:
    phone = h.enroll(Role.OWNER, "phone")
    a, b = h.enroll(Role.GUEST, "a"), h.enroll(Role.GUEST, "b")
    v1 = rl(h, phone, 1, (a.key_id, 0))
    v2 = rl(h, phone, 2, (a.key_id, 0), (b.key_id, 0))
    assert await deliver(h, phone, v2) == (2, S.OK)
    before = state(h)
    assert await deliver(h, phone, v1) == (2, S.NO_CHANGE)
    assert await deliver(h, phone, v2) == (2, S.NO_CHANGE)
    assert state(h) == before


async def test_two_owners_racing_lists_both_hold(h: Harness) -> None:
    phone, tablet = h.enroll(Role.OWNER, "phone"), h.enroll(Role.OWNER, "tablet")
    x, y = h.enroll(Role.GUEST, "x"), h.enroll(Role.GUEST, "y")
    results = await asyncio.gather(deliver(h, phone, rl(h, phone, 3, (x.key_id, 0))),
                                   deliver(h, tablet, rl(h, tablet, 1, (y.key_id, 0))))
    assert sorted(results) == [(1, S.OK), (3, S.OK)]
    assert h.store.get_key(x.key_id).revoked and h.store.get_key(y.key_id).revoked  # type: ignore[union-attr]


async def test_a_stolen_owner_phone_revoked_with_shares_takes_its_shares_along(h: Harness) -> None:
    tablet, phone = h.enroll(Role.OWNER, "tablet"), h.enroll(Role.OWNER, "stolen phone")
    watch, guest = KeyPair.generate(), KeyPair.generate()
    assert await enroll_by_share(h, watch, share(h, phone, watch)) is S.OK
    assert await enroll_by_share(h, guest, share(h, phone, guest, role=Role.GUEST, name="guest")) is S.OK
    late = KeyPair.generate()
    late_cert = share(h, phone, late, name="late")  # signed before the theft, presented after
    # Without the flag (the honest choice when the shares should stay): only the phone goes.
    assert await deliver(h, tablet, rl(h, tablet, 1, (phone.key_id, 0))) == (1, S.OK)
    assert not h.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]
    link, status = await present(h, late, late_cert.encode())  # the revoked owner's share no longer enrolls
    await link.close()
    assert status is S.DENIED
    # With it (the list entry's flag): everything the phone's shares enrolled goes too.
    assert await deliver(h, tablet, rl(h, tablet, 2, (phone.key_id, LIST_WITH_SHARES))) == (2, S.OK)
    assert h.store.get_key(watch.key_id).revoked and h.store.get_key(guest.key_id).revoked  # type: ignore[union-attr]
    # The same through REVOKE_KEY's WITH_SHARES bit is covered in test_remote_admin.py.
    assert revoke_args(phone.key_id, with_shares=True)[-1] == 2
