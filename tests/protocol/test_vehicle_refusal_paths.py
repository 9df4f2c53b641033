"""The vehicle's rarely taken refusal paths: each refuses the way PROTOCOL.md §8 says, and fails closed.

Written against mutants that survived the rest of the suite (docs/MUTANTS.md): a session message outside its
session, an empty sealed request, a pairing message out of turn, a signed SESSION_OPEN with a bad ephemeral key,
and the unprocessed shedding of queued messages under admission control.
"""

from __future__ import annotations

import pytest

from protocol import (
    AuthenticationError,
    Command,
    CommandRequested,
    PairingFailed,
    PairingRequested,
    Refused,
    RemoteProtocolError,
    Status,
    VState,
    pairing_prs,
    split,
)
from protocol import _crypto as c
from protocol._codec import (
    CHALLENGE_LEN,
    SESSION_ID_LEN,
    CommandMessage,
    Error,
    Message,
    PairConfirm,
    SecureRequest,
    SecureResponse,
    SessionOpen,
    decode,
    secure_aad,
)

from .helpers import Pair, make_pair


def _send(p: Pair, message: Message | bytes) -> list[object]:
    """Deliver one message (or raw message bytes) to the vehicle; return its events."""
    raw = message if isinstance(message, bytes) else message.encode()
    for chunk in split(raw, 20):
        p.vehicle.receive_data(chunk, p.now)
    events = []
    while (ev := p.vehicle.next_event(p.now)) is not None:
        events.append(ev)
    return events


def _vehicle_messages(p: Pair) -> list[Message]:
    """Decode what the vehicle queued (each reply fits one message here)."""
    chunks = p.vehicle.data_to_send()
    messages, buf = [], b""
    for ch in chunks:
        buf += ch[3:] if ch[0] & 0x80 else ch[1:]
        if ch[0] & 0x80:
            length = int.from_bytes(ch[1:3], "big")
        if len(buf) == length:
            messages.append(decode(buf))
            buf = b""
    return messages


def _open_session(p: Pair) -> None:
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    assert p.vehicle.state is VState.SECURE


def _sealed(p: Pair, plaintext: bytes, *, session_id: bytes | None = None) -> SecureRequest:
    """A request sealed with the device's real session keys (what a device with a bug or a new code sends)."""
    real_session_id, keys = p.device._session  # type: ignore[misc]
    sid = session_id or real_session_id
    p.device._tx_counter += 1
    counter = p.device._tx_counter
    header = SecureRequest(session_id=sid, counter=counter, ciphertext=bytes(16))
    return SecureRequest(session_id=sid, counter=counter,
                         ciphertext=c.seal(keys.d2v, c.DIR_D2V, counter, plaintext, secure_aad(header)))


# ------------------------------------------------------------------ confidential sessions


def test_secure_request_without_a_session_is_refused_as_malformed() -> None:
    p = make_pair()
    p.subscribe()
    p.vehicle.data_to_send()
    forged = SecureRequest(session_id=bytes(SESSION_ID_LEN), counter=1, ciphertext=bytes(16))
    with pytest.raises(RemoteProtocolError, match="outside its session"):
        _send(p, forged)
    assert p.vehicle.state is VState.ERROR
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED


def test_secure_request_naming_another_session_is_refused_before_decryption() -> None:
    p = make_pair()
    _open_session(p)
    other = bytes(b ^ 0xFF for b in p.device._session[0])  # type: ignore[index]
    with pytest.raises(RemoteProtocolError, match="outside its session"):
        _send(p, _sealed(p, bytes((Command.LIST_KEYS,)), session_id=other))
    assert p.vehicle.state is VState.ERROR
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED


def test_empty_sealed_request_is_not_supported_and_never_a_command() -> None:
    p = make_pair()
    _open_session(p)
    events = _send(p, _sealed(p, b""))
    assert not any(isinstance(e, CommandRequested) for e in events)  # an empty request is never an unlock
    [ev] = events
    assert isinstance(ev, Refused) and ev.status is Status.NOT_SUPPORTED
    assert ev.key_id == p.device.device.key_id and ev.reason  # the audit row names the key and why
    [resp] = _vehicle_messages(p)
    assert isinstance(resp, SecureResponse)
    _, keys = p.device._session  # type: ignore[misc]
    plain = c.open_sealed(keys.v2d, c.DIR_V2D, resp.counter, resp.ciphertext, secure_aad(resp))
    assert plain == bytes((0, Status.NOT_SUPPORTED))  # no code to echo: 0
    assert p.vehicle.state is VState.SECURE


