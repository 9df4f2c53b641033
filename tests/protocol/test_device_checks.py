"""The device's own checks (PROTOCOL.md §5-§7): what pairing pins, and which sealed answers it takes.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): the device forgetting the vehicle
key it paired with, misreading the signed validity terms, taking a sealed answer to another command, and failing
on (instead of ignoring) messages that are not its own.
"""

from __future__ import annotations

import pytest

from protocol import (
    Command,
    CommandResult,
    DState,
    Paired,
    PairingKeyReceived,
    RemoteProtocolError,
    Role,
    SessionReady,
    Status,
    pairing_prs,
    split,
)
from protocol import _crypto as c
from protocol._codec import SecureResponse, SessionAccept, secure_aad

from .helpers import Pair, make_pair


def _deliver_to_device(p: Pair, message: SecureResponse | SessionAccept) -> list[object]:
    for chunk in split(message.encode(), 20):
        p.device.receive_data(chunk, p.now)
    events = []
    while (ev := p.device.next_event(p.now)) is not None:
        events.append(ev)
    return events


def _secure_pair() -> Pair:
    p = make_pair()
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    [ready] = p.flush_down()
    assert isinstance(ready, SessionReady)
    return p


def _vehicle_sealed(p: Pair, plain: bytes, counter: int, session_id: bytes | None = None) -> SecureResponse:
    """A response sealed with the vehicle's real session key: only the vehicle (or a bug in it) can make one."""
    sec = p.vehicle._secure
    assert sec is not None
    sid = session_id or sec.session_id
    header = SecureResponse(session_id=sid, counter=counter, ciphertext=bytes(16))
    return SecureResponse(session_id=sid, counter=counter,
                          ciphertext=c.seal(sec.keys.v2d, c.DIR_V2D, counter, plain, secure_aad(header)))


def test_pairing_pins_the_vehicle_key_and_reports_the_signed_terms() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.device.start_pairing("42123456", 42)
    p.flush_up()
    p.vehicle.accept_pairing(pairing_prs("42123456", vehicle_id=p.vehicle.vehicle_id, slot=42))
    p.flush_down()
    [received] = p.flush_up()
    assert isinstance(received, PairingKeyReceived)
    p.keys[received.key_id] = p.device.device  # the vehicle app stores the key
    p.vehicle.finish_pairing(Role.GUEST, valid_from=1_700_000_000, valid_until=1_800_000_123)
    [paired] = p.flush_down()
    assert isinstance(paired, Paired)
    assert paired.vehicle_public_key == p.vehicle.identity.public_bytes
    assert paired.vehicle_id == p.vehicle.vehicle_id and paired.key_id == p.device.device.key_id
    assert (paired.role, paired.valid_from, paired.valid_until) == (Role.GUEST, 1_700_000_000, 1_800_000_123)
    assert p.device.vehicle_id == p.vehicle.vehicle_id and p.device.state is DState.PAIRED


def test_pairing_terms_without_validity_are_reported_as_none() -> None:
    p = make_pair(enrolled=False)
    from .helpers import run_pairing

    events = run_pairing(p, "42123456", role=Role.DRIVER)
    [paired] = [e for e in events if isinstance(e, Paired)]
    assert (paired.role, paired.valid_from, paired.valid_until) == (Role.DRIVER, None, None)


def test_two_secure_commands_in_one_session_then_a_replayed_answer_is_refused() -> None:
    p = _secure_pair()
    answers = []
    for cmd in (Command.LIST_KEYS, Command.READ_AUDIT):
        p.device.send_secure(cmd, b"")
        p.flush_up()
        before = len(p.downlink)
        p.vehicle.respond(Status.OK, b"page")
        [res] = p.flush_down()
        assert isinstance(res, CommandResult) and res.command is cmd and res.secure and res.data == b"page"
        answers.append(p.downlink[before:])
    p.device.send_secure(Command.LIST_KEYS, b"")
    p.flush_up()
    with pytest.raises(RemoteProtocolError):
        for chunk in answers[0]:  # an old sealed answer, replayed: its counter is not newer
            p.device.receive_data(chunk, p.now)
        p.device.next_event(p.now)
    assert p.device.state is DState.ERROR


def test_device_refuses_a_sealed_answer_to_another_command() -> None:
    p = _secure_pair()
    p.device.send_secure(Command.LIST_KEYS, b"")
    p.flush_up()
    wrong = _vehicle_sealed(p, bytes((Command.REVOKE_KEY, Status.OK)), counter=1)
    with pytest.raises(RemoteProtocolError, match="does not answer our command"):
        _deliver_to_device(p, wrong)
    assert p.device.state is DState.ERROR


def test_device_echoes_an_unknown_secure_code_as_a_number() -> None:
    p = _secure_pair()
    p.device.send_secure(0x7E, b"")
    p.flush_up()
    [res] = p.flush_down()
    assert isinstance(res, CommandResult) and res.command == 0x7E and res.status is Status.NOT_SUPPORTED


def test_device_ignores_a_sealed_answer_for_another_session_and_takes_its_own() -> None:
    p = _secure_pair()
    p.device.send_secure(Command.LIST_KEYS, b"")
    p.flush_up()
    sec = p.vehicle._secure
    assert sec is not None
    other = bytes(b ^ 0xFF for b in sec.session_id)
    assert _deliver_to_device(p, _vehicle_sealed(p, bytes((Command.LIST_KEYS, Status.OK)), 1, other)) == []
    assert p.device.state is DState.SECURE_AWAIT
    p.vehicle.respond(Status.OK, b"")
    [res] = p.flush_down()
    assert isinstance(res, CommandResult) and res.status is Status.OK


def test_device_ignores_a_session_accept_while_a_command_is_in_flight() -> None:
    p = make_pair()
    p.subscribe()
    challenge = p.device.challenge
    p.device.send_command(Command.UNLOCK)
    p.flush_up()
    forged = SessionAccept(challenge=challenge, ephemeral=p.vehicle.identity.public_bytes,
                           session_id=bytes(8), signature=bytes(64))
    assert _deliver_to_device(p, forged) == []  # not what we asked for: ignored, not fatal
    assert p.device.state is not DState.ERROR
    p.vehicle.respond(Status.OK)
    [res] = p.flush_down()
    assert isinstance(res, CommandResult) and res.status is Status.OK


def test_pairing_terms_are_read_as_whole_64_bit_fields() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.device.start_pairing("42123456", 42)
    p.flush_up()
    p.vehicle.accept_pairing(pairing_prs("42123456", vehicle_id=p.vehicle.vehicle_id, slot=42))
    p.flush_down()
    p.flush_up()
    p.vehicle.finish_pairing(Role.GUEST, valid_from=0x0102030405060708, valid_until=0x1112131415161718)
    [paired] = p.flush_down()
    assert isinstance(paired, Paired)
    assert (paired.valid_from, paired.valid_until) == (0x0102030405060708, 0x1112131415161718)


def test_device_ignores_a_session_accept_for_another_challenge_while_opening() -> None:
    p = make_pair()
    p.subscribe()
    p.device.open_session()
    forged = SessionAccept(challenge=bytes(16), ephemeral=p.vehicle.identity.public_bytes,
                           session_id=bytes(8), signature=bytes(64))
    assert _deliver_to_device(p, forged) == []  # another central's answer: not ours, not fatal
    assert p.device.state is DState.OPENING
    p.flush_up()
    [ready] = p.flush_down()
    assert isinstance(ready, SessionReady)
