"""Command arguments and result data: small strict TLV records inside RESULT / secure messages (PROTOCOL.md §5.4).

Records are field records of the shared TLV codec (`_tlv`, PROTOCOL.md §3.1). Unlike a message's optional
fields, a record's 0-length fields (an empty key name or audit detail) are sent, not omitted. A page is a
`TOTAL` field followed by fields that all carry one record tag, each a `record_tag || length || record`; an audit
page has the vehicle's signed head (`AuditHead`, PROTOCOL.md §5.6) between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from ._crypto import audit_head_transcript
from ._errors import DecodeError
from ._keys import KEY_ID_LEN, SIGNATURE_LEN, KeyPair, verify
from ._tlv import decode_fields, encode_field, encode_fields, iter_fields
from ._vocab import DoorState, LockState

MAX_DATA = 1800  # result data cap so a sealed response stays under the message cap
MAX_DETAIL = 512  # audit detail JSON bytes per record
MAX_AUDIT_SEQ = (1 << 63) - 1  # audit sequence numbers fit a signed 64-bit integer (SQLite's INTEGER), §5.4


def _u(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


def _int(fields: dict[int, bytes], tag: int) -> int | None:
    raw = fields.get(tag)
    return None if raw is None else int.from_bytes(raw, "big")


def _utf8_prefix(text: str, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8, never cut inside a character."""
    raw = text.encode()
    return raw if len(raw) <= limit else raw[:limit].decode("utf-8", errors="ignore").encode()


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("text field is not UTF-8") from exc


# ------------------------------------------------------------------ status (unlock, lock, status, start)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What the vehicle reports after a fast-path command: lock, door and start-enable output."""

    lock: LockState
    door: DoorState
    start_enabled: bool
    # The vehicle's clock is not yet trusted and this key may confirm it: send SET_TIME (PROTOCOL.md §5.7).
    time_wanted: bool = False

    def encode(self) -> bytes:
        """Result data bytes (the time_wanted field only when set)."""
        fields = [(0x30, _u(self.lock, 1)), (0x31, _u(self.door, 1)), (0x32, _u(self.start_enabled, 1))]
        if self.time_wanted:
            fields.append((_TIME_WANTED, b"\x01"))
        return encode_fields(fields)

    @classmethod
    def decode(cls, data: bytes) -> StatusReport:
        """Parse result data; DecodeError if malformed."""
        f = decode_fields(data, {0x30: (1, 1), 0x31: (1, 1), 0x32: (1, 1), _TIME_WANTED: (1, 1)})
        try:
            return cls(LockState(_int(f, 0x30) or 0), DoorState(_int(f, 0x31) or 0), bool(_int(f, 0x32)),
                       bool(_int(f, _TIME_WANTED)))
        except ValueError as exc:
            raise DecodeError(str(exc)) from exc


_TIME_WANTED = 0x33
# The only result data a fast-path RESULT may carry (PROTOCOL.md §5.3, §5.7): `33 01 01`.
TIME_WANTED_HINT: Final = bytes((_TIME_WANTED, 1, 1))


def fast_result_data(data: bytes) -> bytes:
    """What of command result data may travel in a signed (clear) RESULT: the time_wanted hint alone, or nothing.

    The lock, door and start-enable state never do (PROTOCOL.md §5.3); `data` is a status report or empty.
    """
    return TIME_WANTED_HINT if data and StatusReport.decode(data).time_wanted else b""


def with_time_wanted(data: bytes) -> bytes:
    """Fast-command result data with the time_wanted field added (the data may be empty or a status report)."""
    f = decode_fields(data, {0x30: (1, 1), 0x31: (1, 1), 0x32: (1, 1), _TIME_WANTED: (1, 1)})
    f[_TIME_WANTED] = b"\x01"
    return encode_fields(sorted(f.items()))


# ------------------------------------------------------------------ the vehicle's clock (SET_TIME)


@dataclass(frozen=True, slots=True)
class ClockReport:
    """SET_TIME result data: the vehicle's guarded time after the statement, and whether it now trusts it."""

    time: int  # Unix seconds
    trusted: bool

    def encode(self) -> bytes:
        """Result data bytes."""
        return encode_fields([(0x60, _u(self.time, 8)), (0x61, _u(self.trusted, 1))])

    @classmethod
    def decode(cls, data: bytes) -> ClockReport:
        """Parse SET_TIME result data; DecodeError if malformed or incomplete."""
        f = decode_fields(data, {0x60: (8, 8), 0x61: (1, 1)})
        if not {0x60, 0x61} <= f.keys() or f[0x61][0] > 1:
            raise DecodeError("clock report lacks a field or has a bad flag")
        return cls(int.from_bytes(f[0x60], "big"), bool(f[0x61][0]))


