"""Issue 10, item 7: a refused device is told so in plain words, with the wait when the vehicle names one.

Over the mock radio (a write with response carries the ATT error back, as BlueZ does now that RX is write-only):
the ATT busy of a link over its failure budget, and the signed BUSY of a key over its actuation budget, which
names the seconds to wait (PROTOCOL.md §5.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dkey_link.contract import AttError, AttErrorCode
from dkey_link.exit_codes import ExitCode
from key_client.driver import VehicleLink
from key_client.errors import TimedOut, VehicleRefused
from key_server.ratelimit import ActuationLimiter, Bucket, FailureLimiter
from protocol import Command, KeyPair, RetryAfter, Status

from .harness import Harness


async def test_a_key_over_its_actuation_budget_hears_busy_and_when_to_try_again(tmp_path: Path) -> None:
    h = await Harness(tmp_path, actuations=ActuationLimiter(burst=1, per_minute=2)).start()
    try:
        link = await h.connect(h.enroll())
        assert (await link.command(Command.UNLOCK)).status is Status.OK  # the honest first one passes
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.LOCK)
        await link.close()
    finally:
        await h.stop()
    exc = info.value
    assert exc.status is Status.BUSY and exc.authenticated and exc.temporary and not exc.may_have_succeeded
    assert exc.retry_after == 30  # one actuation per 30 s, the bucket just emptied
    assert str(exc) == "the vehicle is busy: this key has moved it too often; try again in 30 s"
    assert exc.exit_code is ExitCode.BUSY


async def test_a_link_over_its_failure_budget_hears_busy_from_the_att_error(tmp_path: Path) -> None:
    h = await Harness(tmp_path, limiter=FailureLimiter(link_burst=2, link_rate=0.01)).start()
    try:
        link = await h.connect(KeyPair.generate())  # not enrolled: every command fails
        for _ in range(2):
            with pytest.raises(VehicleRefused) as denied:
                await link.command(Command.UNLOCK, timeout=1.0)
            assert denied.value.status is Status.DENIED
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.UNLOCK, timeout=1.0)
        await link.close()
    finally:
        await h.stop()
    exc = info.value
    assert exc.status is Status.BUSY and not exc.authenticated and exc.retry_after is None
    assert str(exc).startswith("the vehicle is busy: it is rate-limiting this connection")
    assert "try again in a few seconds" in str(exc)
    assert exc.exit_code is ExitCode.BUSY


class _Refusing:
    """A Connection whose writes are answered with one ATT error."""

    max_write_size = 244
    is_connected = True

    def __init__(self, code: int) -> None:
        self.code = code

    async def write(self, data: bytes, *, response: bool = True) -> None:
        raise AttError(self.code)


async def test_a_rejected_write_says_the_vehicle_did_not_act() -> None:
    from protocol import DeviceSession

    session = DeviceSession(KeyPair.generate(), vehicle_public_key=KeyPair.generate().public_bytes)
    link = VehicleLink(_Refusing(AttErrorCode.APP_REJECTED), session, adv=None)  # type: ignore[arg-type]
    session.request_challenge()
    with pytest.raises(TimedOut, match="rejected our message") as info:
        await link._flush()
    assert not info.value.may_have_succeeded and "did not act" in str(info.value)


def test_retry_after_is_when_the_bucket_holds_a_token_again() -> None:
    bucket = Bucket(burst=1, rate=0.5)
    assert bucket.wait(0.0) == 0.0 and bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(2.0) and bucket.wait(1.5) == pytest.approx(0.5)
    limiter = ActuationLimiter(burst=1, per_minute=6)
    assert limiter.retry_after(b"kid1", 0.0) == 0.0  # never acted
    assert limiter.allow(b"kid1", 0.0) and not limiter.allow(b"kid1", 1.0)
    assert limiter.retry_after(b"kid1", 1.0) == pytest.approx(9.0)


def test_the_retry_record_round_trips_and_is_strict() -> None:
    assert RetryAfter(30).encode() == bytes.fromhex("34 02 001e")
    assert RetryAfter.decode(bytes.fromhex("3402001e")) == RetryAfter(30)
    assert RetryAfter(100_000).encode() == bytes.fromhex("3402ffff")  # longer waits are sent as the u16 maximum
    from protocol import DecodeError

    for bad in (b"", bytes.fromhex("34011e"), bytes.fromhex("3302001e"), bytes.fromhex("3402001e00")):
        with pytest.raises(DecodeError):
            RetryAfter.decode(bad)
