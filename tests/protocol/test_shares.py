"""Share certificates and revocation lists (PROTOCOL.md §12): round trips, every bound, the one canonical
encoding, and signatures that do not verify (forged, another issuer, another label)."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import (
    LIST_WITH_SHARES,
    MAX_CERTIFICATE,
    MAX_REVOCATION_LIST,
    MAX_REVOCATIONS,
    AuthenticationError,
    DecodeError,
    RevocationList,
    Role,
    ShareCertificate,
    key_id,
)
from protocol import _crypto as c
from protocol._tlv import encode_field, iter_fields

from .helpers import DEVICE_SCALAR, OTHER_SCALAR, VEHICLE_SCALAR, fixed_key

OWNER = fixed_key(DEVICE_SCALAR)  # the issuing owner's key
SUBJECT = fixed_key(OTHER_SCALAR)  # the watch being shared to
VEHICLE = fixed_key(VEHICLE_SCALAR)
SERIAL = bytes.fromhex("0102030405060708")


def cert(**changes: object) -> ShareCertificate:
    """An honest guest certificate, with `changes` applied before signing."""
    base = ShareCertificate.issue(OWNER, VEHICLE.key_id, SUBJECT.public_bytes, Role.GUEST, "Anna watch", 1_000,
                                  2_000, "Mon-Fri 08:00-18:00", serial=SERIAL)
    return dataclasses.replace(base, **changes).signed_by(OWNER) if changes else base  # type: ignore[arg-type]


def fields_of(raw: bytes) -> list[tuple[int, bytes]]:
    return list(iter_fields(raw))


def rebuild(fields: list[tuple[int, bytes]]) -> bytes:
    """Fields encoded in the order given (no ordering check), to build non-canonical inputs."""
    return b"".join(encode_field(t, v) for t, v in fields)


# ------------------------------------------------------------------ certificate: honest


def test_certificate_round_trips_and_verifies() -> None:
    honest = cert()
    raw = honest.encode()
    back = ShareCertificate.decode(raw)
    assert back == honest and back.encode() == raw
    back.verify(OWNER.public_bytes)
    assert back.subject_public_key == SUBJECT.public_bytes and len(back.subject_public_key) == 65
    assert back.subject_key_id == SUBJECT.key_id == key_id(SUBJECT.public_bytes)
    assert back.issuer_id == OWNER.key_id and back.role is Role.GUEST


def test_tbs_is_every_byte_before_the_signature_field() -> None:
    raw = cert().encode()
    assert raw[-66:-64] == b"\x7f\x40"
    assert ShareCertificate.decode(raw).tbs() == raw[:-66]


def test_subject_key_travels_compressed_and_decompresses_to_the_same_point() -> None:
    tags = dict(fields_of(cert().encode()))
    assert len(tags[0x74]) == 33 and tags[0x74][0] in (2, 3) and tags[0x74][1:] == SUBJECT.public_bytes[1:33]


@pytest.mark.parametrize(("until", "schedule", "name", "size"), [
    (None, None, "", 138), (None, None, "Anna watch", 148), (2_000, None, "Anna watch", 158),
    (2_000, "Mon-Fri 08:00-18:00", "Anna watch", 179), (2_000, "daily 00:00-24:00", "n" * 32, 199),
])
def test_certificate_size_is_138_plus_name_plus_options(until: int | None, schedule: str | None, name: str,
                                                        size: int) -> None:
    raw = ShareCertificate.issue(OWNER, VEHICLE.key_id, SUBJECT.public_bytes, Role.DRIVER, name, 1_000, until,
                                 schedule, serial=SERIAL).encode()
    assert len(raw) == size == 138 + len(name.encode()) + (10 if until else 0) + (
        2 + len(schedule) if schedule else 0)


def test_largest_certificate_fits_its_field() -> None:
    schedule = "Mon 08:00-09:00; Tue 08:00-09:00; Wed 08:00-09:00; Thu 8:00-9:00"
    assert len(schedule) == 64
    raw = cert(name="é" * 16, schedule=schedule).encode()
    assert len(raw) == 138 + 32 + 10 + 66 == 246 <= MAX_CERTIFICATE
    assert ShareCertificate.decode(raw).schedule == schedule


def test_serial_is_random_unless_given() -> None:
    a = ShareCertificate.issue(OWNER, VEHICLE.key_id, SUBJECT.public_bytes, Role.GUEST, "", 1)
    b = ShareCertificate.issue(OWNER, VEHICLE.key_id, SUBJECT.public_bytes, Role.GUEST, "", 1)
    assert len(a.serial) == 8 and a.serial != b.serial


# ------------------------------------------------------------------ certificate: what issue() refuses


def test_issue_refuses_an_owner_share() -> None:
    with pytest.raises(ValueError, match="never owner"):
        ShareCertificate.issue(OWNER, VEHICLE.key_id, SUBJECT.public_bytes, Role.OWNER, "x", 1)


@pytest.mark.parametrize("changes", [
    {"name": "n" * 33}, {"name": "é" * 17}, {"schedule": "daily 00:00-24:00" + " " * 48}, {"schedule": "nope"},
    {"schedule": ""}, {"valid_until": 1_000}, {"valid_until": 999}, {"valid_from": 1 << 63},
    {"valid_until": 1 << 63}, {"serial": bytes(7)}, {"vehicle_id": bytes(5)},
])
def test_issue_refuses_out_of_bounds_fields(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        cert(**changes)


def test_issue_refuses_a_subject_that_is_not_a_point() -> None:
    with pytest.raises(ValueError):
        ShareCertificate.issue(OWNER, VEHICLE.key_id, b"\x04" + bytes(64), Role.GUEST, "", 1)


def test_name_and_schedule_bounds_are_inclusive() -> None:
    assert ShareCertificate.decode(cert(name="n" * 32).encode()).name == "n" * 32
    sched = "daily 00:00-24:00" + " " * 47  # 64 bytes: parses (trailing blanks are allowed)
    assert ShareCertificate.decode(cert(schedule=sched).encode()).schedule == sched
    assert ShareCertificate.decode(cert(valid_until=1_001).encode()).valid_until == 1_001


# ------------------------------------------------------------------ certificate: strict decoding


def replace_field(raw: bytes, tag: int, value: bytes | None) -> bytes:
    out = [(t, value if t == tag else v) for t, v in fields_of(raw)]
    return rebuild([(t, v) for t, v in out if v is not None])


@pytest.mark.parametrize(("tag", "value"), [
    (0x71, bytes(7)), (0x71, bytes(9)), (0x72, bytes(3)), (0x73, bytes(5)),
    (0x74, SUBJECT.public_bytes),  # uncompressed: 65 bytes is out of the field's bound
    (0x74, b"\x04" + SUBJECT.public_bytes[1:33]),  # 33 bytes with an uncompressed prefix
    (0x74, b"\x02" + b"\xff" * 32),  # x >= p: not a point
    (0x75, b"\x00"), (0x75, b"\x04"), (0x75, b"\x02\x00"),
    (0x76, b"n" * 33), (0x76, b"\xff\xfe"),  # too long; not UTF-8
    (0x77, bytes(7)), (0x77, (1 << 63).to_bytes(8, "big")),
    (0x78, (1_000).to_bytes(8, "big")), (0x78, (999).to_bytes(8, "big")), (0x78, (1 << 63).to_bytes(8, "big")),
    (0x79, b""), (0x79, b"x" * 65), (0x79, b"Mon 25:00-26:00"), (0x79, b"\xc3"),
    (0x7F, bytes(63)),
])
def test_decode_refuses_out_of_bounds_field(tag: int, value: bytes) -> None:
    with pytest.raises(DecodeError):
        ShareCertificate.decode(replace_field(cert().encode(), tag, value))


@pytest.mark.parametrize("tag", [0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x7F])
def test_decode_refuses_a_missing_required_field(tag: int) -> None:
    with pytest.raises(DecodeError, match="lacks|length"):
        ShareCertificate.decode(replace_field(cert().encode(), tag, None))


def test_decode_accepts_a_missing_optional_field() -> None:
    raw = replace_field(cert().encode(), 0x79, None)
    assert ShareCertificate.decode(raw).schedule is None
    assert ShareCertificate.decode(replace_field(raw, 0x78, None)).valid_until is None


def test_decode_refuses_every_non_canonical_form() -> None:
    raw = cert().encode()
    f = fields_of(raw)
    swapped = f[:1] + [f[2], f[1]] + f[3:]
    cases = [
        rebuild(swapped),  # tags out of order
        rebuild(f[:2] + [f[1]] + f[2:]),  # a tag repeated
        rebuild(f[:-1] + [(0x7A, b"\x00")] + f[-1:]),  # an unknown tag
        raw + b"\x00",  # trailing bytes
        raw + encode_field(0x80, b""),  # a field after the signature
        raw[:-1],  # truncated
        raw.replace(b"\x76\x0a", b"\x76\x80\x0a", 1),  # a non-minimal length
        raw + bytes(MAX_CERTIFICATE),  # over the size cap
    ]
    for bad in cases:
        with pytest.raises(DecodeError):
            ShareCertificate.decode(bad)


def test_owner_role_decodes_so_the_vehicle_can_refuse_it_by_name() -> None:
    escalated = cert(role=Role.OWNER)  # signed_by applies no policy: this is the role-escalation vector
    back = ShareCertificate.decode(escalated.encode())
    assert back.role is Role.OWNER
    back.verify(OWNER.public_bytes)  # the signature is genuine: the refusal is the vehicle's (NOT_PERMITTED)


# ------------------------------------------------------------------ certificate: signatures


def test_rejects_forged_certificate_signature() -> None:
    raw = bytearray(cert().encode())
    raw[-1] ^= 0x01
    with pytest.raises(AuthenticationError):
        ShareCertificate.decode(bytes(raw)).verify(OWNER.public_bytes)


def test_rejects_certificate_with_an_upgraded_role() -> None:
    raw = cert().encode()  # a guest share, re-labelled driver with the guest signature kept
    tampered = replace_field(raw, 0x75, bytes((Role.DRIVER,)))
    with pytest.raises(AuthenticationError):
        ShareCertificate.decode(tampered).verify(OWNER.public_bytes)


@pytest.mark.parametrize(("tag", "value"), [(0x72, b"\x00\x00\x00\x01"), (0x77, (999).to_bytes(8, "big")),
                                            (0x78, (3_000).to_bytes(8, "big")), (0x79, b"daily 00:00-24:00")])
def test_rejects_certificate_with_any_signed_field_changed(tag: int, value: bytes) -> None:
    with pytest.raises(AuthenticationError):
        ShareCertificate.decode(replace_field(cert().encode(), tag, value)).verify(OWNER.public_bytes)


def test_rejects_certificate_verified_with_another_key() -> None:
    honest = ShareCertificate.decode(cert().encode())
    for other in (SUBJECT.public_bytes, VEHICLE.public_bytes, b"\x04" + bytes(64)):
        with pytest.raises(AuthenticationError):
            honest.verify(other)


def test_rejects_certificate_naming_an_issuer_other_than_its_signer() -> None:
    """A driver signs, and names an owner as issuer: the owner's key does not verify it, the driver's is refused."""
    forged = dataclasses.replace(cert().signed_by(SUBJECT), issuer_id=OWNER.key_id)
    raw = ShareCertificate.decode(forged.encode())
    for key in (OWNER.public_bytes, SUBJECT.public_bytes):
        with pytest.raises(AuthenticationError):
            raw.verify(key)


def test_verify_refuses_a_key_that_is_not_the_named_issuer_even_if_it_signed() -> None:
    """A driver signs a certificate naming an owner as issuer: checked against the driver's own key, still refused."""
    unsigned = dataclasses.replace(cert(), issuer_id=OWNER.key_id, signature=b"")
    forged = dataclasses.replace(unsigned, signature=SUBJECT.sign(c.transcript(c.LABEL_SHARE_CERTIFICATE,
                                                                               unsigned.tbs())))
    with pytest.raises(AuthenticationError, match="not the issuer"):
        ShareCertificate.decode(forged.encode()).verify(SUBJECT.public_bytes)
    listed = RevocationList(VEHICLE.key_id, OWNER.key_id, 1, 5, ())
    forged_list = dataclasses.replace(listed, signature=SUBJECT.sign(c.transcript(c.LABEL_REVOCATION_LIST,
                                                                                  listed.tbs())))
    with pytest.raises(AuthenticationError, match="not the issuer"):
        RevocationList.decode(forged_list.encode()).verify(SUBJECT.public_bytes)


