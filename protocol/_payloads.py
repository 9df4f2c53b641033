"""Command arguments and result data: small strict TLV records inside RESULT / secure messages (PROTOCOL.md §5.4).

Records are field records of the shared TLV codec (`_tlv`, PROTOCOL.md §3.1). Unlike a message's optional
fields, a record's 0-length fields (an empty key name or audit detail) are sent, not omitted. A page is a
`TOTAL` field followed by fields that all carry one record tag, each a `record_tag || length || record`; an audit
page has the vehicle's signed head (`AuditHead`, PROTOCOL.md §5.6) between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from ._crypto import audit_head_transcript
from ._errors import DecodeError
from ._keys import KEY_ID_LEN, SIGNATURE_LEN, KeyPair, verify
from ._pairing_code import CODE_DIGITS
from ._schedule import MAX_SCHEDULE_LEN, parse_schedule
from ._tlv import decode_fields, encode_field, encode_fields, iter_fields
from ._vocab import DoorState, KeyState, LockState, Role, Via

MAX_DATA = 1800  # result data cap so a sealed response stays under the message cap
MAX_DETAIL = 512  # audit detail JSON bytes per record
MAX_AUDIT_SEQ = (1 << 63) - 1  # audit sequence numbers fit a signed 64-bit integer (SQLite's INTEGER), §5.4
MAX_TIME = (1 << 63) - 1  # a Unix time in a request record fits SQLite's INTEGER too; above it: DecodeError
MAX_NAME = 64  # UTF-8 bytes of a key name in key records, pairing terms and key edits
MAX_CODE_TTL = 7 * 86400  # seconds a remotely issued pairing code may live (like `key-server pair --code-ttl`)
MAX_CODE_ATTEMPTS = 20  # wrong tries a remotely issued code may survive (the vehicle's own bound)


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
    """One enrolled key as an owner sees it over the confidential session (a key record, PROTOCOL.md §5.4)."""

    key_id: bytes
    role: int  # Role
    name: str
    created_at: int
    valid_from: int | None = None
    valid_until: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None
    schedule: str | None = None
    # Computed by the vehicle with its guarded time; UNKNOWN only in a record without the field (an older vehicle).
    state: KeyState = KeyState.UNKNOWN
    via: Via | None = None
    enrolled_by: bytes | None = None  # the owner key whose share or remotely issued code enrolled this key

    def encode(self) -> bytes:
        """One key record (without its list wrapper)."""
        opt = [(0x43, self.valid_from), (0x44, self.valid_until), (0x46, self.last_used_at), (0x47, self.revoked_at)]
        fields = [(0x01, self.key_id), (0x41, _u(self.role, 1)), (0x42, _utf8_prefix(self.name, MAX_NAME)),
                  (0x45, _u(self.created_at, 8))]
        fields += [(tag, _u(v, 8)) for tag, v in opt if v is not None]
        if self.schedule is not None:
            # The store holds at most 512 characters of a grammar that is ASCII, so this never cuts in practice.
            fields.append((0x48, _utf8_prefix(self.schedule, MAX_SCHEDULE_LEN)))
        if self.state is not KeyState.UNKNOWN:
            fields.append((0x49, _u(self.state, 1)))
        if self.via is not None:
            fields.append((0x4A, _u(self.via, 1)))
        if self.enrolled_by is not None:
            fields.append((0x4B, self.enrolled_by))
        return encode_fields(sorted(fields))

    @classmethod
    def decode(cls, data: bytes) -> KeyInfo:
        """Parse one key record; DecodeError if malformed (a schedule is reported as stored, not re-parsed)."""
        f = decode_fields(data, {0x01: (4, 4), 0x41: (1, 1), 0x42: (0, MAX_NAME), 0x43: (8, 8), 0x44: (8, 8),
                                 0x45: (8, 8), 0x46: (8, 8), 0x47: (8, 8), 0x48: (1, MAX_SCHEDULE_LEN),
                                 0x49: (1, 1), 0x4A: (1, 1), 0x4B: (KEY_ID_LEN, KEY_ID_LEN)})
        if not {0x01, 0x41, 0x42, 0x45} <= f.keys():
            raise DecodeError("key record lacks a required field")
        state, via = _int(f, 0x49), _int(f, 0x4A)
        if state == KeyState.UNKNOWN:  # "unknown" is the field's absence; a 0 on the wire is not canonical
            raise DecodeError("key state 0 is sent by omitting the field")
        try:
            key_state = KeyState.UNKNOWN if state is None else KeyState(state)
            key_via = None if via is None else Via(via)
        except ValueError as exc:
            raise DecodeError(f"key record: {exc}") from None
        schedule = None if 0x48 not in f else _text(f[0x48])
        return cls(f[0x01], f[0x41][0], _text(f[0x42]), int.from_bytes(f[0x45], "big"), _int(f, 0x43),
                   _int(f, 0x44), _int(f, 0x46), _int(f, 0x47), schedule, key_state, key_via, f.get(0x4B))


# ------------------------------------------------------------------ remote key management (ISSUE_CODE, EDIT_KEY)


def _request_time(f: dict[int, bytes], tag: int) -> int | None:
    """A Unix time from a request record, at most MAX_TIME (DecodeError above)."""
    value = _int(f, tag)
    if value is not None and value > MAX_TIME:
        raise DecodeError(f"field 0x{tag:02x}: time above {MAX_TIME}")
    return value


def _window_ok(valid_from: int | None, valid_until: int | None) -> bool:
    return valid_from is None or valid_until is None or valid_until > valid_from


def _schedule_bytes(schedule: str) -> bytes:
    """A request's schedule as UTF-8, checked by the one parser; ValueError if it does not parse or is too long."""
    raw = schedule.encode()
    if not 1 <= len(raw) <= MAX_SCHEDULE_LEN:
        raise ValueError(f"a schedule is 1..{MAX_SCHEDULE_LEN} bytes")
    parse_schedule(schedule)
    return raw


