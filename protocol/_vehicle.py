"""The vehicle side of the key protocol: sans-IO, one instance per connected central.

Feed it each ATT write with `receive_data`, pull decisions with `next_event`, answer with `respond`
(or the pairing calls, `answer_share`, `answer_revocations`), push state changes to a watching session with
`push_watch`, and send what `data_to_send` returns as notifications. It performs no I/O and
reads no clock: the caller passes `now` (a monotonic time in seconds) and the key lookup.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from . import _crypto as c
from ._challenge import CHALLENGE_REASONS, PAIRING, ChallengeBook
from ._codec import (
    MAX_MESSAGE,
    SESSION_ID_LEN,
    Challenge,
    ChallengeRequest,
    CommandMessage,
    Error,
    Message,
    PairConfirm,
    PairDone,
    PairReply,
    PairStart,
    Result,
    Revocations,
    RevocationsAnswer,
    SecureRequest,
    SecureResponse,
    SessionAccept,
    SessionOpen,
    ShareAnswer,
    SharePresent,
    decode,
    secure_aad,
)
from ._errors import (
    AuthenticationError,
    ChallengeError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
    Status,
)
from ._events import (
    CommandRequested,
    Event,
    PairingFailed,
    PairingKeyReceived,
    PairingRequested,
    Refused,
    RevocationsOffered,
    SessionOpened,
    ShareOffered,
)
from ._framing import DEFAULT_PARTIAL_TIMEOUT, MAX_ATT_MTU, Reassembler, split
from ._keys import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    KeyPair,
    decode_public_key,
    encode_public_key,
    ephemeral_from_rng,
    key_id,
    verify,
)
from ._pake import CPace, PakeError
from ._payloads import TIME_WANTED_HINT, RetryAfter, StatusReport
from ._shares import MAX_LIST_VERSION, RevocationList, ShareCertificate
from ._state import VEHICLE_WAITING_FOR_APP, VehicleStateMachine, VInput, VState
from ._vocab import FAST_COMMANDS, SECURE_COMMANDS, Command, Role

KeyLookup = Callable[[bytes], ec.EllipticCurvePublicKey | None]
_SECURE_CODES = frozenset(int(x) for x in SECURE_COMMANDS)


@dataclass(slots=True)
class _Pending:
    """What the session remembers about the request the application is deciding on."""

    key_id: bytes
    command: int  # the code as received (unknown secure codes are echoed back with NOT_SUPPORTED)
    args: bytes
    challenge: bytes
    request: bytes = b""  # the encoded request message (its hash is bound into the signed RESULT)


@dataclass(slots=True)
class _Pairing:
    """State of an in-progress pairing."""

    slot: int
    challenge: bytes
    device_share: bytes
    vehicle_share: bytes = b""
    keys: c.PairingKeys | None = None
    device_public: bytes = b""


@dataclass(slots=True)
class _Secure:
    """State of an open confidential session."""

    key_id: bytes
    session_id: bytes
    keys: c.SessionKeys
    rx_counter: int = 0
    tx_counter: int = 0
    watching: bool = False  # a WATCH was answered OK in this session: push_watch may send (PROTOCOL.md §9.6)


@dataclass(slots=True)
class _Offer:
    """A SHARE_PRESENT or REVOCATIONS the application is deciding on."""

    key_id: bytes  # the share's subject key id, or the list's issuer id
    request: bytes  # the encoded message (its hash is bound into the signed answer)


class VehicleSession:
    """One central's conversation with the vehicle; see the module docstring for the calling pattern."""

    def __init__(
        self,
        identity: KeyPair,
        *,
        challenges: ChallengeBook,
        lookup_key: KeyLookup,
        rng: Callable[[int], bytes] = os.urandom,
        chunk_size: int = 20,
        max_message: int = MAX_MESSAGE,
        partial_timeout: float = DEFAULT_PARTIAL_TIMEOUT,
        names_itself: Callable[[], bool] = lambda: False,
    ) -> None:
        self.identity = identity
        # Asked at every challenge: True while a pairing code is pending, the only time a CHALLENGE carries the
        # vehicle id (a device pairing by a typed code needs it for CPace); otherwise nothing static goes on air.
        self.names_itself = names_itself
        self.vehicle_id = identity.key_id
        self.challenges = challenges
        self._lookup = lookup_key
        self._rng = rng
        self._sm = VehicleStateMachine()
        self._rx = Reassembler(max_message, partial_timeout)
        self._inbox: deque[bytes] = deque()
        self._out: list[bytes] = []
        # Notifications are chunked to what the link carries: at least 20 bytes (MTU 23), and as much
        # as the largest write the central made, since ATT MTU is the same both ways.
        self._min_chunk = chunk_size
        self._pending: _Pending | None = None
        self._raw = b""  # the message being handled, as received
        self._deferred: Event | None = None  # an event produced by an application call, returned next
        self._pairing: _Pairing | None = None
        self._secure: _Secure | None = None
        self._offer: _Offer | None = None
        # A fixed key to verify against when the key id is unknown, so an unknown key and a bad
        # signature cost the same time (no oracle, PROTOCOL.md §8.4).
        self._decoy = encode_public_key(ephemeral_from_rng(os.urandom).public_key())

    # ------------------------------------------------------------------ plumbing

    @property
    def state(self) -> VState:
        """The current state (see _state.py)."""
        return self._sm.state

    @property
    def awaiting_response(self) -> bool:
        """True while a CommandRequested has not been answered with respond()."""
        return self._pending is not None

    @property
    def pending_key_id(self) -> bytes | None:
        """The key id of the CommandRequested awaiting respond(), if any."""
        return self._pending.key_id if self._pending is not None else None

    @property
    def key_id(self) -> bytes | None:
        """The key of the open confidential session, if any."""
        return self._secure.key_id if self._secure else None

    @property
    def watching(self) -> bool:
        """True if the open session's device subscribed with WATCH (answered OK): push_watch may send to it."""
        return self._secure is not None and self._secure.watching

    @property
    def chunk_size(self) -> int:
        """Bytes per notification used for replies (never above what the largest ATT MTU, 517, carries)."""
        return min(MAX_ATT_MTU - 3, max(self._min_chunk, self._rx.largest_chunk))

    def link_mtu(self, att_mtu: int) -> None:
        """The link's ATT MTU, learnt after the session started: reply in chunks up to MTU - 3 (PROTOCOL.md §1.4)."""
        self._min_chunk = max(self._min_chunk, min(MAX_ATT_MTU, att_mtu) - 3)

    def data_to_send(self) -> list[bytes]:
        """Drain the queued notification chunks, in order."""
        out, self._out = self._out, []
        return out

    def _send(self, message: Message) -> None:
        self._out.extend(split(message.encode(), self.chunk_size))

    def push_challenge(self, now: float) -> bytes:
        """Issue a challenge and queue it (call on every subscription); returns the challenge."""
        challenge = self.challenges.issue(now)
        ttl_ms = min(int(self.challenges.ttl * 1000), 0xFFFF)
        vehicle_id = self.vehicle_id if self.names_itself() else b""
        self._send(Challenge(challenge=challenge, ttl_ms=ttl_ms, vehicle_id=vehicle_id))
        return challenge

    def receive_data(self, chunk: bytes, now: float) -> None:
        """Take one ATT write; raises FramingError for a bad chunk (the session itself stays usable)."""
        if self._sm.state in (VState.CLOSED, VState.ERROR):
            raise LocalProtocolError(f"session is {self._sm.state.value}")
        message = self._rx.feed(chunk, now)
        if message is not None:
            self._inbox.append(message)

    @property
    def queued(self) -> int:
        """Complete messages received and not yet processed."""
        return len(self._inbox)

    @property
    def ready(self) -> bool:
        """True if the next `next_event` call would take a queued message and process it (crypto included)."""
        return (self._deferred is None and bool(self._inbox)
                and self._sm.state not in VEHICLE_WAITING_FOR_APP
                and self._sm.state not in (VState.CLOSED, VState.ERROR))

    def next_key_id(self) -> bytes | None:
        """The key id the next queued message names (COMMAND, SESSION_OPEN), parsed without any crypto; else None."""
        if not self._inbox:
            return None
        try:
            msg = decode(self._inbox[0])
        except DecodeError:
            return None
        kid = msg.key_id if isinstance(msg, CommandMessage | SessionOpen) else None
        return kid

    def shed(self, status: Status = Status.BUSY) -> bool:
        """Discard the next queued message unprocessed: no crypto, no state change; False if none is queued.

        A message that names a challenge is answered with an unsigned ERROR carrying `status` and that challenge,
        which its device matches to the request it is waiting on; anything else is dropped without an answer.
        """
        if not self._inbox:
            return False
        raw = self._inbox.popleft()
        try:
            msg = decode(raw)  # parsing only: the signature is never looked at
        except DecodeError:
            return True
        challenge = getattr(msg, "challenge", b"")
        if isinstance(challenge, bytes) and challenge:
            self._send(Error(status=status, challenge=challenge))
        return True

    def close(self) -> None:
        """End the session (link lost, key revoked); idempotent."""
        if self._sm.state not in (VState.CLOSED, VState.ERROR):
            self._sm.advance(VInput.CLOSE)
        self._secure = self._pairing = self._pending = self._offer = None

    def _fail(self, status: Status, exc: RemoteProtocolError, challenge: bytes = b"") -> RemoteProtocolError:
        """Queue an ERROR, move to ERROR (fail closed) and hand back the exception to raise."""
        self._send(Error(status=status, challenge=challenge))
        self._sm.state = VState.ERROR
        self._secure = self._pairing = self._pending = self._offer = None
        return exc

    # ------------------------------------------------------------------ receiving

    def next_event(self, now: float) -> Event | None:
        """The next event, or None when waiting for data or for the application's answer.

        Raises RemoteProtocolError (after queuing an ERROR and entering ERROR) when the peer breaks the
        protocol: the caller should flush data_to_send() and drop the link.
        """
        if self._deferred is not None:
            event, self._deferred = self._deferred, None
            return event
        if self._sm.state in VEHICLE_WAITING_FOR_APP or not self._inbox:
            return None
        if self._sm.state in (VState.CLOSED, VState.ERROR):
            return None
        raw = self._inbox.popleft()
        self._raw = raw
        try:
            msg = decode(raw)
        except DecodeError as exc:
            raise self._fail(Status.MALFORMED, exc) from None
        handler = _HANDLERS.get(type(msg))
        if handler is None:  # a vehicle -> device message sent to the vehicle
            raise self._fail(Status.MALFORMED, RemoteProtocolError(f"{type(msg).__name__} is not for the vehicle"))
        return handler(self, msg, now)

    def _on_challenge_request(self, msg: Message, now: float) -> Event | None:
        self._sm.advance(VInput.CHALLENGE_REQUEST)
        self.push_challenge(now)
        return None

    def _verify_device(self, kid: bytes, challenge: bytes, signature: bytes, transcript: bytes,
                       now: float) -> str | None:
        """Check challenge then signature; return a refusal reason for the audit log, or None if valid."""
        try:
            self.challenges.check(challenge, now, kid)
        except ChallengeError as exc:
            return exc.reason
        public = self._lookup(kid)
        try:
            verify(public or decode_public_key(self._decoy), signature, transcript)
        except AuthenticationError:
            return "bad signature" if public else "unknown or revoked key"
        if public is None:  # unreachable in practice: the decoy never verifies
            return "unknown or revoked key"
        self.challenges.redeem(challenge, now, kid)
        return None

    def _signed_result(self, kid: bytes, challenge: bytes, command: int, args: bytes, status: Status,
                       request: bytes, data: bytes = b"") -> Result:
        """A RESULT bound to the exact request it answers (its hash), so it cannot answer another one."""
        sig = self.identity.sign(c.result_transcript(self.vehicle_id, kid, challenge, command, args, status, data,
                                                     request))
        return Result(key_id=kid, challenge=challenge, command=command, status=status, data=data, signature=sig)

    def _refuse(self, how: VInput, kid: bytes, challenge: bytes, command: int, args: bytes, reason: str) -> Refused:
        """Answer a request that failed its checks with a signed, uniform refusal (§8.4)."""
        self._sm.advance(how)
        status = Status.CHALLENGE_INVALID if reason in CHALLENGE_REASONS else Status.DENIED
        self._send(self._signed_result(kid, challenge, command, args, status, self._raw))
        return Refused(status, kid, reason)

    def _on_command(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, CommandMessage)
        if self._sm.state is VState.SECURE:
            raise self._fail(Status.MALFORMED, RemoteProtocolError("fast-path command inside a secure session"))
        # The code is judged only after the challenge and signature (§5.2, §8.4): an unauthenticated peer gets
        # the uniform refusal whatever code it sends, so it cannot make the vehicle sign an answer about the code.
        transcript = c.transcript(c.LABEL_COMMAND, self.vehicle_id, msg.key_id, msg.challenge,
                                  bytes((msg.command,)), msg.args)
        reason = self._verify_device(msg.key_id, msg.challenge, msg.signature, transcript, now)
        if reason is not None:
            return self._refuse(VInput.COMMAND_REFUSED, msg.key_id, msg.challenge, msg.command, msg.args, reason)
        if msg.command not in FAST_COMMANDS:
            # Authenticated (its challenge is spent): the key holder may learn the code is not a fast command.
            self._sm.advance(VInput.COMMAND_REFUSED)
            self._send(self._signed_result(msg.key_id, msg.challenge, msg.command, msg.args, Status.NOT_SUPPORTED,
                                           self._raw))
            return Refused(Status.NOT_SUPPORTED, msg.key_id, f"command 0x{msg.command:02x} not on the fast path")
        self._sm.advance(VInput.COMMAND_VERIFIED)
        cmd = Command(msg.command)
        self._pending = _Pending(msg.key_id, cmd, msg.args, msg.challenge, self._raw)
        return CommandRequested(key_id=msg.key_id, command=cmd, args=msg.args, secure=False)

    def _on_session_open(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, SessionOpen)
        transcript = c.transcript(c.LABEL_SESSION_OPEN, self.vehicle_id, msg.key_id, msg.challenge, msg.ephemeral)
        reason = self._verify_device(msg.key_id, msg.challenge, msg.signature, transcript, now)
        if reason is None:
            try:
                device_eph = decode_public_key(msg.ephemeral)
            except DecodeError:
                reason = "bad ephemeral key"
        if reason is not None:
            return self._refuse(VInput.SESSION_OPEN_REFUSED, msg.key_id, msg.challenge, Command.SESSION, msg.ephemeral,
                                reason)
        self._sm.advance(VInput.SESSION_OPEN_VERIFIED)
        vehicle_eph = ephemeral_from_rng(self._rng)
        vehicle_eph_pub = encode_public_key(vehicle_eph.public_key())
        session_id = self._rng(SESSION_ID_LEN)
        keys = c.derive_session_keys(
            c.ecdh(vehicle_eph, device_eph), challenge=msg.challenge, vehicle_id=self.vehicle_id,
            key_id=msg.key_id, device_ephemeral=msg.ephemeral, vehicle_ephemeral=vehicle_eph_pub,
            session_id=session_id)
        sig = self.identity.sign(c.transcript(c.LABEL_SESSION_ACCEPT, self.vehicle_id, msg.key_id, msg.challenge,
                                              msg.ephemeral, vehicle_eph_pub, session_id))
        self._secure = _Secure(msg.key_id, session_id, keys)
        self._send(SessionAccept(challenge=msg.challenge, ephemeral=vehicle_eph_pub, session_id=session_id,
                                 signature=sig))
        return SessionOpened(key_id=msg.key_id, session_id=session_id)

    def _on_secure_request(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, SecureRequest)
        sec = self._secure
        if sec is None or msg.session_id != sec.session_id:
            raise self._fail(Status.MALFORMED, RemoteProtocolError("secure request outside its session"))
        try:
            counter = c.update_window(sec.rx_counter, msg.counter)
            plain = c.open_sealed(sec.keys.d2v, c.DIR_D2V, msg.counter, msg.ciphertext, secure_aad(msg))
        except (ReplayError, AuthenticationError) as exc:
            raise self._fail(Status.MALFORMED, exc) from None
        sec.rx_counter = counter
        self._sm.advance(VInput.SECURE_REQUEST)
        command = plain[0] if plain else -1
        if command not in _SECURE_CODES:
            # Echo the unknown code so a newer device can tell "not supported" from a broken answer.
            self._pending = _Pending(sec.key_id, max(command, 0), b"", b"")
            self.respond(Status.NOT_SUPPORTED)
            return Refused(Status.NOT_SUPPORTED, sec.key_id, f"secure command {command} unknown")
        cmd = Command(command)
        self._pending = _Pending(sec.key_id, cmd, plain[1:], b"")
        return CommandRequested(key_id=sec.key_id, command=cmd, args=plain[1:], secure=True)

    def _on_pair_start(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, PairStart)
        try:
            self.challenges.redeem(msg.challenge, now, PAIRING)
        except ChallengeError as exc:
            self._sm.advance(VInput.PAIR_START_REFUSED)
            self._send(Error(status=Status.CHALLENGE_INVALID, challenge=msg.challenge))
            return Refused(Status.CHALLENGE_INVALID, None, f"pairing challenge {exc.reason}")
        self._sm.advance(VInput.PAIR_START)
        self._pairing = _Pairing(slot=msg.slot, challenge=msg.challenge, device_share=msg.share)
        return PairingRequested(slot=msg.slot)

    def _on_pair_confirm(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, PairConfirm)
        p = self._pairing
        if p is None or p.keys is None or self._sm.state is not VState.PAIR_WAIT_CONFIRM:
            raise self._fail(Status.MALFORMED, RemoteProtocolError("pair-confirm without a pairing in progress"))
        if msg.challenge != p.challenge:
            raise self._fail(Status.MALFORMED, RemoteProtocolError("pair-confirm for another pairing"))
        try:
            c.verify_mac(p.keys.confirm_d2v, c.transcript(c.LABEL_PAIR_CONFIRM_D2V, p.device_share, p.vehicle_share),
                         msg.confirm)
        except AuthenticationError:
            self._sm.advance(VInput.PAIR_CONFIRM_FAILED)
            self._send(Error(status=Status.PAIRING_REFUSED, challenge=p.challenge))
            self._pairing = None
            return PairingFailed(slot=p.slot, reason="wrong code")
        try:
            plain = c.open_sealed(p.keys.seal_d2v, c.DIR_D2V, 1, msg.sealed, p.challenge + msg.confirm)
            if len(plain) != PUBLIC_KEY_LEN + SIGNATURE_LEN:
                raise DecodeError("sealed device key has the wrong length")
            device_pub, proof = plain[:PUBLIC_KEY_LEN], plain[PUBLIC_KEY_LEN:]
            verify(decode_public_key(device_pub), proof, c.transcript(
                c.LABEL_PAIR_DEVICE_KEY, self.vehicle_id, p.challenge, p.device_share, p.vehicle_share, device_pub))
        except RemoteProtocolError as exc:
            raise self._fail(Status.PAIRING_REFUSED, exc, p.challenge) from None
        self._sm.advance(VInput.PAIR_CONFIRM_VERIFIED)
        p.device_public = device_pub
        return PairingKeyReceived(slot=p.slot, public_key=device_pub, key_id=key_id(device_pub))

    def _on_share_present(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, SharePresent)
        try:
            cert = ShareCertificate.decode(msg.certificate)
        except DecodeError as exc:  # a malformed certificate is a malformed message (PROTOCOL.md §12.4 step 1)
            raise self._fail(Status.MALFORMED, exc) from None
        self._sm.advance(VInput.SHARE_PRESENT)
        self._offer = _Offer(cert.subject_key_id, self._raw)
        return ShareOffered(certificate=cert, raw=msg.certificate)

    def _on_revocations(self, msg: Message, now: float) -> Event | None:
        assert isinstance(msg, Revocations)
        try:
            rlist = RevocationList.decode(msg.revocation_list)
        except DecodeError as exc:
            raise self._fail(Status.MALFORMED, exc) from None
        self._sm.advance(VInput.REVOCATIONS)
        self._offer = _Offer(rlist.issuer_id, self._raw)
        return RevocationsOffered(revocations=rlist, raw=msg.revocation_list)

    # ------------------------------------------------------------------ the application's answers

    def answer_share(self, status: Status) -> None:
        """Answer the pending ShareOffered with a signed SHARE_ANSWER (OK: enrolled; PROTOCOL.md §12.4)."""
        self._sm.advance(VInput.APP_ANSWER_SHARE)
        offer, self._offer = self._offer, None
        assert offer is not None
        sig = self.identity.sign(c.share_answer_transcript(self.vehicle_id, offer.key_id, status, offer.request))
        self._send(ShareAnswer(key_id=offer.key_id, status=status, signature=sig))

    def answer_revocations(self, status: Status, version: int) -> None:
        """Answer the pending RevocationsOffered: signed, with the version now held for that issuer (0: none)."""
        if not 0 <= version <= MAX_LIST_VERSION:
            raise LocalProtocolError(f"a held list version is 0..{MAX_LIST_VERSION}")
        self._sm.advance(VInput.APP_ANSWER_REVOCATIONS)
        offer, self._offer = self._offer, None
        assert offer is not None
        sig = self.identity.sign(c.revocations_answer_transcript(self.vehicle_id, offer.key_id, version, status,
                                                                 offer.request))
        self._send(RevocationsAnswer(key_id=offer.key_id, status=status, version=version, signature=sig))

    def push_watch(self, data: bytes) -> None:
        """Send a WATCH push (a status report) sealed in the open session; LocalProtocolError unless it is watching.

        Allowed only after the application answered this session's WATCH request OK (PROTOCOL.md §9.6).
        """
        sec = self._secure
        if sec is None or not sec.watching:
            raise LocalProtocolError("no open session subscribed with WATCH")
        try:
            StatusReport.decode(data)
        except DecodeError:
            raise LocalProtocolError("a WATCH push carries a status report") from None
        self._sm.advance(VInput.APP_PUSH_WATCH)
        self._seal(sec, Command.WATCH, Status.OK, data)

    def _seal(self, sec: _Secure, command: int, status: Status, data: bytes) -> None:
        """Queue a SECURE_RESPONSE `command || status || data` under the next counter."""
        sec.tx_counter += 1
        header = SecureResponse(session_id=sec.session_id, counter=sec.tx_counter, ciphertext=bytes(16))
        plain = bytes((command, status)) + data
        ct = c.seal(sec.keys.v2d, c.DIR_V2D, sec.tx_counter, plain, secure_aad(header))
        self._send(SecureResponse(session_id=sec.session_id, counter=sec.tx_counter, ciphertext=ct))

    def respond(self, status: Status, data: bytes = b"") -> None:
        """Answer the pending CommandRequested: signed on the fast path (status only), sealed with `data` in a session.

        Result data travels only sealed (PROTOCOL.md §5.3): a status report in a signed RESULT would tell any
        listener whether the door is open. On the fast path `data` may only be empty, the time_wanted hint
        (`fast_result_data`) or a BUSY's retry record (when to try again, §5.4); anything else raises
        LocalProtocolError.
        """
        pending = self._pending
        retry = status is Status.BUSY and RetryAfter.fits(data)
        if (pending is not None and data not in (b"", TIME_WANTED_HINT) and not retry
                and self._sm.state is VState.AWAIT_APP):  # the fast path's wait
            raise LocalProtocolError("a fast-path RESULT carries no data but the time_wanted hint or a BUSY's retry "
                                     "record (PROTOCOL.md §5.3)")
        self._sm.advance(VInput.APP_RESPOND)
        assert pending is not None
        self._pending = None
        if self._secure is not None and self._sm.state is VState.SECURE:
            sec = self._secure
            if pending.command == Command.WATCH and status == Status.OK:
                sec.watching = True  # from now on, every 0x16 response the device gets is a push
            self._seal(sec, pending.command, status, data)
        else:
            self._send(self._signed_result(pending.key_id, pending.challenge, pending.command, pending.args,
                                           status, pending.request, data))

    def accept_pairing(self, prs: bytes) -> None:
        """Run the vehicle's half of CPace with the slot's password-related string and queue PAIR_REPLY."""
        p = self._pairing
        self._sm.advance(VInput.APP_ACCEPT_PAIRING)
        assert p is not None
        cpace = CPace(prs, ci=c.pairing_ci(self.vehicle_id), sid=p.challenge, initiator=False, rng=self._rng)
        try:
            isk = cpace.finish(p.device_share)
        except PakeError:
            # Not a valid share: fail like a wrong code (same status, same CLOSED end, same event).
            self._sm.advance(VInput.PAIR_CONFIRM_FAILED)
            self._pairing = None
            self._send(Error(status=Status.PAIRING_REFUSED, challenge=p.challenge))
            self._deferred = PairingFailed(slot=p.slot, reason="invalid PAKE share")
            return
        p.vehicle_share = cpace.message
        p.keys = c.derive_pairing_keys(isk, challenge=p.challenge, vehicle_id=self.vehicle_id, slot=p.slot,
                                       device_share=p.device_share, vehicle_share=p.vehicle_share)
        confirm = c.mac(p.keys.confirm_v2d, c.transcript(c.LABEL_PAIR_CONFIRM_V2D, p.device_share, p.vehicle_share))
        self._send(PairReply(challenge=p.challenge, share=p.vehicle_share, confirm=confirm))

    def refuse_pairing(self, status: Status = Status.PAIRING_REFUSED) -> None:
        """Refuse the pending pairing (unknown slot, exhausted, or key not acceptable)."""
        p = self._pairing
        self._sm.advance(VInput.APP_REFUSE_PAIRING)
        self._pairing = None
        self._send(Error(status=status, challenge=p.challenge if p else b""))

    def finish_pairing(self, role: Role, valid_from: int | None = None, valid_until: int | None = None) -> None:
        """The key is stored: send the vehicle key, the key's role and validity, sealed and signed."""
        p = self._pairing
        self._sm.advance(VInput.APP_FINISH_PAIRING)
        assert p is not None and p.keys is not None
        self._pairing = None
        terms = bytes((role,)) + (valid_from or 0).to_bytes(8, "big") + (valid_until or 0).to_bytes(8, "big")
        sig = self.identity.sign(c.transcript(
            c.LABEL_PAIR_VEHICLE_KEY, self.vehicle_id, p.challenge, p.device_share, p.vehicle_share,
            p.device_public, self.identity.public_bytes, terms))
        sealed = c.seal(p.keys.seal_v2d, c.DIR_V2D, 1, self.identity.public_bytes + terms + sig, p.challenge)
        self._send(PairDone(challenge=p.challenge, sealed=sealed))


_HANDLERS: dict[type[Message], Callable[[VehicleSession, Message, float], Event | None]] = {
    ChallengeRequest: VehicleSession._on_challenge_request,
    CommandMessage: VehicleSession._on_command,
    SessionOpen: VehicleSession._on_session_open,
    SecureRequest: VehicleSession._on_secure_request,
    PairStart: VehicleSession._on_pair_start,
    PairConfirm: VehicleSession._on_pair_confirm,
    SharePresent: VehicleSession._on_share_present,
    Revocations: VehicleSession._on_revocations,
}