def test_signed_session_open_with_an_invalid_ephemeral_key_is_refused_and_spends_the_challenge() -> None:
    p = make_pair()
    p.subscribe()
    challenge = p.device.challenge
    dev = p.device.device
    not_a_point = b"\x04" + bytes(64)
    sig = dev.sign(c.transcript(c.LABEL_SESSION_OPEN, p.vehicle.vehicle_id, dev.key_id, challenge, not_a_point))
    p.vehicle.data_to_send()
    [ev] = _send(p, SessionOpen(key_id=dev.key_id, challenge=challenge, ephemeral=not_a_point, signature=sig))
    assert isinstance(ev, Refused) and ev.status is Status.DENIED and ev.reason == "bad ephemeral key"
    assert p.vehicle.key_id is None and p.vehicle.state is not VState.SECURE
    with pytest.raises(Exception):  # noqa: B017 - any ChallengeError: the signed attempt spent it
        p.vehicle.challenges.check(challenge, p.now, dev.key_id)


# ------------------------------------------------------------------ pairing out of turn


def _pairing_until_reply(p: Pair, code: str = "42123456") -> bytes:
    """Run pairing up to the vehicle's PAIR_REPLY (not delivered); return the pairing challenge."""
    p.subscribe()
    challenge = p.device.challenge
    p.device.start_pairing(code, int(code[:2]))
    [ev] = p.flush_up()
    assert isinstance(ev, PairingRequested)
    p.vehicle.accept_pairing(pairing_prs(code, vehicle_id=p.vehicle.vehicle_id, slot=int(code[:2])))
    return challenge


def test_pair_confirm_without_a_pairing_is_refused_as_malformed() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.vehicle.data_to_send()
    forged = PairConfirm(challenge=p.device.challenge, confirm=bytes(32), sealed=bytes(16))
    with pytest.raises(RemoteProtocolError, match="without a pairing"):
        _send(p, forged)
    assert p.vehicle.state is VState.ERROR
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED


def test_pair_confirm_for_another_pairing_is_refused_as_malformed() -> None:
    p = make_pair(enrolled=False)
    challenge = _pairing_until_reply(p)
    p.vehicle.data_to_send()
    other = bytes(b ^ 0x01 for b in challenge)
    with pytest.raises(RemoteProtocolError, match="another pairing"):
        _send(p, PairConfirm(challenge=other, confirm=bytes(32), sealed=bytes(16)))
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED and p.vehicle.state is VState.ERROR


def test_wrong_code_refusal_names_the_slot_and_routes_to_the_pairing_challenge() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    challenge = p.device.challenge
    p.device.start_pairing("42123456", 42)
    p.flush_up()
    p.vehicle.accept_pairing(pairing_prs("42999999", vehicle_id=p.vehicle.vehicle_id, slot=42))  # another code
    with pytest.raises(AuthenticationError):
        p.flush_down()  # the device sees the vehicle's confirmation fail first
    p.vehicle.data_to_send()
    confirm = PairConfirm(challenge=challenge, confirm=bytes(32), sealed=bytes(16))
    [ev] = _send(p, confirm)
    assert isinstance(ev, PairingFailed) and ev.slot == 42 and ev.reason == "wrong code"
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.PAIRING_REFUSED and err.challenge == challenge
    assert p.vehicle.state is VState.CLOSED


def test_pair_confirm_with_a_tampered_sealed_key_is_refused_with_the_pairing_challenge() -> None:
    p = make_pair(enrolled=False)
    challenge = _pairing_until_reply(p)
    p.flush_down()
    raw = b"".join(ch[3:] if ch[0] & 0x80 else ch[1:] for ch in p.device.data_to_send())
    honest = decode(raw)
    assert isinstance(honest, PairConfirm)
    sealed = honest.sealed[:-1] + bytes((honest.sealed[-1] ^ 1,))  # the confirmation MAC still verifies
    with pytest.raises(AuthenticationError):
        _send(p, PairConfirm(challenge=honest.challenge, confirm=honest.confirm, sealed=sealed))
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.PAIRING_REFUSED and err.challenge == challenge
    assert p.vehicle.state is VState.ERROR and not any(
        isinstance(e, CommandRequested) for e in p.vehicle_events)


def test_pair_start_on_an_unknown_challenge_is_refused_with_that_challenge() -> None:
    from protocol._codec import PairStart

    p = make_pair(enrolled=False)
    p.subscribe()
    p.vehicle.data_to_send()
    never_issued = bytes(range(CHALLENGE_LEN))
    [ev] = _send(p, PairStart(slot=42, challenge=never_issued, share=bytes(32)))
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID and ev.key_id is None
    assert ev.reason.startswith("pairing challenge")
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.CHALLENGE_INVALID and err.challenge == never_issued