MAX_STATED_TIME = (1 << 63) - 1  # a statement above this is out of range (BAD_REQUEST), like an audit seq


def set_time_args(unix_seconds: int) -> bytes:
    """SET_TIME arguments: the device's current time as u64 Unix seconds."""
    return _u(unix_seconds, 8)


def parse_set_time_args(args: bytes) -> int:
    """The stated Unix time from SET_TIME arguments; DecodeError unless exactly 8 bytes within range."""
    if len(args) != 8:
        raise DecodeError("SET_TIME takes 8 argument bytes (u64 Unix seconds)")
    stated = int.from_bytes(args, "big")
    if stated > MAX_STATED_TIME:
        raise DecodeError(f"SET_TIME time is above {MAX_STATED_TIME}")
    return stated


# ------------------------------------------------------------------ busy (unlock, lock, start over a key's rate)

MAX_RETRY_AFTER = 0xFFFF  # seconds: a u16; a longer wait is sent as this


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Result data of a BUSY refusal: whole seconds until the vehicle takes that command from this key again."""

    seconds: int

    def encode(self) -> bytes:
        """Result data bytes (`34 02 seconds`)."""
        return encode_fields([(0x34, _u(max(0, min(self.seconds, MAX_RETRY_AFTER)), 2))])

    @classmethod
    def decode(cls, data: bytes) -> RetryAfter:
        """Parse result data; DecodeError if malformed or without the field."""
        seconds = _int(decode_fields(data, {0x34: (2, 2)}), 0x34)
        if seconds is None:
            raise DecodeError("retry_after missing")
        return cls(seconds)

    @classmethod
    def fits(cls, data: bytes) -> bool:
        """True if `data` is exactly one retry record (what a signed BUSY may carry in clear, PROTOCOL.md §5.4)."""
        try:
            cls.decode(data)
        except DecodeError:
            return False
        return True


# ------------------------------------------------------------------ key list


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One enrolled key as an owner sees it over the confidential session."""

    key_id: bytes
    role: int  # Role
    name: str
    created_at: int
    valid_from: int | None = None
    valid_until: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None

    def encode(self) -> bytes:
        """One key record (without its list wrapper)."""
        opt = [(0x43, self.valid_from), (0x44, self.valid_until), (0x46, self.last_used_at), (0x47, self.revoked_at)]
        fields = [(0x01, self.key_id), (0x41, _u(self.role, 1)), (0x42, _utf8_prefix(self.name, 64)),
                  (0x45, _u(self.created_at, 8))]
        fields += [(tag, _u(v, 8)) for tag, v in opt if v is not None]
        return encode_fields(sorted(fields))

    @classmethod
    def decode(cls, data: bytes) -> KeyInfo:
        """Parse one key record; DecodeError if malformed."""
        f = decode_fields(data, {0x01: (4, 4), 0x41: (1, 1), 0x42: (0, 64), 0x43: (8, 8), 0x44: (8, 8),
                                 0x45: (8, 8), 0x46: (8, 8), 0x47: (8, 8)})
        if not {0x01, 0x41, 0x42, 0x45} <= f.keys():
            raise DecodeError("key record lacks a required field")
        return cls(f[0x01], f[0x41][0], _text(f[0x42]), int.from_bytes(f[0x45], "big"), _int(f, 0x43),
                   _int(f, 0x44), _int(f, 0x46), _int(f, 0x47))


