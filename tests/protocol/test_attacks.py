"""Attacks the protocol must stop, each next to the honest case it lets through (THREAT_MODEL.md)."""

from __future__ import annotations

import pytest

from protocol import (
    AuthenticationError,
    Command,
    CommandFailed,
    CommandRequested,
    DeviceSession,
    DState,
    FramingError,
    KeyPair,
    Paired,
    PairingFailed,
    Refused,
    RemoteProtocolError,
    Status,
    VehicleError,
    VState,
)
from protocol import _crypto as c
from protocol._codec import Result, decode

from .helpers import OTHER_SCALAR, fixed_key, make_pair, run_pairing


def _replay(p, chunks: list[bytes]) -> list:
    for ch in chunks:
        p.vehicle.receive_data(ch, p.now)
    out = []
    while (ev := p.vehicle.next_event(p.now)) is not None:
        out.append(ev)
    return out


def _recorded_unlock():
    p = make_pair()
    p.subscribe()
    p.command(Command.UNLOCK)
    return p


def test_honest_unlock_goes_through() -> None:
    p = _recorded_unlock()
    assert any(isinstance(e, CommandRequested) and e.command is Command.UNLOCK for e in p.vehicle_events)


def test_rejects_replayed_unlock_in_same_session() -> None:
    p = _recorded_unlock()
    [ev] = _replay(p, p.uplink)
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID


def test_rejects_replayed_unlock_in_new_session() -> None:
    p = _recorded_unlock()
    fresh = make_pair(rng_seed=b"restarted")  # a new connection, even a restarted vehicle: new challenges
    fresh.subscribe()
    [ev] = _replay(fresh, p.uplink)
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID


def test_rejects_expired_challenge() -> None:
    p = make_pair()
    p.subscribe()
    p.now += 5.01
    p.device.send_command(Command.UNLOCK)
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID and ev.reason == "expired"
    [res] = p.flush_down()
    assert res.status is Status.CHALLENGE_INVALID
    with pytest.raises(CommandFailed) as info:
        res.raise_for_status()
    assert info.value.temporary and not info.value.may_have_succeeded


def test_challenge_just_inside_ttl_is_accepted() -> None:
    p = make_pair()
    p.subscribe()
    p.now += 4.99
    assert p.command(Command.UNLOCK).status is Status.OK


def test_rejects_wrong_device_key() -> None:
    p = make_pair()
    p.subscribe()
    impostor = DeviceSession(fixed_key(OTHER_SCALAR), vehicle_public_key=p.vehicle.identity.public_bytes)
    p.device = impostor
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.DENIED


def test_unknown_key_and_bad_signature_look_the_same_on_the_wire() -> None:
    unknown = make_pair(device=fixed_key(OTHER_SCALAR), enrolled=False)
    unknown.device = DeviceSession(fixed_key(OTHER_SCALAR), vehicle_public_key=unknown.vehicle.identity.public_bytes)
    unknown.subscribe()
    unknown.device.send_command(Command.UNLOCK)
    [a] = unknown.flush_up()
    forged = make_pair()
    forged.subscribe()
    forged.device.send_command(Command.UNLOCK)
    chunks = forged.device.data_to_send()
    chunks[-1] = chunks[-1][:-1] + bytes([chunks[-1][-1] ^ 1])  # break the signature
    [b] = _replay(forged, chunks)
    assert a.status is b.status is Status.DENIED
    ra = decode_result(unknown.vehicle.data_to_send())
    rb = decode_result(forged.vehicle.data_to_send())
    assert ra.status == rb.status and len(ra.encode()) == len(rb.encode())


def decode_result(chunks: list[bytes]) -> Result:
    raw = b"".join(ch[3:] if i == 0 else ch[1:] for i, ch in enumerate(chunks))
    msg = decode(raw)
    assert isinstance(msg, Result)
    return msg


def test_rejects_message_for_another_vehicle() -> None:
    p = make_pair()
    other = make_pair(vehicle=fixed_key(OTHER_SCALAR))
    other.subscribe()
    p.subscribe()
    # The device signs for its own vehicle; delivered to another vehicle with the same key enrolled.
    p.device.challenge = other.device.challenge  # even with the other vehicle's live challenge
    p.device.send_command(Command.UNLOCK)
    [ev] = _replay(other, p.device.data_to_send())
    assert isinstance(ev, Refused) and ev.status is Status.DENIED


