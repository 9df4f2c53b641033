"""The device side of the key protocol: sans-IO; one instance per connection to a vehicle.

Feed every notification to `receive_data`, pull events with `next_event`, ask for things with
`send_command` / `open_session` / `send_secure` / `start_pairing` / `present_share` / `send_revocations`, and write
what `data_to_send` returns. After a WATCH answered OK, state changes arrive as `StateChanged` events.
Messages meant for other centrals (bless notifies every subscriber) are recognised and ignored.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from . import _crypto as c
from ._codec import (
    MAX_MESSAGE,
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
from ._errors import AuthenticationError, DecodeError, LocalProtocolError, RemoteProtocolError, Status
from ._events import (
    ChallengeReceived,
    CommandResult,
    Event,
    Paired,
    RevocationsAnswered,
    SessionReady,
    ShareAnswered,
    StateChanged,
    VehicleError,
)
from ._framing import DEFAULT_PARTIAL_TIMEOUT, Reassembler, split
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
from ._payloads import StatusReport
from ._shares import RevocationList, ShareCertificate
from ._state import DEVICE_SECURE_STATES, DeviceStateMachine, DInput, DState
from ._vocab import Command, Role

_KNOWN_CMDS = frozenset(int(x) for x in Command)
_R = TypeVar("_R", ShareCertificate, RevocationList)
_TERMS_LEN = 17  # role(1) || valid_from(8) || valid_until(8)


def _status(value: int) -> Status:
    try:
        return Status(value)
    except ValueError:
        return Status.INTERNAL_ERROR


class DeviceSession:
    """This device's conversation with one vehicle; see the module docstring for the calling pattern."""

    def __init__(
        self,
        device: KeyPair,
        *,
        vehicle_public_key: bytes | None,
        rng: Callable[[int], bytes] = os.urandom,
        chunk_size: int = 20,
        max_message: int = MAX_MESSAGE,
        partial_timeout: float = DEFAULT_PARTIAL_TIMEOUT,
    ) -> None:
        """`vehicle_public_key` is the pinned vehicle key; None only for a session that will pair."""
        self.device = device
        self._vehicle_key: ec.EllipticCurvePublicKey | None = None
        self.vehicle_id: bytes | None = None
        if vehicle_public_key is not None:
            self._vehicle_key = decode_public_key(vehicle_public_key)
            self.vehicle_id = key_id(vehicle_public_key)
        self._rng = rng
        self.chunk_size = chunk_size
        self._sm = DeviceStateMachine()
        self._rx = Reassembler(max_message, partial_timeout)
        self._inbox: deque[bytes] = deque()
        self._out: list[bytes] = []
        self.challenge: bytes | None = None  # the unspent challenge we will use next
        self.challenge_vehicle_id: bytes | None = None
        self._in_flight: tuple[bytes, int, bytes] | None = None  # challenge, command, args
        self._request = b""  # the encoded in-flight request: a RESULT must be bound to exactly this
        self.ignored_forgeries = 0  # answers that failed verification and were ignored
        self._pair: dict[str, bytes | int] = {}
        self._cpace: CPace | None = None
        self._pair_keys: c.PairingKeys | None = None
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._session: tuple[bytes, c.SessionKeys] | None = None
        self._tx_counter = 0
        self._rx_counter = 0
        self._secure_command: int | None = None
        self._watching = False  # our WATCH was answered OK in this session: 0x16 responses are pushes
        # The SHARE_PRESENT / REVOCATIONS in flight: the key id its answer must name, and the encoded request.
        self._offer: tuple[bytes, bytes] | None = None

    @property
    def state(self) -> DState:
        """The current state (see _state.py)."""
        return self._sm.state

    @property
    def watching(self) -> bool:
        """True once our WATCH was answered OK in the open session: state changes arrive as StateChanged."""
        return self._watching and self._session is not None

    @property
    def may_have_acted(self) -> bool:
        """True if a command was sent and its answer has not arrived: the vehicle may have acted."""
        return self._sm.state in (DState.AWAIT_RESULT, DState.SECURE_AWAIT)

    def data_to_send(self) -> list[bytes]:
        """Drain the queued write chunks, in order."""
        out, self._out = self._out, []
        return out

    def _send(self, message: Message) -> None:
        self._out.extend(split(message.encode(), self.chunk_size))

    def receive_data(self, chunk: bytes, now: float) -> None:
        """Take one notification; raises FramingError for a bad chunk (the session itself stays usable)."""
        message = self._rx.feed(chunk, now)
        if message is not None:
            self._inbox.append(message)

    def close(self) -> None:
        """End the session; idempotent."""
        if self._sm.state not in (DState.CLOSED, DState.ERROR):
            self._sm.advance(DInput.CLOSE)
        self._session = None
        self._ephemeral = None
        self._watching = False
        self._offer = None

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._sm.state = DState.ERROR
        self._session = None
        self._watching = False
        self._offer = None
        return exc

    # ------------------------------------------------------------------ the application's requests

    def request_challenge(self) -> None:
        """Ask the vehicle for a fresh challenge (after CHALLENGE_INVALID, or when none arrived)."""
        self._sm.advance(DInput.REQUEST_CHALLENGE)
        self.challenge = None
        self._send(ChallengeRequest())

    def _take_challenge(self) -> bytes:
        if self.challenge is None:
            raise LocalProtocolError("no unspent challenge")
        challenge, self.challenge = self.challenge, None
        return challenge

    def send_command(self, command: Command | int, args: bytes = b"") -> None:
        """Queue a signed fast-path command bound to the current challenge."""
        if self._vehicle_key is None or self.vehicle_id is None:
            raise LocalProtocolError("no pinned vehicle key")
        self._sm.advance(DInput.SEND_COMMAND)
        challenge = self._take_challenge()
        sig = self.device.sign(c.transcript(c.LABEL_COMMAND, self.vehicle_id, self.device.key_id, challenge,
                                            bytes((command,)), args))
        self._in_flight = (challenge, command, args)
        request = CommandMessage(key_id=self.device.key_id, challenge=challenge, command=command, args=args,
                                 signature=sig)
        self._request = request.encode()
        self._send(request)

    def open_session(self) -> None:
        """Queue SESSION_OPEN with a fresh ephemeral key, for confidential commands."""
        if self.vehicle_id is None:
            raise LocalProtocolError("no pinned vehicle key")
        self._sm.advance(DInput.SEND_SESSION_OPEN)
        challenge = self._take_challenge()
        self._ephemeral = ephemeral_from_rng(self._rng)
        eph = encode_public_key(self._ephemeral.public_key())
        sig = self.device.sign(c.transcript(c.LABEL_SESSION_OPEN, self.vehicle_id, self.device.key_id,
                                            challenge, eph))
        self._in_flight = (challenge, Command.SESSION, eph)
        request = SessionOpen(key_id=self.device.key_id, challenge=challenge, ephemeral=eph, signature=sig)
        self._request = request.encode()
        self._send(request)

    def send_secure(self, command: Command | int, args: bytes = b"") -> None:
        """Queue a command sealed under the open confidential session (a second WATCH: LocalProtocolError)."""
        if command == Command.WATCH and self._watching:
            # Its answer would be indistinguishable from a push (both carry 0x16): one subscription per session.
            raise LocalProtocolError("already watching in this session")
        self._sm.advance(DInput.SEND_SECURE)
        assert self._session is not None
        session_id, keys = self._session
        self._tx_counter += 1
        header = SecureRequest(session_id=session_id, counter=self._tx_counter, ciphertext=bytes(16))
        ct = c.seal(keys.d2v, c.DIR_D2V, self._tx_counter, bytes((command,)) + args, secure_aad(header))
        self._secure_command = command
        self._send(SecureRequest(session_id=session_id, counter=self._tx_counter, ciphertext=ct))

    def present_share(self, certificate: bytes) -> None:
        """Queue SHARE_PRESENT for a certificate naming our vehicle (after the CHALLENGE, before the first COMMAND).

        LocalProtocolError if the bytes are not a certificate or name another vehicle; the answer is ShareAnswered.
        """
        cert = self._own_record(ShareCertificate.decode, certificate, "certificate")
        self._sm.advance(DInput.SEND_SHARE)
        request = SharePresent(certificate=certificate)
        self._offer = (cert.subject_key_id, request.encode())
        self._send(request)

    def send_revocations(self, list_bytes: bytes) -> None:
        """Queue REVOCATIONS for a list naming our vehicle (after a RESULT, or in an idle session).

        LocalProtocolError if the bytes are not a list or name another vehicle; the answer is RevocationsAnswered.
        """
        rlist = self._own_record(RevocationList.decode, list_bytes, "revocation list")
        self._sm.advance(DInput.SEND_REVOCATIONS)
        request = Revocations(revocation_list=list_bytes)
        self._offer = (rlist.issuer_id, request.encode())
        self._send(request)

    def _own_record(self, parse: Callable[[bytes], _R], raw: bytes, what: str) -> _R:
        """Parse a record we are about to send; LocalProtocolError if it is malformed or for another vehicle."""
        if self.vehicle_id is None:
            raise LocalProtocolError("no pinned vehicle key")
        try:
            record = parse(raw)
        except DecodeError as exc:
            raise LocalProtocolError(f"not a {what}: {exc}") from None
        if record.vehicle_id != self.vehicle_id:
            raise LocalProtocolError(f"the {what} is for vehicle {record.vehicle_id.hex()}, not this one")
        return record

    def start_pairing(self, code: str, slot: int) -> None:
        """Queue PAIR_START for a one-time code (slot = the code's first two digits)."""
        if self.challenge is None:
            raise LocalProtocolError("no challenge received yet")
        if self.challenge_vehicle_id is None:
            # The vehicle names itself only while a pairing code is pending (PROTOCOL.md §3.11).
            raise LocalProtocolError("the vehicle did not name itself: it has no pairing code pending")
        self._sm.advance(DInput.SEND_PAIR_START)
        challenge = self._take_challenge()
        vid = self.challenge_vehicle_id
        prs = c.pairing_prs(code, vehicle_id=vid, slot=slot)
        self._cpace = CPace(prs, ci=c.pairing_ci(vid), sid=challenge, initiator=True, rng=self._rng)
        self._pair = {"challenge": challenge, "slot": slot, "vid": vid, "share": self._cpace.message}
        self._send(PairStart(slot=slot, challenge=challenge, share=self._cpace.message))

    # ------------------------------------------------------------------ receiving

    def next_event(self, now: float) -> Event | None:
        """The next event for us, or None; raises RemoteProtocolError (and enters ERROR) on a forgery."""
        while self._inbox and self._sm.state not in (DState.CLOSED, DState.ERROR):
            raw = self._inbox.popleft()
            try:
                msg = decode(raw)
            except DecodeError as exc:
                raise self._fail(exc) from None
            event = self._dispatch(msg)
            if event is not None:
                return event
        return None

    def _dispatch(self, msg: Message) -> Event | None:
        if isinstance(msg, Challenge):
            return self._on_challenge(msg)
        if isinstance(msg, Result):
            return self._on_result(msg)
        if isinstance(msg, Error):
            return self._on_error(msg)
        if isinstance(msg, SessionAccept):
            return self._on_session_accept(msg)
        if isinstance(msg, SecureResponse):
            return self._on_secure_response(msg)
        if isinstance(msg, PairReply):
            return self._on_pair_reply(msg)
        if isinstance(msg, PairDone):
            return self._on_pair_done(msg)
        if isinstance(msg, ShareAnswer | RevocationsAnswer):
            return self._on_offer_answer(msg)
        raise self._fail(RemoteProtocolError(f"{type(msg).__name__} is not for a device"))

    def _mine(self, challenge: bytes) -> bool:
        """True if a routed message answers our in-flight request (others are for other centrals)."""
        if self._in_flight is not None:
            return challenge == self._in_flight[0]
        return bool(self._pair) and challenge == self._pair["challenge"]

    def _on_challenge(self, msg: Challenge) -> Event | None:
        named = msg.vehicle_id or None  # a challenge names its vehicle only while a pairing code is pending (§3.11)
        ours = self.vehicle_id is None or named is None or named == self.vehicle_id
        if ours:
            self._sm.advance(DInput.CHALLENGE)
            # Keep the newest: an older one may already have been spent by another central.
            self.challenge = msg.challenge
            if named is not None:
                self.challenge_vehicle_id = named
        return ChallengeReceived(vehicle_id=named, ours=ours)

    def _on_result(self, msg: Result) -> Event | None:
        if not self._mine(msg.challenge) or self._in_flight is None:
            return None
        challenge, command, args = self._in_flight
        assert self._vehicle_key is not None and self.vehicle_id is not None
        if msg.key_id != self.device.key_id or msg.command != command:
            # Another central used the same broadcast challenge: its answer, not ours.
            return None
        try:
            verify(self._vehicle_key, msg.signature, c.result_transcript(
                self.vehicle_id, msg.key_id, challenge, command, args, msg.status, msg.data, self._request))
        except AuthenticationError:
            # A forgery, or the vehicle's answer to someone else's request made with our challenge and key id
            # (an injected copy). Neither is our answer: keep waiting for the genuine one.
            self.ignored_forgeries += 1
            return None
        self._in_flight = None
        if command == Command.SESSION:
            self._ephemeral = None
        self._sm.advance(DInput.RESULT)
        self._restore_challenge()
        known = Command(command) if command in _KNOWN_CMDS else command  # a code we sent but do not know
        return CommandResult(command=known, status=_status(msg.status), data=msg.data, secure=False)

    def _restore_challenge(self) -> None:
        # A challenge that arrived while we waited is still unspent: go straight back to READY.
        if self.challenge is not None and self._sm.state is DState.WAIT_CHALLENGE:
            self._sm.advance(DInput.CHALLENGE)

    def _on_error(self, msg: Error) -> Event | None:
        if not msg.challenge or not self._mine(msg.challenge):
            return None
        self._in_flight = None
        self._pair = {} if self._sm.state in (DState.PAIR_SENT, DState.PAIR_CONFIRM_SENT) else self._pair
        self._sm.advance(DInput.VEHICLE_ERROR)
        self._restore_challenge()
        return VehicleError(status=_status(msg.status))

    def _on_session_accept(self, msg: SessionAccept) -> Event | None:
        if not self._mine(msg.challenge) or self._in_flight is None or self._ephemeral is None:
            return None
        challenge, _, device_eph = self._in_flight
        assert self._vehicle_key is not None and self.vehicle_id is not None
        try:
            verify(self._vehicle_key, msg.signature, c.transcript(
                c.LABEL_SESSION_ACCEPT, self.vehicle_id, self.device.key_id, challenge, device_eph,
                msg.ephemeral, msg.session_id))
        except AuthenticationError:
            # Another central's session on the same broadcast challenge (a peripheral that notifies every
            # subscriber, like bless), or a forgery: not ours either way, so keep waiting for the genuine one.
            self.ignored_forgeries += 1
            return None
        try:
            vehicle_eph = decode_public_key(msg.ephemeral)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        keys = c.derive_session_keys(
            c.ecdh(self._ephemeral, vehicle_eph), challenge=challenge, vehicle_id=self.vehicle_id,
            key_id=self.device.key_id, device_ephemeral=device_eph, vehicle_ephemeral=msg.ephemeral,
            session_id=msg.session_id)
        self._ephemeral = None  # forward secrecy: the ephemeral secret is not needed any more
        self._session = (msg.session_id, keys)
        self._in_flight = None
        self._sm.advance(DInput.SESSION_ACCEPT_VERIFIED)
        return SessionReady(session_id=msg.session_id)

    def _on_secure_response(self, msg: SecureResponse) -> Event | None:
        if self._session is None or msg.session_id != self._session[0]:
            return None
        _, keys = self._session
        try:
            self._rx_counter = c.update_window(self._rx_counter, msg.counter)
            plain = c.open_sealed(keys.v2d, c.DIR_V2D, msg.counter, msg.ciphertext, secure_aad(msg))
            if self._watching and plain[:1] == bytes((Command.WATCH,)):
                return self._on_push(plain)
            if len(plain) < 2 or plain[0] != self._secure_command:
                raise DecodeError("secure response does not answer our command")
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        self._sm.advance(DInput.SECURE_RESPONSE_VERIFIED)
        self._secure_command = None
        command = Command(plain[0]) if plain[0] in _KNOWN_CMDS else plain[0]
        if command is Command.WATCH and plain[1] == Status.OK:
            self._watching = True
        return CommandResult(command=command, status=_status(plain[1]), data=plain[2:], secure=True)

    def _on_push(self, plain: bytes) -> Event:
        """A WATCH push (PROTOCOL.md §9.6): status OK and a status report, or the session fails (DecodeError)."""
        if self._sm.state not in DEVICE_SECURE_STATES:  # unreachable: the session keys go with the session
            raise DecodeError(f"WATCH push in state {self._sm.state.value}")
        if len(plain) < 2 or plain[1] != Status.OK:
            raise DecodeError("a WATCH push carries status OK")
        return StateChanged(report=StatusReport.decode(plain[2:]))

    def _on_offer_answer(self, msg: ShareAnswer | RevocationsAnswer) -> Event | None:
        share = isinstance(msg, ShareAnswer)
        waiting = (DState.SHARE_SENT, DState.SECURE_SHARE_SENT) if share else (
            DState.REVOCATIONS_SENT, DState.SECURE_REVOCATIONS_SENT)
        if self._sm.state not in waiting or self._offer is None:
            return None  # not waiting for one: another central's answer (every subscriber hears it, §1.3)
        expected, request = self._offer
        if msg.key_id != expected:
            return None  # another central's
        assert self._vehicle_key is not None and self.vehicle_id is not None
        if isinstance(msg, ShareAnswer):
            transcript = c.share_answer_transcript(self.vehicle_id, msg.key_id, msg.status, request)
        else:
            transcript = c.revocations_answer_transcript(self.vehicle_id, msg.key_id, msg.version, msg.status,
                                                         request)
        try:
            verify(self._vehicle_key, msg.signature, transcript)
        except AuthenticationError:
            # A forgery, or the vehicle's answer to another central's request for the same key or issuer: not ours.
            self.ignored_forgeries += 1
            return None
        self._offer = None
        if isinstance(msg, ShareAnswer):
            self._sm.advance(DInput.SHARE_ANSWER_VERIFIED)
            self._restore_challenge()
            return ShareAnswered(key_id=msg.key_id, status=_status(msg.status))
        self._sm.advance(DInput.REVOCATIONS_ANSWER_VERIFIED)
        self._restore_challenge()
        return RevocationsAnswered(issuer_id=msg.key_id, version=msg.version, status=_status(msg.status))

    def _on_pair_reply(self, msg: PairReply) -> Event | None:
        if self._sm.state is not DState.PAIR_SENT or not self._mine(msg.challenge) or self._cpace is None:
            return None
        challenge, slot, vid, share = (self._pair["challenge"], self._pair["slot"], self._pair["vid"],
                                       self._pair["share"])
        assert isinstance(challenge, bytes) and isinstance(slot, int) and isinstance(vid, bytes)
        assert isinstance(share, bytes)
        try:
            isk = self._cpace.finish(msg.share)
            keys = c.derive_pairing_keys(isk, challenge=challenge, vehicle_id=vid, slot=slot,
                                         device_share=share, vehicle_share=msg.share)
            c.verify_mac(keys.confirm_v2d, c.transcript(c.LABEL_PAIR_CONFIRM_V2D, share, msg.share), msg.confirm)
        except PakeError as exc:
            raise self._fail(AuthenticationError(f"vehicle's pairing share is invalid: {exc}")) from None
        except AuthenticationError:
            raise self._fail(AuthenticationError("wrong pairing code (or not the vehicle that showed it)")) from None
        self._cpace = None
        self._pair_keys = keys
        self._pair["vshare"] = msg.share
        confirm = c.mac(keys.confirm_d2v, c.transcript(c.LABEL_PAIR_CONFIRM_D2V, share, msg.share))
        proof = self.device.sign(c.transcript(c.LABEL_PAIR_DEVICE_KEY, vid, challenge, share, msg.share,
                                              self.device.public_bytes))
        sealed = c.seal(keys.seal_d2v, c.DIR_D2V, 1, self.device.public_bytes + proof, challenge + confirm)
        self._sm.advance(DInput.PAIR_REPLY_VERIFIED)
        self._send(PairConfirm(challenge=challenge, confirm=confirm, sealed=sealed))
        return None

    def _on_pair_done(self, msg: PairDone) -> Event | None:
        if self._sm.state is not DState.PAIR_CONFIRM_SENT or not self._mine(msg.challenge):
            return None
        keys = self._pair_keys
        assert keys is not None
        challenge, vid = self._pair["challenge"], self._pair["vid"]
        share, vshare = self._pair["share"], self._pair["vshare"]
        assert isinstance(challenge, bytes) and isinstance(vid, bytes)
        assert isinstance(share, bytes) and isinstance(vshare, bytes)
        try:
            plain = c.open_sealed(keys.seal_v2d, c.DIR_V2D, 1, msg.sealed, challenge)
            if len(plain) != PUBLIC_KEY_LEN + _TERMS_LEN + SIGNATURE_LEN:
                raise DecodeError("sealed pairing result has the wrong length")
            vpub, terms, sig = plain[:PUBLIC_KEY_LEN], plain[PUBLIC_KEY_LEN:-SIGNATURE_LEN], plain[-SIGNATURE_LEN:]
            if key_id(vpub) != vid:
                raise AuthenticationError("vehicle key does not match the vehicle id it announced")
            verify(decode_public_key(vpub), sig, c.transcript(
                c.LABEL_PAIR_VEHICLE_KEY, vid, challenge, share, vshare, self.device.public_bytes, vpub, terms))
            role = Role(terms[0])
        except ValueError as exc:  # DecodeError, and an unknown role byte
            raise self._fail(DecodeError(str(exc))) from None
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        self._vehicle_key = decode_public_key(vpub)
        self.vehicle_id = vid
        self._pair, self._pair_keys = {}, None
        self._sm.advance(DInput.PAIR_DONE_VERIFIED)
        valid_from = int.from_bytes(terms[1:9], "big") or None
        valid_until = int.from_bytes(terms[9:17], "big") or None
        return Paired(vehicle_public_key=vpub, vehicle_id=vid, key_id=self.device.key_id, role=role,
                      valid_from=valid_from, valid_until=valid_until)
