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

Retention (docs/THREAT_MODEL.md, "The audit log"): with `max_entries`, an append that would leave more than that
many entries prunes the oldest tenth in the same transaction and records it in an `audit_pruned` entry. The last
pruned entry's seq and hash stay in the meta table as the anchor, so verify() checks the kept chain from there:
a pruned prefix is not a break. Appends without `max_entries` (the CLI's few rows) never prune.

Limits: the chain is unkeyed, so someone who can write the file can also recompute every hash; it catches
corruption and casual edits. A head pinned elsewhere (an owner's client, `audit --verify --pinned`) catches a
rewritten or truncated tail: verify_pinned().
"""

from __future__ import annotations

import dataclasses
import enum
import functools
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
    "AUDIT_ANCHOR_KEY",
    "AUDIT_HEAD_KEY",
    "DEFAULT_MAX_ENTRIES",
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
AUDIT_ANCHOR_KEY: Final = "audit_anchor"  # "seq:hash" of the last pruned entry; absent: nothing pruned
# Retention default: 100,000 entries are years of honest use (a few tens a day) and, at about 250 bytes each with
# the index, about 25 MB of an SD card. Refusals are aggregated (key_server/refusals.py), so a flood adds few rows.
DEFAULT_MAX_ENTRIES: Final = 100_000
MIN_MAX_ENTRIES: Final = 100
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
    # Refusals of unauthenticated requests, counted per link and window (key_server/refusals.py); detail:
    # {"link", "links", "count", "first", "last", "statuses", "reasons"}.
    REFUSALS = "refusals"
    AUDIT_PRUNED = "audit_pruned"  # detail: {"entries": n, "through": last pruned seq, "anchor": its hash hex}
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
    head_seq: int = 0  # the chain's newest seq and hash as walked (meaningful when ok)
    head_hash: bytes = GENESIS_HASH
    pruned_through: int = 0  # the anchor: entries up to this seq were pruned by retention


def entry_hash(
    prev_hash: bytes, seq: int, ts: int, event: str, key_id: bytes | None, detail: Mapping[str, DetailValue]
) -> bytes:
    """SHA-256(prev_hash || canonical JSON of [domain, seq, ts, event, key_id hex|null, detail])."""
    encoded = _canonical([_DOMAIN, seq, ts, event, key_id.hex() if key_id is not None else None, dict(detail)])
    return hashlib.sha256(prev_hash + encoded).digest()


class AuditLog:
    """Append-only, hash-chained audit entries in the store's file (see the module docstring)."""

    def __init__(self, store: KeyStore, *, max_entries: int | None = None) -> None:
        """Use the audit table of `store`; with `max_entries` (>= MIN_MAX_ENTRIES), appends prune the oldest."""
        if max_entries is not None and max_entries < MIN_MAX_ENTRIES:
            raise ValueError(f"max_entries must be at least {MIN_MAX_ENTRIES}")
        self._store = store
        self.max_entries = max_entries

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
            _set_meta(store, AUDIT_HEAD_KEY, seq, digest)
            if self.max_entries is not None:
                self._prune(seq, digest, ts)
        return AuditEntry(seq, ts, event, key_id, types.MappingProxyType(clean), digest, head_hash)

    def _prune(self, head_seq: int, head_hash: bytes, ts: int) -> None:
        """Inside append's transaction: if more than max_entries are kept, drop the oldest tenth and say so."""
        assert self.max_entries is not None  # noqa: S101 - only called with retention on
        store = self._store
        anchor_seq, _ = _parse_head(store.get_meta(AUDIT_ANCHOR_KEY))
        if head_seq - anchor_seq <= self.max_entries:
            return
        # Keep max_entries - slack entries (the audit_pruned row below is one of them): one DELETE per slack
        # appends, not one per append.
        slack = max(1, self.max_entries // 10)
        through = head_seq + 1 - (self.max_entries - slack)
        row = store._execute("SELECT hash FROM audit WHERE seq = ?", (through,)).fetchone()
        if row is None:  # the chain is already broken there (verify reports it): never prune around damage
            log.warning("audit retention: entry %d is missing, not pruning", through)
            return
        anchor_hash = bytes(row[0])
        store._execute("DELETE FROM audit WHERE seq <= ?", (through,))
        _set_meta(store, AUDIT_ANCHOR_KEY, through, anchor_hash)
        detail: dict[str, DetailValue] = {"entries": through - anchor_seq, "through": through,
                                          "anchor": anchor_hash.hex()}
        seq = head_seq + 1
        digest = entry_hash(head_hash, seq, ts, AuditEvent.AUDIT_PRUNED.value, None, detail)
        store._execute(
            "INSERT INTO audit (seq, ts, event, key_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, AuditEvent.AUDIT_PRUNED.value, None, _canonical(detail).decode("ascii"), head_hash, digest),
        )
        _set_meta(store, AUDIT_HEAD_KEY, seq, digest)
        log.info("audit retention: pruned entries %d..%d", anchor_seq + 1, through)

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

    def pruned_through(self) -> int:
        """The last seq removed by retention (0: nothing pruned)."""
        return _parse_head(self._store.get_meta(AUDIT_ANCHOR_KEY))[0]

    def entry(self, seq: int) -> AuditEntry | None:
        """The entry with this seq, if it is kept."""
        rows = self._store._query(
            "SELECT seq, ts, event, key_id, detail, prev_hash, hash FROM audit WHERE seq = ?", (seq,))
        return _entry_from_row(rows[0]) if rows else None

    def verify(self) -> AuditVerdict:
        """Walk the kept chain from the retention anchor and the head record; report the first entry that fails."""
        with self._store._snapshot() as db:
            raw_head = db.execute("SELECT v FROM meta WHERE k = ?", (AUDIT_HEAD_KEY,)).fetchone()
            raw_anchor = db.execute("SELECT v FROM meta WHERE k = ?", (AUDIT_ANCHOR_KEY,)).fetchone()
            try:
                anchor_seq, prev = _parse_head(None if raw_anchor is None else str(raw_anchor[0]))
            except StoreError as exc:
                return AuditVerdict(False, 0, None, str(exc))
            cursor = db.execute("SELECT seq, ts, event, key_id, detail, prev_hash, hash FROM audit ORDER BY seq")
            expected = anchor_seq + 1
            count = 0
            for row in cursor:
                seq = row[0]
                problem = _check_row(row, expected, prev)
                if problem is not None:
                    bad = expected if isinstance(seq, int) and seq > expected else seq
                    return AuditVerdict(False, count, bad, problem, pruned_through=anchor_seq)
                prev = row[6]
                expected += 1
                count += 1
        last = expected - 1
        pruned = f" (entries up to {anchor_seq} pruned by retention)" if anchor_seq else ""
        if raw_head is None:
            if count or anchor_seq:
                return AuditVerdict(False, count, None, "the audit head record is missing", pruned_through=anchor_seq)
            return AuditVerdict(True, 0, None, "empty log")
        try:
            head_seq, head_hash = _parse_head(str(raw_head[0]))
        except StoreError as exc:
            return AuditVerdict(False, count, None, str(exc), pruned_through=anchor_seq)
        if head_seq > last:
            return AuditVerdict(False, count, last + 1,
                                f"entries {last + 1}..{head_seq} are missing (newest entries deleted)",
                                pruned_through=anchor_seq)
        if head_seq < last:
            return AuditVerdict(False, count, head_seq + 1, f"entries after {head_seq} were added outside the log",
                                pruned_through=anchor_seq)
        if head_hash != prev:
            return AuditVerdict(False, count, head_seq or None, "the last entry does not match the head record",
                                pruned_through=anchor_seq)
        return AuditVerdict(True, count, None, f"{count} entries, chain intact{pruned}", head_seq, head_hash,
                            anchor_seq)

    def verify_pinned(self, pin_seq: int, pin_hash: bytes) -> AuditVerdict:
        """verify(), then check that the chain still holds a head seen earlier (`key-server audit --pinned`).

        Fails when the chain is shorter than the pin (its tail was cut) or holds another entry at the pin's seq
        (it was rewritten: a fork). A pin inside the pruned prefix can be checked for length only, unless it is
        the anchor itself; the verdict's reason says so.
        """
        verdict = self.verify()
        if not verdict.ok:
            return verdict
        fail = functools.partial(AuditVerdict, False, verdict.entries, pruned_through=verdict.pruned_through)
        if pin_seq > verdict.head_seq:
            return fail(verdict.head_seq + 1, f"the log ends at entry {verdict.head_seq}, before the pinned head "
                                              f"{pin_seq}: its newest entries were cut (truncated)")
        if pin_seq == 0:
            found: bytes | None = GENESIS_HASH
        elif pin_seq == verdict.pruned_through:
            found = _parse_head(self._store.get_meta(AUDIT_ANCHOR_KEY))[1]
        elif pin_seq < verdict.pruned_through:
            return dataclasses.replace(verdict, reason=f"{verdict.reason}; the pinned entry {pin_seq} was pruned by "
                                                        f"retention: only the chain's length was checked against it")
        else:
            kept = self.entry(pin_seq)
            found = kept.hash if kept is not None else None
        if found != pin_hash:
            return fail(pin_seq, f"entry {pin_seq} is not the pinned one (hash {_short(found)}, pinned "
                                 f"{_short(pin_hash)}): the log was rewritten from there (a fork)")
        return dataclasses.replace(verdict, reason=f"{verdict.reason}; holds the pinned head {pin_seq}")


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


def _set_meta(store: KeyStore, key: str, seq: int, digest: bytes) -> None:
    """Write a 'seq:hexhash' record (inside the caller's transaction)."""
    store._execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                   (key, f"{seq}:{digest.hex()}"))


def _short(digest: bytes | None) -> str:
    return "none" if digest is None else digest.hex()[:16]


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
