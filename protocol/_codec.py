"""Messages and their strict, versioned encoding (PROTOCOL.md §3).

Every message is `version(1) || type(1) || fields`, the fields following the TLV rules of §3.1 (`_tlv`).
Decoding is strict: an unknown version, type or tag, a missing required field, a length outside the field's
bounds, a non-minimal length or trailing bytes all raise DecodeError, and nothing else is ever raised for any input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ._errors import DecodeError
from ._keys import KEY_ID_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN
from ._tlv import decode_fields, encode_fields

VERSION = 1
MAX_MESSAGE = 2048  # bytes; a cap so a peer can never make us buffer more (PROTOCOL.md §2)
CHALLENGE_LEN = 16
SESSION_ID_LEN = 8
COUNTER_LEN = 4  # u32: the secure messages' counter, on the wire and in their AAD


class MsgType(enum.IntEnum):
    """Message types; 0x01-0x7F travel device -> vehicle, 0x81-0xFF vehicle -> device."""

    CHALLENGE_REQUEST = 0x01
    COMMAND = 0x02
    PAIR_START = 0x03
    PAIR_CONFIRM = 0x04
    SESSION_OPEN = 0x05
    SECURE_REQUEST = 0x06
    SHARE_PRESENT = 0x07
    REVOCATIONS = 0x08
    CHALLENGE = 0x81
    RESULT = 0x82
    PAIR_REPLY = 0x83
    PAIR_DONE = 0x84
    SESSION_ACCEPT = 0x85
    SECURE_RESPONSE = 0x86
    SHARE_ANSWER = 0x87
    REVOCATIONS_ANSWER = 0x88
    ERROR = 0x8F


class Tag(enum.IntEnum):
    """Field tags (PROTOCOL.md §3.2)."""

    KEY_ID = 0x01
    CHALLENGE = 0x02
    COMMAND = 0x03
    ARGS = 0x04
    VEHICLE_ID = 0x05
    TTL_MS = 0x06
    STATUS = 0x07
    DATA = 0x08
    SLOT = 0x09
    SHARE = 0x0A
    CONFIRM = 0x0B
    SEALED = 0x0C
    EPHEMERAL = 0x0D
    SESSION_ID = 0x0E
    COUNTER = 0x0F
    CIPHERTEXT = 0x10
    CERTIFICATE = 0x11
    REVOCATION_LIST = 0x12
    VERSION = 0x13
    SIGNATURE = 0x1F


@dataclass(frozen=True, slots=True)
class _Field:
    """How one dataclass attribute travels: its tag, and either an int width or byte-length bounds."""

    tag: Tag
    min_len: int
    max_len: int
    int_width: int = 0  # > 0: an unsigned big-endian integer of exactly this many bytes
    optional: bool = False  # optional fields are bytes defaulting to b"" and are omitted when empty

    @property
    def decode_bounds(self) -> tuple[int, int]:
        """The (min, max) length accepted on the wire: an optional field present but empty is refused (§3.1)."""
        return (max(self.min_len, 1) if self.optional else self.min_len), self.max_len


def _b(tag: Tag, lo: int, hi: int | None = None, *, optional: bool = False) -> _Field:
    return _Field(tag, lo, lo if hi is None else hi, optional=optional)


def _u(tag: Tag, width: int) -> _Field:
    return _Field(tag, width, width, int_width=width)


_BODY = MAX_MESSAGE - 16  # the largest any variable field can be and still leave room for the rest


class Message:
    """Base of all messages: `encode()` gives the wire bytes; `decode(b)` parses any message."""

    TYPE: ClassVar[MsgType]
    SCHEMA: ClassVar[dict[str, _Field]]

    def encode(self) -> bytes:
        """The message's wire encoding (version, type, TLV fields)."""
        pairs: list[tuple[int, bytes]] = []
        for name, spec in self.SCHEMA.items():
            value = getattr(self, name)
            if spec.int_width:
                raw = int(value).to_bytes(spec.int_width, "big")
            else:
                raw = bytes(value)
                if spec.optional and not raw:
                    continue
            if not spec.min_len <= len(raw) <= spec.max_len:
                raise ValueError(f"{type(self).__name__}.{name}: {len(raw)} bytes, not {spec.min_len}..{spec.max_len}")
            pairs.append((spec.tag, raw))
        out = bytes((VERSION, self.TYPE)) + encode_fields(pairs)
        if len(out) > MAX_MESSAGE:
            raise ValueError(f"{type(self).__name__} is {len(out)} bytes, over the {MAX_MESSAGE}-byte cap")
        return out


def _schema(**spec: _Field) -> dict[str, _Field]:
    tags = [f.tag for f in spec.values()]
    assert tags == sorted(tags) and len(set(tags)) == len(tags), "schema tags must ascend"
    return spec


# ------------------------------------------------------------------------------- device -> vehicle


