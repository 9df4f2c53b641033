"""Issue 12's vocabulary and payload records (PROTOCOL.md §5.3, §5.4, §8.1): the key record's new fields,
pairing terms, issued codes and key edits: round trips, every bound, canonical encoding."""

from __future__ import annotations

import pytest

from protocol import (
    FAST_COMMANDS,
    MAX_CODE_ATTEMPTS,
    MAX_CODE_TTL,
    SECURE_COMMANDS,
    Command,
    CommandFailed,
    DecodeError,
    IssuedCode,
    KeyEdit,
    KeyInfo,
    KeyState,
    PairingTerms,
    Role,
    Status,
    Via,
)
from protocol._tlv import encode_field, encode_fields, iter_fields

KID = bytes.fromhex("0a0b0c0d")
OWNER_ID = bytes.fromhex("01020304")


def rebuild(fields: list[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_field(t, v) for t, v in fields)


def with_field(raw: bytes, tag: int, value: bytes | None) -> bytes:
    """`raw` with field `tag` replaced (None: removed; added in tag order if absent)."""
    f = dict(iter_fields(raw))
    if value is None:
        f.pop(tag, None)
    else:
        f[tag] = value
    return encode_fields(sorted(f.items()))


# ------------------------------------------------------------------ vocabulary


def test_new_command_and_status_codes_are_the_contract() -> None:
    assert (Command.ISSUE_CODE, Command.EDIT_KEY, Command.WATCH) == (0x14, 0x15, 0x16)
    assert (Status.NO_CHANGE, Status.LAST_OWNER) == (0x10, 0x11)
    assert {Command.ISSUE_CODE, Command.EDIT_KEY, Command.WATCH} <= SECURE_COMMANDS
    assert FAST_COMMANDS == {Command.UNLOCK, Command.LOCK, Command.START}  # STATUS stays secure-only
    assert Command("watch") is Command.WATCH and Command("issue-code") is Command.ISSUE_CODE


@pytest.mark.parametrize("status", [Status.NO_CHANGE, Status.LAST_OWNER])
def test_no_change_and_last_owner_are_final_and_did_nothing(status: Status) -> None:
    assert not status.temporary and not status.may_have_acted
    failed = CommandFailed(status, authenticated=True)
    assert not failed.temporary and not failed.may_have_succeeded
    assert str(failed) == f"vehicle refused: {status.name.lower().replace('_', ' ')}"


def test_key_states_and_vias_are_the_contract() -> None:
    assert [int(s) for s in KeyState] == [0, 1, 2, 3, 4]
    assert KeyState.labels() == ["unknown", "active", "not_yet_valid", "expired", "revoked"]
    assert [(v.label, int(v)) for v in Via] == [("code", 1), ("share", 2), ("vehicle", 3)]


# ------------------------------------------------------------------ key record


def test_key_record_round_trips_every_new_field() -> None:
    info = KeyInfo(KID, 3, "watch", 5, 10, 20, 15, None, "Mon-Fri 08:00-18:00", KeyState.EXPIRED, Via.SHARE,
                   OWNER_ID)
    raw = info.encode()
    assert KeyInfo.decode(raw) == info
    tags = dict(iter_fields(raw))
    assert tags[0x48] == b"Mon-Fri 08:00-18:00" and tags[0x49] == b"\x03" and tags[0x4A] == b"\x02"
    assert tags[0x4B] == OWNER_ID


def test_key_record_without_the_new_fields_is_an_older_vehicles_and_reads_as_unknown() -> None:
    old = encode_fields([(0x01, KID), (0x41, b"\x01"), (0x42, b"phone"), (0x45, (5).to_bytes(8, "big"))])
    info = KeyInfo.decode(old)
    assert info.state is KeyState.UNKNOWN and info.via is None and info.enrolled_by is None and info.schedule is None
    assert info.encode() == old  # unknown is sent as the field's absence


@pytest.mark.parametrize(("tag", "value"), [
    (0x49, b"\x00"), (0x49, b"\x05"), (0x49, b"\x01\x00"), (0x4A, b"\x00"), (0x4A, b"\x04"), (0x4B, bytes(3)),
    (0x4B, bytes(5)), (0x48, b""), (0x48, b"x" * 513), (0x48, b"\xff"),
])
def test_key_record_refuses_bad_new_fields(tag: int, value: bytes) -> None:
    raw = KeyInfo(KID, 1, "p", 5, state=KeyState.ACTIVE).encode()
    with pytest.raises(DecodeError):
        KeyInfo.decode(with_field(raw, tag, value))


def test_key_record_schedule_bound_is_inclusive_and_not_reparsed() -> None:
    raw = with_field(KeyInfo(KID, 1, "p", 5).encode(), 0x48, b"x" * 512)  # a report of what is stored
    assert KeyInfo.decode(raw).schedule == "x" * 512


# ------------------------------------------------------------------ pairing terms (ISSUE_CODE args)


def terms(**kw: object) -> PairingTerms:
    base: dict[str, object] = {"role": Role.GUEST, "name": "Anna", "code_ttl": 600, "attempts": 5}
    base.update(kw)
    return PairingTerms(**base)  # type: ignore[arg-type]


def test_pairing_terms_round_trip() -> None:
    for t in (terms(), terms(role=Role.OWNER, name="", valid_from=1, valid_until=2, schedule="weekends 10:00-12:00")):
        assert PairingTerms.decode(t.encode()) == t
    assert [tag for tag, _ in iter_fields(terms(valid_from=1).encode())] == [0x41, 0x42, 0x43, 0x62, 0x63]


@pytest.mark.parametrize(("code_ttl", "attempts", "ok"), [
    (1, 1, True), (MAX_CODE_TTL, MAX_CODE_ATTEMPTS, True), (0, 5, False), (MAX_CODE_TTL + 1, 5, False),
    (600, 0, False), (600, MAX_CODE_ATTEMPTS + 1, False),
])
def test_pairing_terms_code_bounds(code_ttl: int, attempts: int, ok: bool) -> None:
    raw = encode_fields([(0x41, b"\x03"), (0x42, b"a"), (0x62, code_ttl.to_bytes(4, "big")),
                         (0x63, attempts.to_bytes(1, "big"))])
    if ok:
        assert PairingTerms.decode(raw) == terms(name="a", code_ttl=code_ttl, attempts=attempts)
        return
    with pytest.raises(DecodeError):
        PairingTerms.decode(raw)
    with pytest.raises(ValueError):
        terms(code_ttl=code_ttl, attempts=attempts).encode()
    assert MAX_CODE_TTL == 7 * 86400 and MAX_CODE_ATTEMPTS == 20


@pytest.mark.parametrize(("tag", "value"), [
    (0x41, None), (0x42, None), (0x62, None), (0x63, None),  # required
    (0x41, b"\x00"), (0x41, b"\x04"), (0x42, b"n" * 65), (0x42, b"\xc3"),
    (0x43, (1 << 63).to_bytes(8, "big")), (0x44, (1 << 63).to_bytes(8, "big")),
    (0x48, b"sometimes"), (0x48, b""), (0x60, b"\x00"),
])
def test_pairing_terms_refuse_bad_fields(tag: int, value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        PairingTerms.decode(with_field(terms().encode(), tag, value))


def test_pairing_terms_refuse_an_empty_window() -> None:
    raw = with_field(with_field(terms().encode(), 0x43, (10).to_bytes(8, "big")), 0x44, (10).to_bytes(8, "big"))
    with pytest.raises(DecodeError):
        PairingTerms.decode(raw)
    with pytest.raises(ValueError):
        terms(valid_from=10, valid_until=10).encode()
    assert PairingTerms.decode(terms(valid_from=10, valid_until=11).encode()).valid_until == 11
    assert PairingTerms.decode(terms(name="n" * 64).encode()).name == "n" * 64


# ------------------------------------------------------------------ issued code (ISSUE_CODE data)


def test_issued_code_round_trips() -> None:
    code = IssuedCode("42123456", 1_700_000_600)
    assert IssuedCode.decode(code.encode()) == code


@pytest.mark.parametrize("raw", [
    encode_fields([(0x64, b"4212345a"), (0x65, bytes(8))]), encode_fields([(0x64, b"4212345"), (0x65, bytes(8))]),
    encode_fields([(0x64, b"42123456")]), encode_fields([(0x65, bytes(8))]),
    encode_fields([(0x64, b"42123456"), (0x65, bytes(8))]) + b"\x00",
])
def test_issued_code_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        IssuedCode.decode(raw)


@pytest.mark.parametrize("code", ["4212345", "421234567", "4212345a", "４２１２３４５６"])
def test_issued_code_encode_refuses_what_is_not_eight_ascii_digits(code: str) -> None:
    with pytest.raises(ValueError):
        IssuedCode(code, 1).encode()


# ------------------------------------------------------------------ key edit (EDIT_KEY args)


def test_key_edit_round_trips() -> None:
    for edit in (KeyEdit(KID), KeyEdit(KID, role=Role.DRIVER, name=""),
                 KeyEdit(KID, name="watch", valid_from=1, valid_until=2, schedule="daily 06:00-23:00"),
                 KeyEdit(KID, clear_valid_from=True, clear_valid_until=True, clear_schedule=True)):
        assert KeyEdit.decode(edit.encode()) == edit
    assert KeyEdit(KID, clear_valid_until=True).encode() == encode_fields([(0x01, KID), (0x66, b"\x02")])
    assert KeyEdit(KID, clear_valid_from=True, clear_schedule=True).clear == 0x05


@pytest.mark.parametrize("edit", [
    KeyEdit(KID, valid_from=1, clear_valid_from=True), KeyEdit(KID, valid_until=1, clear_valid_until=True),
    KeyEdit(KID, schedule="daily 06:00-23:00", clear_schedule=True), KeyEdit(KID, valid_from=5, valid_until=5),
    KeyEdit(b"abc"), KeyEdit(KID, name="n" * 65), KeyEdit(KID, schedule="never"),
])
def test_key_edit_encode_refuses_contradictions(edit: KeyEdit) -> None:
    with pytest.raises(ValueError):
        edit.encode()


@pytest.mark.parametrize("raw", [
    encode_fields([(0x01, KID), (0x43, (1).to_bytes(8, "big")), (0x66, b"\x01")]),  # set and cleared
    encode_fields([(0x01, KID), (0x48, b"daily 06:00-23:00"), (0x66, b"\x04")]),
    encode_fields([(0x01, KID), (0x66, b"\x00")]),  # a zero clear byte: sent by omission
    encode_fields([(0x01, KID), (0x66, b"\x08")]),  # an undefined clear bit
    encode_fields([(0x41, b"\x01")]),  # no key id
    encode_fields([(0x01, KID), (0x41, b"\x07")]),
    encode_fields([(0x01, KID), (0x43, (9).to_bytes(8, "big")), (0x44, (9).to_bytes(8, "big"))]),
    encode_fields([(0x01, KID), (0x44, (1 << 63).to_bytes(8, "big"))]),
    encode_fields([(0x01, KID), (0x48, b"Mon 08:00")]),
    rebuild([(0x41, b"\x01"), (0x01, KID)]),  # out of order
    encode_fields([(0x01, KID), (0x45, bytes(8))]),  # created_at is not editable
])
def test_key_edit_decode_refuses_malformed_or_contradictory(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        KeyEdit.decode(raw)
