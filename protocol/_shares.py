"""Owner-signed share certificates and revocation lists (PROTOCOL.md §12): strict records, signed, no I/O.

Both are TLV records under the §3.1 rules (minimal lengths, strictly ascending tags, every tag known, exact
bounds, nothing trailing) whose last field is the issuer's ECDSA signature over a labelled transcript of every
byte before it (`tbs`). Decoding checks the form only; `verify()` checks the signature and that the given public
key is the issuer the record names. Whether that issuer is an active owner of the vehicle, and whether the
certificate is within its window or revoked, is the vehicle's decision (PROTOCOL.md §12.4), not this module's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization

from . import _crypto as c
from ._errors import AuthenticationError, DecodeError
from ._keys import KEY_ID_LEN, SIGNATURE_LEN, KeyPair, decode_public_key, encode_public_key, key_id, verify
from ._schedule import MAX_SHARE_SCHEDULE, parse_schedule
from ._tlv import decode_fields, encode_field, encode_fields
from ._vocab import Role

MAX_CERTIFICATE: Final = 256  # bytes of an encoded certificate (the CERTIFICATE field's bound)
MAX_REVOCATION_LIST: Final = 512  # bytes of an encoded list (the REVOCATION_LIST field's bound)
MAX_SHARE_NAME: Final = 32  # UTF-8 bytes
MAX_REVOCATIONS: Final = 64  # entries in one list
MAX_SHARE_TIME: Final = (1 << 63) - 1  # times fit SQLite's INTEGER, where the vehicle stores them
SERIAL_LEN: Final = 8
COMPRESSED_KEY_LEN: Final = 33
LIST_WITH_SHARES: Final = 0x01  # a revocation entry's flag: also revoke the keys that key enrolled by share
_ENTRY_LEN: Final = KEY_ID_LEN + 1

# Certificate tags (§12.1)
_SERIAL, _VEHICLE, _ISSUER, _SUBJECT, _ROLE, _NAME, _FROM, _UNTIL, _SCHEDULE, _CERT_SIG = (
    0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7F)
_CERT_BOUNDS: Final = {
    _SERIAL: (SERIAL_LEN, SERIAL_LEN), _VEHICLE: (KEY_ID_LEN, KEY_ID_LEN), _ISSUER: (KEY_ID_LEN, KEY_ID_LEN),
    _SUBJECT: (COMPRESSED_KEY_LEN, COMPRESSED_KEY_LEN), _ROLE: (1, 1), _NAME: (0, MAX_SHARE_NAME), _FROM: (8, 8),
    _UNTIL: (8, 8), _SCHEDULE: (1, MAX_SHARE_SCHEDULE), _CERT_SIG: (SIGNATURE_LEN, SIGNATURE_LEN),
}
_CERT_REQUIRED: Final = frozenset({_SERIAL, _VEHICLE, _ISSUER, _SUBJECT, _ROLE, _NAME, _FROM, _CERT_SIG})

# Revocation list tags (§12.2)
_L_VEHICLE, _L_ISSUER, _L_VERSION, _L_ISSUED_AT, _L_ENTRIES, _L_SIG = 0x91, 0x92, 0x93, 0x94, 0x95, 0x9F
_LIST_BOUNDS: Final = {
    _L_VEHICLE: (KEY_ID_LEN, KEY_ID_LEN), _L_ISSUER: (KEY_ID_LEN, KEY_ID_LEN), _L_VERSION: (4, 4),
    _L_ISSUED_AT: (8, 8), _L_ENTRIES: (0, MAX_REVOCATIONS * _ENTRY_LEN), _L_SIG: (SIGNATURE_LEN, SIGNATURE_LEN),
}
MAX_LIST_VERSION: Final = 0xFFFFFFFF


def _u(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


def _compress(public_key: bytes) -> bytes:
    """The 33-byte compressed SEC1 form of a P-256 key given compressed or uncompressed."""
    return decode_public_key(public_key).public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.CompressedPoint)


def _check_id(what: str, value: bytes) -> None:
    if len(value) != KEY_ID_LEN:
        raise ValueError(f"{what} must be {KEY_ID_LEN} bytes")


def _verify_issuer(issuer_id: bytes, issuer_public_key: bytes, signature: bytes, label: bytes,
                   tbs: Callable[[], bytes]) -> None:
    """AuthenticationError unless `issuer_public_key` is the named issuer and signed transcript(label, tbs())."""
    try:
        public = decode_public_key(issuer_public_key)
        signed = tbs()
    except ValueError as exc:  # DecodeError for the key; ValueError for a record built by hand out of bounds
        raise AuthenticationError(f"cannot verify: {exc}") from None
    if key_id(public) != issuer_id:
        raise AuthenticationError("the public key given is not the issuer the record names")
    verify(public, signature, c.transcript(label, signed))


@dataclass(frozen=True, slots=True)
class ShareCertificate:
    """An owner's signed statement: this public key is a driver's or guest's key of this vehicle (PROTOCOL.md §12.1)."""

    serial: bytes  # 8 random bytes chosen by the issuer
    vehicle_id: bytes
    issuer_id: bytes  # the key id of the owner key that signs
    subject_public_key: bytes  # 65-byte uncompressed SEC1 in memory; 33-byte compressed on the wire
    role: Role
    name: str
    valid_from: int
    valid_until: int | None
    schedule: str | None
    signature: bytes = b""

    @classmethod
    def issue(cls, issuer: KeyPair, vehicle_id: bytes, subject_public_key: bytes, role: Role, name: str,
              valid_from: int, valid_until: int | None = None, schedule: str | None = None,
              serial: bytes | None = None) -> ShareCertificate:
        """A certificate signed by `issuer`; ValueError for a role above driver or anything out of bounds."""
        if Role(role) is Role.OWNER:
            raise ValueError("a share grants driver or guest, never owner")
        cert = cls(os.urandom(SERIAL_LEN) if serial is None else serial, vehicle_id, issuer.key_id,
                   encode_public_key(decode_public_key(subject_public_key)), Role(role), name, valid_from,
                   valid_until, schedule)
        return cert.signed_by(issuer)

    def signed_by(self, issuer: KeyPair) -> ShareCertificate:
        """This certificate's fields with `issuer` as the issuer, signed anew (ValueError if a field is out of bounds).

        Meant for issue() and for building test vectors (an owner role, a past window): no policy is checked here.
        """
        unsigned = dataclasses.replace(self, issuer_id=issuer.key_id, signature=b"")
        tbs = unsigned.tbs()
        return dataclasses.replace(unsigned, signature=issuer.sign(c.transcript(c.LABEL_SHARE_CERTIFICATE, tbs)))

    @property
    def subject_key_id(self) -> bytes:
        """The key id the subject's key will have in the vehicle's store."""
        return key_id(self.subject_public_key)

    def tbs(self) -> bytes:
        """The signed bytes: every field before the signature, exactly as encoded; ValueError if out of bounds."""
        for what, value in (("serial", self.serial), ("vehicle_id", self.vehicle_id), ("issuer_id", self.issuer_id)):
            if len(value) != (SERIAL_LEN if what == "serial" else KEY_ID_LEN):
                raise ValueError(f"{what} has the wrong length")
        name = self.name.encode()
        if len(name) > MAX_SHARE_NAME:
            raise ValueError(f"a share's name is at most {MAX_SHARE_NAME} UTF-8 bytes")
        if not 0 <= self.valid_from <= MAX_SHARE_TIME:
            raise ValueError("valid_from out of range")
        if self.valid_until is not None and not self.valid_from < self.valid_until <= MAX_SHARE_TIME:
            raise ValueError("valid_until must be after valid_from")
        fields = [(_SERIAL, self.serial), (_VEHICLE, self.vehicle_id), (_ISSUER, self.issuer_id),
                  (_SUBJECT, _compress(self.subject_public_key)), (_ROLE, _u(Role(self.role), 1)), (_NAME, name),
                  (_FROM, _u(self.valid_from, 8))]
        if self.valid_until is not None:
            fields.append((_UNTIL, _u(self.valid_until, 8)))
        if self.schedule is not None:
            raw = self.schedule.encode()
            if not 1 <= len(raw) <= MAX_SHARE_SCHEDULE:
                raise ValueError(f"a share's schedule is 1..{MAX_SHARE_SCHEDULE} UTF-8 bytes")
            parse_schedule(self.schedule)  # ValueError with the parser's reason
            fields.append((_SCHEDULE, raw))
        return encode_fields(fields)

    def encode(self) -> bytes:
        """The certificate's bytes (at most MAX_CERTIFICATE); ValueError if unsigned or out of bounds."""
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError("the certificate is not signed")
        return self.tbs() + encode_field(_CERT_SIG, self.signature)

    @classmethod
    def decode(cls, data: bytes) -> ShareCertificate:
        """Parse a certificate strictly (§12.1); DecodeError for anything but its one canonical encoding."""
        if len(data) > MAX_CERTIFICATE:
            raise DecodeError(f"a certificate is at most {MAX_CERTIFICATE} bytes")
        f = decode_fields(data, _CERT_BOUNDS)
        missing = _CERT_REQUIRED - f.keys()
        if missing:
            raise DecodeError(f"certificate lacks field(s) {', '.join(f'0x{t:02x}' for t in sorted(missing))}")
        subject = encode_public_key(decode_public_key(f[_SUBJECT]))  # DecodeError if not a point on P-256
        try:
            role = Role(f[_ROLE][0])
            name = f[_NAME].decode("utf-8")
            schedule = None if _SCHEDULE not in f else f[_SCHEDULE].decode("utf-8")
        except ValueError as exc:  # an unknown role, or text that is not UTF-8
            raise DecodeError(f"certificate: {exc}") from None
        valid_from = int.from_bytes(f[_FROM], "big")
        valid_until = None if _UNTIL not in f else int.from_bytes(f[_UNTIL], "big")
        if valid_from > MAX_SHARE_TIME or (valid_until is not None and not valid_from < valid_until <= MAX_SHARE_TIME):
            raise DecodeError("certificate window is empty or out of range")
        if schedule is not None:
            try:
                parse_schedule(schedule)
            except ValueError as exc:
                raise DecodeError(f"certificate schedule: {exc}") from None
        return cls(f[_SERIAL], f[_VEHICLE], f[_ISSUER], subject, role, name, valid_from, valid_until, schedule,
                   f[_CERT_SIG])

    def verify(self, issuer_public_key: bytes) -> None:
        """Raise AuthenticationError unless the owner key `issuer_public_key` is the issuer named and signed this."""
        _verify_issuer(self.issuer_id, issuer_public_key, self.signature, c.LABEL_SHARE_CERTIFICATE, self.tbs)