@dataclass(frozen=True, slots=True)
class ChallengeRequest(Message):
    """Ask the vehicle to notify a fresh challenge (when the pushed one was missed or spent)."""

    TYPE: ClassVar[MsgType] = MsgType.CHALLENGE_REQUEST
    SCHEMA: ClassVar[dict[str, _Field]] = {}


@dataclass(frozen=True, slots=True)
class CommandMessage(Message):
    """A fast-path command (unlock, lock, status, start), signed by the device key (PROTOCOL.md §5)."""

    key_id: bytes
    challenge: bytes
    command: int
    args: bytes
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        key_id=_b(Tag.KEY_ID, KEY_ID_LEN),
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        command=_u(Tag.COMMAND, 1),
        args=_b(Tag.ARGS, 0, 64, optional=True),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


@dataclass(frozen=True, slots=True)
class PairStart(Message):
    """Begin pairing: the code's slot, the vehicle challenge used as CPace sid, the device's CPace share."""

    slot: int
    challenge: bytes
    share: bytes
    TYPE: ClassVar[MsgType] = MsgType.PAIR_START
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        slot=_u(Tag.SLOT, 1),
        share=_b(Tag.SHARE, 32),
    )


@dataclass(frozen=True, slots=True)
class PairConfirm(Message):
    """The device's key confirmation and its public key + proof of possession, sealed under the PAKE key."""

    challenge: bytes
    confirm: bytes
    sealed: bytes
    TYPE: ClassVar[MsgType] = MsgType.PAIR_CONFIRM
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        confirm=_b(Tag.CONFIRM, 32),
        sealed=_b(Tag.SEALED, 16, 512),
    )


@dataclass(frozen=True, slots=True)
class SessionOpen(Message):
    """Open a confidential session: the device's ephemeral ECDH key, signed by its device key."""

    key_id: bytes
    challenge: bytes
    ephemeral: bytes
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.SESSION_OPEN
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        key_id=_b(Tag.KEY_ID, KEY_ID_LEN),
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        ephemeral=_b(Tag.EPHEMERAL, PUBLIC_KEY_LEN),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


@dataclass(frozen=True, slots=True)
class SecureRequest(Message):
    """An AES-GCM sealed command inside a confidential session."""

    session_id: bytes
    counter: int
    ciphertext: bytes
    TYPE: ClassVar[MsgType] = MsgType.SECURE_REQUEST
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        session_id=_b(Tag.SESSION_ID, SESSION_ID_LEN),
        counter=_u(Tag.COUNTER, COUNTER_LEN),
        ciphertext=_b(Tag.CIPHERTEXT, 16, _BODY),
    )


@dataclass(frozen=True, slots=True)
class SharePresent(Message):
    """An owner-signed share certificate for the vehicle to enroll its subject key (PROTOCOL.md §12.3)."""

    certificate: bytes
    TYPE: ClassVar[MsgType] = MsgType.SHARE_PRESENT
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        certificate=_b(Tag.CERTIFICATE, 1, 256),
    )


@dataclass(frozen=True, slots=True)
class Revocations(Message):
    """An owner-signed revocation list, carried to the vehicle by any of that owner's devices (PROTOCOL.md §12.3)."""

    revocation_list: bytes
    TYPE: ClassVar[MsgType] = MsgType.REVOCATIONS
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        revocation_list=_b(Tag.REVOCATION_LIST, 1, 512),
    )


# ------------------------------------------------------------------------------- vehicle -> device


@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """A fresh single-use challenge, pushed on subscription and on request; the vehicle's id only while a code waits.

    Nothing static goes on air before authentication (PROTOCOL.md §13.3): the reference vehicle names itself
    only while a pairing code is pending, because a device pairing by a typed code needs the id for CPace.
    """

    challenge: bytes
    ttl_ms: int
    vehicle_id: bytes = b""  # empty: not sent
    TYPE: ClassVar[MsgType] = MsgType.CHALLENGE
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        vehicle_id=_b(Tag.VEHICLE_ID, KEY_ID_LEN, optional=True),
        ttl_ms=_u(Tag.TTL_MS, 2),
    )


@dataclass(frozen=True, slots=True)
class Result(Message):
    """The vehicle's signed answer to a fast-path command, bound to its challenge."""

    key_id: bytes
    challenge: bytes
    command: int
    status: int
    data: bytes
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.RESULT
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        key_id=_b(Tag.KEY_ID, KEY_ID_LEN),
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        command=_u(Tag.COMMAND, 1),
        status=_u(Tag.STATUS, 1),
        data=_b(Tag.DATA, 0, 256, optional=True),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


@dataclass(frozen=True, slots=True)
class PairReply(Message):
    """The vehicle's CPace share and key confirmation."""

    challenge: bytes
    share: bytes
    confirm: bytes
    TYPE: ClassVar[MsgType] = MsgType.PAIR_REPLY
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        share=_b(Tag.SHARE, 32),
        confirm=_b(Tag.CONFIRM, 32),
    )