def test_device_rejects_challenge_from_other_vehicle() -> None:
    p = make_pair()
    other = make_pair(vehicle=fixed_key(OTHER_SCALAR))
    other.vehicle.names_itself = lambda: True  # a pairing code is pending there: its challenges carry its id
    other.vehicle.push_challenge(p.now)
    for ch in other.vehicle.data_to_send():
        p.device.receive_data(ch, p.now)
    ev = p.device.next_event(p.now)
    assert ev is not None and not ev.ours and p.device.state is DState.WAIT_CHALLENGE


def test_another_vehicles_unnamed_challenge_gets_no_answer_past_the_pinned_key() -> None:
    # No code pending: the other car's challenge names nobody (PROTOCOL.md §3.11), so the device takes it; the
    # command it signs names our vehicle id and the other car's answer does not verify with our pinned key.
    p = make_pair()
    other = make_pair(vehicle=fixed_key(OTHER_SCALAR))
    other.vehicle.push_challenge(p.now)
    for ch in other.vehicle.data_to_send():
        p.device.receive_data(ch, p.now)
    ev = p.device.next_event(p.now)
    assert ev is not None and ev.ours and ev.vehicle_id is None
    p.device.send_command(Command.UNLOCK)
    for ch in p.device.data_to_send():
        other.vehicle.receive_data(ch, p.now)
    refused = other.vehicle.next_event(p.now)
    assert isinstance(refused, Refused)  # the other car verified nothing: the command was signed for ours
    for ch in other.vehicle.data_to_send():
        p.device.receive_data(ch, p.now)
    assert p.device.next_event(p.now) is None and p.device.ignored_forgeries == 1


def _deliver(p, message) -> list:
    from protocol import split

    for ch in split(message.encode(), 20):
        p.device.receive_data(ch, p.now)
    out = []
    while (ev := p.device.next_event(p.now)) is not None:
        out.append(ev)
    return out


def test_ignores_result_forged_for_the_device_then_accepts_the_genuine_one() -> None:
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    p.flush_up()
    p.vehicle.respond(Status.OK)
    genuine_chunks = p.vehicle.data_to_send()
    genuine = decode_result(genuine_chunks)
    # An attacker who is not the vehicle signs "DENIED" with its own key to hide the unlock.
    forger = fixed_key(OTHER_SCALAR)
    sig = forger.sign(c.result_transcript(p.vehicle.vehicle_id, genuine.key_id, genuine.challenge, genuine.command,
                                          b"", Status.DENIED, b"", p.device._request))
    assert _deliver(p, Result(genuine.key_id, genuine.challenge, genuine.command, Status.DENIED, b"", sig)) == []
    assert p.device.ignored_forgeries == 1 and p.device.state is DState.AWAIT_RESULT
    for ch in genuine_chunks:
        p.device.receive_data(ch, p.now)
    assert p.device.next_event(p.now).status is Status.OK


def test_ignores_result_with_status_changed() -> None:
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    p.flush_up()
    p.vehicle.respond(Status.DENIED)
    genuine = decode_result(p.vehicle.data_to_send())
    flipped = Result(genuine.key_id, genuine.challenge, genuine.command, Status.OK, b"", genuine.signature)
    assert _deliver(p, flipped) == [] and p.device.ignored_forgeries == 1


def test_signed_refusal_of_an_injected_request_cannot_hide_the_real_unlock() -> None:
    """An attacker races the device with a bogus COMMAND using its challenge and key id: the vehicle's signed
    DENIED answers the attacker's request, not the device's, which still gets its genuine OK."""
    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    honest = p.device.data_to_send()
    from protocol import split
    from protocol._codec import CommandMessage

    real = decode(b"".join(ch[3:] if i == 0 else ch[1:] for i, ch in enumerate(honest)))
    bogus = CommandMessage(real.key_id, real.challenge, real.command, b"", bytes(64))
    [refused] = _replay(p, split(bogus.encode(), 20))
    assert isinstance(refused, Refused) and refused.status is Status.DENIED
    for ch in p.vehicle.data_to_send():  # the signed DENIED reaches the device too (bless broadcasts)
        p.device.receive_data(ch, p.now)
    assert p.device.next_event(p.now) is None and p.device.state is DState.AWAIT_RESULT
    [ev] = _replay(p, honest)  # the genuine request is still good: its challenge was not spent by the bogus one
    assert isinstance(ev, CommandRequested)
    p.vehicle.respond(Status.OK)
    [res] = p.flush_down()
    assert res.status is Status.OK