def _request_schedule(raw: bytes | None) -> str | None:
    """A schedule from a request record; DecodeError unless it is UTF-8 the schedule parser accepts."""
    if raw is None:
        return None
    text = _text(raw)
    try:
        parse_schedule(text)
    except ValueError as exc:
        raise DecodeError(f"schedule: {exc}") from None
    return text


def _name_bytes(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > MAX_NAME:
        raise ValueError(f"a key name is at most {MAX_NAME} UTF-8 bytes")
    return raw


def _role(raw: bytes) -> Role:
    try:
        return Role(raw[0])
    except ValueError:
        raise DecodeError(f"unknown role {raw[0]}") from None


@dataclass(frozen=True, slots=True)
class PairingTerms:
    """ISSUE_CODE arguments: the terms of the key a new device will get with the code (PROTOCOL.md §5.4)."""

    role: Role
    name: str
    code_ttl: int  # seconds the code lives, 1..MAX_CODE_TTL
    attempts: int  # wrong tries the code survives, 1..MAX_CODE_ATTEMPTS
    valid_from: int | None = None
    valid_until: int | None = None
    schedule: str | None = None

    def encode(self) -> bytes:
        """The record; ValueError for terms the vehicle would refuse as malformed."""
        if not 1 <= self.code_ttl <= MAX_CODE_TTL or not 1 <= self.attempts <= MAX_CODE_ATTEMPTS:
            raise ValueError(f"code_ttl is 1..{MAX_CODE_TTL} s and attempts 1..{MAX_CODE_ATTEMPTS}")
        if not _window_ok(self.valid_from, self.valid_until):
            raise ValueError("valid_until must be after valid_from")
        fields = [(0x41, _u(Role(self.role), 1)), (0x42, _name_bytes(self.name))]
        fields += [(tag, _u(v, 8)) for tag, v in ((0x43, self.valid_from), (0x44, self.valid_until)) if v is not None]
        if self.schedule is not None:
            fields.append((0x48, _schedule_bytes(self.schedule)))
        fields += [(0x62, _u(self.code_ttl, 4)), (0x63, _u(self.attempts, 1))]
        return encode_fields(fields)

    @classmethod
    def decode(cls, data: bytes) -> PairingTerms:
        """Parse ISSUE_CODE arguments; DecodeError (BAD_REQUEST) if malformed, out of bounds or inconsistent."""
        f = decode_fields(data, {0x41: (1, 1), 0x42: (0, MAX_NAME), 0x43: (8, 8), 0x44: (8, 8),
                                 0x48: (1, MAX_SCHEDULE_LEN), 0x62: (4, 4), 0x63: (1, 1)})
        if not {0x41, 0x42, 0x62, 0x63} <= f.keys():
            raise DecodeError("pairing terms lack a required field")
        ttl, attempts = int.from_bytes(f[0x62], "big"), f[0x63][0]
        if not 1 <= ttl <= MAX_CODE_TTL or not 1 <= attempts <= MAX_CODE_ATTEMPTS:
            raise DecodeError(f"code_ttl is 1..{MAX_CODE_TTL} s and attempts 1..{MAX_CODE_ATTEMPTS}")
        valid_from, valid_until = _request_time(f, 0x43), _request_time(f, 0x44)
        if not _window_ok(valid_from, valid_until):
            raise DecodeError("valid_until is not after valid_from")
        return cls(_role(f[0x41]), _text(f[0x42]), ttl, attempts, valid_from, valid_until,
                   _request_schedule(f.get(0x48)))


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """ISSUE_CODE result data: the one-time code (8 digits) and when it stops working (Unix s)."""

    code: str
    expires_at: int

    def encode(self) -> bytes:
        """Result data bytes."""
        if len(self.code) != CODE_DIGITS or not self.code.isascii() or not self.code.isdigit():
            raise ValueError(f"a pairing code is {CODE_DIGITS} ASCII digits")
        return encode_fields([(0x64, self.code.encode("ascii")), (0x65, _u(self.expires_at, 8))])

    @classmethod
    def decode(cls, data: bytes) -> IssuedCode:
        """Parse ISSUE_CODE result data; DecodeError if malformed or incomplete."""
        f = decode_fields(data, {0x64: (CODE_DIGITS, CODE_DIGITS), 0x65: (8, 8)})
        if not {0x64, 0x65} <= f.keys():
            raise DecodeError("issued code lacks a field")
        if not all(0x30 <= b <= 0x39 for b in f[0x64]):
            raise DecodeError("a pairing code is ASCII digits")
        return cls(f[0x64].decode("ascii"), int.from_bytes(f[0x65], "big"))


CLEAR_VALID_FROM = 0x01
CLEAR_VALID_UNTIL = 0x02
CLEAR_SCHEDULE = 0x04
_CLEAR_ALL = CLEAR_VALID_FROM | CLEAR_VALID_UNTIL | CLEAR_SCHEDULE


@dataclass(frozen=True, slots=True)
class KeyEdit:
    """EDIT_KEY arguments: which key, and what to set or clear (None: unchanged) (PROTOCOL.md §5.4)."""

    key_id: bytes
    role: Role | None = None
    name: str | None = None
    valid_from: int | None = None
    valid_until: int | None = None
    schedule: str | None = None
    clear_valid_from: bool = False
    clear_valid_until: bool = False
    clear_schedule: bool = False

    @property
    def clear(self) -> int:
        """The clear flags byte (bit 0 valid_from, bit 1 valid_until, bit 2 schedule)."""
        return ((CLEAR_VALID_FROM if self.clear_valid_from else 0) | (CLEAR_VALID_UNTIL if self.clear_valid_until
                else 0) | (CLEAR_SCHEDULE if self.clear_schedule else 0))

    def _conflict(self) -> str | None:
        for value, cleared, what in ((self.valid_from, self.clear_valid_from, "valid_from"),
                                     (self.valid_until, self.clear_valid_until, "valid_until"),
                                     (self.schedule, self.clear_schedule, "schedule")):
            if value is not None and cleared:
                return f"{what} is both set and cleared"
        if not _window_ok(self.valid_from, self.valid_until):
            return "valid_until must be after valid_from"
        return None

    def encode(self) -> bytes:
        """The record; ValueError for an edit the vehicle would refuse as malformed."""
        if len(self.key_id) != KEY_ID_LEN:
            raise ValueError(f"a key id is {KEY_ID_LEN} bytes")
        problem = self._conflict()
        if problem is not None:
            raise ValueError(problem)
        fields = [(0x01, self.key_id)]
        if self.role is not None:
            fields.append((0x41, _u(Role(self.role), 1)))
        if self.name is not None:
            fields.append((0x42, _name_bytes(self.name)))
        fields += [(tag, _u(v, 8)) for tag, v in ((0x43, self.valid_from), (0x44, self.valid_until)) if v is not None]
        if self.schedule is not None:
            fields.append((0x48, _schedule_bytes(self.schedule)))
        if self.clear:
            fields.append((0x66, _u(self.clear, 1)))
        return encode_fields(fields)

    @classmethod
    def decode(cls, data: bytes) -> KeyEdit:
        """Parse EDIT_KEY arguments; DecodeError (BAD_REQUEST) if malformed or contradictory."""
        f = decode_fields(data, {0x01: (KEY_ID_LEN, KEY_ID_LEN), 0x41: (1, 1), 0x42: (0, MAX_NAME), 0x43: (8, 8),
                                 0x44: (8, 8), 0x48: (1, MAX_SCHEDULE_LEN), 0x66: (1, 1)})
        if 0x01 not in f:
            raise DecodeError("key edit lacks its key id")
        clear = _int(f, 0x66)
        if clear is not None and (clear == 0 or clear & ~_CLEAR_ALL):
            # 0 is sent by omitting the field; unknown bits are refused so a newer meaning is never ignored.
            raise DecodeError(f"key edit clear flags 0x{clear:02x} are not canonical")
        clear = clear or 0
        edit = cls(f[0x01], None if 0x41 not in f else _role(f[0x41]), None if 0x42 not in f else _text(f[0x42]),
                   _request_time(f, 0x43), _request_time(f, 0x44), _request_schedule(f.get(0x48)),
                   bool(clear & CLEAR_VALID_FROM), bool(clear & CLEAR_VALID_UNTIL), bool(clear & CLEAR_SCHEDULE))
        problem = edit._conflict()
        if problem is not None:
            raise DecodeError(f"key edit: {problem}")
        return edit


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


REVOKE_FORCE = 0x01  # REVOKE_KEY flags bit 0: allow the last owner (the vehicle takes it only at its own CLI)
REVOKE_WITH_SHARES = 0x02  # bit 1: also revoke every key this key enrolled by share
_REVOKE_FLAGS = REVOKE_FORCE | REVOKE_WITH_SHARES


class RevokeArgs(NamedTuple):
    """REVOKE_KEY arguments, parsed."""

    key_id: bytes
    force: bool
    with_shares: bool


def revoke_args(key_id: bytes, force: bool = False, *, with_shares: bool = False) -> bytes:
    """REVOKE_KEY arguments: key id (4) || flags (u8: bit 0 force, bit 1 with_shares)."""
    return key_id + bytes(((REVOKE_FORCE if force else 0) | (REVOKE_WITH_SHARES if with_shares else 0),))


def parse_revoke_args(args: bytes) -> RevokeArgs:
    """(key id, force, with_shares) from REVOKE_KEY arguments; DecodeError if malformed or an unknown flag is set."""
    if len(args) != 5 or args[4] & ~_REVOKE_FLAGS:
        raise DecodeError("REVOKE_KEY takes a 4-byte key id and a flags byte (bit 0 force, bit 1 with_shares)")
    return RevokeArgs(args[:4], bool(args[4] & REVOKE_FORCE), bool(args[4] & REVOKE_WITH_SHARES))


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
