"""SHARE_PRESENT, REVOCATIONS and WATCH through a vehicle and a device joined by a fake link (PROTOCOL.md §12.3,
§9.6, §7): the honest flows, and answers and pushes that the sessions refuse."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from protocol import (
    Command,
    CommandRequested,
    CommandResult,
    DecodeError,
    DoorState,
    DState,
    LocalProtocolError,
    LockState,
    RemoteProtocolError,
    RevocationList,
    RevocationsAnswered,
    RevocationsOffered,
    Role,
    SessionReady,
    ShareAnswered,
    ShareCertificate,
    ShareOffered,
    StateChanged,
    Status,
    StatusReport,
    VState,
    decode,
    split,
)
from protocol import _crypto as c
from protocol._codec import RevocationsAnswer, ShareAnswer, SharePresent

from .helpers import DEVICE_SCALAR, OTHER_SCALAR, VEHICLE_SCALAR, Pair, fixed_key, make_pair

VEHICLE = fixed_key(VEHICLE_SCALAR)
OWNER = fixed_key(DEVICE_SCALAR)
WATCH = fixed_key(OTHER_SCALAR)  # the owner's watch, set up by share
REPORT = StatusReport(LockState.LOCKED, DoorState.CLOSED, False)
CHANGED = StatusReport(LockState.UNLOCKED, DoorState.OPEN, False)


def share(serial: bytes = b"\x00" * 8, vehicle_id: bytes = VEHICLE.key_id) -> ShareCertificate:
    return ShareCertificate.issue(OWNER, vehicle_id, WATCH.public_bytes, Role.DRIVER, "watch", 1_000,
                                  serial=serial)


def rlist(version: int = 1) -> RevocationList:
    return RevocationList.issue(OWNER, VEHICLE.key_id, version, 5, [(WATCH.key_id, 0)])


def watch_pair() -> Pair:
    """The watch knows the vehicle (from the share) but is not yet in the vehicle's store."""
    p = make_pair(device=WATCH, rng_seed=b"watch")
    p.keys.clear()
    return p


def secure_pair() -> Pair:
    p = make_pair(device=OWNER, rng_seed=b"owner")
    p.subscribe()
    p.device.open_session()
    p.flush_up()
    [ready] = p.flush_down()
    assert isinstance(ready, SessionReady)
    return p


def deliver(p: Pair, chunks: list[bytes]) -> list[object]:
    for ch in chunks:
        p.device.receive_data(ch, p.now)
    events = []
    while (ev := p.device.next_event(p.now)) is not None:
        events.append(ev)
    return events


# ------------------------------------------------------------------ honest flows


def test_share_enrolls_then_the_same_challenge_unlocks() -> None:
    p = watch_pair()
    p.subscribe()
    cert = share()
    p.device.present_share(cert.encode())
    assert p.device.state is DState.SHARE_SENT
    [offered] = p.flush_up()
    assert isinstance(offered, ShareOffered) and offered.certificate == cert and offered.raw == cert.encode()
    assert p.vehicle.state is VState.SHARE_AWAIT_APP
    p.keys[WATCH.key_id] = WATCH  # the application enrolls the subject key
    p.vehicle.answer_share(Status.OK)
    assert p.vehicle.state is VState.READY
    [answered] = p.flush_down()
    assert answered == ShareAnswered(key_id=WATCH.key_id, status=Status.OK)
    assert p.device.state is DState.READY  # the challenge was not spent
    assert p.command(Command.UNLOCK).status is Status.OK


def test_share_present_is_one_message_with_the_certificate() -> None:
    p = watch_pair()
    p.subscribe()
    raw = share().encode()
    p.device.present_share(raw)
    sent = p.device.data_to_send()
    msg = decode(b"".join(ch[1:] for ch in sent)[2:])  # strip chunk headers and the 2-byte length
    assert msg == SharePresent(certificate=raw)


@pytest.mark.parametrize(("status", "version"), [(Status.OK, 1), (Status.NO_CHANGE, 3), (Status.DENIED, 0)])
def test_revocations_after_a_result(status: Status, version: int) -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    assert p.command(Command.UNLOCK).status is Status.OK
    assert p.device.state is DState.WAIT_CHALLENGE  # the challenge is spent: no new exchange is needed to send
    lst = rlist()
    p.device.send_revocations(lst.encode())
    [offered] = p.flush_up()
    assert isinstance(offered, RevocationsOffered) and offered.revocations == lst and offered.raw == lst.encode()
    p.vehicle.answer_revocations(status, version)
    [answered] = p.flush_down()
    assert answered == RevocationsAnswered(issuer_id=OWNER.key_id, version=version, status=status)
    assert p.device.state is DState.WAIT_CHALLENGE and p.vehicle.state is VState.READY


