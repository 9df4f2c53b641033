"""The shared TLV codec (PROTOCOL.md §3.1): round trips, and every strictness rule, under messages and records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import DecodeError, KeyInfo, decode, decode_key_page
from protocol._codec import CommandMessage, Error
from protocol._tlv import MAX_LEN, decode_fields, encode_field, encode_fields, encode_length, iter_fields

# Records of (tag, value) with strictly ascending tags; values straddle the 1/2-byte length boundary.
records = st.dictionaries(st.integers(0, 255), st.binary(max_size=300), max_size=8).map(lambda d: sorted(d.items()))
ANY = {tag: (0, MAX_LEN) for tag in range(256)}


@given(records)
def test_fields_round_trip(fields: list[tuple[int, bytes]]) -> None:
    data = encode_fields(fields)
    assert decode_fields(data, ANY) == dict(fields)
    assert list(iter_fields(data)) == fields


@given(st.integers(0, MAX_LEN))
def test_length_is_minimal_and_round_trips(n: int) -> None:
    raw = encode_length(n)
    assert len(raw) == (1 if n < 0x80 else 2)
    assert list(iter_fields(bytes((7,)) + raw + bytes(n))) == [(7, bytes(n))]


def test_length_examples_from_the_spec() -> None:
    assert encode_length(0x7F) == bytes.fromhex("7f")
    assert encode_length(145) == bytes.fromhex("8091")
    assert encode_length(162) == bytes.fromhex("80a2")
    assert encode_length(MAX_LEN) == bytes.fromhex("ffff")


@pytest.mark.parametrize("n", [-1, MAX_LEN + 1, 0x10000])
def test_length_out_of_range_is_not_encoded(n: int) -> None:
    with pytest.raises(ValueError):
        encode_length(n)


@pytest.mark.parametrize("fields", [[(2, b"a"), (1, b"b")], [(1, b"a"), (1, b"b")]])
def test_encoder_refuses_tags_that_do_not_ascend(fields: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        encode_fields(fields)


BOUNDS = {0x01: (1, 4), 0x02: (0, 200)}
MALFORMED = {
    "non-ascending tag": "0201ff 0101aa",
    "duplicate tag": "0101aa 0101bb",
    "unknown tag": "0301aa",
    "non-minimal length": "01 8001 aa",
    "non-minimal zero length": "02 8000",
    "length missing": "01",
    "two-byte length truncated": "02 80",
    "value truncated": "0104aabbcc",
    "two-byte value truncated": "02 80c8" + "00" * 199,
    "trailing byte": "0101aa 02",
    "too long for its bounds": "0105aabbccddee",
    "too short for its bounds": "0100",
}


@pytest.mark.parametrize("hexdata", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_record_is_refused(hexdata: str) -> None:
    with pytest.raises(DecodeError):
        decode_fields(bytes.fromhex(hexdata.replace(" ", "")), BOUNDS)


def test_well_formed_record_at_the_edges_decodes() -> None:
    data = bytes.fromhex("0104aabbccdd 02 80c8") + bytes(200)
    assert decode_fields(data, BOUNDS) == {1: bytes.fromhex("aabbccdd"), 2: bytes(200)}
    assert decode_fields(b"", BOUNDS) == {}


# The same rules hold where the codec is used: an ERROR message (challenge 0x02 optional, status 0x07 u8).
ERROR_OK = "018f 0210" + "11" * 16 + "0701 00"
ERROR_MALFORMED = {
    "non-ascending tag": "018f 0701 00 0210" + "11" * 16,
    "duplicate tag": "018f 0701 00 0701 00",
    "non-minimal length": "018f 0210" + "11" * 16 + "07 8001 00",
    "truncated": "018f 0210" + "11" * 15,
    "trailing bytes": ERROR_OK + "00",
}


def test_error_message_control_decodes() -> None:
    assert decode(bytes.fromhex(ERROR_OK.replace(" ", ""))) == Error(status=0, challenge=b"\x11" * 16)


@pytest.mark.parametrize("hexdata", ERROR_MALFORMED.values(), ids=ERROR_MALFORMED.keys())
def test_malformed_message_is_refused(hexdata: str) -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(hexdata.replace(" ", "")))


def test_optional_message_field_is_omitted_when_empty_and_refused_when_present_but_empty() -> None:
    assert Error(status=1).encode() == bytes.fromhex("018f070101")
    plain = CommandMessage(key_id=b"abcd", challenge=bytes(16), command=1, args=b"", signature=bytes(64)).encode()
    assert decode(plain) == CommandMessage(b"abcd", bytes(16), 1, b"", bytes(64))
    command_end = plain.index(bytes.fromhex("030101")) + 3
    with pytest.raises(DecodeError):  # ARGS may be 0..64 bytes, but an empty one is omitted, never sent (§3.1)
        decode(plain[:command_end] + bytes.fromhex("0400") + plain[command_end:])


def test_record_sends_an_empty_field_that_a_message_would_omit() -> None:
    raw = KeyInfo(b"abcd", 1, "", 5).encode()
    assert bytes.fromhex("4200") in raw  # the empty name is present with length 0 (PROTOCOL.md §5.4)
    assert KeyInfo.decode(raw).name == ""


def test_page_repeats_its_record_tag_but_refuses_any_other() -> None:
    rec = KeyInfo(b"abcd", 1, "n", 5).encode()
    page = bytes.fromhex("3f0400000002") + encode_field(0x40, rec) * 2
    assert decode_key_page(page) == (2, [KeyInfo.decode(rec)] * 2)
    for bad in (page + encode_field(0x50, rec), bytes.fromhex("3f800400000002"), page[:-1], b""):
        with pytest.raises(DecodeError):
            decode_key_page(bad)
