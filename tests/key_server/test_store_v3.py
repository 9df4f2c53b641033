"""Schema 3 (issue 12): how a key was enrolled and by whom, owners' revocation lists, key states and edits."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from key_server import store as store_mod
from key_server.backup import backup, restore
from key_server.store import (
    SCHEMA_VERSION,
    AlreadyRevoked,
    KeyRecord,
    KeyStore,
    LastOwnerError,
    UnknownKey,
)
from protocol import Role
from tests.key_server.test_store import NOW, make_key


def _columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


def test_a_fresh_store_has_the_share_columns_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with KeyStore.open(path, create=True) as s:
        assert s.schema_version() == SCHEMA_VERSION == 4
        rec = dataclasses.replace(make_key("watch", Role.DRIVER), via="share", enrolled_by=b"\x01\x02\x03\x04",
                                  share_serial=bytes(range(8)))
        s.add_key(rec)
        assert s.get_key(rec.key_id) == rec
    assert {"via", "enrolled_by", "share_serial"} <= _columns(path, "keys")
    assert "issued_by" in _columns(path, "pairings")
    assert _columns(path, "revocation_lists") == {"issuer", "version", "issued_at", "applied_at", "list"}
    assert _columns(path, "revoked_key_ids") == {"key_id", "issuer", "version", "at"}


def test_a_version_2_store_migrates_keeping_keys_and_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.db"
    owner = make_key("phone", Role.OWNER)
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:2])
        with KeyStore.open(path, create=True) as old:
            assert old.schema_version() == 2
            with old.transaction():  # written the way version 2 wrote them
                old._execute("INSERT INTO keys (key_id, public_key, name, role, valid_from, valid_until, schedule, "
                             "created_at, last_used_at, revoked_at) VALUES (?, ?, 'phone', 'owner', NULL, NULL, "
                             "NULL, ?, NULL, NULL)", (owner.key_id, owner.public_key, NOW))
                old._execute("INSERT INTO pairings (slot, prs, role, name, expires_at, key_valid_from, "
                             "key_valid_until, schedule, attempts_left, created_at, failures) "
                             "VALUES (7, ?, 'guest', 'old code', ?, NULL, NULL, NULL, 3, ?, 1)",
                             (bytes(32), NOW + 600, NOW))
    with KeyStore.open(path) as s:
        assert s.schema_version() == store_mod.SCHEMA_VERSION
        rec = s.get_key(owner.key_id)
        assert rec is not None and (rec.via, rec.enrolled_by, rec.share_serial) == ("code", None, None)
        [pending] = s.list_pairings(NOW)
        assert (pending.slot, pending.failures, pending.issued_by) == (7, 1, None)
        assert s.revocation_lists() == [] and not s.key_id_revoked(owner.key_id)


def test_backup_and_restore_keep_the_new_fields(tmp_path: Path) -> None:
    path, copy = tmp_path / "keys.db", tmp_path / "backup.db"
    rec = dataclasses.replace(make_key("watch", Role.GUEST), via="share", enrolled_by=b"\xaa" * 4,
                              share_serial=b"\x05" * 8)
    with KeyStore.open(path, create=True) as s:
        s.add_key(rec)
        s.put_revocation_list(b"\xaa" * 4, 3, NOW, NOW + 1, b"list bytes")
        s.remember_revoked_id(b"\x09" * 4, b"\xaa" * 4, 3, NOW + 1)
        from key_server.audit import AuditEvent, AuditLog

        AuditLog(s).append(AuditEvent.ADMIN, ts=NOW, detail={"action": "init"})
    backup(path, copy)
    path.unlink()
    restore(copy, path)
    with KeyStore.open(path) as s:
        assert s.get_key(rec.key_id) == rec
        held = s.revocation_list(b"\xaa" * 4)
        assert held is not None and (held.version, held.raw) == (3, b"list bytes")
        assert s.key_id_revoked(b"\x09" * 4)


def test_key_states_follow_the_window_and_revocation() -> None:
    guest = make_key("guest", Role.GUEST, valid_from=NOW, valid_until=NOW + 10)
    assert [guest.state(t) for t in (NOW - 1, NOW, NOW + 9, NOW + 10)] == [
        "not_yet_valid", "active", "active", "expired"]
    assert dataclasses.replace(guest, revoked_at=NOW).state(NOW + 5) == "revoked"
    assert make_key("owner").state(NOW) == "active"


@pytest.mark.parametrize("bad", [{"via": "fax"}, {"enrolled_by": b"\x01"}, {"share_serial": b"\x01" * 7}])
def test_a_record_with_bad_enrolment_fields_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(make_key(), **bad)


def test_update_key_edits_and_keeps_the_last_owner(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db", create=True) as s:
        owner, driver = make_key("phone", Role.OWNER), make_key("car", Role.DRIVER)
        s.add_key(owner)
        s.add_key(driver)
        counter = s.change_counter()
        edited = s.update_key(dataclasses.replace(driver, name="family car", role=Role.GUEST, valid_until=NOW + 60,
                                                  schedule="daily 06:00-23:00"), NOW)
        assert s.get_key(driver.key_id) == edited and edited.public_key == driver.public_key
        assert (edited.name, edited.role, edited.valid_until) == ("family car", Role.GUEST, NOW + 60)
        assert s.change_counter() > counter  # a running server notices the edit
        # The only owner can be neither demoted nor given a window that excludes now.
        for change in ({"role": Role.DRIVER}, {"valid_until": NOW}, {"valid_from": NOW + 1}):
            with pytest.raises(LastOwnerError):
                s.update_key(dataclasses.replace(owner, **change), NOW)  # type: ignore[arg-type]
        assert s.get_key(owner.key_id) == owner
        # With a second owner, the first may step down.
        second = make_key("tablet", Role.OWNER)
        s.add_key(second)
        assert s.update_key(dataclasses.replace(owner, role=Role.DRIVER), NOW).role is Role.DRIVER
        s.revoke_key(driver.key_id, NOW)
        with pytest.raises(AlreadyRevoked):
            s.update_key(dataclasses.replace(driver, name="x"), NOW)
        with pytest.raises(UnknownKey):
            s.update_key(make_key("stranger"), NOW)


def test_revocation_lists_only_grow_and_ids_are_remembered(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db", create=True) as s:
        issuer = b"\x01\x02\x03\x04"
        assert s.revocation_list(issuer) is None
        s.put_revocation_list(issuer, 2, NOW, NOW, b"v2")
        for older in (1, 2):
            with pytest.raises(ValueError, match="not newer"):
                s.put_revocation_list(issuer, older, NOW, NOW, b"old")
        s.put_revocation_list(issuer, 5, NOW, NOW, b"v5")
        held = s.revocation_list(issuer)
        assert held is not None and (held.version, held.raw) == (5, b"v5")
        s.remember_revoked_id(b"\x09" * 4, issuer, 5, NOW)
        s.remember_revoked_id(b"\x09" * 4, issuer, 6, NOW)  # already remembered: kept as first written
        assert s.key_id_revoked(b"\x09" * 4) and not s.key_id_revoked(b"\x08" * 4)


def test_keys_enrolled_by_a_share_are_found_by_issuer_and_serial(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db", create=True) as s:
        owner = make_key("phone", Role.OWNER)
        shared = dataclasses.replace(make_key("watch", Role.DRIVER), via="share", enrolled_by=owner.key_id,
                                     share_serial=b"\x07" * 8)
        coded = dataclasses.replace(make_key("laptop", Role.GUEST), via="code", enrolled_by=owner.key_id)
        for rec in (owner, shared, coded):
            s.add_key(rec)
        assert s.keys_enrolled_by(owner.key_id) == [shared]  # only shares: WITH_SHARES never reaches code keys
        assert s.share_serial_used(b"\x07" * 8) == shared and s.share_serial_used(b"\x08" * 8) is None


def test_a_remote_code_carries_its_issuer_to_the_key(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "keys.db", create=True) as s:
        pairing = s.create_pairing(lambda slot: bytes(32), role=Role.GUEST, name="guest", expires_at=NOW + 60,
                                   key_valid_from=None, key_valid_until=None, schedule=None, now=NOW,
                                   issued_by=b"\x0a\x0b\x0c\x0d")
        assert s.get_pairing(pairing.slot, NOW) == pairing
        pub = make_key().public_key
        rec: KeyRecord = pairing.key_record(b"\x11\x22\x33\x44", pub, NOW)
        assert (rec.via, rec.enrolled_by) == ("code", b"\x0a\x0b\x0c\x0d")
        s.complete_pairing(pairing.slot, rec)
        assert s.get_key(rec.key_id) == rec


def test_a_version_3_store_gets_an_advertising_secret_and_rotation_bumps_its_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.db"
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:3])
        with KeyStore.open(path, create=True) as old:
            assert old.schema_version() == 3
            with pytest.raises(store_mod.StoreError, match="no advertising secret"):
                old.ad_secret()
    with KeyStore.open(path) as s:
        first = s.ad_secret()
        assert s.schema_version() == store_mod.SCHEMA_VERSION and first.generation == 1
        counter = s.change_counter()
        second = s.rotate_ad_secret()
        assert (second.generation, s.ad_secret()) == (2, second) and second.secret != first.secret
        assert s.change_counter() > counter  # a running server notices the rotation on its next poll
    with KeyStore.open(path) as s:
        assert s.ad_secret() == second  # durable
