"""CPace and RFC 9380 input checks at their exact edges (protocol/_pake.py): share range, DST and output lengths.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): the vectors only use short DSTs
and in-range shares, so an off-by-one in these bounds went unnoticed.
"""

from __future__ import annotations

import hashlib

import pytest

from protocol import CommandFailed, Status, VehicleError
from protocol._pake import _P, CPace, PakeError, _prepend_len, expand_message_xmd

from .helpers import CounterRng


def _responder() -> CPace:
    return CPace(b"prs", ci=b"ci", sid=bytes(16), initiator=False, rng=CounterRng(b"pake"))


@pytest.mark.parametrize("x", [_P, _P + 1, (1 << 256) - 1], ids=["p", "p+1", "2^256-1"])
def test_share_at_or_above_the_field_prime_is_refused_as_unreduced(x: int) -> None:
    with pytest.raises(PakeError, match="not a reduced field element"):
        _responder().finish(x.to_bytes(32, "big"))


@pytest.mark.parametrize("share", [bytes(31), bytes(33), b""], ids=["31", "33", "empty"])
def test_share_of_the_wrong_length_is_refused(share: bytes) -> None:
    with pytest.raises(PakeError, match="must be 32 bytes"):
        _responder().finish(share)


def test_a_dst_of_255_bytes_is_used_as_is_and_a_longer_one_is_hashed() -> None:
    """RFC 9380 §5.3.3: only a DST over 255 bytes is replaced by its hash."""
    for length, hashed in ((255, False), (256, True)):
        dst = bytes(range(256))[:length]
        short = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
        same = expand_message_xmd(b"msg", dst, 32) == expand_message_xmd(b"msg", short, 32)
        assert same is hashed, length


def test_output_longer_than_255_hash_blocks_is_refused() -> None:
    assert len(expand_message_xmd(b"msg", b"dst", 255 * 32)) == 8160  # the longest RFC 9380 allows for SHA-256
    for too_long in (255 * 32 + 1, 256 * 32, 65535, 65536):
        with pytest.raises(ValueError, match="out of range"):
            expand_message_xmd(b"msg", b"dst", too_long)
    with pytest.raises(ValueError, match="out of range"):
        expand_message_xmd(b"msg", b"dst", -1)


def test_length_prefix_is_leb128_at_the_one_byte_edge() -> None:
    assert _prepend_len(bytes(127))[:1] == b"\x7f"
    assert _prepend_len(bytes(128))[:2] == b"\x80\x01"
    assert _prepend_len(bytes(300))[:2] == b"\xac\x02"


def test_an_unauthenticated_error_never_counts_as_an_authenticated_refusal() -> None:
    with pytest.raises(CommandFailed) as info:
        VehicleError(Status.DENIED).raise_for_status()
    assert info.value.status is Status.DENIED and info.value.authenticated is False
    assert info.value.may_have_succeeded  # it proves nothing about what the vehicle did
