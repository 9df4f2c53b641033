"""KeyStore: schema and migrations, keys, revocation rules, pairings, change counter, transactions, sharing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from key_server import store as store_mod
from key_server.store import (
    SCHEMA_VERSION,
    DuplicateKey,
    InsecureStore,
    KeyRecord,
    KeyStore,
    KeyWasRevoked,
    LastOwnerError,
    NoFreeSlot,
    PairingMismatch,
    PendingPairing,
    StoreError,
    StoreMissing,
    UnknownKey,
    UnknownPairing,
    UnusableStore,
)
from protocol import Role

NOW = 1_800_000_000


def new_public_key() -> bytes:
    """A fresh uncompressed P-256 public key."""
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def make_key(
    name: str = "phone",
    role: Role = Role.OWNER,
    *,
    valid_from: int | None = None,
    valid_until: int | None = None,
    schedule: str | None = None,
    public_key: bytes | None = None,
    key_id: bytes | None = None,
) -> KeyRecord:
    """A KeyRecord for a fresh key (id = first 4 bytes of SHA-256 of the point, unless given)."""
    pub = public_key or new_public_key()
    return KeyRecord(
        key_id=key_id or hashlib.sha256(pub).digest()[:4],
        public_key=pub,
        name=name,
        role=role,
        valid_from=valid_from,
        valid_until=valid_until,
        schedule=schedule,
        created_at=NOW,
    )


def prs(slot: int) -> bytes:
    """A stand-in for the caller's code-and-slot derivation."""
    return hashlib.sha256(b"code-123456/%d" % slot).digest()


def new_pairing(store: KeyStore, *, role: Role = Role.GUEST, name: str = "bro", attempts: int = 5,
                expires_at: int = NOW + 300, now: int = NOW, key_valid_until: int | None = NOW + 86400,
                schedule: str | None = None) -> PendingPairing:
    """Create a pairing with sensible defaults."""
    return store.create_pairing(
        prs,
        role=role,
        name=name,
        expires_at=expires_at,
        key_valid_from=None,
        key_valid_until=key_valid_until,
        schedule=schedule,
        attempts=attempts,
        now=now,
    )




def raw(path: Path) -> sqlite3.Connection:
    """A raw connection for inspecting the file behind the store's back (close it!)."""
    return sqlite3.connect(path)


# ---- opening, schema, migrations ----------------------------------------------------------------------------