def test_two_keys_may_share_a_broadcast_challenge_but_not_replay_it() -> None:
    p = make_pair()
    other = fixed_key(OTHER_SCALAR)
    p.keys[other.key_id] = other
    p.subscribe()
    second = DeviceSession(other, vehicle_public_key=p.vehicle.identity.public_bytes)
    for ch in p.downlink:  # both centrals heard the same pushed challenge
        second.receive_data(ch, p.now)
    second.next_event(p.now)
    second.send_command(Command.UNLOCK)
    second_chunks = second.data_to_send()
    assert p.command(Command.UNLOCK).status is Status.OK
    [ev] = _replay(p, second_chunks)
    assert isinstance(ev, CommandRequested) and ev.key_id == other.key_id
    p.vehicle.respond(Status.OK)
    p.vehicle.data_to_send()
    [again] = _replay(p, second_chunks)
    assert isinstance(again, Refused) and again.status is Status.CHALLENGE_INVALID


def test_unknown_secure_command_is_echoed_as_not_supported() -> None:
    p = make_pair()
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    p.device.send_secure(0x7E)  # a command from a newer protocol revision
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.NOT_SUPPORTED
    [res] = p.flush_down()
    assert res.status is Status.NOT_SUPPORTED and p.device.state is DState.SECURE


def test_invalid_pake_share_fails_like_a_wrong_code() -> None:
    from protocol import pairing_prs
    from protocol._codec import PairStart

    p = make_pair(enrolled=False)
    p.subscribe()
    challenge = p.device.challenge
    from protocol import split

    [ev] = _replay(p, split(PairStart(slot=42, challenge=challenge, share=bytes(32)).encode(), 20))
    p.vehicle.accept_pairing(pairing_prs("42123456", vehicle_id=p.vehicle.vehicle_id, slot=42))
    failed = p.vehicle.next_event(p.now)
    assert isinstance(failed, PairingFailed) and p.vehicle.state is VState.CLOSED