# ------------------------------------------------------------------ shedding under admission control


def test_shed_with_nothing_queued_does_nothing() -> None:
    p = make_pair()
    p.subscribe()
    p.vehicle.data_to_send()
    assert p.vehicle.shed() is False
    assert p.vehicle.data_to_send() == []


def test_shed_command_is_answered_busy_with_its_challenge_and_never_verified() -> None:
    p = make_pair()
    p.subscribe()
    p.vehicle.data_to_send()
    challenge = p.device.challenge
    p.device.send_command(Command.UNLOCK)
    for chunk in p.device.data_to_send():
        p.vehicle.receive_data(chunk, p.now)
    assert p.vehicle.queued == 1
    assert p.vehicle.shed() is True
    assert p.vehicle.queued == 0 and p.vehicle.next_event(p.now) is None
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.BUSY and err.challenge == challenge
    p.vehicle.challenges.check(challenge, p.now, p.device.device.key_id)  # unspent: no crypto ran


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\xfd",  # not a message at all
    SecureRequest(session_id=bytes(SESSION_ID_LEN), counter=1, ciphertext=bytes(16)).encode(),  # no challenge
])
def test_shed_message_without_a_challenge_is_dropped_silently(raw: bytes) -> None:
    p = make_pair()
    p.subscribe()
    p.vehicle.data_to_send()
    for chunk in split(raw, 20):
        p.vehicle.receive_data(chunk, p.now)
    assert p.vehicle.shed() is True
    assert p.vehicle.queued == 0
    assert p.vehicle.data_to_send() == []  # nothing to route an answer to, so no answer


def test_shed_keeps_the_session_usable_for_the_next_honest_command() -> None:
    p = make_pair()
    p.subscribe()
    forged = CommandMessage(b"\xde\xad\xbe\xef", p.device.challenge, Command.UNLOCK, b"", bytes(64))
    for chunk in split(forged.encode(), 20):
        p.vehicle.receive_data(chunk, p.now)
    assert p.vehicle.shed(Status.BUSY)
    p.vehicle.data_to_send()
    assert p.command(Command.UNLOCK).status is Status.OK


# ------------------------------------------------------------------ more refusals that must fail closed, not crash


def test_fast_command_inside_a_secure_session_is_refused_as_malformed() -> None:
    p = make_pair()
    _open_session(p)
    p.vehicle.data_to_send()
    forged = CommandMessage(p.device.device.key_id, bytes(CHALLENGE_LEN), Command.UNLOCK, b"", bytes(64))
    with pytest.raises(RemoteProtocolError, match="inside a secure session"):
        _send(p, forged)
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED and p.vehicle.state is VState.ERROR


def test_a_vehicle_to_device_message_sent_to_the_vehicle_is_malformed() -> None:
    p = make_pair()
    p.subscribe()
    p.vehicle.data_to_send()
    with pytest.raises(RemoteProtocolError, match="not for the vehicle"):
        _send(p, Error(status=Status.DENIED))
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.MALFORMED and p.vehicle.state is VState.ERROR


def test_a_refusal_names_the_key_it_refused_for_the_audit_log() -> None:
    p = make_pair()
    p.subscribe()
    kid = p.device.device.key_id
    [ev] = _send(p, CommandMessage(kid, p.device.challenge, Command.UNLOCK, b"", b"\x01" * 64))
    assert isinstance(ev, Refused) and ev.status is Status.DENIED
    assert ev.key_id == kid and ev.reason == "bad signature"  # enrolled key, wrong signature: said as such


def test_an_invalid_pake_share_fails_with_its_slot_and_routes_to_the_pairing_challenge() -> None:
    from protocol._codec import PairStart

    p = make_pair(enrolled=False)
    p.subscribe()
    challenge = p.device.challenge
    p.vehicle.data_to_send()
    [ev] = _send(p, PairStart(slot=42, challenge=challenge, share=bytes(32)))
    assert isinstance(ev, PairingRequested)
    p.vehicle.accept_pairing(pairing_prs("42123456", vehicle_id=p.vehicle.vehicle_id, slot=42))
    failed = p.vehicle.next_event(p.now)
    assert isinstance(failed, PairingFailed) and failed.slot == 42 and failed.reason == "invalid PAKE share"
    [err] = _vehicle_messages(p)
    assert isinstance(err, Error) and err.status == Status.PAIRING_REFUSED and err.challenge == challenge