@pytest.mark.parametrize("label", [c.LABEL_REVOCATION_LIST, c.LABEL_COMMAND, c.LABEL_SHARE_ANSWER])
def test_rejects_certificate_signed_under_another_label(label: bytes) -> None:
    honest = cert()
    wrong = dataclasses.replace(honest, signature=OWNER.sign(c.transcript(label, honest.tbs())))
    with pytest.raises(AuthenticationError):
        ShareCertificate.decode(wrong.encode()).verify(OWNER.public_bytes)


# ------------------------------------------------------------------ revocation lists


def rlist(version: int = 1, entries: tuple[tuple[bytes, int], ...] = ((b"\x00\x00\x00\x02", 0),
                                                                       (b"\x00\x00\x00\x01", 1))) -> RevocationList:
    return RevocationList.issue(OWNER, VEHICLE.key_id, version, 1_700_000_000, entries)


def test_list_round_trips_sorted_and_verifies() -> None:
    honest = rlist()
    assert honest.entries == ((b"\x00\x00\x00\x01", LIST_WITH_SHARES), (b"\x00\x00\x00\x02", 0))
    raw = honest.encode()
    back = RevocationList.decode(raw)
    assert back == honest and back.encode() == raw and back.tbs() == raw[:-66]
    back.verify(OWNER.public_bytes)
    assert back.flags_of(b"\x00\x00\x00\x01") == LIST_WITH_SHARES and back.flags_of(b"\x00\x00\x00\x09") is None