def test_share_and_revocations_inside_a_session_with_nothing_in_flight() -> None:
    p = secure_pair()
    p.device.present_share(share().encode())
    assert p.device.state is DState.SECURE_SHARE_SENT
    [offered] = p.flush_up()
    assert isinstance(offered, ShareOffered) and p.vehicle.state is VState.SECURE_SHARE_AWAIT_APP
    p.vehicle.answer_share(Status.NO_CHANGE)
    assert p.flush_down() == [ShareAnswered(WATCH.key_id, Status.NO_CHANGE)]
    p.device.send_revocations(rlist().encode())
    [offered] = p.flush_up()
    assert isinstance(offered, RevocationsOffered) and p.vehicle.state is VState.SECURE_REVOCATIONS_AWAIT_APP
    p.vehicle.answer_revocations(Status.OK, 1)
    assert p.flush_down() == [RevocationsAnswered(OWNER.key_id, 1, Status.OK)]
    assert p.device.state is DState.SECURE and p.vehicle.state is VState.SECURE
    p.device.send_secure(Command.STATUS)  # the session goes on
    [req] = p.flush_up()
    assert isinstance(req, CommandRequested) and req.secure


# ------------------------------------------------------------------ answers the device refuses


def _await_share() -> tuple[Pair, bytes]:
    p = watch_pair()
    p.subscribe()
    p.device.present_share(share().encode())
    p.flush_up()
    request = SharePresent(certificate=share().encode()).encode()
    return p, request


def _signed_share_answer(request: bytes, *, status: Status = Status.OK, key_id: bytes = WATCH.key_id,
                         signer: object = VEHICLE) -> bytes:
    sig = signer.sign(c.share_answer_transcript(VEHICLE.key_id, key_id, status, request))  # type: ignore[attr-defined]
    return ShareAnswer(key_id=key_id, status=status, signature=sig).encode()


def test_device_refuses_share_answer_with_a_bad_signature() -> None:
    p, request = _await_share()
    raw = bytearray(_signed_share_answer(request))
    raw[-1] ^= 1
    assert deliver(p, split(bytes(raw), 20)) == []
    assert p.device.ignored_forgeries == 1 and p.device.state is DState.SHARE_SENT
    p.vehicle.answer_share(Status.OK)  # the genuine answer still gets through
    assert p.flush_down() == [ShareAnswered(WATCH.key_id, Status.OK)]


@pytest.mark.parametrize("forgery", ["other request", "other vehicle", "status changed", "revocations label"])
def test_device_refuses_share_answer_for_another_request_or_signer(forgery: str) -> None:
    p, request = _await_share()
    other = SharePresent(certificate=share(serial=b"\x01" * 8).encode()).encode()
    if forgery == "other request":  # the vehicle's genuine answer to another certificate for the same key
        raw = _signed_share_answer(other)
    elif forgery == "other vehicle":
        raw = _signed_share_answer(request, signer=OWNER)
    elif forgery == "status changed":  # a DENIED answer re-labelled OK
        genuine = decode(_signed_share_answer(request, status=Status.DENIED))
        assert isinstance(genuine, ShareAnswer)
        denied = dataclasses.replace(genuine, status=Status.OK)
        raw = denied.encode()
    else:
        sig = VEHICLE.sign(c.transcript(c.LABEL_REVOCATIONS_ANSWER, VEHICLE.key_id, WATCH.key_id, b"\x00",
                                        hashlib.sha256(request).digest()))
        raw = ShareAnswer(key_id=WATCH.key_id, status=Status.OK, signature=sig).encode()
    assert deliver(p, split(raw, 20)) == []
    assert p.device.ignored_forgeries == 1 and p.device.state is DState.SHARE_SENT


def test_device_ignores_answers_it_is_not_waiting_for() -> None:
    p, request = _await_share()
    # An answer naming another key (another central's share) and a revocations answer: neither is ours.
    foreign = _signed_share_answer(request, key_id=OWNER.key_id)
    sig = VEHICLE.sign(c.revocations_answer_transcript(VEHICLE.key_id, OWNER.key_id, 1, Status.OK, request))
    revo = RevocationsAnswer(key_id=OWNER.key_id, status=Status.OK, version=1, signature=sig).encode()
    assert deliver(p, split(foreign, 20) + split(revo, 20)) == []
    assert p.device.state is DState.SHARE_SENT
    idle = make_pair(device=OWNER, rng_seed=b"idle")
    idle.subscribe()
    assert deliver(idle, split(_signed_share_answer(request), 20)) == []
    assert idle.device.state is DState.READY