@dataclass(frozen=True, slots=True)
class RevocationList:
    """One owner key's cumulative, versioned list of the keys it revoked on one vehicle (PROTOCOL.md §12.2)."""

    vehicle_id: bytes
    issuer_id: bytes
    version: int  # 1..2^32-1, strictly increasing per issuer
    issued_at: int  # Unix s, the issuer's clock (informative: order is by version)
    entries: tuple[tuple[bytes, int], ...]  # (key_id, flags), strictly ascending by key id
    signature: bytes = b""

    @classmethod
    def issue(cls, issuer: KeyPair, vehicle_id: bytes, version: int, issued_at: int,
              entries: tuple[tuple[bytes, int], ...] | list[tuple[bytes, int]]) -> RevocationList:
        """A list signed by `issuer`, its entries sorted; ValueError for a repeated key id or anything out of bounds."""
        ordered = tuple(sorted((bytes(kid), flags) for kid, flags in entries))
        return cls(vehicle_id, issuer.key_id, version, issued_at, ordered).signed_by(issuer)

    def signed_by(self, issuer: KeyPair) -> RevocationList:
        """This list's fields with `issuer` as the issuer, signed anew (ValueError if a field is out of bounds)."""
        unsigned = dataclasses.replace(self, issuer_id=issuer.key_id, signature=b"")
        tbs = unsigned.tbs()
        return dataclasses.replace(unsigned, signature=issuer.sign(c.transcript(c.LABEL_REVOCATION_LIST, tbs)))

    def flags_of(self, key_id: bytes) -> int | None:
        """The entry flags for `key_id` if this list revokes it, else None."""
        return next((flags for kid, flags in self.entries if kid == key_id), None)

    def tbs(self) -> bytes:
        """The signed bytes: every field before the signature, exactly as encoded; ValueError if out of bounds."""
        _check_id("vehicle_id", self.vehicle_id)
        _check_id("issuer_id", self.issuer_id)
        if not 1 <= self.version <= MAX_LIST_VERSION:
            raise ValueError(f"a list version is 1..{MAX_LIST_VERSION}")
        if not 0 <= self.issued_at <= MAX_SHARE_TIME:
            raise ValueError("issued_at out of range")
        if len(self.entries) > MAX_REVOCATIONS:
            raise ValueError(f"a list holds at most {MAX_REVOCATIONS} entries")
        raw = bytearray()
        last = b""
        for kid, flags in self.entries:
            _check_id("an entry's key id", kid)
            if kid <= last:
                raise ValueError("entries must be strictly ascending by key id (each key once)")
            if flags & ~LIST_WITH_SHARES:
                raise ValueError(f"entry flags 0x{flags:02x}: only bit 0 (with shares) is defined")
            raw += kid + _u(flags, 1)
            last = kid
        return encode_fields([(_L_VEHICLE, self.vehicle_id), (_L_ISSUER, self.issuer_id),
                              (_L_VERSION, _u(self.version, 4)), (_L_ISSUED_AT, _u(self.issued_at, 8)),
                              (_L_ENTRIES, bytes(raw))])

    def encode(self) -> bytes:
        """The list's bytes (at most MAX_REVOCATION_LIST); ValueError if unsigned or out of bounds."""
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError("the list is not signed")
        return self.tbs() + encode_field(_L_SIG, self.signature)

    @classmethod
    def decode(cls, data: bytes) -> RevocationList:
        """Parse a list strictly (§12.2); DecodeError for anything but its one canonical encoding."""
        if len(data) > MAX_REVOCATION_LIST:
            raise DecodeError(f"a revocation list is at most {MAX_REVOCATION_LIST} bytes")
        f = decode_fields(data, _LIST_BOUNDS)
        if f.keys() != _LIST_BOUNDS.keys():
            raise DecodeError("revocation list lacks a field")
        version = int.from_bytes(f[_L_VERSION], "big")
        issued_at = int.from_bytes(f[_L_ISSUED_AT], "big")
        if version == 0 or issued_at > MAX_SHARE_TIME:
            raise DecodeError("revocation list version 0 or issued_at out of range")
        raw = f[_L_ENTRIES]
        if len(raw) % _ENTRY_LEN:
            raise DecodeError(f"revocation entries are {_ENTRY_LEN} bytes each")
        entries = []
        last = b""
        for pos in range(0, len(raw), _ENTRY_LEN):
            kid, flags = raw[pos : pos + KEY_ID_LEN], raw[pos + KEY_ID_LEN]
            if kid <= last:
                raise DecodeError("revocation entries must be strictly ascending by key id")
            if flags & ~LIST_WITH_SHARES:
                raise DecodeError(f"revocation entry flags 0x{flags:02x} has an undefined bit set")
            entries.append((kid, flags))
            last = kid
        return cls(f[_L_VEHICLE], f[_L_ISSUER], version, issued_at, tuple(entries), f[_L_SIG])

    def verify(self, issuer_public_key: bytes) -> None:
        """Raise AuthenticationError unless the owner key `issuer_public_key` is the issuer named and signed this."""
        _verify_issuer(self.issuer_id, issuer_public_key, self.signature, c.LABEL_REVOCATION_LIST, self.tbs)

