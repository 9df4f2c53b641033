"""AuditLog: append/read, the hash chain, and verify() against every kind of tampering done with raw sqlite3."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from key_server.audit import (
    AUDIT_HEAD_KEY,
    EVENTS,
    GENESIS_HASH,
    MAX_READ,
    AuditEvent,
    AuditLog,
    entry_hash,
)
from key_server.store import KeyRecord, KeyStore, StoreError
from protocol import Role

NOW = 1_800_000_000
KID = b"\x01\x02\x03\x04"




@pytest.fixture
def log(store: KeyStore) -> AuditLog:
    return AuditLog(store)


def fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.append(AuditEvent.UNLOCK, ts=NOW + i, key_id=KID, detail={"i": i, "ok": True, "why": None})


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change the file behind the store's back, as an attacker with write access would."""
    db = sqlite3.connect(path)
    try:
        with db:
            for sql, params in statements:
                db.execute(sql, params)
    finally:
        db.close()


def row(path: Path, seq: int) -> tuple[Any, ...]:
    db = sqlite3.connect(path)
    try:
        return tuple(db.execute("SELECT * FROM audit WHERE seq = ?", (seq,)).fetchone())
    finally:
        db.close()


# ---- append / read ------------------------------------------------------------------------------------------


def test_events_constant() -> None:
    assert {"pair_start", "pair", "pair_failed", "unlock", "lock", "status", "start", "refused", "revoke", "admin",
            "actuate", "rate_limited", "refusals", "audit_pruned", "server_start", "server_stop"} == EVENTS
    assert AuditEvent("refused") is AuditEvent.REFUSED


def test_append_chains_and_reads_back(log: AuditLog) -> None:
    a = log.append("server_start", ts=NOW)
    b = log.append(AuditEvent.REFUSED, ts=NOW + 1, key_id=KID, detail={"reason": "expired", "n": 3})
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev_hash == GENESIS_HASH and b.prev_hash == a.hash
    assert a.hash == entry_hash(GENESIS_HASH, 1, NOW, "server_start", None, {})
    assert b.hash == hashlib.sha256(
        a.hash + b'["dkey-audit/1",2,1800000001,"refused","01020304",{"n":3,"reason":"expired"}]'
    ).digest()
    assert log.read() == [a, b]
    assert log.read(after_seq=1) == [b]
    assert log.read(limit=1) == [a]
    assert log.tail(1) == [b]
    assert log.head() == (2, b.hash)
    assert b.to_json() == {
        "seq": 2, "ts": NOW + 1, "event": "refused", "key_id": "01020304",
        "detail": {"reason": "expired", "n": 3}, "prev_hash": a.hash.hex(), "hash": b.hash.hex(),
    }
    assert a.to_json()["key_id"] is None


def test_append_validation(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="event"):
        log.append("Unlock!", ts=NOW)
    with pytest.raises(TypeError):
        log.append("unlock", ts=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        log.append("unlock", ts=NOW, detail={"x": 1.5})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        log.append("unlock", ts=NOW, detail={"x": {"nested": 1}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="key_id"):
        log.append("unlock", ts=NOW, key_id=b"x" * 65)
    with pytest.raises(ValueError, match="limit"):
        log.read(limit=MAX_READ + 1)
    with pytest.raises(ValueError, match="limit"):
        log.tail(-1)
    assert log.read() == []
    assert log.append("custom_event", ts=NOW).seq == 1  # names outside EVENTS are allowed


def test_verify_ok(log: AuditLog) -> None:
    v = log.verify()
    assert v.ok and v.entries == 0 and v.first_bad_seq is None
    fill(log, 7)
    v = log.verify()
    assert v.ok and v.entries == 7 and v.first_bad_seq is None, v


def test_append_joins_a_store_transaction(store: KeyStore, log: AuditLog) -> None:
    owner, phone = make_key("owner", Role.OWNER), make_key("phone", Role.DRIVER)
    store.add_key(owner)
    store.add_key(phone)
    with pytest.raises(RuntimeError), store.transaction():
        store.revoke_key(phone.key_id, NOW)
        log.append(AuditEvent.REVOKE, ts=NOW, key_id=phone.key_id)
        raise RuntimeError("crash before commit")
    assert not store.get_key(phone.key_id).revoked  # type: ignore[union-attr]
    assert log.read() == [] and log.head() == (0, GENESIS_HASH)
    with store.transaction():
        store.revoke_key(phone.key_id, NOW)
        log.append(AuditEvent.REVOKE, ts=NOW, key_id=phone.key_id)
    assert store.get_key(phone.key_id).revoked  # type: ignore[union-attr]
    assert [e.event for e in log.read()] == ["revoke"]
    assert log.verify().ok


def test_read_tolerates_a_mangled_detail(db_path: Path, log: AuditLog) -> None:
    fill(log, 2)
    tamper(db_path, ("UPDATE audit SET detail = 'not json' WHERE seq = 2", ()))
    assert log.read()[1].detail == {"_unreadable": "not json"}
    assert log.verify().first_bad_seq == 2


# ---- tampering ----------------------------------------------------------------------------------------------


def check_bad(log: AuditLog, first_bad: int | None, words: str) -> None:
    v = log.verify()
    assert not v.ok, v
    assert v.first_bad_seq == first_bad, v
    assert words in v.reason, v


def test_edit_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("UPDATE audit SET detail = ? WHERE seq = 3", ('{"i":99,"ok":true,"why":null}',)))
    check_bad(log, 3, "edited")


@pytest.mark.parametrize(
    ("column", "value"),
    [("ts", NOW + 1000), ("event", "lock"), ("key_id", b"\x09\x09\x09\x09"), ("key_id", None),
     ("key_id", "01020304"), ("hash", b"\0" * 32)],
)
def test_edit_of_any_field_detected(db_path: Path, log: AuditLog, column: str, value: object) -> None:
    fill(log)
    tamper(db_path, (f"UPDATE audit SET {column} = ? WHERE seq = 2", (value,)))
    v = log.verify()
    assert not v.ok and v.first_bad_seq in (2, 3), v  # editing a hash breaks the link from the next entry


def test_delete_middle_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("DELETE FROM audit WHERE seq = 3", ()))
    check_bad(log, 3, "missing")


