"""The vehicle's checks of owners' shares and revocation lists (key_server/shares.py, PROTOCOL.md §12).

Each refusal beside the honest case it must not break; every refusal leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from key_server.audit import AuditLog
from key_server.clock import GuardedClock, Source
from key_server.shares import REVOCATIONS_EVENT, Shares
from key_server.store import KeyRecord, KeyStore
from protocol import (
    LIST_WITH_SHARES,
    PUBLISHED_TEST_KEYS,
    KeyPair,
    RevocationList,
    Role,
    ShareCertificate,
    Status,
)

T0 = 1_800_000_000
VEHICLE = KeyPair.generate()


@dataclasses.dataclass
class Car:
    store: KeyStore
    audit: AuditLog
    clock: GuardedClock
    shares: Shares
    wall: list[int]

    def enroll(self, role: Role = Role.OWNER, name: str = "owner", **fields: object) -> KeyPair:
        kp = KeyPair.generate()
        rec = KeyRecord(kp.key_id, kp.public_bytes, name, role, None, None, None, T0 - 1000)
        self.store.add_key(dataclasses.replace(rec, **fields))  # type: ignore[arg-type]
        return kp

    def snapshot(self) -> tuple[object, ...]:
        return (self.store.list_keys(), self.store.revocation_lists(), len(self.audit.read(limit=1000)),
                self.store.change_counter())


@pytest.fixture
def car(tmp_path: Path) -> Iterator[Car]:
    wall = [T0]
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        clock = GuardedClock(store, source=lambda: wall[0])
        assert clock.confirm(T0, Source.RTC)
        audit = AuditLog(store)
        yield Car(store, audit, clock, Shares(store, audit, clock, VEHICLE.key_id), wall)
        clock.close()


def share(issuer: KeyPair, subject: KeyPair | bytes, *, role: Role = Role.DRIVER, vehicle: bytes = VEHICLE.key_id,
          valid_from: int = T0 - 60, valid_until: int | None = T0 + 86400, schedule: str | None = None,
          name: str = "watch", serial: bytes | None = None) -> ShareCertificate:
    public = subject if isinstance(subject, bytes) else subject.public_bytes
    if role is Role.OWNER:  # issue() refuses it: sign the fields as an attacker who owns a key would
        cert = ShareCertificate(b"\x01" * 8, vehicle, issuer.key_id, public, role, name, valid_from, valid_until,
                                schedule)
        return cert.signed_by(issuer)
    return ShareCertificate.issue(issuer, vehicle, public, role, name, valid_from, valid_until, schedule,
                                  serial=serial)


# ---------------------------------------------------------------------------------------------- shares


def test_an_owners_share_enrolls_the_key_once_with_its_terms(car: Car) -> None:
    owner = car.enroll()
    watch = KeyPair.generate()
    cert = share(owner, watch, role=Role.GUEST, schedule="Sat-Sun 08:00-22:00", name="Maya's watch")
    result = car.shares.enroll(cert)
    assert result.status is Status.OK
    rec = car.store.get_key(watch.key_id)
    assert rec is not None and rec == result.key
    assert (rec.role, rec.name, rec.valid_from, rec.valid_until, rec.schedule) == (
        Role.GUEST, "Maya's watch", T0 - 60, T0 + 86400, "Sat-Sun 08:00-22:00")
    assert (rec.via, rec.enrolled_by, rec.share_serial) == ("share", owner.key_id, cert.serial)
    row = car.audit.read(limit=1000)[-1]
    assert (row.event, row.key_id) == ("pair", watch.key_id)
    assert dict(row.detail) == {"via": "share", "by": owner.key_id.hex(), "serial": cert.serial.hex(),
                                "name": "Maya's watch", "role": "guest"}
    before = car.snapshot()
    assert car.shares.enroll(cert).status is Status.NO_CHANGE  # presented again: nothing written
    assert car.snapshot() == before


def test_a_share_starting_later_still_enrolls(car: Car) -> None:
    owner = car.enroll()
    later = KeyPair.generate()
    assert car.shares.enroll(share(owner, later, valid_from=T0 + 3600)).status is Status.OK
    assert car.store.get_key(later.key_id).state(T0) == "not_yet_valid"  # type: ignore[union-attr]


def test_an_empty_or_unprintable_name_gets_a_readable_one(car: Car) -> None:
    owner = car.enroll()
    a, b = KeyPair.generate(), KeyPair.generate()
    car.shares.enroll(share(owner, a, name=""))
    car.shares.enroll(share(owner, b, name="tab\there"))
    assert car.store.get_key(a.key_id).name.startswith("shared key ")  # type: ignore[union-attr]
    assert car.store.get_key(b.key_id).name == "tab?here"  # type: ignore[union-attr]


def _forged(owner: KeyPair, watch: KeyPair) -> ShareCertificate:
    cert = share(owner, watch)
    return dataclasses.replace(cert, signature=cert.signature[:-1] + bytes([cert.signature[-1] ^ 1]))


def _widened(owner: KeyPair, watch: KeyPair) -> ShareCertificate:
    return dataclasses.replace(share(owner, watch), valid_until=None)  # a field changed after signing


@pytest.mark.parametrize(("attack", "status"), [
    ("forged signature", Status.DENIED),
    ("fields changed after signing", Status.DENIED),
    ("wrong vehicle", Status.DENIED),
    ("issuer unknown", Status.DENIED),
    ("issuer a driver", Status.DENIED),
    ("issuer revoked", Status.DENIED),
    ("issuer expired", Status.DENIED),
    ("role escalation to owner", Status.NOT_PERMITTED),
    ("expired", Status.KEY_EXPIRED),
    ("clock untrusted", Status.CLOCK_UNTRUSTED),
    ("subject revoked before", Status.DENIED),
    ("subject named by a list", Status.DENIED),
    ("serial spent on another key", Status.DENIED),
    ("published test key", Status.DENIED),
])
def test_a_bad_share_is_refused_and_writes_nothing(car: Car, attack: str, status: Status) -> None:
    owner = car.enroll()
    watch = KeyPair.generate()
    cert = share(owner, watch)
    if attack == "forged signature":
        cert = _forged(owner, watch)
    elif attack == "fields changed after signing":
        cert = _widened(owner, watch)
    elif attack == "wrong vehicle":
        cert = share(owner, watch, vehicle=b"\x00\x01\x02\x03")
    elif attack == "issuer unknown":
        cert = share(KeyPair.generate(), watch)
    elif attack == "issuer a driver":
        cert = share(car.enroll(Role.DRIVER, "driver"), watch)
    elif attack == "issuer revoked":
        car.enroll(name="second owner")
        car.store.revoke_key(owner.key_id, T0)
    elif attack == "issuer expired":
        cert = share(car.enroll(name="old owner", valid_until=T0), watch)
    elif attack == "role escalation to owner":
        cert = share(owner, watch, role=Role.OWNER)
    elif attack == "expired":
        cert = share(owner, watch, valid_from=T0 - 100, valid_until=T0)
    elif attack == "clock untrusted":
        car.shares.clock = GuardedClock(car.store, source=lambda: T0)  # as after a reboot: nothing confirmed it yet
    elif attack == "subject revoked before":
        car.store.add_key(KeyRecord(watch.key_id, watch.public_bytes, "watch", Role.DRIVER, None, None, None, T0))
        car.store.revoke_key(watch.key_id, T0)
    elif attack == "subject named by a list":
        car.store.remember_revoked_id(watch.key_id, owner.key_id, 1, T0)
    elif attack == "serial spent on another key":
        first = share(owner, KeyPair.generate())
        assert car.shares.enroll(first).status is Status.OK
        cert = share(owner, watch, serial=first.serial)
    elif attack == "published test key":
        cert = share(owner, next(iter(PUBLISHED_TEST_KEYS)))
    before = car.snapshot()
    result = car.shares.enroll(cert)
    assert (result.status, result.key) == (status, None), result.reason
    assert car.snapshot() == before
    assert car.store.get_key(watch.key_id) is None or car.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]


def test_checks_run_in_the_specified_order(car: Car) -> None:
    """Wrong vehicle beats a bad issuer, a bad issuer beats the role, the role beats expiry (first failure wins)."""
    owner, stranger, watch = car.enroll(), KeyPair.generate(), KeyPair.generate()
    assert car.shares.enroll(share(stranger, watch, vehicle=b"\x00" * 4)).reason == "share for another vehicle"
    assert car.shares.enroll(share(stranger, watch, role=Role.OWNER)).status is Status.DENIED
    assert car.shares.enroll(share(owner, watch, role=Role.OWNER, valid_until=T0)).status is Status.NOT_PERMITTED


def test_a_share_replayed_after_its_key_was_revoked_does_not_come_back(car: Car) -> None:
    owner = car.enroll()
    watch = KeyPair.generate()
    cert = share(owner, watch)
    assert car.shares.enroll(cert).status is Status.OK
    car.store.revoke_key(watch.key_id, T0 + 1)
    before = car.snapshot()
    assert car.shares.enroll(cert).status is Status.DENIED
    assert car.snapshot() == before and car.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]


def test_keys_a_revoked_owner_shared_stay_until_revoked_with_shares(car: Car) -> None:
    owner, phone = car.enroll(name="tablet"), car.enroll(name="phone")
    watch, late = KeyPair.generate(), KeyPair.generate()
    assert car.shares.enroll(share(phone, watch)).status is Status.OK
    late_cert = share(phone, late)
    car.store.revoke_key(phone.key_id, T0)
    assert car.shares.enroll(late_cert).status is Status.DENIED  # the revoked owner's shares no longer enroll
    assert not car.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]  # but what it enrolled stays
    assert owner


# ---------------------------------------------------------------------------------------------- revocation lists


def rlist(issuer: KeyPair, version: int, *entries: tuple[bytes, int], vehicle: bytes = VEHICLE.key_id
          ) -> tuple[RevocationList, bytes]:
    lst = RevocationList.issue(issuer, vehicle, version, T0, list(entries))
    return lst, lst.encode()


def test_a_newer_list_revokes_its_keys_remembers_unenrolled_ones_and_older_lists_do_nothing(car: Car) -> None:
    owner = car.enroll()
    guest = car.enroll(Role.GUEST, "guest", via="share", enrolled_by=owner.key_id)
    not_yet = KeyPair.generate()  # holds a share but never came to the car
    v2 = rlist(owner, 2, (guest.key_id, 0), (not_yet.key_id, 0))
    result = car.shares.apply(*v2)
    assert (result.status, result.version, result.revoked) == (Status.OK, 2, (guest.key_id,))
    assert car.store.get_key(guest.key_id).revoked  # type: ignore[union-attr]
    assert car.store.key_id_revoked(not_yet.key_id)
    assert car.shares.enroll(share(owner, not_yet)).status is Status.DENIED  # its share can never enroll now
    held = car.store.revocation_list(owner.key_id)
    assert held is not None and (held.version, held.raw) == (2, v2[1])
    row = car.audit.read(limit=1000)[-1]
    assert (row.event, row.key_id) == (REVOCATIONS_EVENT, owner.key_id)
    assert dict(row.detail)["revoked"] == guest.key_id.hex() and dict(row.detail)["version"] == 2
    # Rolled back: the same list again, or an older one, changes nothing and says which version is held.
    before = car.snapshot()
    for replay in (v2, rlist(owner, 1), rlist(owner, 2)):
        assert (car.shares.apply(*replay).status, car.shares.apply(*replay).version) == (Status.NO_CHANGE, 2)
    assert car.snapshot() == before


@pytest.mark.parametrize("attack", ["signed by a driver", "signed by a revoked owner", "wrong vehicle",
                                    "forged signature", "unknown issuer"])
def test_a_list_not_from_an_active_owner_of_this_vehicle_is_denied(car: Car, attack: str) -> None:
    owner = car.enroll()
    victim = car.enroll(Role.DRIVER, "victim")
    lst, raw = rlist(owner, 1, (victim.key_id, 0))
    if attack == "signed by a driver":
        lst, raw = rlist(car.enroll(Role.DRIVER, "driver"), 1, (victim.key_id, 0))
    elif attack == "signed by a revoked owner":
        car.enroll(name="other owner")
        car.store.revoke_key(owner.key_id, T0)
    elif attack == "wrong vehicle":
        lst, raw = rlist(owner, 1, (victim.key_id, 0), vehicle=b"\x00" * 4)
    elif attack == "forged signature":
        lst = dataclasses.replace(lst, entries=())  # the signature covered the entry
    elif attack == "unknown issuer":
        lst, raw = rlist(KeyPair.generate(), 1, (victim.key_id, 0))
    car.store.put_revocation_list(owner.key_id, 1, T0, T0, b"held")  # held 1: a refusal still says 0 (§12.5)
    lst = dataclasses.replace(lst, version=2) if attack == "forged signature" else lst
    before = car.snapshot()
    result = car.shares.apply(lst, raw)
    assert (result.status, result.version) == (Status.DENIED, 0)
    assert car.snapshot() == before and not car.store.get_key(victim.key_id).revoked  # type: ignore[union-attr]


def test_two_owners_lists_both_apply_union_never_undone(car: Car) -> None:
    a, b = car.enroll(name="a"), car.enroll(name="b")
    x, y = car.enroll(Role.DRIVER, "x"), car.enroll(Role.DRIVER, "y")
    assert car.shares.apply(*rlist(a, 5, (x.key_id, 0))).status is Status.OK
    assert car.shares.apply(*rlist(b, 1, (y.key_id, 0))).status is Status.OK  # b's version 1 < a's 5: its own
    assert car.store.get_key(x.key_id).revoked and car.store.get_key(y.key_id).revoked  # type: ignore[union-attr]
    # a's next list no longer names x (a cannot un-revoke by omission): x stays revoked.
    assert car.shares.apply(*rlist(a, 6)).status is Status.OK
    assert car.store.get_key(x.key_id).revoked  # type: ignore[union-attr]
    assert [h.version for h in car.store.revocation_lists()] == sorted(
        [6, 1], key=lambda v: {6: a.key_id, 1: b.key_id}[v])


def test_a_list_entry_with_shares_and_the_last_owner_skipped(car: Car) -> None:
    owner, phone = car.enroll(name="tablet"), car.enroll(name="phone")
    watch = car.enroll(Role.DRIVER, "watch", via="share", enrolled_by=phone.key_id)
    coded = car.enroll(Role.GUEST, "coded", via="code", enrolled_by=phone.key_id)
    result = car.shares.apply(*rlist(owner, 1, (phone.key_id, LIST_WITH_SHARES)))
    assert set(result.revoked) == {phone.key_id, watch.key_id}
    assert not car.store.get_key(coded.key_id).revoked  # type: ignore[union-attr]  # only shares go with it
    # The tablet, now the last active owner, names itself: skipped and audited, nothing else lost.
    result = car.shares.apply(*rlist(owner, 2, (owner.key_id, 0), (coded.key_id, 0)))
    assert (result.status, result.revoked, result.skipped) == (Status.OK, (coded.key_id,), (owner.key_id,))
    assert not car.store.get_key(owner.key_id).revoked  # type: ignore[union-attr]
    assert dict(car.audit.read(limit=1000)[-1].detail)["skipped_last_owner"] == owner.key_id.hex()


def test_without_with_shares_a_listed_owners_shares_stay(car: Car) -> None:
    owner, phone = car.enroll(name="tablet"), car.enroll(name="phone")
    watch = car.enroll(Role.DRIVER, "watch", via="share", enrolled_by=phone.key_id)
    assert car.shares.apply(*rlist(owner, 1, (phone.key_id, 0))).revoked == (phone.key_id,)
    assert not car.store.get_key(watch.key_id).revoked  # type: ignore[union-attr]