# ------------------------------------------------------------------ audit entries


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit-log entry as the owner reads it: the hash lets the owner check the chain."""

    seq: int
    ts: int
    event: str
    detail: str  # JSON text
    entry_hash: bytes
    key_id: bytes | None = None

    def encode(self) -> bytes:
        """One audit record."""
        detail = self.detail.encode()
        if len(detail) > MAX_DETAIL:  # keep it valid JSON: say it was cut instead of cutting it
            detail = b'{"truncated":true}'
        fields = [(0x51, _u(self.seq, 8)), (0x52, _u(self.ts, 8)), (0x53, _utf8_prefix(self.event, 32)),
                  (0x54, detail), (0x55, self.entry_hash)]
        if self.key_id is not None:
            fields.insert(0, (0x01, self.key_id))
        return encode_fields(fields)

    @classmethod
    def decode(cls, data: bytes) -> AuditRecord:
        """Parse one audit record; DecodeError if malformed."""
        f = decode_fields(data, {0x01: (1, 64), 0x51: (8, 8), 0x52: (8, 8), 0x53: (1, 32), 0x54: (0, MAX_DETAIL),
                                 0x55: (32, 32)})
        if not {0x51, 0x52, 0x53, 0x54, 0x55} <= f.keys():
            raise DecodeError("audit record lacks a required field")
        return cls(int.from_bytes(f[0x51], "big"), int.from_bytes(f[0x52], "big"), _text(f[0x53]),
                   _text(f[0x54]), f[0x55], f.get(0x01))


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The vehicle's signed statement of its audit log's head (PROTOCOL.md §5.6), carried in every audit page.

    `seq` and `entry_hash` are the newest entry (0 and 32 zero bytes for an empty log); `pruned_through` is the
    last sequence number removed by retention (0: nothing pruned), so entries up to it are gone by design.
    """

    seq: int
    entry_hash: bytes
    pruned_through: int
    signature: bytes

    @classmethod
    def signed(cls, vehicle: KeyPair, seq: int, entry_hash: bytes, pruned_through: int) -> AuditHead:
        """The head signed with the vehicle key."""
        if not 0 <= pruned_through <= seq <= MAX_AUDIT_SEQ or len(entry_hash) != 32:
            raise ValueError("an audit head needs 0 <= pruned_through <= seq <= 2^63-1 and a 32-byte hash")
        statement = audit_head_transcript(vehicle.key_id, seq, entry_hash, pruned_through)
        return cls(seq, entry_hash, pruned_through, vehicle.sign(statement))

    def verify(self, vehicle_key: ec.EllipticCurvePublicKey, vehicle_id: bytes) -> None:
        """Raise AuthenticationError unless the vehicle with this key and id signed this head."""
        if len(vehicle_id) != KEY_ID_LEN:
            raise ValueError(f"vehicle_id must be {KEY_ID_LEN} bytes")
        verify(vehicle_key, self.signature,
               audit_head_transcript(vehicle_id, self.seq, self.entry_hash, self.pruned_through))

    def encode(self) -> bytes:
        """The head record (without its page wrapper)."""
        return encode_fields([(0x51, _u(self.seq, 8)), (0x55, self.entry_hash), (0x56, _u(self.pruned_through, 8)),
                              (0x57, self.signature)])

    @classmethod
    def decode(cls, data: bytes) -> AuditHead:
        """Parse a head record; DecodeError if malformed (the signature is checked by verify())."""
        f = decode_fields(data, {0x51: (8, 8), 0x55: (32, 32), 0x56: (8, 8), 0x57: (SIGNATURE_LEN, SIGNATURE_LEN)})
        if not {0x51, 0x55, 0x56, 0x57} <= f.keys():
            raise DecodeError("audit head lacks a required field")
        seq, pruned = int.from_bytes(f[0x51], "big"), int.from_bytes(f[0x56], "big")
        if not pruned <= seq <= MAX_AUDIT_SEQ:
            raise DecodeError("audit head sequence numbers out of range")
        return cls(seq, f[0x55], pruned, f[0x57])


# ------------------------------------------------------------------ lists and arguments

_KEY_RECORD = 0x40
_AUDIT_RECORD = 0x50
_AUDIT_HEAD = 0x5E
_TOTAL = 0x3F


def encode_page(records: Sequence[bytes], total: int, record_tag: int, header: bytes = b"") -> tuple[bytes, int]:
    """A page `TOTAL(u32) || header || records...` that fits MAX_DATA; returns (bytes, how many records fit)."""
    out = bytearray(encode_field(_TOTAL, _u(total, 4)) + header)
    fitted = 0
    for rec in records:
        if len(out) + len(rec) > MAX_DATA:  # cannot fit with any header (and may be too long to encode at all)
            break
        item = encode_field(record_tag, rec)
        if len(out) + len(item) > MAX_DATA:
            break
        out += item
        fitted += 1
    return bytes(out), fitted