def test_list_bounds_are_inclusive() -> None:
    empty = rlist(entries=())
    assert RevocationList.decode(empty.encode()).entries == ()
    full = rlist(version=0xFFFFFFFF, entries=tuple((i.to_bytes(4, "big"), i & 1) for i in range(MAX_REVOCATIONS)))
    raw = full.encode()
    assert len(raw) == 6 + 6 + 6 + 10 + 3 + 320 + 66 == 417 <= MAX_REVOCATION_LIST
    assert RevocationList.decode(raw) == full


@pytest.mark.parametrize("entries", [
    tuple((i.to_bytes(4, "big"), 0) for i in range(MAX_REVOCATIONS + 1)),  # too many
    ((b"\x00\x00\x00\x01", 0), (b"\x00\x00\x00\x01", 1)),  # a key twice
    ((b"\x00\x00\x00\x01", 2),),  # an undefined flag
    ((b"\x00\x00\x01", 0),),  # a 3-byte key id
])
def test_issue_refuses_bad_entries(entries: tuple[tuple[bytes, int], ...]) -> None:
    with pytest.raises(ValueError):
        rlist(entries=entries)


@pytest.mark.parametrize("version", [0, 1 << 32])
def test_issue_refuses_version_out_of_range(version: int) -> None:
    with pytest.raises(ValueError):
        rlist(version=version)