def test_delete_first_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("DELETE FROM audit WHERE seq = 1", ()))
    check_bad(log, 1, "missing")


def test_delete_last_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("DELETE FROM audit WHERE seq >= 4", ()))
    check_bad(log, 4, "newest entries deleted")


def test_delete_everything_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("DELETE FROM audit", ()))
    check_bad(log, 1, "missing")


def test_delete_last_and_roll_back_head_needs_a_consistent_forgery(db_path: Path, log: AuditLog) -> None:
    fill(log)
    four = row(db_path, 4)
    # Deleting the newest entry and the head record is noticed ...
    tamper(db_path, ("DELETE FROM audit WHERE seq = 5", ()), ("DELETE FROM meta WHERE k = ?", (AUDIT_HEAD_KEY,)))
    check_bad(log, None, "head record is missing")
    # ... and so is a head record that is not the last entry's.
    tamper(db_path, ("INSERT INTO meta (k, v) VALUES (?, ?)", (AUDIT_HEAD_KEY, f"4:{'00' * 32}")))
    check_bad(log, 4, "head record")
    tamper(db_path, ("UPDATE meta SET v = ? WHERE k = ?", (f"4:{four[6].hex()}", AUDIT_HEAD_KEY)))
    assert log.verify().ok  # an unkeyed chain rewritten consistently is indistinguishable (documented limit)


def test_reorder_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    two, three = row(db_path, 2), row(db_path, 3)
    cols = "ts = ?, event = ?, key_id = ?, detail = ?, prev_hash = ?, hash = ?"
    tamper(
        db_path,
        (f"UPDATE audit SET {cols} WHERE seq = 2", (*three[1:],)),
        (f"UPDATE audit SET {cols} WHERE seq = 3", (*two[1:],)),
    )
    check_bad(log, 2, "does not chain")


def test_reorder_by_renumbering_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(
        db_path,
        ("UPDATE audit SET seq = 100 WHERE seq = 2", ()),
        ("UPDATE audit SET seq = 2 WHERE seq = 3", ()),
        ("UPDATE audit SET seq = 3 WHERE seq = 100", ()),
    )
    check_bad(log, 2, "does not chain")


def test_insert_in_the_middle_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    two = row(db_path, 2)
    # The attacker knows the algorithm: the forged entry itself chains correctly to entry 2 ...
    forged = entry_hash(two[6], 3, NOW, "lock", KID, {})
    statements: list[tuple[str, tuple[object, ...]]] = [
        (f"UPDATE audit SET seq = {seq + 1} WHERE seq = {seq}", ()) for seq in (5, 4, 3)
    ]
    statements.append(
        ("INSERT INTO audit VALUES (3, ?, 'lock', ?, '{}', ?, ?)", (NOW, KID, two[6], forged)),
    )
    tamper(db_path, *statements)
    # ... but the entry after it no longer does (and every renumbered entry's hash covers its old seq).
    check_bad(log, 4, "does not chain")


def test_insert_at_the_end_detected(db_path: Path, log: AuditLog) -> None:
    fill(log)
    five = row(db_path, 5)
    forged = entry_hash(five[6], 6, NOW, "unlock", KID, {})
    tamper(db_path, ("INSERT INTO audit VALUES (6, ?, 'unlock', ?, '{}', ?, ?)", (NOW, KID, five[6], forged)))
    check_bad(log, 6, "added outside the log")


