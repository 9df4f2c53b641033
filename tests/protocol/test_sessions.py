"""Both state machines joined by an in-memory link: pairing, fast commands and a confidential session."""

from __future__ import annotations

import pytest

from protocol import (
    Command,
    CommandRequested,
    CommandResult,
    DState,
    LocalProtocolError,
    Paired,
    Refused,
    SessionOpened,
    SessionReady,
    Status,
    StatusReport,
    VState,
    split,
)
from protocol._codec import decode
from protocol._payloads import TIME_WANTED_HINT

from .helpers import make_pair, run_pairing

MTUS = [23, 247]


@pytest.mark.parametrize("mtu", MTUS)
def test_pairing_then_unlock(mtu: int) -> None:
    p = make_pair(chunk_size=mtu - 3, enrolled=False)
    events = run_pairing(p, "42123456")
    paired = [e for e in events if isinstance(e, Paired)]
    assert len(paired) == 1
    assert paired[0].vehicle_id == p.vehicle.vehicle_id and paired[0].key_id == p.device.device.key_id
    assert p.device.state is DState.PAIRED
    # A new connection with the pinned key unlocks.
    from protocol import DeviceSession
    p.device = DeviceSession(p.device.device, vehicle_public_key=paired[0].vehicle_public_key, chunk_size=mtu - 3)
    p.subscribe()
    assert p.command(Command.UNLOCK).status is Status.OK


@pytest.mark.parametrize("mtu", MTUS)
@pytest.mark.parametrize("cmd", [Command.UNLOCK, Command.LOCK, Command.START])
def test_fast_commands(mtu: int, cmd: Command) -> None:
    p = make_pair(chunk_size=mtu - 3)
    p.subscribe()
    assert p.device.state is DState.READY
    result = p.command(cmd)
    assert result == CommandResult(command=cmd, status=Status.OK, data=b"", secure=False)
    assert p.vehicle.state is VState.READY and p.device.state is DState.WAIT_CHALLENGE


def test_rejects_result_data_on_the_fast_path() -> None:
    """A signed RESULT is readable by anyone: the vehicle refuses to put a status report in one (§5.3)."""
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    [req] = p.flush_up()
    assert isinstance(req, CommandRequested) and not req.secure
    with pytest.raises(LocalProtocolError):
        p.vehicle.respond(Status.OK, b"\x30\x01\x02")
    p.vehicle.respond(Status.OK)  # the honest answer: the status alone, signed
    [res] = p.flush_down()
    assert res.status is Status.OK and res.data == b""
    # The one exception (§5.7): the time_wanted hint, which says nothing about the car.
    p.device.request_challenge()
    p.flush_up()
    p.flush_down()
    p.device.send_command(Command.LOCK)
    p.flush_up()
    p.vehicle.respond(Status.OK, TIME_WANTED_HINT)
    [res] = p.flush_down()
    assert res.data == TIME_WANTED_HINT and StatusReport.decode(res.data).time_wanted


def test_status_is_not_a_fast_command() -> None:
    """STATUS on the fast path is answered NOT_SUPPORTED once authenticated; inside a session it runs (§5.3)."""
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.STATUS)
    [refused] = p.flush_up()
    assert isinstance(refused, Refused) and refused.status is Status.NOT_SUPPORTED
    p.flush_down()
    p.device.request_challenge()
    p.flush_up()
    p.flush_down()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    p.device.send_secure(Command.STATUS)
    [req] = p.flush_up()
    assert isinstance(req, CommandRequested) and req.command is Command.STATUS and req.secure