def replace_list_field(raw: bytes, tag: int, value: bytes | None) -> bytes:
    return rebuild([(t, value if t == tag else v) for t, v in fields_of(raw) if not (t == tag and value is None)])


@pytest.mark.parametrize(("tag", "value"), [
    (0x91, bytes(3)), (0x92, bytes(5)), (0x93, bytes(4)), (0x93, bytes(3)),  # version 0
    (0x94, (1 << 63).to_bytes(8, "big")),
    (0x95, bytes(4)),  # not a whole entry
    (0x95, b"\x00\x00\x00\x02\x00\x00\x00\x00\x01\x00"),  # descending
    (0x95, b"\x00\x00\x00\x01\x00\x00\x00\x00\x01\x00"),  # repeated
    (0x95, b"\x00\x00\x00\x01\x02"),  # flag bit 1
    (0x95, b"\x00\x00\x00\x01\x80"),  # flag bit 7
    (0x95, bytes(325)),  # 65 entries
    (0x9F, bytes(65)),
])
def test_list_decode_refuses_out_of_bounds_field(tag: int, value: bytes) -> None:
    with pytest.raises(DecodeError):
        RevocationList.decode(replace_list_field(rlist().encode(), tag, value))


@pytest.mark.parametrize("tag", [0x91, 0x92, 0x93, 0x94, 0x95, 0x9F])
def test_list_decode_refuses_a_missing_field(tag: int) -> None:
    with pytest.raises(DecodeError):
        RevocationList.decode(replace_list_field(rlist().encode(), tag, None))