@dataclass(frozen=True, slots=True)
class PairDone(Message):
    """The vehicle's public key, the key's role and validity, and its signature, sealed under the PAKE key."""

    challenge: bytes
    sealed: bytes
    TYPE: ClassVar[MsgType] = MsgType.PAIR_DONE
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        sealed=_b(Tag.SEALED, 16, 512),
    )


@dataclass(frozen=True, slots=True)
class SessionAccept(Message):
    """The vehicle's ephemeral ECDH key and session id, signed by the vehicle key."""

    challenge: bytes
    ephemeral: bytes
    session_id: bytes
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.SESSION_ACCEPT
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN),
        ephemeral=_b(Tag.EPHEMERAL, PUBLIC_KEY_LEN),
        session_id=_b(Tag.SESSION_ID, SESSION_ID_LEN),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


@dataclass(frozen=True, slots=True)
class SecureResponse(Message):
    """An AES-GCM sealed response inside a confidential session."""

    session_id: bytes
    counter: int
    ciphertext: bytes
    TYPE: ClassVar[MsgType] = MsgType.SECURE_RESPONSE
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        session_id=_b(Tag.SESSION_ID, SESSION_ID_LEN),
        counter=_u(Tag.COUNTER, COUNTER_LEN),
        ciphertext=_b(Tag.CIPHERTEXT, 16, _BODY),
    )


@dataclass(frozen=True, slots=True)
class Error(Message):
    """An unauthenticated refusal (malformed input, refused pairing); `challenge` routes it, if known."""

    status: int
    challenge: bytes = b""
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        challenge=_b(Tag.CHALLENGE, CHALLENGE_LEN, optional=True),
        status=_u(Tag.STATUS, 1),
    )


@dataclass(frozen=True, slots=True)
class ShareAnswer(Message):
    """The vehicle's signed verdict on a SHARE_PRESENT: the subject key id and a status, bound to the request."""

    key_id: bytes
    status: int
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.SHARE_ANSWER
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        key_id=_b(Tag.KEY_ID, KEY_ID_LEN),
        status=_u(Tag.STATUS, 1),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


@dataclass(frozen=True, slots=True)
class RevocationsAnswer(Message):
    """The vehicle's signed verdict on a REVOCATIONS: the issuer, the version it now holds for it, a status."""

    key_id: bytes
    status: int
    version: int
    signature: bytes
    TYPE: ClassVar[MsgType] = MsgType.REVOCATIONS_ANSWER
    SCHEMA: ClassVar[dict[str, _Field]] = _schema(
        key_id=_b(Tag.KEY_ID, KEY_ID_LEN),
        status=_u(Tag.STATUS, 1),
        version=_u(Tag.VERSION, 4),
        signature=_b(Tag.SIGNATURE, SIGNATURE_LEN),
    )


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        ChallengeRequest, CommandMessage, PairStart, PairConfirm, SessionOpen, SecureRequest, SharePresent,
        Revocations, Challenge, Result, PairReply, PairDone, SessionAccept, SecureResponse, ShareAnswer,
        RevocationsAnswer, Error,
    )
}


# Per message type, each tag's (min, max) wire length: the decoder's view of the schemas, built once.
_BOUNDS: dict[int, dict[int, tuple[int, int]]] = {
    t: {spec.tag: spec.decode_bounds for spec in cls.SCHEMA.values()} for t, cls in MESSAGE_TYPES.items()
}


def decode(data: bytes) -> Message:
    """Parse one message strictly; DecodeError (and nothing else) for any malformed input."""
    if len(data) < 2:
        raise DecodeError("message shorter than its 2-byte header")
    if len(data) > MAX_MESSAGE:
        raise DecodeError(f"message of {len(data)} bytes is over the {MAX_MESSAGE}-byte cap")
    if data[0] != VERSION:
        raise DecodeError(f"unsupported protocol version {data[0]}")
    cls = MESSAGE_TYPES.get(data[1])
    if cls is None:
        raise DecodeError(f"unknown message type 0x{data[1]:02x}")
    try:
        raw = decode_fields(data[2:], _BOUNDS[cls.TYPE])
    except DecodeError as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None
    values: dict[str, Any] = {}
    for name, spec in cls.SCHEMA.items():
        value = raw.get(spec.tag)
        if value is None:
            if not spec.optional:
                raise DecodeError(f"{cls.__name__} lacks its {name} field")
            value = b""
        values[name] = int.from_bytes(value, "big") if spec.int_width else value
    return cls(**values)


def secure_aad(msg: SecureRequest | SecureResponse) -> bytes:
    """AAD of a secure message: version, type, session id and counter, their wire bytes without tag/length (§4.3)."""
    return bytes((VERSION, msg.TYPE)) + msg.session_id + msg.counter.to_bytes(COUNTER_LEN, "big")


def field_names(cls: type[Message]) -> tuple[str, ...]:
    """The attribute names of a message class, in declaration order (for tests and tools)."""
    return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
