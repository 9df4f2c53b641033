"""The failure limiter's bounds when the global budget is spent (THREAT_MODEL.md §4.7): key lanes stay bounded.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): with the global bucket refilling
between failures no lane was ever created, so the lane bound went untested.
"""

from __future__ import annotations

from key_server.ratelimit import FailureLimiter


def _drained(max_tracked: int) -> FailureLimiter:
    """A limiter whose global bucket is empty at t=0 (one failure per link, so no link bucket runs dry)."""
    limiter = FailureLimiter(max_tracked=max_tracked, global_burst=3, global_rate=0.001, key_burst=2)
    for i in range(3):
        limiter.failed(f"drain{i}", 0.0)
    assert not limiter.allow("fresh", 0.0)
    return limiter


def test_key_lanes_never_exceed_max_tracked_while_the_global_bucket_is_empty() -> None:
    limiter = _drained(max_tracked=4)
    for i in range(10):
        kid = i.to_bytes(4, "big")
        limiter.failed(f"spoofer{i % 3}", 0.0, key_id=kid)  # charged to that key's lane
        assert len(limiter._lanes) <= 4


def test_the_oldest_lane_is_forgotten_first() -> None:
    limiter = _drained(max_tracked=2)
    a, b, c = b"\x00\x00\x00\x0a", b"\x00\x00\x00\x0b", b"\x00\x00\x00\x0c"
    for kid in (a, a, b):  # a's lane is spent (burst 2), b's has one token left
        limiter.failed("spoofer", 0.0, key_id=kid)
    assert not limiter.allow("honest-a", 0.0, key_id=a)
    assert limiter.allow("honest-b", 0.0, key_id=b)
    limiter.failed("spoofer2", 0.0, key_id=c)  # a third lane: the oldest (a) goes, b keeps its state
    assert set(limiter._lanes) == {b, c}
    limiter.failed("spoofer3", 0.0, key_id=b)
    assert not limiter.allow("honest-b", 0.0, key_id=b)  # b's lane was kept, so its spending counted


def test_an_empty_global_bucket_still_admits_an_enrolled_key_from_its_own_lane() -> None:
    limiter = _drained(max_tracked=4)
    kid = b"\x01\x02\x03\x04"
    assert not limiter.allow("phone", 0.0)  # no key named: refused
    assert limiter.allow("phone", 0.0, key_id=kid)  # the owner's phone still gets through a flood


def test_a_bucket_holding_exactly_one_token_still_admits() -> None:
    limiter = FailureLimiter(link_burst=2, link_rate=0.001, global_burst=1, global_rate=0.001)
    assert limiter.allow("fresh", 0.0)  # the global bucket holds exactly 1 token
    limiter = FailureLimiter(link_burst=2, link_rate=0.001)
    limiter.failed("link", 0.0)  # its bucket: 2 -> exactly 1
    assert limiter.link_allows("link", 0.0) and limiter.allow("link", 0.0)
    limiter.failed("link", 0.0)  # 1 -> 0
    assert not limiter.link_allows("link", 0.0) and not limiter.allow("link", 0.0)


def test_link_buckets_never_exceed_max_tracked() -> None:
    limiter = FailureLimiter(max_tracked=3)
    for i in range(10):
        limiter.failed(f"link{i}", float(i))
        assert len(limiter._links) <= 3


def test_refused_actuations_are_reported_at_most_once_per_interval_even_after_a_flush() -> None:
    from key_server.ratelimit import ActuationLimiter

    kid = b"\x00\x00\x00\x01"
    limiter = ActuationLimiter(burst=1, per_minute=0.001, report_every=60.0)
    assert limiter.allow(kid, 0.0) and not limiter.allow(kid, 0.0)
    assert limiter.flush_all(10.0) == {kid: 1}  # reported at 10
    assert not limiter.allow(kid, 20.0)
    assert limiter.to_report(kid, 69.0) == 0  # 59 s after the last report: held back
    assert not limiter.allow(kid, 69.5)
    assert limiter.to_report(kid, 70.0) == 2  # exactly 60 s after it: both, in one row
