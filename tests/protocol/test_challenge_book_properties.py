"""The challenge book's promises, each pinned at its edge (PROTOCOL.md §5.1): single use per key, TTL, capacity.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): every test fails when the
property it names is broken by one operator.
"""

from __future__ import annotations

import pytest

from protocol import ChallengeBook, ChallengeError
from protocol._challenge import EXPIRED, PAIRING, UNKNOWN_OR_USED

from .helpers import CounterRng

KEY_A = b"\x0a\x0a\x0a\x0a"
KEY_B = b"\x0b\x0b\x0b\x0b"


def _book(ttl: float = 5.0, capacity: int = 4) -> ChallengeBook:
    return ChallengeBook(ttl=ttl, capacity=capacity, rng=CounterRng(b"book"))


def test_redeem_alone_refuses_a_second_redemption_by_the_same_key() -> None:
    # Pairing redeems without a separate check: redeem itself must enforce single use.
    book = _book()
    challenge = book.issue(100.0)
    book.redeem(challenge, 100.0, PAIRING)
    with pytest.raises(ChallengeError) as info:
        book.redeem(challenge, 100.5, PAIRING)
    assert info.value.reason == UNKNOWN_OR_USED
    with pytest.raises(ChallengeError):
        book.check(challenge, 100.5, PAIRING)


def test_redeem_by_one_key_leaves_the_challenge_to_another() -> None:
    book = _book()
    challenge = book.issue(100.0)
    book.redeem(challenge, 100.0, KEY_A)
    book.redeem(challenge, 100.0, KEY_B)  # a broadcast challenge: another device may use it once too
    with pytest.raises(ChallengeError):
        book.redeem(challenge, 100.0, KEY_B)


def test_challenge_is_valid_up_to_and_including_its_expiry_instant() -> None:
    book = _book(ttl=5.0)
    challenge = book.issue(100.0)
    book.check(challenge, 105.0, KEY_A)  # issued at 100 with a 5 s TTL: valid until 105 inclusive
    book.redeem(challenge, 105.0, KEY_A)


def test_challenge_past_its_expiry_is_refused_as_expired_and_forgotten() -> None:
    book = _book(ttl=5.0)
    challenge = book.issue(100.0)
    with pytest.raises(ChallengeError) as info:
        book.check(challenge, 105.001, KEY_A)
    assert info.value.reason == EXPIRED
    assert len(book) == 0
    with pytest.raises(ChallengeError) as again:  # forgotten: now it is simply unknown
        book.redeem(challenge, 100.0, KEY_A)
    assert again.value.reason == UNKNOWN_OR_USED


def test_purge_keeps_a_challenge_at_its_expiry_instant_and_drops_it_after() -> None:
    book = _book(ttl=5.0)
    first = book.issue(100.0)
    book.issue(105.0)  # purges at 105: `first` expires at 105, so it is still valid and must stay
    book.redeem(first, 105.0, KEY_A)
    book.issue(105.5)  # now it is past its expiry and goes
    assert len(book) == 2
    with pytest.raises(ChallengeError) as info:
        book.check(first, 100.0, KEY_B)  # even at a time inside its TTL: forgotten means unknown
    assert info.value.reason == UNKNOWN_OR_USED


def test_book_never_holds_more_than_its_capacity_and_forgets_the_oldest() -> None:
    book = _book(capacity=4)
    issued = [book.issue(100.0 + i * 0.01) for i in range(6)]
    assert len(book) == 4
    for gone in issued[:2]:
        with pytest.raises(ChallengeError):
            book.check(gone, 100.1, KEY_A)
    for kept in issued[2:]:
        book.check(kept, 100.1, KEY_A)


def test_issued_challenges_are_distinct_rng_output_of_the_protocol_length() -> None:
    book = _book()
    challenges = {book.issue(100.0) for _ in range(4)}
    assert len(challenges) == 4
    assert all(len(c) == 16 for c in challenges)
