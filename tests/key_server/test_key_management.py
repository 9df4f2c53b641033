"""Key management on the vehicle (issue 12): edits, revocations with shares, listings with states, who did what."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_server.audit import AuditLog
from key_server.cli import main
from key_server.clock import GuardedClock
from key_server.enrollment import Enrollment
from key_server.keyadmin import EDIT_EVENT, KeyAdmin
from key_server.store import AlreadyRevoked, KeyRecord, KeyStore, LastOwnerError, UnknownKey
from protocol import KeyPair, Role

T0 = 1_800_000_000


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[KeyAdmin]:
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        yield KeyAdmin(store, AuditLog(store), GuardedClock(store, source=lambda: T0))


def enroll(store: KeyStore, role: Role = Role.OWNER, name: str = "phone", *, by: KeyPair | None = None,
           **fields: object) -> KeyPair:
    kp = KeyPair.generate()
    rec = KeyRecord(kp.key_id, kp.public_bytes, name, role, None, None, None, T0 - 100)
    if by is not None:
        rec = dataclasses.replace(rec, via="share", enrolled_by=by.key_id, share_serial=kp.key_id * 2)
    store.add_key(dataclasses.replace(rec, **fields))  # type: ignore[arg-type]
    return kp


def rows(admin: KeyAdmin) -> list[tuple[str, bytes | None, dict[str, object]]]:
    return [(e.event, e.key_id, dict(e.detail)) for e in admin.audit.read()]


# ---------------------------------------------------------------------------------------------- revoke


def test_revoking_an_already_revoked_key_says_so_and_writes_nothing(admin: KeyAdmin) -> None:
    enroll(admin.store, name="owner")
    guest = enroll(admin.store, Role.GUEST, "guest")
    admin.revoke(guest.key_id, by="cli")
    counter, audit = admin.store.change_counter(), rows(admin)
    with pytest.raises(AlreadyRevoked):
        admin.revoke(guest.key_id, by="0a0b0c0d")
    assert admin.store.change_counter() == counter and rows(admin) == audit
    assert admin.store.get_key(guest.key_id).revoked_at == T0  # type: ignore[union-attr]


def test_with_shares_revokes_the_keys_the_owner_shared_and_without_it_they_stay(admin: KeyAdmin) -> None:
    enroll(admin.store, name="other owner")
    phone = enroll(admin.store, name="lost phone")
    watch = enroll(admin.store, Role.DRIVER, "watch", by=phone)
    guest = enroll(admin.store, Role.GUEST, "guest", by=phone)
    coded = enroll(admin.store, Role.GUEST, "coded", via="code", enrolled_by=phone.key_id)
    stranger = enroll(admin.store, Role.DRIVER, "stranger")

    # The honest case first: a revocation without the flag leaves the shared keys alone.
    plain = admin.revoke(phone.key_id, by="cli")
    assert plain.revoked_ids == (phone.key_id,)
    assert not any(admin.store.get_key(k.key_id).revoked for k in (watch, guest, coded, stranger))  # type: ignore[union-attr]

    # The owner decides later that the shares go too: the phone is revoked already, its shares are not.
    done = admin.revoke(phone.key_id, by="cli", with_shares=True)
    assert set(done.revoked_ids) == {phone.key_id, watch.key_id, guest.key_id}
    for kp, revoked in ((watch, True), (guest, True), (coded, False), (stranger, False)):
        assert admin.store.get_key(kp.key_id).revoked is revoked  # type: ignore[union-attr]
    share_rows = [r for r in rows(admin) if r[2].get("share_of") == phone.key_id.hex()]
    assert {r[1] for r in share_rows} == {watch.key_id, guest.key_id} and all(r[2]["by"] == "cli" for r in share_rows)
    with pytest.raises(AlreadyRevoked):  # now it changes nothing
        admin.revoke(phone.key_id, by="cli", with_shares=True)


def test_with_shares_keeps_a_promoted_share_that_is_the_last_owner(admin: KeyAdmin) -> None:
    phone = enroll(admin.store, name="phone")
    tablet = enroll(admin.store, Role.DRIVER, "tablet", by=phone)
    admin.edit_key(tablet.key_id, by="cli", role=Role.OWNER)
    done = admin.revoke(phone.key_id, by="cli", with_shares=True)
    assert done.shares == () and [k.key_id for k in done.kept] == [tablet.key_id]
    assert not admin.store.get_key(tablet.key_id).revoked  # type: ignore[union-attr]
    assert rows(admin)[-1][2]["kept"] == "last active owner"


# ---------------------------------------------------------------------------------------------- edit


def test_edit_changes_what_it_is_given_and_audits_the_actor(admin: KeyAdmin) -> None:
    owner = enroll(admin.store, name="owner")
    guest = enroll(admin.store, Role.GUEST, "guest", schedule="daily 06:00-23:00", valid_until=T0 + 60)
    new = admin.edit_key(guest.key_id, by=owner.key_id.hex(), name="Tom", valid_until=None, schedule=None)
    assert (new.name, new.role, new.valid_until, new.schedule) == ("Tom", Role.GUEST, None, None)
    assert admin.store.get_key(guest.key_id) == new
    event, key_id, detail = rows(admin)[-1]
    assert (event, key_id) == (EDIT_EVENT, guest.key_id)
    assert detail == {"by": owner.key_id.hex(), "changed": "name,valid_until,schedule", "name": "Tom",
                      "valid_until": None, "schedule": None}
    before = rows(admin)
    assert admin.edit_key(guest.key_id, by="cli", name="Tom") == new  # nothing changes: nothing written
    assert rows(admin) == before


def test_edit_refuses_bad_values_and_writes_nothing(admin: KeyAdmin) -> None:
    enroll(admin.store, name="owner")
    guest = enroll(admin.store, Role.GUEST, "guest", valid_from=T0)
    before = (admin.store.get_key(guest.key_id), rows(admin))
    for bad in ({"schedule": "Caturday 25:00"}, {"valid_until": T0}, {"name": ""}, {"schedule": "daily " * 100}):
        with pytest.raises(ValueError):
            admin.edit_key(guest.key_id, by="cli", **bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownKey):
        admin.edit_key(b"\x00\x00\x00\x00", by="cli", name="x")
    assert (admin.store.get_key(guest.key_id), rows(admin)) == before


def test_the_last_active_owner_cannot_be_demoted_but_one_of_two_can(admin: KeyAdmin) -> None:
    owner = enroll(admin.store, name="owner")
    with pytest.raises(LastOwnerError):
        admin.edit_key(owner.key_id, by="cli", role=Role.DRIVER)
    with pytest.raises(LastOwnerError):
        admin.edit_key(owner.key_id, by="cli", valid_until=T0)  # a window ending now excludes now
    assert rows(admin) == []
    # An expired second owner does not count as active: the first is still the last one.
    enroll(admin.store, name="old owner", valid_until=T0 - 1)
    with pytest.raises(LastOwnerError):
        admin.edit_key(owner.key_id, by="cli", role=Role.DRIVER)
    enroll(admin.store, name="second owner")
    assert admin.edit_key(owner.key_id, by="cli", role=Role.DRIVER).role is Role.DRIVER


def test_a_revoked_key_is_not_edited(admin: KeyAdmin) -> None:
    enroll(admin.store, name="owner")
    guest = enroll(admin.store, Role.GUEST, "guest")
    admin.revoke(guest.key_id, by="cli")
    with pytest.raises(AlreadyRevoked):
        admin.edit_key(guest.key_id, by="cli", name="back")


# ---------------------------------------------------------------------------------------------- remote codes


def test_a_code_issued_by_an_owner_records_the_owner_on_the_code_the_key_and_the_audit(admin: KeyAdmin) -> None:
    owner = enroll(admin.store, name="owner")
    enrollment = Enrollment(admin.store, admin.audit, admin.clock, b"\x01\x02\x03\x04")
    _, pairing = enrollment.issue(role=Role.GUEST, name="Tom", expires_at=T0 + 600, key_valid_from=None,
                                  key_valid_until=None, schedule=None, attempts=3, issued_by=owner.key_id)
    assert pairing.issued_by == owner.key_id
    assert rows(admin)[-1][2]["by"] == owner.key_id.hex()
    device = KeyPair.generate()
    rec = enrollment.complete(pairing, device.key_id, device.public_bytes)
    assert rec is not None and (rec.via, rec.enrolled_by) == ("code", owner.key_id)
    assert admin.store.get_key(device.key_id) == rec
    assert rows(admin)[-1][2] == {"slot": pairing.slot, "name": "Tom", "role": "guest", "via": "code",
                                       "by": owner.key_id.hex()}
    # The honest Pi-issued code: "cli", no enrolled_by.
    _, at_pi = enrollment.issue(role=Role.DRIVER, name="car", expires_at=T0 + 600, key_valid_from=None,
                                key_valid_until=None, schedule=None, attempts=3)
    assert at_pi.issued_by is None and rows(admin)[-1][2]["by"] == "cli"


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    assert main(["--state-dir", str(d), "init"]) == ExitCode.OK
    return d


def cli(state: Path, *args: str) -> int:
    return main(["--state-dir", str(state), *args])


def test_keys_show_each_state_window_schedule_and_enrolment(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time())
    with KeyStore.open(state / "keys.db") as store:
        owner = enroll(store, name="owner")
        expired = enroll(store, Role.GUEST, "expired guest", valid_from=now - 100, valid_until=now - 10, by=owner)
        later = enroll(store, Role.GUEST, "later guest", valid_from=now + 3600, schedule="Sat-Sun 08:00-22:00")
        gone = enroll(store, Role.DRIVER, "gone")
        store.revoke_key(gone.key_id, now)
    capsys.readouterr()
    assert cli(state, "keys", "--json", "--all") == ExitCode.OK
    listed = {k["name"]: k for k in json.loads(capsys.readouterr().out)}
    assert {n: k["state"] for n, k in listed.items()} == {
        "owner": "active", "expired guest": "expired", "later guest": "not_yet_valid", "gone": "revoked"}
    assert listed["expired guest"]["via"] == "share" and listed["expired guest"]["enrolled_by"] == owner.key_id.hex()
    assert listed["expired guest"]["share_serial"] == (expired.key_id * 2).hex()
    assert listed["later guest"]["schedule"] == "Sat-Sun 08:00-22:00" and listed["later guest"]["via"] == "code"
    assert listed["later guest"]["key_id"] == later.key_id.hex()
    assert cli(state, "keys") == ExitCode.OK
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["KEY", "ID", "NAME", "ROLE", "STATE", "WINDOW", "SCHEDULE", "VIA", "LAST", "USED"]
    text = "\n".join(lines)
    assert "expired" in text and "share by owner" in text and "not yet valid" in text and "gone" not in text


def test_cli_revoke_with_shares_and_again(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with KeyStore.open(state / "keys.db") as store:
        enroll(store, name="owner")
        phone = enroll(store, name="phone")
        watch = enroll(store, Role.DRIVER, "watch", by=phone)
    assert cli(state, "revoke", "phone", "--with-shares") == ExitCode.OK
    out = capsys.readouterr().out
    assert f"revoked {watch.key_id.hex()} (watch), enrolled by a share of phone" in out
    assert cli(state, "revoke", "phone") == ExitCode.OK
    assert "already revoked: nothing changed" in capsys.readouterr().out


def test_cli_edit(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with KeyStore.open(state / "keys.db") as store:
        owner = enroll(store, name="owner")
        guest = enroll(store, Role.GUEST, "guest")
    assert cli(state, "edit", "guest", "--name", "Tom", "--valid-until", "3d", "--schedule", "daily 08:00-20:00") == 0
    with KeyStore.open(state / "keys.db") as store:
        rec = store.get_key(guest.key_id)
        assert rec is not None and rec.name == "Tom" and rec.valid_until and rec.schedule == "daily 08:00-20:00"
    assert cli(state, "edit", "Tom", "--no-expiry", "--no-schedule") == ExitCode.OK
    with KeyStore.open(state / "keys.db") as store:
        rec = store.get_key(guest.key_id)
        assert rec is not None and (rec.valid_until, rec.schedule) == (None, None)
    assert cli(state, "edit", "owner", "--role", "driver") == ExitCode.DENIED
    assert "last active owner" in capsys.readouterr().err
    assert cli(state, "edit", "Tom", "--schedule", "Caturday") == ExitCode.USAGE
    assert cli(state, "edit", "Tom", "--no-expiry", "--valid-until", "3d") == ExitCode.USAGE
    assert cli(state, "edit", "nobody", "--name", "x") == ExitCode.NOT_FOUND
    assert owner
