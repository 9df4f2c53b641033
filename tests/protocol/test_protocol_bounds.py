"""Bounds of the wire format, pinned at their exact edges (PROTOCOL.md §2, §4.5): ATT MTU, chunk count, counters.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): an off-by-one here either
refuses an honest peer or lets a counter wrap.
"""

from __future__ import annotations

import pytest

from protocol import MAX_ATT_MTU, MIN_ATT_MTU, ReplayError, chunk_count, chunk_size_for_mtu, split
from protocol import _crypto as c
from protocol._codec import MAX_MESSAGE


def test_every_att_mtu_from_23_to_517_is_accepted_and_nothing_outside() -> None:
    assert (MIN_ATT_MTU, MAX_ATT_MTU) == (23, 517)
    assert chunk_size_for_mtu(23) == 20
    assert chunk_size_for_mtu(517) == 514
    for bad in (0, 22, 518, 1 << 16):
        with pytest.raises(ValueError, match="outside 23..517"):
            chunk_size_for_mtu(bad)


def test_split_refuses_chunks_smaller_than_the_smallest_att_mtu_carries() -> None:
    assert len(split(bytes(17), 20)) == 1
    with pytest.raises(ValueError, match="below the 20 bytes"):
        split(bytes(17), 19)


@pytest.mark.parametrize("chunk_size", [20, 21, 64, 244, 514])
def test_chunk_count_is_exactly_how_many_chunks_split_makes(chunk_size: int) -> None:
    lengths = {2, 3, chunk_size - 4, chunk_size - 3, chunk_size - 2, chunk_size, chunk_size + 1,
               2 * chunk_size - 4, 2 * chunk_size - 3, 2 * chunk_size - 2, 5 * chunk_size, MAX_MESSAGE}
    for n in sorted(x for x in lengths if 2 <= x <= MAX_MESSAGE):
        chunks = split(bytes(n), chunk_size)
        assert chunk_count(n, chunk_size) == len(chunks), (n, chunk_size)
        assert all(len(ch) <= chunk_size for ch in chunks)


def test_counter_window_accepts_the_last_counter_and_refuses_wrap_around() -> None:
    assert c.MAX_COUNTER == 0xFFFFFFFF
    assert c.update_window(c.MAX_COUNTER - 1, c.MAX_COUNTER) == c.MAX_COUNTER  # the last one a session may use
    for last, counter in ((0, c.MAX_COUNTER + 1), (c.MAX_COUNTER, c.MAX_COUNTER), (5, 5), (5, 4), (0, 0)):
        with pytest.raises(ReplayError):
            c.update_window(last, counter)
    assert c.update_window(0, 1) == 1 and c.update_window(1, 7) == 7  # gaps are fine, going back is not