def test_device_refuses_revocations_answer_with_a_raised_version() -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    p.device.send_revocations(rlist(version=2).encode())
    p.flush_up()
    p.vehicle.answer_revocations(Status.NO_CHANGE, 1)
    genuine = decode(b"".join(ch[1:] for ch in p.vehicle.data_to_send())[2:])
    assert isinstance(genuine, RevocationsAnswer) and genuine.version == 1
    raised = dataclasses.replace(genuine, version=2, status=Status.OK)  # "the vehicle now holds your v2"
    assert deliver(p, split(raised.encode(), 20)) == []
    assert p.device.ignored_forgeries == 1 and p.device.state is DState.REVOCATIONS_SENT
    assert deliver(p, split(genuine.encode(), 20)) == [RevocationsAnswered(OWNER.key_id, 1, Status.NO_CHANGE)]


# ------------------------------------------------------------------ what each side refuses to send or take


def test_device_presents_a_share_only_after_the_challenge_and_not_during_a_command() -> None:
    p = watch_pair()
    with pytest.raises(LocalProtocolError):
        p.device.present_share(share().encode())  # no CHALLENGE yet
    p = make_pair(device=OWNER)
    p.subscribe()
    p.device.send_command(Command.UNLOCK)
    with pytest.raises(LocalProtocolError):
        p.device.send_revocations(rlist().encode())  # a command is in flight
    assert p.device.state is DState.ERROR


def test_device_refuses_to_present_garbage_or_another_vehicles_record_and_stays_usable() -> None:
    p = make_pair(device=WATCH)
    p.subscribe()
    for call, raw in ((p.device.present_share, b"\x71\x00"), (p.device.present_share,
                                                               share(vehicle_id=b"\x00\x00\x00\x01").encode()),
                      (p.device.send_revocations, share().encode()),
                      (p.device.send_revocations, RevocationList.issue(OWNER, b"\x00\x00\x00\x01", 1, 5, [])
                       .encode())):
        with pytest.raises(LocalProtocolError):
            call(raw)
    assert p.device.state is DState.READY and p.device.data_to_send() == []


def test_device_sends_nothing_else_while_an_offer_is_in_flight() -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    p.device.present_share(share().encode())
    with pytest.raises(LocalProtocolError):
        p.device.send_command(Command.UNLOCK)


def test_vehicle_refuses_a_malformed_certificate_as_a_malformed_message() -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    for ch in split(SharePresent(certificate=b"\x71\x01\x00").encode(), 20):
        p.vehicle.receive_data(ch, p.now)
    with pytest.raises(DecodeError):
        p.vehicle.next_event(p.now)
    assert p.vehicle.state is VState.ERROR
    [err] = [decode(b"".join(ch[1:] for ch in p.vehicle.data_to_send())[2:])]
    assert err.status == Status.MALFORMED  # type: ignore[attr-defined]


def test_vehicle_takes_no_offer_during_pairing() -> None:
    p = make_pair(enrolled=False)
    p.subscribe()
    p.device.start_pairing("42123456", 42)
    p.flush_up()
    p.vehicle.accept_pairing(c.pairing_prs("42123456", vehicle_id=VEHICLE.key_id, slot=42))
    assert p.vehicle.state is VState.PAIR_WAIT_CONFIRM
    for ch in split(SharePresent(certificate=share().encode()).encode(), 20):
        p.vehicle.receive_data(ch, p.now)
    with pytest.raises(RemoteProtocolError):
        p.vehicle.next_event(p.now)
    assert p.vehicle.state is VState.ERROR


def test_vehicle_answers_only_the_offer_it_holds() -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    with pytest.raises(LocalProtocolError):
        p.vehicle.answer_share(Status.OK)  # nothing offered
    p = make_pair(device=OWNER)
    p.subscribe()
    p.device.send_revocations(rlist().encode())
    p.flush_up()
    with pytest.raises(LocalProtocolError):
        p.vehicle.answer_revocations(Status.OK, 1 << 32)  # out of range: refused before anything changes
    assert p.vehicle.state is VState.REVOCATIONS_AWAIT_APP
    with pytest.raises(LocalProtocolError):
        p.vehicle.answer_share(Status.OK)  # a list is pending, not a share
    assert p.vehicle.state is VState.ERROR


def test_vehicle_holds_the_next_message_while_an_offer_waits() -> None:
    p = make_pair(device=OWNER)
    p.subscribe()
    p.device.present_share(share().encode())
    p.flush_up()
    p.vehicle.receive_data(split(b"\x01\x01", 20)[0], p.now)  # a CHALLENGE_REQUEST behind it
    assert p.vehicle.next_event(p.now) is None and p.vehicle.queued == 1
    p.vehicle.answer_share(Status.OK)
    assert p.vehicle.next_event(p.now) is None and p.vehicle.queued == 0  # now handled (a challenge pushed)