def test_appending_after_tampering_keeps_the_evidence(db_path: Path, log: AuditLog) -> None:
    fill(log)
    tamper(db_path, ("DELETE FROM audit WHERE seq = 5", ()))
    entry = log.append("lock", ts=NOW + 100)
    assert entry.seq == 6  # numbering continues from the head, so the gap stays visible
    check_bad(log, 5, "missing")


def test_planted_rows_past_the_head_do_not_block_appends(db_path: Path, log: AuditLog) -> None:
    fill(log, 2)
    tamper(db_path, ("INSERT INTO audit VALUES (3, 0, 'x', NULL, '{}', zeroblob(32), zeroblob(32))", ()))
    assert log.append("lock", ts=NOW).seq == 4
    assert not log.verify().ok


def test_unreadable_head_is_reported(db_path: Path, log: AuditLog) -> None:
    fill(log, 1)
    tamper(db_path, ("UPDATE meta SET v = 'garbage' WHERE k = ?", (AUDIT_HEAD_KEY,)))
    check_bad(log, None, "unreadable")
    with pytest.raises(StoreError, match="unreadable"):
        log.append("lock", ts=NOW)


# ---- helpers --------------------------------------------------------------------------------------------------


def make_key(name: str, role: Role) -> KeyRecord:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return KeyRecord(hashlib.sha256(pub).digest()[:4], pub, name, role, None, None, None, NOW)


# ---- retention -------------------------------------------------------------------------------------------------


def test_retention_keeps_at_most_max_entries_and_the_rest_verifies(store: KeyStore) -> None:
    log = AuditLog(store, max_entries=100)
    for i in range(1000):
        log.append(AuditEvent.REFUSED, ts=NOW + i, detail={"i": i})
        head_seq, _ = log.head()
        assert head_seq - log.pruned_through() <= 100  # the bound holds after every append
    kept = log.read(after_seq=0, limit=MAX_READ)
    assert len(kept) <= 100 and kept[0].seq == log.pruned_through() + 1
    verdict = log.verify()
    assert verdict.ok and "pruned by retention" in verdict.reason and verdict.head_seq == log.head()[0]
    pruned = [e for e in kept if e.event == AuditEvent.AUDIT_PRUNED]
    assert pruned and pruned[-1].detail["through"] == log.pruned_through()  # each prune says so in the log
    # The first kept entry chains to the anchor: the pruned prefix is not a break.
    assert kept[0].prev_hash.hex() == next(e for e in kept if e.event == "audit_pruned"
                                           and e.detail["through"] == log.pruned_through()).detail["anchor"]


def test_without_a_bound_nothing_is_pruned(log: AuditLog) -> None:
    fill(log, 150)
    assert log.pruned_through() == 0 and len(log.read(limit=MAX_READ)) == 150


def test_deleting_the_oldest_kept_entry_after_a_prune_is_detected(db_path: Path, store: KeyStore) -> None:
    log = AuditLog(store, max_entries=100)
    fill(log, 130)
    first = log.pruned_through() + 1
    assert first > 1
    tamper(db_path, ("DELETE FROM audit WHERE seq = ?", (first,)))
    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_seq == first


def test_a_moved_anchor_is_detected(db_path: Path, store: KeyStore) -> None:
    log = AuditLog(store, max_entries=100)
    fill(log, 130)
    through = log.pruned_through()
    # Pretend more was pruned: delete the next entry too and move the anchor over it, keeping the old hash.
    _, anchor_hash = (through, store.get_meta("audit_anchor"))
    tamper(db_path, ("DELETE FROM audit WHERE seq = ?", (through + 1,)),
           ("UPDATE meta SET v = ? WHERE k = 'audit_anchor'", (f"{through + 1}:{str(anchor_hash).split(':')[1]}",)))
    assert not log.verify().ok


def test_max_entries_has_a_floor(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="at least 100"):
        AuditLog(store, max_entries=10)


def test_verify_pinned_catches_a_cut_tail_and_passes_growth(db_path: Path, log: AuditLog) -> None:
    fill(log, 10)
    pin = log.head()
    fill(log, 3)
    assert log.verify_pinned(*pin).ok  # grown: still holds the pinned entry
    assert log.verify_pinned(*log.head()).ok
    assert not log.verify_pinned(pin[0], bytes(32)).ok  # another hash at that seq: a fork
    tamper(db_path, ("DELETE FROM audit WHERE seq > 8", ()),
           ("UPDATE meta SET v = ? WHERE k = ?", (f"8:{row(db_path, 8)[6].hex()}", AUDIT_HEAD_KEY)))
    assert log.verify().ok  # the cut alone goes unseen...
    verdict = log.verify_pinned(*pin)
    assert not verdict.ok and "truncated" in verdict.reason  # ...but not against the pin
