"""An append-only, hash-chained audit log kept in the key store's SQLite file.

Each entry's hash is SHA-256(prev_hash || canonical encoding of (seq, ts, event, key_id, detail)); the first
entry chains from 32 zero bytes. A head record (last seq and hash) in the meta table is updated in the same
transaction as each append, so verify() notices an edited, reordered, inserted or deleted entry, including the
newest ones (which a chain alone cannot reveal).

Atomicity with store changes: append() runs in KeyStore.transaction(), and joins an enclosing one, so

    with store.transaction():
        store.revoke_key(key_id, now)
        audit.append(AuditEvent.REVOKE, ts=now, key_id=key_id)

commits the revocation and its entry together, synced to disk, or neither.

Limits: the chain is unkeyed, so someone who can write the file can also recompute every hash; it catches
corruption and casual edits. Clients that read the log can pin the head hash they last saw to detect rewrites.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from key_server.store import KeyStore, StoreError
from protocol import Command

__all__ = [
    "AUDIT_HEAD_KEY",
    "EVENTS",
    "GENESIS_HASH",
    "MAX_READ",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "AuditVerdict",
    "DetailValue",
    "entry_hash",
]

log = logging.getLogger(__name__)

AUDIT_HEAD_KEY: Final = "audit_head"
GENESIS_HASH: Final = bytes(32)
MAX_READ: Final = 1000  # one read() page; callers page with after_seq
_DOMAIN: Final = "dkey-audit/1"  # versioned, so a future encoding can never collide with this one
_EVENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
MAX_KEY_ID_LEN: Final = 64  # refused attempts may log whatever id a peer sent; bound it

DetailValue = str | int | bool | None


class AuditEvent(enum.StrEnum):
    """The events the server records (plain strings on disk; append() accepts any [a-z0-9_] name)."""

    PAIR_START = "pair_start"  # detail: {"slot", "live", "name"}: an attempt spent, written before the PAKE runs
    PAIR = "pair"
    PAIR_FAILED = "pair_failed"  # detail: {"slot", "live", "reason"}: wrong code, abandoned, ...
    # A use of the vehicle is recorded under the command's own name (protocol's vocabulary, not a copy of it).
    UNLOCK = Command.UNLOCK.label
    LOCK = Command.LOCK.label
    STATUS = Command.STATUS.label
    START = Command.START.label
    # Written (committed, fsynced) before the actuator is driven, so a crash mid-actuation still leaves a record;
    # detail: {"command": "unlock" | "lock" | "start"}. The use row above follows with the status and "intent": seq.
    ACTUATE = "actuate"
    REFUSED = "refused"  # detail: {"reason": Refusal value, "command": ...}
    REVOKE = "revoke"
    ADMIN = "admin"  # detail: {"action": "list_keys" | "read_audit" | ...}
    RATE_LIMITED = "rate_limited"  # detail: {"what": "actuation", "refused": refusals since the key's last such row}
    SERVER_START = "server_start"
    SERVER_STOP = "server_stop"

    @classmethod
    def use_of(cls, command: Command) -> AuditEvent:
        """The event that records a use of the vehicle (unlock, lock, status, start); ValueError for admin commands."""
        return cls(command.label)


EVENTS: Final[frozenset[str]] = frozenset(e.value for e in AuditEvent)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry as stored."""

    seq: int
    ts: int
    event: str
    key_id: bytes | None
    detail: Mapping[str, DetailValue]
    hash: bytes
    prev_hash: bytes = GENESIS_HASH

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (bytes as lowercase hex)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "key_id": self.key_id.hex() if self.key_id is not None else None,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The result of AuditLog.verify(): ok, how many entries were checked, and where the chain first breaks."""

    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: str


def entry_hash(
    prev_hash: bytes, seq: int, ts: int, event: str, key_id: bytes | None, detail: Mapping[str, DetailValue]
) -> bytes:
    """SHA-256(prev_hash || canonical JSON of [domain, seq, ts, event, key_id hex|null, detail])."""
    encoded = _canonical([_DOMAIN, seq, ts, event, key_id.hex() if key_id is not None else None, dict(detail)])
    return hashlib.sha256(prev_hash + encoded).digest()


class AuditLog:
    """Append-only, hash-chained audit entries in the store's file (see the module docstring)."""

    def __init__(self, store: KeyStore) -> None:
        """Use the audit table of `store` (created by its migrations)."""
        self._store = store

    def append(
        self,
        event: str,
        *,
        ts: int,
        key_id: bytes | None = None,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> AuditEntry:
        """Append one entry (its own transaction, or the caller's store.transaction()) and return it."""
        event = str(event)
        if not _EVENT_RE.fullmatch(event):
            raise ValueError(f"bad audit event name {event!r}")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise TypeError("ts must be an int")
        if key_id is not None and (not isinstance(key_id, bytes) or len(key_id) > MAX_KEY_ID_LEN):
            raise ValueError(f"key_id must be bytes of at most {MAX_KEY_ID_LEN}")
        clean = _check_detail(detail or {})
        store = self._store
        with store.transaction():
            head_seq, head_hash = _parse_head(store.get_meta(AUDIT_HEAD_KEY))
            (max_seq,) = store._execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
            # Normally head_seq == max_seq; if rows were planted past the head we still append (verify reports
            # the tampering) instead of failing every future append on a primary-key clash.
            seq = max(head_seq, int(max_seq)) + 1
            digest = entry_hash(head_hash, seq, ts, event, key_id, clean)
            store._execute(
                "INSERT INTO audit (seq, ts, event, key_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, event, key_id, _canonical(clean).decode("ascii"), head_hash, digest),
            )
            store._execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                (AUDIT_HEAD_KEY, f"{seq}:{digest.hex()}"),
            )
        return AuditEntry(seq, ts, event, key_id, types.MappingProxyType(clean), digest, head_hash)

    def record(
        self,
        event: str,
        *,
        ts: int,
        key_id: bytes | None = None,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> AuditEntry | None:
        """append(), but a store failure is logged and swallowed: None then.

        For what a live server notes after the fact (refusals, uses, pairing failures): a full disk must not kill
        a session that has already been answered. Changes that must not happen unaudited (a revocation) use
        append() inside their own transaction instead.
        """
        try:
            return self.append(event, ts=ts, key_id=key_id, detail=detail)
        except StoreError:
            log.exception("could not write the audit log")
            return None

    def read(self, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries with seq > after_seq, oldest first, at most `limit` (<= MAX_READ)."""
        if not 0 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 0 and {MAX_READ}")
        rows = self._store._query(
            "SELECT seq, ts, event, key_id, detail, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_entry_from_row(row) for row in rows]

    def tail(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries (<= MAX_READ), oldest first (for `key-server audit`)."""
        if not 0 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 0 and {MAX_READ}")
        rows = self._store._query(
            "SELECT seq, ts, event, key_id, detail, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [_entry_from_row(row) for row in reversed(rows)]

    def head(self) -> tuple[int, bytes]:
        """The recorded head: (last seq, its hash); (0, GENESIS_HASH) for an empty log."""
        return _parse_head(self._store.get_meta(AUDIT_HEAD_KEY))

    def verify(self) -> AuditVerdict:
        """Walk the whole chain and the head record; report the first entry that does not check out."""
        with self._store._snapshot() as db:
            raw_head = db.execute("SELECT v FROM meta WHERE k = ?", (AUDIT_HEAD_KEY,)).fetchone()
            cursor = db.execute("SELECT seq, ts, event, key_id, detail, prev_hash, hash FROM audit ORDER BY seq")
            prev = GENESIS_HASH
            expected = 1
            count = 0
            for row in cursor:
                seq = row[0]
                problem = _check_row(row, expected, prev)
                if problem is not None:
                    bad = expected if isinstance(seq, int) and seq > expected else seq
                    return AuditVerdict(False, count, bad, problem)
                prev = row[6]
                expected += 1
                count += 1
        if raw_head is None:
            if count:
                return AuditVerdict(False, count, None, "the audit head record is missing")
            return AuditVerdict(True, 0, None, "empty log")
        try:
            head_seq, head_hash = _parse_head(str(raw_head[0]))
        except StoreError as exc:
            return AuditVerdict(False, count, None, str(exc))
        if head_seq > count:
            return AuditVerdict(
                False, count, count + 1, f"entries {count + 1}..{head_seq} are missing (newest entries deleted)"
            )
        if head_seq < count:
            return AuditVerdict(False, count, head_seq + 1, f"entries after {head_seq} were added outside the log")
        if head_hash != prev:
            return AuditVerdict(False, count, head_seq or None, "the last entry does not match the head record")
        return AuditVerdict(True, count, None, f"{count} entries, chain intact")


def _check_row(row: tuple[Any, ...], expected_seq: int, prev: bytes) -> str | None:
    """Why this row breaks the chain at position `expected_seq` after hash `prev`, or None if it is fine."""
    seq, ts, event, key_id, detail_text, prev_hash, stored_hash = row
    if seq != expected_seq:
        if isinstance(seq, int) and seq > expected_seq:
            return f"entry {expected_seq} is missing (deleted)"
        return f"entry {seq} is out of order"
    if prev_hash != prev:
        return f"entry {seq} does not chain to the entry before it (reordered, inserted or a neighbour deleted)"
    if not isinstance(ts, int) or not isinstance(event, str) or not (key_id is None or isinstance(key_id, bytes)):
        return f"entry {seq} has fields of the wrong type (edited)"
    try:
        detail = json.loads(detail_text)
    except (TypeError, ValueError):
        return f"entry {seq} has an unreadable detail (edited)"
    if not isinstance(detail, dict):
        return f"entry {seq} has an unreadable detail (edited)"
    try:
        digest = entry_hash(prev, seq, ts, event, key_id, detail)
    except (TypeError, ValueError):
        return f"entry {seq} has an unencodable detail (edited)"
    if digest != stored_hash:
        return f"entry {seq} was edited (hash mismatch)"
    return None


def _entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    """Build an AuditEntry from a row, tolerating a tampered detail (verify() reports it)."""
    seq, ts, event, key_id, detail_text, prev_hash, digest = row
    try:
        detail = json.loads(detail_text)
    except (TypeError, ValueError):
        detail = None
    if not isinstance(detail, dict):
        detail = {"_unreadable": str(detail_text)}
    return AuditEntry(seq, ts, event, key_id, types.MappingProxyType(detail), digest, prev_hash)


def _check_detail(detail: Mapping[str, DetailValue]) -> dict[str, DetailValue]:
    """A flat dict of str keys to str/int/bool/None values (floats would make the encoding ambiguous)."""
    clean: dict[str, DetailValue] = {}
    for k, v in detail.items():
        if not isinstance(k, str):
            raise TypeError("audit detail keys must be str")
        if v is not None and not isinstance(v, str | int | bool):
            raise TypeError(f"audit detail value for {k!r} must be str, int, bool or None")
        clean[k] = v
    return clean


def _canonical(value: object) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _parse_head(raw: str | None) -> tuple[int, bytes]:
    """Parse the meta head record 'seq:hexhash'; (0, GENESIS_HASH) when absent."""
    if raw is None:
        return 0, GENESIS_HASH
    seq_text, _, hash_hex = raw.partition(":")
    try:
        seq = int(seq_text)
        digest = bytes.fromhex(hash_hex)
    except ValueError as exc:
        raise StoreError(f"the audit head record is unreadable: {raw!r}") from exc
    if len(digest) != 32 or seq < 0:
        raise StoreError(f"the audit head record is unreadable: {raw!r}")
    return seq, digest