def test_list_decode_refuses_non_canonical_forms() -> None:
    raw = rlist().encode()
    f = fields_of(raw)
    for bad in (rebuild([f[1], f[0], *f[2:]]), raw + b"\x00", raw + encode_field(0xA0, b""),
                rebuild(f[:-1] + [(0x96, b"")] + f[-1:]), raw[:-2], raw + bytes(MAX_REVOCATION_LIST)):
        with pytest.raises(DecodeError):
            RevocationList.decode(bad)


def test_rejects_forged_list_signature() -> None:
    raw = bytearray(rlist().encode())
    raw[-5] ^= 0x40
    with pytest.raises(AuthenticationError):
        RevocationList.decode(bytes(raw)).verify(OWNER.public_bytes)


def test_rejects_list_with_an_entry_dropped_or_version_raised() -> None:
    raw = rlist().encode()
    for tag, value in ((0x95, b"\x00\x00\x00\x02\x00"), (0x93, (2).to_bytes(4, "big"))):
        with pytest.raises(AuthenticationError):
            RevocationList.decode(replace_list_field(raw, tag, value)).verify(OWNER.public_bytes)


def test_rejects_list_signed_by_one_key_and_verified_with_another() -> None:
    by_driver = RevocationList.issue(SUBJECT, VEHICLE.key_id, 1, 5, [])
    with pytest.raises(AuthenticationError):  # the driver's list names the driver: an owner key is not it
        RevocationList.decode(by_driver.encode()).verify(OWNER.public_bytes)
    renamed = dataclasses.replace(by_driver, issuer_id=OWNER.key_id)  # claims the owner, signed by the driver
    with pytest.raises(AuthenticationError):
        RevocationList.decode(renamed.encode()).verify(OWNER.public_bytes)


def test_rejects_list_signed_under_the_certificate_label() -> None:
    honest = rlist()
    wrong = dataclasses.replace(honest, signature=OWNER.sign(c.transcript(c.LABEL_SHARE_CERTIFICATE, honest.tbs())))
    with pytest.raises(AuthenticationError):
        RevocationList.decode(wrong.encode()).verify(OWNER.public_bytes)


def test_a_certificate_is_not_a_list_and_a_list_is_not_a_certificate() -> None:
    with pytest.raises(DecodeError):
        RevocationList.decode(cert().encode())
    with pytest.raises(DecodeError):
        ShareCertificate.decode(rlist().encode())