# ------------------------------------------------------------------ WATCH


def _watching() -> Pair:
    p = secure_pair()
    p.device.send_secure(Command.WATCH)
    [req] = p.flush_up()
    assert isinstance(req, CommandRequested) and req.command is Command.WATCH and req.args == b""
    p.vehicle.respond(Status.OK, REPORT.encode())
    [res] = p.flush_down()
    assert isinstance(res, CommandResult) and res.command is Command.WATCH and res.status is Status.OK
    assert StatusReport.decode(res.data) == REPORT
    assert p.device.watching and p.vehicle.watching
    return p


def test_watch_pushes_each_change_sealed() -> None:
    p = _watching()
    for report in (CHANGED, REPORT):
        p.vehicle.push_watch(report.encode())
        assert p.flush_down() == [StateChanged(report)]
    assert p.device.state is DState.SECURE and p.vehicle.state is VState.SECURE
    assert b"\x30\x01" not in b"".join(p.downlink)  # the reports never cross in clear


def test_ordinary_requests_work_while_watching_with_a_push_in_between() -> None:
    p = _watching()
    p.device.send_secure(Command.LIST_KEYS)
    p.flush_up()
    assert p.vehicle.state is VState.SECURE_AWAIT_APP
    p.vehicle.push_watch(CHANGED.encode())  # a change while the application works on the request
    p.vehicle.respond(Status.OK, b"keys")
    events = p.flush_down()
    assert events[0] == StateChanged(CHANGED)
    assert isinstance(events[1], CommandResult) and events[1].command is Command.LIST_KEYS
    assert events[1].data == b"keys" and p.device.state is DState.SECURE


def test_push_before_watch_was_answered_ok_is_refused_locally() -> None:
    p = secure_pair()
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(CHANGED.encode())  # no WATCH at all
    p.device.send_secure(Command.WATCH)
    p.flush_up()
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(CHANGED.encode())  # WATCH asked, not yet answered
    p.vehicle.respond(Status.NOT_PERMITTED)
    [res] = p.flush_down()
    assert isinstance(res, CommandResult) and res.status is Status.NOT_PERMITTED and not p.device.watching
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(CHANGED.encode())  # refused WATCH
    assert p.vehicle.state is VState.SECURE and p.vehicle.data_to_send() == []


def test_push_outside_a_session_or_after_close_is_refused_locally() -> None:
    p = make_pair()
    p.subscribe()
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(CHANGED.encode())  # the fast path has no session to push in
    p = _watching()
    p.vehicle.close()
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(CHANGED.encode())
    assert p.vehicle.state is VState.CLOSED


def test_push_is_a_status_report_or_nothing() -> None:
    p = _watching()
    with pytest.raises(LocalProtocolError):
        p.vehicle.push_watch(b"secret")
    assert p.vehicle.data_to_send() == []


def test_device_ignores_a_push_for_a_session_it_closed() -> None:
    p = _watching()
    p.device.close()
    p.vehicle.push_watch(CHANGED.encode())
    assert p.flush_down() == [] and p.device.state is DState.CLOSED


def test_device_fails_the_session_on_a_push_it_never_asked_for() -> None:
    p = secure_pair()
    sec = p.vehicle._secure
    assert sec is not None
    p.vehicle._seal(sec, Command.WATCH, Status.OK, CHANGED.encode())  # a vehicle that pushes uninvited
    with pytest.raises(RemoteProtocolError):
        p.flush_down()
    assert p.device.state is DState.ERROR


def test_device_fails_the_session_on_a_push_that_is_not_ok_or_not_a_report() -> None:
    for status, data in ((Status.DENIED, CHANGED.encode()), (Status.OK, b"\x99")):
        p = _watching()
        sec = p.vehicle._secure
        assert sec is not None
        p.vehicle._seal(sec, Command.WATCH, status, data)
        with pytest.raises(RemoteProtocolError):
            p.flush_down()
        assert p.device.state is DState.ERROR


def test_device_refuses_a_replayed_push() -> None:
    p = _watching()
    p.vehicle.push_watch(CHANGED.encode())
    chunks = p.vehicle.data_to_send()
    assert deliver(p, chunks) == [StateChanged(CHANGED)]
    with pytest.raises(RemoteProtocolError):
        deliver(p, chunks)


def test_one_watch_per_session() -> None:
    p = _watching()
    with pytest.raises(LocalProtocolError):
        p.device.send_secure(Command.WATCH)
    assert p.device.state is DState.SECURE