@pytest.mark.parametrize("mtu", MTUS)
def test_confidential_session(mtu: int) -> None:
    p = make_pair(chunk_size=mtu - 3)
    p.subscribe()
    p.device.open_session()
    [opened] = p.flush_up()
    assert isinstance(opened, SessionOpened) and opened.key_id == p.device.device.key_id
    [ready] = p.flush_down()
    assert isinstance(ready, SessionReady) and ready.session_id == opened.session_id
    for i in range(3):
        p.device.send_secure(Command.LIST_KEYS, bytes([i]))
        [req] = p.flush_up()
        assert req.command is Command.LIST_KEYS and req.args == bytes([i]) and req.secure
        p.vehicle.respond(Status.OK, b"secret key list " * 20)
        [res] = p.flush_down()
        assert res.status is Status.OK and res.data == b"secret key list " * 20 and res.secure
    # Nothing of the plaintext crosses the air.
    assert b"secret" not in b"".join(p.downlink)


def test_unlock_fits_one_write_at_mtu_185() -> None:
    p = make_pair(chunk_size=185 - 3)
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    assert len(p.device.data_to_send()) == 1


def test_vehicle_replies_in_chunks_as_large_as_the_device_writes() -> None:
    p = make_pair(chunk_size=244)
    p.subscribe()  # before any write the vehicle can only assume MTU 23
    assert all(len(c) <= 20 for c in p.downlink)
    p.command(Command.START, status=Status.NOT_PERMITTED)
    assert max(len(c) for c in p.downlink) == len(p.uplink[0]) > 20


def test_a_link_mtu_learnt_late_sizes_the_replies_and_never_shrinks_them() -> None:
    p = make_pair(chunk_size=244)
    p.vehicle.link_mtu(247)  # bless learns the MTU at the first write, after the session started
    p.vehicle.link_mtu(23)
    p.subscribe()
    assert p.vehicle.chunk_size == 244 and len(p.downlink) == 1  # the challenge in one notification, not two
    p.vehicle.link_mtu(10_000)
    assert p.vehicle.chunk_size == 514  # what the largest ATT MTU (517) carries


def test_a_fast_path_result_carries_a_retry_record_only_in_a_busy_answer() -> None:
    from protocol import LocalProtocolError, RetryAfter

    wait = RetryAfter(30).encode()
    p = make_pair()
    p.subscribe()
    assert p.command(Command.UNLOCK, status=Status.BUSY, data=wait).data == wait  # signed, so the device trusts it
    for status, data in ((Status.OK, wait), (Status.BUSY, b"\x30\x01\x02"), (Status.BUSY, wait + b"\x00")):
        q = make_pair()
        q.subscribe()
        q.device.send_command(Command.UNLOCK)
        q.flush_up()
        with pytest.raises(LocalProtocolError):
            q.vehicle.respond(status, data)  # nothing else travels in clear (§5.3)


def test_lock_after_unlock_in_one_connection_with_a_requested_challenge() -> None:
    p = make_pair()
    p.subscribe()
    p.command(Command.UNLOCK)
    p.device.request_challenge()
    p.flush_up()
    p.flush_down()
    assert p.command(Command.LOCK).status is Status.OK


def test_refusal_status_comes_back_authenticated() -> None:
    p = make_pair()
    p.subscribe()
    result = p.command(Command.START, status=Status.NOT_PERMITTED)
    assert result.status is Status.NOT_PERMITTED
    with pytest.raises(Exception) as info:
        result.raise_for_status()
    assert not info.value.may_have_succeeded  # type: ignore[attr-defined]


def test_device_ignores_results_meant_for_another_central() -> None:
    a = make_pair(rng_seed=b"a")
    b = make_pair(rng_seed=b"b")
    a.subscribe()
    b.subscribe()
    a.device.send_command(Command.UNLOCK)
    a.flush_up()
    a.vehicle.respond(Status.OK)
    foreign = a.vehicle.data_to_send()
    for ch in foreign:  # bless notifies every subscriber: b hears a's answer
        b.device.receive_data(ch, b.now)
    assert b.device.next_event(b.now) is None
    assert b.device.state is DState.READY


def test_frames_decode_strictly() -> None:
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    raw = b"".join(c[3:] if i == 0 else c[1:] for i, c in enumerate(p.device.data_to_send()))
    assert decode(raw).encode() == raw
    assert split(raw, 20)[0][0] == 0x80
