"""Wire-format and key-handling edges (PROTOCOL.md §2-§4): reassembly, TLV lengths, transcript parts, key ids.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): every input here sits exactly on a
bound that an honest peer never reaches, so only a test placed on the bound notices it moving.
"""

from __future__ import annotations

import pytest

from protocol import (
    AuthenticationError,
    DecodeError,
    FramingError,
    KeyPair,
    LocalProtocolError,
    Reassembler,
    RemoteProtocolError,
    decode_public_key,
    key_id,
)
from protocol import _crypto as c
from protocol._keys import ORDER, verify
from protocol._state import VehicleStateMachine, VInput
from protocol._tlv import decode_fields, encode_fields, encode_length

from .helpers import DEVICE_SCALAR, fixed_key

# ------------------------------------------------------------------ reassembly


def test_a_first_chunk_may_carry_the_length_alone() -> None:
    r = Reassembler()
    assert r.feed(b"\x80\x00\x02", 0.0) is None  # header + length, no payload yet: valid
    assert r.feed(b"\x01ab", 0.0) == b"ab"
    with pytest.raises(FramingError, match="too short"):
        r.feed(b"\x80\x00", 0.0)


def test_announced_length_up_to_the_maximum_and_not_beyond() -> None:
    r = Reassembler(max_message=10)
    assert r.feed(b"\x80\x00\x0a" + bytes(10), 0.0) == bytes(10)
    with pytest.raises(FramingError, match="outside 2..10"):
        r.feed(b"\x80\x00\x0b" + bytes(11), 0.0)


def test_partial_message_survives_exactly_its_timeout_and_not_longer() -> None:
    r = Reassembler(timeout=5.0)
    assert r.feed(b"\x80\x00\x04ab", 100.0) is None
    assert r.expire(105.0) is False and r.in_progress  # exactly the timeout: kept
    assert r.feed(b"\x01cd", 105.0) == b"abcd"
    assert r.feed(b"\x80\x00\x04ab", 200.0) is None
    assert r.expire(205.001) is True and not r.in_progress  # past it: dropped, and says so
    assert r.expire(300.0) is False  # nothing left to drop


def test_a_late_continuation_says_the_message_expired() -> None:
    r = Reassembler(timeout=5.0)
    r.feed(b"\x80\x00\x04ab", 100.0)
    with pytest.raises(FramingError, match="expired"):
        r.feed(b"\x01cd", 106.0)
    with pytest.raises(FramingError, match="without a start"):
        r.feed(b"\x01cd", 106.0)


def test_discarded_counts_each_abandoned_partial_message_and_nothing_else() -> None:
    r = Reassembler()
    assert r.feed(b"\x80\x00\x02ab", 0.0) == b"ab"
    assert r.discarded == 0 and not r.in_progress
    r.feed(b"\x80\x00\x04ab", 0.0)
    r.feed(b"\x80\x00\x04ab", 0.0)  # a new first chunk abandons the partial one
    r.feed(b"\x80\x00\x04ab", 0.0)
    assert r.discarded == 2


# ------------------------------------------------------------------ TLV lengths and transcripts


@pytest.mark.parametrize("n", [0, 127, 128, 129, 255, 256, 1000])
def test_tlv_lengths_round_trip_at_the_one_and_two_byte_edge(n: int) -> None:
    assert len(encode_length(n)) == (1 if n < 128 else 2)
    data = encode_fields([(0x01, bytes(n)), (0x02, b"x")])
    assert decode_fields(data, {0x01: (0, 2000), 0x02: (1, 1)}) == {0x01: bytes(n), 0x02: b"x"}


def test_tlv_refuses_a_truncated_and_a_non_minimal_two_byte_length() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_fields(b"\x01\x81", {0x01: (0, 2000)})
    with pytest.raises(DecodeError, match="non-minimal"):
        decode_fields(b"\x01\x80\x05" + bytes(5), {0x01: (0, 2000)})


def test_transcript_parts_may_be_65535_bytes_and_no_longer() -> None:
    assert c.transcript(b"label", bytes(0xFFFF)).endswith(b"\xff\xff" + bytes(0xFFFF))
    with pytest.raises(ValueError, match="over 65535"):
        c.transcript(b"label", bytes(0x10000))


# ------------------------------------------------------------------ keys


def test_key_id_is_the_same_for_every_encoding_of_one_key() -> None:
    """One key, one id: a compressed encoding must not enroll or look up as a different key."""
    pair = fixed_key(DEVICE_SCALAR)
    compressed = bytes((2 + (pair.public_bytes[-1] & 1),)) + pair.public_bytes[1:33]
    assert key_id(compressed) == key_id(pair.public_bytes) == key_id(pair.private_key.public_key()) == pair.key_id
    assert key_id(KeyPair.generate().public_bytes) != pair.key_id


@pytest.mark.parametrize("data", [bytes(64), b"\x02" + bytes(64), b"\x04" + bytes(32), b"\x05" + bytes(32), b""])
def test_public_keys_of_the_wrong_length_or_prefix_are_refused_before_parsing(data: bytes) -> None:
    with pytest.raises(DecodeError, match="not a SEC1 P-256 public key"):
        decode_public_key(data)


@pytest.mark.parametrize(("r", "s"), [(0, 1), (1, 0), (ORDER, 1), (1, ORDER)])
def test_signature_scalars_outside_1_to_n_minus_1_are_refused_as_out_of_range(r: int, s: int) -> None:
    pair = fixed_key(DEVICE_SCALAR)
    with pytest.raises(AuthenticationError, match="out of range"):
        verify(pair.private_key.public_key(), r.to_bytes(32, "big") + s.to_bytes(32, "big"), b"message")


# ------------------------------------------------------------------ who is at fault


def test_an_out_of_turn_peer_message_is_the_peers_fault_and_an_app_call_is_ours() -> None:
    sm = VehicleStateMachine()
    with pytest.raises(RemoteProtocolError) as peer:
        sm.advance(VInput.PAIR_CONFIRM_VERIFIED)
    assert not isinstance(peer.value, LocalProtocolError)
    sm = VehicleStateMachine()
    with pytest.raises(LocalProtocolError):
        sm.advance(VInput.APP_RESPOND)