def table_names(path: Path) -> set[str]:
    db = raw(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_open_creates_current_schema_private_wal(db_path: Path) -> None:
    with KeyStore.open(db_path, create=True) as s:
        assert s.schema_version() == SCHEMA_VERSION == 4
        assert s.path == db_path
        assert s._query("PRAGMA journal_mode")[0][0] == "wal"
        assert s._query("PRAGMA synchronous")[0][0] == 2  # FULL
        assert s._query("PRAGMA busy_timeout")[0][0] == 5000
        assert s.integrity_check() == []
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert {"keys", "pairings", "meta", "audit"} <= table_names(db_path)


def test_init_migrates_an_empty_file(db_path: Path) -> None:
    db_path.touch(mode=0o600)  # zero bytes: what an init cut short could leave behind; only init may fill it
    with KeyStore.open(db_path, create=True) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.list_keys() == []
    assert {"keys", "pairings", "meta", "audit"} <= table_names(db_path)


def test_reopen_keeps_data_and_does_not_remigrate(db_path: Path) -> None:
    rec = make_key()
    with KeyStore.open(db_path, create=True) as s:
        s.add_key(rec)
    with KeyStore.open(db_path, create=True) as s:
        assert s.get_key(rec.key_id) == rec
        assert s.schema_version() == SCHEMA_VERSION


def test_a_second_migration_can_be_added(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_key()
    with KeyStore.open(db_path, create=True) as s:
        s.add_key(rec)

    def migration_3(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE keys ADD COLUMN note TEXT")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, migration_3])
    with KeyStore.open(db_path, create=True) as s:
        assert s.schema_version() == SCHEMA_VERSION + 1
        assert s.get_key(rec.key_id) == rec  # the old API still reads the new table
    db = raw(db_path)
    try:
        assert "note" in {r[1] for r in db.execute("PRAGMA table_info(keys)")}
    finally:
        db.close()


def test_a_failing_migration_changes_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KeyStore.open(db_path, create=True):
        pass

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="boom"):
        KeyStore.open(db_path, create=True)
    assert "half_done" not in table_names(db_path)
    monkeypatch.undo()
    with KeyStore.open(db_path, create=True) as s:
        assert s.schema_version() == SCHEMA_VERSION


def test_newer_schema_refused(db_path: Path) -> None:
    with KeyStore.open(db_path, create=True):
        pass
    db = raw(db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        KeyStore.open(db_path, create=True)


def test_not_a_database_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    db_path.chmod(0o600)
    with pytest.raises(UnusableStore, match="not an SQLite database"):
        KeyStore.open(db_path, create=True)


def test_only_create_makes_a_store(db_path: Path) -> None:
    with pytest.raises(StoreMissing, match="key-server init"):
        KeyStore.open(db_path)
    assert not db_path.exists()


def _keep_one_key(db_path: Path) -> None:
    with KeyStore.open(db_path, create=True) as s:
        s.add_key(make_key())
        for i in range(200):  # a few pages, so that half the file cuts pages off
            s.set_meta(f"filler{i}", "x" * 200)


def _another_schema(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE notes (x)")
    db.close()


def _schema_1_without_tables(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE keys (x)")
    db.execute("PRAGMA user_version = 1")
    db.close()


@pytest.mark.parametrize(("spoil", "says"), [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: (_keep_one_key(p), os.truncate(p, p.stat().st_size // 2)), "is truncated"),
    (lambda p: (_keep_one_key(p), os.truncate(p, p.stat().st_size - 100)), "is truncated"),
    (lambda p: (_keep_one_key(p), os.truncate(p, 60)), "is truncated"),
    (lambda p: p.write_bytes(b"x" * 4096), "not an SQLite database"),
    (_another_schema, "another application's database"),
    (lambda p: sqlite3.connect(p).executescript("CREATE TABLE t (x); DROP TABLE t").close(), "holds no key store"),
    (_schema_1_without_tables, "without the audit, meta, pairings table"),
], ids=["empty", "half", "last page cut", "header cut", "not sqlite", "another schema", "sqlite, no tables",
        "schema 1 without its tables"])
def test_a_store_that_is_not_one_is_refused_unchanged(db_path: Path, spoil: Callable[[Path], object],
                                                      says: str) -> None:
    spoil(db_path)
    if db_path.exists():
        db_path.chmod(0o600)
    before = db_path.read_bytes()
    with pytest.raises(UnusableStore, match=says):
        KeyStore.open(db_path)
    assert db_path.read_bytes() == before
    assert not Path(f"{db_path}-wal").exists()


def test_a_store_survives_reopen_without_create(db_path: Path) -> None:
    _keep_one_key(db_path)
    with KeyStore.open(db_path) as s:  # the honest case: a whole store opens without create
        assert len(s.list_keys()) == 1


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604, 0o620])
def test_a_store_others_can_access_is_refused(db_path: Path, mode: int) -> None:
    _keep_one_key(db_path)
    db_path.chmod(mode)
    with pytest.raises(InsecureStore, match=f"mode {mode:04o}.*chmod 600"):
        KeyStore.open(db_path)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_state_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    _keep_one_key(state / "keys.db")
    state.chmod(mode)
    with pytest.raises(InsecureStore, match="chmod 700"):
        KeyStore.open(state / "keys.db")
    state.chmod(0o755)  # readable by others is allowed: each file in it is 0600
    KeyStore.open(state / "keys.db").close()


def test_missing_state_dir(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="key-server init"):
        KeyStore.open(tmp_path / "nope" / "keys.db", create=True)


def test_closed_store_raises(db_path: Path) -> None:
    s = KeyStore.open(db_path, create=True)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.list_keys()


# ---- keys ---------------------------------------------------------------------------------------------------


def test_add_get_list(store: KeyStore) -> None:
    a, b = make_key("phone"), make_key("watch", Role.DRIVER, valid_until=NOW + 10)
    store.add_key(a)
    store.add_key(b)
    assert store.get_key(a.key_id) == a
    assert store.get_key(b"\0\0\0\0") is None
    assert {r.key_id for r in store.list_keys()} == {a.key_id, b.key_id}
    assert not a.revoked


def test_key_record_validation() -> None:
    pub = new_public_key()
    with pytest.raises(ValueError, match="key_id"):
        make_key(public_key=pub, key_id=b"\1\2\3")
    with pytest.raises(ValueError, match="public_key"):
        make_key(public_key=b"\x02" + pub[1:33])
    with pytest.raises(ValueError, match="name"):
        make_key(" ")
    with pytest.raises(ValueError, match="control"):
        make_key("a\nb")
    with pytest.raises(ValueError):
        make_key(role="admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid_until"):
        make_key(valid_from=10, valid_until=10)
    assert make_key(role="guest").role is Role.GUEST  # type: ignore[arg-type]
    assert pub.hex() not in repr(make_key(public_key=pub))


def test_add_key_refuses_points_off_the_curve(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="P-256"):
        store.add_key(make_key(public_key=b"\x04" + b"\x01" * 64))
    with pytest.raises(ValueError, match="revoked_at"):
        store.add_key(KeyRecord(b"abcd", new_public_key(), "x", Role.GUEST, None, None, None, NOW, revoked_at=1))


def test_duplicate_key_id_and_duplicate_public_key(store: KeyStore) -> None:
    a = make_key()
    store.add_key(a)
    with pytest.raises(DuplicateKey, match="key id"):
        store.add_key(make_key("other", key_id=a.key_id))
    with pytest.raises(DuplicateKey, match="public key"):
        store.add_key(make_key("same key, other id", public_key=a.public_key, key_id=b"zzzz"))
    assert store.list_keys() == [a]


def test_revoke(store: KeyStore) -> None:
    owner, phone = make_key("owner"), make_key("phone", Role.DRIVER)
    store.add_key(owner)
    store.add_key(phone)
    revoked = store.revoke_key(phone.key_id, NOW + 5)
    assert revoked.revoked and revoked.revoked_at == NOW + 5
    assert store.get_key(phone.key_id) == revoked
    again = store.revoke_key(phone.key_id, NOW + 99)  # idempotent: keeps the first revocation time
    assert again == revoked
    assert not store.get_key(owner.key_id).revoked  # type: ignore[union-attr]
    with pytest.raises(UnknownKey):
        store.revoke_key(b"nope", NOW)


def test_last_owner_needs_force(store: KeyStore) -> None:
    first, second = make_key("first"), make_key("second")
    store.add_key(first)
    store.add_key(second)
    store.revoke_key(first.key_id, NOW)  # another owner remains
    with pytest.raises(LastOwnerError, match="last active owner"):
        store.revoke_key(second.key_id, NOW)
    assert not store.get_key(second.key_id).revoked  # type: ignore[union-attr]
    assert store.revoke_key(second.key_id, NOW, force=True).revoked


def test_expired_owner_does_not_count_as_active(store: KeyStore) -> None:
    main, expired = make_key("main"), make_key("old", valid_until=NOW - 1)
    store.add_key(main)
    store.add_key(expired)
    with pytest.raises(LastOwnerError):
        store.revoke_key(main.key_id, NOW)
    # Revoking a non-owner, or an owner while another is active, never needs force.
    driver = make_key("driver", Role.DRIVER)
    store.add_key(driver)
    store.revoke_key(driver.key_id, NOW)


def test_reenroll_revoked_key_is_explicit(store: KeyStore) -> None:
    store.add_key(make_key("owner"))
    phone = make_key("phone", Role.DRIVER)
    store.add_key(phone)
    store.revoke_key(phone.key_id, NOW)
    with pytest.raises(KeyWasRevoked):
        store.add_key(phone)
    # The same public key under another id is the same key: still refused.
    with pytest.raises(KeyWasRevoked):
        store.add_key(make_key("phone again", Role.DRIVER, public_key=phone.public_key, key_id=b"new!"))
    assert store.get_key(phone.key_id).revoked  # type: ignore[union-attr]
    store.add_key(phone, allow_reenroll=True)
    assert store.get_key(phone.key_id) == phone


def test_mark_used(store: KeyStore) -> None:
    rec = make_key()
    store.add_key(rec)
    before = store.change_counter()
    store.mark_used(rec.key_id, NOW + 7)
    assert store.get_key(rec.key_id).last_used_at == NOW + 7  # type: ignore[union-attr]
    assert store.change_counter() == before  # a use is not a change pollers must react to
    with pytest.raises(UnknownKey):
        store.mark_used(b"nope", NOW)


def test_find_key(store: KeyStore) -> None:
    a = make_key("phone", key_id=bytes.fromhex("abcd0001"))
    b = make_key("watch", key_id=bytes.fromhex("abcd0002"))
    c = make_key("beef", key_id=bytes.fromhex("12345678"))
    for rec in (a, b, c):
        store.add_key(rec)
    assert store.find_key("phone") == a
    assert store.find_key("abcd0002") == b
    assert store.find_key("ABCD0001") == a
    assert store.find_key("1234") == c
    assert store.find_key("beef") == c  # a name; also valid hex but no id starts with it
    with pytest.raises(StoreError, match="several") as excinfo:
        store.find_key("abcd")
    assert not isinstance(excinfo.value, UnknownKey)
    with pytest.raises(UnknownKey) as unknown:
        store.find_key("tablet")
    assert isinstance(unknown.value, KeyError)
    assert str(unknown.value).startswith("no key")
    with pytest.raises(UnknownKey):
        store.find_key("  ")
    with pytest.raises(UnknownKey):
        store.find_key("Phone")  # names match exactly


# ---- pairings -----------------------------------------------------------------------------------------------


def test_create_and_get_pairing(store: KeyStore) -> None:
    seen: list[int] = []

    def derive(slot: int) -> bytes:
        seen.append(slot)
        return prs(slot)

    p = store.create_pairing(
        derive, role=Role.GUEST, name="bro", expires_at=NOW + 300, key_valid_from=NOW,
        key_valid_until=NOW + 86400, schedule="Sat-Sun 00:00-24:00", now=NOW,
    )
    assert seen == [p.slot] and 0 <= p.slot <= 99
    assert p.prs == prs(p.slot) and p.attempts_left == 5 and p.created_at == NOW
    assert store.get_pairing(p.slot, NOW + 1) == p
    assert store.list_pairings(NOW + 1) == [p]
    assert store.get_pairing((p.slot + 1) % 100, NOW) is None
    assert p.prs.hex() not in repr(p)


def test_create_pairing_validation(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="attempts"):
        new_pairing(store, attempts=0)
    with pytest.raises(ValueError, match="future"):
        new_pairing(store, expires_at=NOW)
    with pytest.raises(ValueError, match="32 bytes"):
        store.create_pairing(lambda slot: b"short", role=Role.GUEST, name="x", expires_at=NOW + 1,
                             key_valid_from=None, key_valid_until=None, schedule=None, now=NOW)
    with pytest.raises(ValueError):
        new_pairing(store, role="root")  # type: ignore[arg-type]
    assert store.list_pairings(NOW) == []


def test_slots_fill_up_then_expired_ones_are_purged(store: KeyStore) -> None:
    slots = {new_pairing(store, expires_at=NOW + 10).slot for _ in range(100)}
    assert slots == set(range(100))
    with pytest.raises(NoFreeSlot):
        new_pairing(store)
    # Once they expire, creating a pairing purges them and finds room.
    p = new_pairing(store, now=NOW + 10, expires_at=NOW + 100)
    assert [x.slot for x in store.list_pairings(NOW + 10)] == [p.slot]


def test_expired_pairing_is_gone(store: KeyStore, db_path: Path) -> None:
    p = new_pairing(store, expires_at=NOW + 60)
    assert store.get_pairing(p.slot, NOW + 59) is not None
    assert store.get_pairing(p.slot, NOW + 60) is None
    assert store.spend_pairing_attempt(p.slot, NOW + 60) is None
    assert store.list_pairings(NOW + 60) == []
    db = raw(db_path)
    try:
        assert db.execute("SELECT count(*) FROM pairings").fetchone()[0] == 0  # purged, not just hidden
    finally:
        db.close()


def test_attempts_are_spent_before_the_pake_and_exhaust(store: KeyStore) -> None:
    p = new_pairing(store, attempts=3)
    seen = [store.spend_pairing_attempt(p.slot, NOW) for _ in range(3)]
    assert [s.attempts_left for s in seen if s is not None] == [3, 2, 1]  # the row as it was before spending
    assert store.get_pairing(p.slot, NOW) is None
    assert store.list_pairings(NOW) == []
    store.fail_pairing_attempt(p.slot)  # the last attempt failed too: the pairing is gone for good
    assert store.spend_pairing_attempt(p.slot, NOW) is None
    with pytest.raises(UnknownPairing):
        store.complete_pairing(p.slot, p.key_record(make_key().key_id, new_public_key(), NOW))


def test_a_failed_attempt_with_attempts_left_keeps_the_pairing(store: KeyStore) -> None:
    p = new_pairing(store, attempts=2)
    store.spend_pairing_attempt(p.slot, NOW)
    store.fail_pairing_attempt(p.slot)
    assert store.get_pairing(p.slot, NOW).attempts_left == 1  # type: ignore[union-attr]


def test_exhausted_pairing_is_gone_when_asked_again(store: KeyStore) -> None:
    p = new_pairing(store, attempts=1)
    assert store.spend_pairing_attempt(p.slot, NOW) is not None
    assert store.spend_pairing_attempt(p.slot, NOW) is None  # and the row is deleted now
    assert store._pairing_row(p.slot) is None


def test_the_last_attempt_can_still_complete(store: KeyStore) -> None:
    p = new_pairing(store, attempts=1)
    spent = store.spend_pairing_attempt(p.slot, NOW)
    assert spent is not None
    pub = new_public_key()
    rec = spent.key_record(hashlib.sha256(pub).digest()[:4], pub, NOW + 1)
    store.complete_pairing(p.slot, rec)
    assert store.get_key(rec.key_id) == rec
    assert store._pairing_row(p.slot) is None


def test_complete_pairing(store: KeyStore) -> None:
    p = new_pairing(store)
    before = store.change_counter()
    pub = new_public_key()
    rec = p.key_record(hashlib.sha256(pub).digest()[:4], pub, NOW + 2)
    assert (rec.role, rec.name, rec.valid_until) == (Role.GUEST, "bro", NOW + 86400)
    store.complete_pairing(p.slot, rec)
    assert store.get_key(rec.key_id) == rec
    assert store.get_pairing(p.slot, NOW) is None
    assert store.change_counter() > before
    with pytest.raises(UnknownPairing):  # single use
        store.complete_pairing(p.slot, make_key("again", Role.GUEST, valid_until=NOW + 86400))


def test_complete_pairing_is_atomic(store: KeyStore) -> None:
    existing = make_key("owner")
    store.add_key(existing)
    p = new_pairing(store, role=Role.OWNER, key_valid_until=None)
    store.spend_pairing_attempt(p.slot, NOW)
    before = store.change_counter()
    with pytest.raises(DuplicateKey):
        store.complete_pairing(p.slot, p.key_record(existing.key_id, existing.public_key, NOW))
    left = store.get_pairing(p.slot, NOW)
    assert left is not None and left.attempts_left == 4  # untouched: the DELETE was rolled back
    assert store.change_counter() == before
    assert store.list_keys() == [existing]


def test_complete_pairing_refuses_a_record_granting_more(store: KeyStore) -> None:
    p = new_pairing(store, role=Role.GUEST)
    with pytest.raises(PairingMismatch):
        store.complete_pairing(p.slot, make_key("sneaky", Role.OWNER, valid_until=NOW + 86400))
    assert store.get_pairing(p.slot, NOW) == p
    assert store.list_keys() == []


def test_cancel_pairing(store: KeyStore) -> None:
    p = new_pairing(store)
    store.cancel_pairing(p.slot)
    assert store.get_pairing(p.slot, NOW) is None
    with pytest.raises(UnknownPairing):
        store.cancel_pairing(p.slot)


# ---- meta, change counter, transactions, sharing ------------------------------------------------------------


def test_meta(store: KeyStore) -> None:
    assert store.get_meta("x") is None
    store.set_meta("x", "1")
    store.set_meta("x", "two")
    assert store.get_meta("x") == "two"
    assert store.max_meta_int("hw", 10) == 10
    assert store.max_meta_int("hw", 5) == 10  # never lowered
    assert store.max_meta_int("hw", 11) == 11
    assert store.get_meta("hw") == "11"


def test_change_counter_counts_key_and_pairing_changes(store: KeyStore) -> None:
    counts = [store.change_counter()]
    owner, phone = make_key("owner"), make_key("phone", Role.DRIVER)
    store.add_key(owner)
    counts.append(store.change_counter())
    store.add_key(phone)
    counts.append(store.change_counter())
    store.revoke_key(phone.key_id, NOW)
    counts.append(store.change_counter())
    p = new_pairing(store)
    counts.append(store.change_counter())
    store.spend_pairing_attempt(p.slot, NOW)
    counts.append(store.change_counter())
    store.cancel_pairing(p.slot)
    counts.append(store.change_counter())
    assert counts == sorted(set(counts)), counts  # strictly increasing
    # Reads, idempotent repeats and failures do not count.
    last = counts[-1]
    store.get_key(owner.key_id)
    store.list_keys()
    store.revoke_key(phone.key_id, NOW)
    with pytest.raises(DuplicateKey):
        store.add_key(owner)
    assert store.change_counter() == last


def test_second_process_sees_changes(db_path: Path) -> None:
    with KeyStore.open(db_path, create=True) as server, KeyStore.open(db_path, create=True) as cli:
        seen = server.change_counter()
        phone = make_key("phone", Role.DRIVER)
        cli.add_key(make_key("owner"))
        cli.add_key(phone)
        assert server.change_counter() != seen
        assert server.get_key(phone.key_id) == phone
        cli.revoke_key(phone.key_id, NOW)
        assert server.get_key(phone.key_id).revoked  # type: ignore[union-attr]


def test_writer_waits_for_the_other_process_and_reports_busy(db_path: Path) -> None:
    with KeyStore.open(db_path, create=True) as a, KeyStore.open(db_path, busy_timeout_ms=20, create=True) as b:
        rec = make_key()
        with a.transaction():
            a.add_key(rec)
            assert b.get_key(rec.key_id) is None  # readers are not blocked and see the last commit
            with pytest.raises(StoreError, match="busy"):
                b.set_meta("x", "y")
        assert b.get_key(rec.key_id) == rec
        b.set_meta("x", "y")


def test_transaction_groups_and_rolls_back(store: KeyStore) -> None:
    owner, phone = make_key("owner"), make_key("phone", Role.DRIVER)
    store.add_key(owner)
    with pytest.raises(RuntimeError), store.transaction():
        store.add_key(phone)
        store.set_meta("x", "1")
        raise RuntimeError("abort")
    assert store.get_key(phone.key_id) is None
    assert store.get_meta("x") is None


def test_nested_failure_rolls_back_only_the_inner_call(store: KeyStore) -> None:
    existing = make_key("owner")
    store.add_key(existing)
    p = new_pairing(store, role=Role.OWNER, key_valid_until=None)
    with store.transaction():
        store.set_meta("note", "kept")
        with pytest.raises(DuplicateKey):
            store.complete_pairing(p.slot, p.key_record(existing.key_id, existing.public_key, NOW))
    assert store.get_meta("note") == "kept"
    assert store.get_pairing(p.slot, NOW) is not None  # the inner DELETE did not sneak into the commit


def test_sqlite_errors_surface_as_store_errors(store: KeyStore) -> None:
    with pytest.raises(StoreError), store.transaction():
        store._execute("INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(StoreError):
        store._query("SELECT * FROM no_such_table")
    with pytest.raises(RuntimeError):
        store._execute("SELECT 1")  # outside a transaction


def test_store_file_is_created_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with KeyStore.open(tmp_path / "k.db", create=True) as s:
            s.set_meta("x", "y")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes and all(m == 0o600 for m in modes.values()), modes