def test_every_bit_flip_of_a_recorded_unlock_is_rejected() -> None:
    """Flip each bit of each uplink chunk of a recorded unlock: the vehicle never acts on it."""
    base = make_pair()
    base.subscribe()
    base.device.send_command(Command.UNLOCK)
    chunks = base.device.data_to_send()
    flips = 0
    for ci, chunk in enumerate(chunks):
        for bit in range(len(chunk) * 8):
            p = make_pair()  # same deterministic rng: the same challenge is outstanding
            p.subscribe()
            bad = bytearray(chunk)
            bad[bit // 8] ^= 1 << (bit % 8)
            mutated = [*chunks[:ci], bytes(bad), *chunks[ci + 1 :]]
            acted = False
            try:
                for ch in mutated:
                    try:
                        p.vehicle.receive_data(ch, p.now)
                    except FramingError:
                        pass
                while (ev := p.vehicle.next_event(p.now)) is not None:
                    acted |= isinstance(ev, CommandRequested)
            except RemoteProtocolError:
                pass
            assert not acted, f"chunk {ci} bit {bit} flipped was accepted"
            flips += 1
    assert flips == sum(len(ch) for ch in chunks) * 8
    # And the unmodified recording was valid for that challenge.
    p = make_pair()
    p.subscribe()
    assert any(isinstance(e, CommandRequested) for e in _replay(p, chunks))


def test_every_bit_flip_of_the_vehicle_result_is_rejected_by_the_device() -> None:
    base = make_pair()
    base.subscribe()
    base.device.send_command(Command.UNLOCK)
    base.flush_up()
    base.vehicle.respond(Status.OK)
    chunks = base.vehicle.data_to_send()
    for ci, chunk in enumerate(chunks):
        for bit in range(len(chunk) * 8):
            p = make_pair()
            p.subscribe()
            p.device.send_command(Command.UNLOCK)
            p.device.data_to_send()
            bad = bytearray(chunk)
            bad[bit // 8] ^= 1 << (bit % 8)
            accepted = False
            try:
                for ch in [*chunks[:ci], bytes(bad), *chunks[ci + 1 :]]:
                    try:
                        p.device.receive_data(ch, p.now)
                    except FramingError:
                        pass
                while (ev := p.device.next_event(p.now)) is not None:
                    accepted |= getattr(ev, "status", None) is Status.OK
            except RemoteProtocolError:
                pass
            assert not accepted, f"result chunk {ci} bit {bit} flipped was accepted"


def test_truncation_at_every_length_is_rejected() -> None:
    base = make_pair(chunk_size=244)
    base.subscribe()
    base.device.send_command(Command.UNLOCK)
    [chunk] = base.device.data_to_send()
    for n in range(len(chunk)):
        p = make_pair()
        p.subscribe()
        try:
            p.vehicle.receive_data(chunk[:n], p.now)
        except FramingError:
            continue
        assert p.vehicle.next_event(p.now) is None  # incomplete: waits, never acts
        p.now += 6  # the partial message expires
        with pytest.raises(FramingError):
            p.vehicle.receive_data(b"\x01" + chunk[n:], p.now)


def test_truncated_message_with_fixed_length_header_is_malformed() -> None:
    base = make_pair(chunk_size=244)
    base.subscribe()
    base.device.send_command(Command.UNLOCK)
    [chunk] = base.device.data_to_send()
    message = chunk[3:]
    for n in range(2, len(message)):
        p = make_pair()
        p.subscribe()
        p.vehicle.receive_data(bytes((0x80,)) + n.to_bytes(2, "big") + message[:n], p.now)
        with pytest.raises(RemoteProtocolError):
            p.vehicle.next_event(p.now)
        assert p.vehicle.state is VState.ERROR


def test_revoked_key_is_refused_like_an_unknown_one() -> None:
    p = make_pair()
    p.subscribe()
    assert p.command(Command.UNLOCK).status is Status.OK
    p.keys.clear()  # revoked: the lookup no longer returns it
    p.device.request_challenge()
    p.flush_up()
    p.flush_down()
    p.device.send_command(Command.UNLOCK)
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.DENIED


def test_secure_session_rejects_replayed_request() -> None:
    p = make_pair()
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    p.device.send_secure(Command.LIST_KEYS)
    before = len(p.uplink)
    p.flush_up()
    recorded = p.uplink[before:]
    p.vehicle.respond(Status.OK, b"")
    p.flush_down()
    with pytest.raises(RemoteProtocolError):
        _replay(p, recorded)
    assert p.vehicle.state is VState.ERROR


def test_secure_session_rejects_tampered_ciphertext() -> None:
    p = make_pair(chunk_size=244)
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    p.device.send_secure(Command.REVOKE_KEY, b"\x00\x00\x00\x00\x00")
    [chunk] = p.device.data_to_send()
    bad = chunk[:-1] + bytes([chunk[-1] ^ 0x80])
    with pytest.raises(AuthenticationError):
        _replay(p, [bad])


def test_wrong_pairing_code_fails_on_both_sides() -> None:
    p = make_pair(enrolled=False)
    with pytest.raises(AuthenticationError, match="wrong pairing code"):
        run_pairing(p, "42123456", vehicle_code="42123457")
    assert p.device.state is DState.ERROR
    assert not p.keys


def test_vehicle_sees_wrong_code_when_device_lies_about_confirmation() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.device.start_pairing("42123456", 42)
    p.flush_up()
    from protocol import pairing_prs
    p.vehicle.accept_pairing(pairing_prs("42123456", vehicle_id=p.vehicle.vehicle_id, slot=42))
    p.flush_down()
    chunks = p.device.data_to_send()
    raw = bytearray(b"".join(ch[3:] if i == 0 else ch[1:] for i, ch in enumerate(chunks)))
    raw[22] ^= 1  # inside the CONFIRM tag (after version, type, challenge TLV, confirm tag+len)
    from protocol import split
    events = _replay(p, split(bytes(raw), 20))
    assert isinstance(events[0], PairingFailed) and p.vehicle.state is VState.CLOSED


def test_pairing_code_reused_is_refused_by_the_vehicle_application() -> None:
    """The slot is consumed after success: the vehicle app refuses a second PAIR_START for it."""
    p = make_pair(enrolled=False)
    events = run_pairing(p, "42123456")
    assert any(isinstance(e, Paired) for e in events)
    again = make_pair(enrolled=False, device=KeyPair.generate())
    again.subscribe()
    again.device.start_pairing("42123456", 42)
    again.flush_up()
    again.vehicle.refuse_pairing()  # what key_server does once the slot is gone
    [err] = again.flush_down()
    assert isinstance(err, VehicleError) and err.status is Status.PAIRING_REFUSED
    assert again.device.state is DState.CLOSED


def test_pair_start_with_stale_challenge_is_refused() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.now += 10
    p.device.start_pairing("42123456", 42)
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID


def test_garbage_chunk_then_honest_unlock() -> None:
    p = make_pair()
    p.subscribe()
    for junk in (b"", b"\x05garbage", b"\x80\xff\xff", b"\x80\x00"):
        with pytest.raises(FramingError):
            p.vehicle.receive_data(junk, p.now)
    assert p.command(Command.UNLOCK).status is Status.OK


# ------------------------------------------------------------------ issue 10: refuse uniformly, sign nothing early


def _raw(chunks: list[bytes]):
    return decode(b"".join(ch[3:] if i == 0 else ch[1:] for i, ch in enumerate(chunks)))


def _send_forged(p, message) -> list:
    from protocol import split

    return _replay(p, split(message.encode(), 20))


def test_rejects_unknown_command_on_a_never_issued_challenge_with_the_uniform_refusal() -> None:
    """An unknown code, a made-up challenge and 64 chosen argument bytes get CHALLENGE_INVALID, never NOT_SUPPORTED."""
    from protocol._codec import CommandMessage

    p = make_pair()
    p.subscribe()
    chosen = bytes(range(64))
    forged = CommandMessage(p.device.device.key_id, bytes(range(16)), 0x7F, chosen, bytes(64))
    [ev] = _send_forged(p, forged)
    assert isinstance(ev, Refused) and ev.status is Status.CHALLENGE_INVALID
    answer = decode_result(p.vehicle.data_to_send())
    assert answer.status == Status.CHALLENGE_INVALID
    # Exactly what a fast command gets under the same made-up challenge: the code changes nothing.
    [same] = _send_forged(p, CommandMessage(forged.key_id, forged.challenge, Command.UNLOCK, chosen, bytes(64)))
    assert same.status is Status.CHALLENGE_INVALID
    assert len(decode_result(p.vehicle.data_to_send()).encode()) == len(answer.encode())
    assert p.command(Command.UNLOCK).status is Status.OK  # the honest device is unaffected


def test_rejects_unknown_command_with_a_bad_signature_as_denied_and_keeps_the_challenge() -> None:
    """A live challenge, an unknown code and a bogus signature get DENIED, and do not spend the challenge."""
    from protocol._codec import CommandMessage

    p = make_pair()
    p.subscribe()
    for kid in (p.device.device.key_id, b"\xde\xad\xbe\xef"):  # enrolled key, then unknown key
        [ev] = _send_forged(p, CommandMessage(kid, p.device.challenge, 0x7F, bytes(64), bytes(64)))
        assert isinstance(ev, Refused) and ev.status is Status.DENIED
        assert decode_result(p.vehicle.data_to_send()).status == Status.DENIED
    assert p.command(Command.UNLOCK).status is Status.OK


def test_authenticated_unknown_command_gets_a_signed_not_supported() -> None:
    """The honest case: an enrolled key's verified unknown code is answered NOT_SUPPORTED, and spends its challenge."""
    p = make_pair()
    p.subscribe()
    p.device.send_command(0x7F)  # a code from a newer protocol revision
    recorded = p.device.data_to_send()
    [ev] = _replay(p, recorded)
    assert isinstance(ev, Refused) and ev.status is Status.NOT_SUPPORTED and ev.key_id == p.device.device.key_id
    [res] = p.flush_down()
    assert res.command == 0x7F and res.status is Status.NOT_SUPPORTED and p.device.ignored_forgeries == 0
    [again] = _replay(p, recorded)
    assert again.status is Status.CHALLENGE_INVALID


@pytest.mark.parametrize("cmd", [Command.LIST_KEYS, Command.REVOKE_KEY, Command.READ_AUDIT])
def test_rejects_secure_only_command_on_the_fast_path(cmd: Command) -> None:
    """An owner's correctly signed admin command in clear is NOT_SUPPORTED: key lists never travel unencrypted."""
    p = make_pair()
    p.subscribe()
    p.device.send_command(cmd)
    [ev] = p.flush_up()
    assert isinstance(ev, Refused) and ev.status is Status.NOT_SUPPORTED
    [res] = p.flush_down()
    assert res.status is Status.NOT_SUPPORTED and res.data == b""
    # The honest case: the same command inside a confidential session reaches the application.
    p.device.request_challenge()
    p.flush_up()
    p.flush_down()
    p.device.open_session()
    p.flush_up()
    p.flush_down()
    p.device.send_secure(cmd)
    [req] = p.flush_up()
    assert isinstance(req, CommandRequested) and req.command is cmd and req.secure


def test_rejects_arguments_added_to_a_signed_command() -> None:
    """Arguments appended to a recorded argument-less command break its signature: the vehicle signs args in."""
    from protocol._codec import CommandMessage

    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    real = _raw(p.device.data_to_send())
    [ev] = _send_forged(p, CommandMessage(real.key_id, real.challenge, real.command, b"\x01", real.signature))
    assert isinstance(ev, Refused) and ev.status is Status.DENIED
    [ok] = _send_forged(p, real)  # the honest request, untouched, still goes through on the same challenge
    assert isinstance(ok, CommandRequested) and ok.args == b""


def test_rejects_arguments_changed_in_a_signed_command() -> None:
    """Changed arguments fail verification; the honest, signed arguments reach the application unchanged."""
    from protocol._codec import CommandMessage

    p = make_pair()
    p.subscribe()
    p.device.send_command(Command.UNLOCK, b"\x00\x01")
    real = _raw(p.device.data_to_send())
    [ev] = _send_forged(p, CommandMessage(real.key_id, real.challenge, real.command, b"\x00\x02", real.signature))
    assert isinstance(ev, Refused) and ev.status is Status.DENIED
    [ok] = _send_forged(p, real)
    assert isinstance(ok, CommandRequested) and ok.args == b"\x00\x01"


def test_unknown_key_costs_the_same_verification_as_a_bad_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoy: an unknown key id runs one ECDSA verification, like a known key with a bad signature (§8.4)."""
    import protocol._vehicle as vehicle_module
    from protocol._codec import CommandMessage

    calls: list[bytes] = []
    real_verify = vehicle_module.verify

    def counting_verify(public, signature: bytes, data: bytes) -> None:
        calls.append(data)
        real_verify(public, signature, data)

    monkeypatch.setattr(vehicle_module, "verify", counting_verify)
    p = make_pair()
    p.subscribe()
    counts = []
    well_formed_but_wrong = b"\x01" * 64  # r and s in range: the ECDSA check itself runs
    for kid in (b"\xde\xad\xbe\xef", p.device.device.key_id):  # unknown key, then enrolled key with a bad signature
        calls.clear()
        [ev] = _send_forged(p, CommandMessage(kid, p.device.challenge, Command.UNLOCK, b"", well_formed_but_wrong))
        assert isinstance(ev, Refused) and ev.status is Status.DENIED
        counts.append(len(calls))
    assert counts == [1, 1]
    calls.clear()
    assert p.command(Command.UNLOCK).status is Status.OK and len(calls) == 1  # the honest case: one verification


def test_rejects_read_audit_after_seq_beyond_a_signed_64_bit_integer() -> None:
    """after_seq above 2^63-1 is a DecodeError (BAD_REQUEST), never handed to a store that cannot hold it."""
    from protocol import DecodeError, parse_read_audit_args, read_audit_args

    for bad in ((1 << 63), (1 << 64) - 1):
        with pytest.raises(DecodeError):
            parse_read_audit_args(read_audit_args(bad, 20))
    assert parse_read_audit_args(read_audit_args((1 << 63) - 1, 255)) == ((1 << 63) - 1, 255)  # the largest honest one