def decode_page(data: bytes, record_tag: int) -> tuple[int, list[bytes]]:
    """Parse a page into (total, raw records); DecodeError if malformed."""
    fields = iter_fields(data)
    first = next(fields, None)
    if first is None or first[0] != _TOTAL or len(first[1]) != 4:
        raise DecodeError("page lacks its total")
    records = []
    for tag, rec in fields:
        if tag != record_tag:
            raise DecodeError(f"field 0x{tag:02x} in a page of 0x{record_tag:02x} records")
        records.append(rec)
    return int.from_bytes(first[1], "big"), records


def encode_key_page(keys: Sequence[KeyInfo], total: int) -> tuple[bytes, int]:
    """LIST_KEYS result data; returns (data, number of keys that fit)."""
    return encode_page([k.encode() for k in keys], total, _KEY_RECORD)


def decode_key_page(data: bytes) -> tuple[int, list[KeyInfo]]:
    """Parse LIST_KEYS result data into (total keys, this page)."""
    total, raws = decode_page(data, _KEY_RECORD)
    return total, [KeyInfo.decode(r) for r in raws]


def encode_audit_page(entries: Sequence[AuditRecord], head: AuditHead) -> tuple[bytes, int]:
    """READ_AUDIT result data: TOTAL (the head's seq, low 32 bits), the signed head, then the entries that fit."""
    return encode_page([e.encode() for e in entries], head.seq & 0xFFFFFFFF, _AUDIT_RECORD,
                       encode_field(_AUDIT_HEAD, head.encode()))


def decode_audit_page(data: bytes) -> tuple[AuditHead, list[AuditRecord]]:
    """Parse READ_AUDIT result data into (the signed head, this page); the head's signature is not checked here."""
    fields = iter_fields(data)
    first, second = next(fields, None), next(fields, None)
    if first is None or first[0] != _TOTAL or len(first[1]) != 4:
        raise DecodeError("page lacks its total")
    if second is None or second[0] != _AUDIT_HEAD:
        raise DecodeError("audit page lacks its signed head")
    head = AuditHead.decode(second[1])
    if int.from_bytes(first[1], "big") != head.seq & 0xFFFFFFFF:
        raise DecodeError("audit page total does not match its head")
    records = []
    for tag, rec in fields:
        if tag != _AUDIT_RECORD:
            raise DecodeError(f"field 0x{tag:02x} in a page of 0x{_AUDIT_RECORD:02x} records")
        records.append(AuditRecord.decode(rec))
    return head, records


def list_keys_args(offset: int = 0, limit: int = 50) -> bytes:
    """LIST_KEYS arguments: offset (u16) || limit (u8)."""
    return _u(offset, 2) + _u(limit, 1)


def parse_list_keys_args(args: bytes) -> tuple[int, int]:
    """(offset, limit) from LIST_KEYS arguments; empty means (0, 50)."""
    if not args:
        return 0, 50
    if len(args) != 3:
        raise DecodeError("LIST_KEYS takes 3 argument bytes")
    return int.from_bytes(args[:2], "big"), args[2]


def revoke_args(key_id: bytes, force: bool = False) -> bytes:
    """REVOKE_KEY arguments: key id (4) || force (u8)."""
    return key_id + bytes((int(force),))


def parse_revoke_args(args: bytes) -> tuple[bytes, bool]:
    """(key id, force) from REVOKE_KEY arguments."""
    if len(args) != 5 or args[4] > 1:
        raise DecodeError("REVOKE_KEY takes a 4-byte key id and a force flag")
    return args[:4], bool(args[4])


def read_audit_args(after_seq: int = 0, limit: int = 20) -> bytes:
    """READ_AUDIT arguments: after_seq (u64, at most MAX_AUDIT_SEQ) || limit (u8)."""
    return _u(after_seq, 8) + _u(limit, 1)


def parse_read_audit_args(args: bytes) -> tuple[int, int]:
    """(after_seq, limit) from READ_AUDIT arguments; empty means (0, 20); DecodeError if after_seq > MAX_AUDIT_SEQ."""
    if not args:
        return 0, 20
    if len(args) != 9:
        raise DecodeError("READ_AUDIT takes 9 argument bytes")
    after_seq = int.from_bytes(args[:8], "big")
    if after_seq > MAX_AUDIT_SEQ:  # no entry can have such a number, and SQLite cannot even compare with it
        raise DecodeError(f"READ_AUDIT after_seq is above {MAX_AUDIT_SEQ}")
    return after_seq, args[8]
