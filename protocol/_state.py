"""Everything that decides a state transition lives here: one table per side, and both fail closed.

Rule: a (state, input) pair that is not in the table moves the session to ERROR and raises, whatever
caused it (a peer's message out of order, or our own API call at the wrong time). Inputs are the
*outcomes* of handling a message (COMMAND_VERIFIED vs COMMAND_REFUSED), so verification happens before
the table is consulted and the table alone says where the session goes next. See PROTOCOL.md §7 for
the diagrams drawn from these tables.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from ._errors import LocalProtocolError, RemoteProtocolError


class VState(enum.Enum):
    """Vehicle-side session states."""

    READY = "ready"
    AWAIT_APP = "await-app"  # an authenticated command waits for VehicleSession.respond
    PAIR_AWAIT_APP = "pair-await-app"  # a pairing slot waits for accept_pairing / refuse_pairing
    PAIR_WAIT_CONFIRM = "pair-wait-confirm"
    PAIR_AWAIT_ENROLL = "pair-await-enroll"  # the device key waits for finish_pairing / refuse_pairing
    SECURE = "secure"
    SECURE_AWAIT_APP = "secure-await-app"
    # A SHARE_PRESENT / REVOCATIONS waits for answer_share / answer_revocations, outside or inside a session.
    SHARE_AWAIT_APP = "share-await-app"
    REVOCATIONS_AWAIT_APP = "revocations-await-app"
    SECURE_SHARE_AWAIT_APP = "secure-share-await-app"
    SECURE_REVOCATIONS_AWAIT_APP = "secure-revocations-await-app"
    CLOSED = "closed"
    ERROR = "error"


class VInput(enum.Enum):
    """What can happen to a vehicle-side session."""

    CHALLENGE_REQUEST = "rx challenge-request"
    COMMAND_VERIFIED = "rx command (verified)"
    COMMAND_REFUSED = "rx command (refused)"
    PAIR_START = "rx pair-start"
    PAIR_START_REFUSED = "rx pair-start (refused)"
    PAIR_CONFIRM_VERIFIED = "rx pair-confirm (verified)"
    PAIR_CONFIRM_FAILED = "rx pair-confirm (wrong code)"
    SESSION_OPEN_VERIFIED = "rx session-open (verified)"
    SESSION_OPEN_REFUSED = "rx session-open (refused)"
    SECURE_REQUEST = "rx secure-request"
    SHARE_PRESENT = "rx share-present"
    REVOCATIONS = "rx revocations"
    APP_RESPOND = "app respond"
    APP_ANSWER_SHARE = "app answer-share"
    APP_ANSWER_REVOCATIONS = "app answer-revocations"
    APP_PUSH_WATCH = "app push-watch"
    APP_ACCEPT_PAIRING = "app accept-pairing"
    APP_REFUSE_PAIRING = "app refuse-pairing"
    APP_FINISH_PAIRING = "app finish-pairing"
    CLOSE = "close"


_V = VState
_VI = VInput
VEHICLE_TABLE: dict[tuple[VState, VInput], VState] = {
    (_V.READY, _VI.CHALLENGE_REQUEST): _V.READY,
    (_V.READY, _VI.COMMAND_VERIFIED): _V.AWAIT_APP,
    (_V.READY, _VI.COMMAND_REFUSED): _V.READY,
    (_V.READY, _VI.PAIR_START): _V.PAIR_AWAIT_APP,
    (_V.READY, _VI.PAIR_START_REFUSED): _V.READY,
    (_V.READY, _VI.SESSION_OPEN_VERIFIED): _V.SECURE,
    (_V.READY, _VI.SESSION_OPEN_REFUSED): _V.READY,
    (_V.AWAIT_APP, _VI.APP_RESPOND): _V.READY,
    (_V.PAIR_AWAIT_APP, _VI.APP_ACCEPT_PAIRING): _V.PAIR_WAIT_CONFIRM,
    (_V.PAIR_AWAIT_APP, _VI.APP_REFUSE_PAIRING): _V.READY,
    (_V.PAIR_WAIT_CONFIRM, _VI.PAIR_CONFIRM_VERIFIED): _V.PAIR_AWAIT_ENROLL,
    (_V.PAIR_WAIT_CONFIRM, _VI.PAIR_CONFIRM_FAILED): _V.CLOSED,  # a wrong code ends the link
    (_V.PAIR_AWAIT_ENROLL, _VI.APP_FINISH_PAIRING): _V.READY,
    (_V.PAIR_AWAIT_ENROLL, _VI.APP_REFUSE_PAIRING): _V.READY,
    (_V.SECURE, _VI.CHALLENGE_REQUEST): _V.SECURE,
    (_V.SECURE, _VI.SECURE_REQUEST): _V.SECURE_AWAIT_APP,
    (_V.SECURE_AWAIT_APP, _VI.APP_RESPOND): _V.SECURE,
    # Shares and revocation lists (PROTOCOL.md §12.3): when idle, or in a session with nothing in flight.
    (_V.READY, _VI.SHARE_PRESENT): _V.SHARE_AWAIT_APP,
    (_V.SHARE_AWAIT_APP, _VI.APP_ANSWER_SHARE): _V.READY,
    (_V.READY, _VI.REVOCATIONS): _V.REVOCATIONS_AWAIT_APP,
    (_V.REVOCATIONS_AWAIT_APP, _VI.APP_ANSWER_REVOCATIONS): _V.READY,
    (_V.SECURE, _VI.SHARE_PRESENT): _V.SECURE_SHARE_AWAIT_APP,
    (_V.SECURE_SHARE_AWAIT_APP, _VI.APP_ANSWER_SHARE): _V.SECURE,
    (_V.SECURE, _VI.REVOCATIONS): _V.SECURE_REVOCATIONS_AWAIT_APP,
    (_V.SECURE_REVOCATIONS_AWAIT_APP, _VI.APP_ANSWER_REVOCATIONS): _V.SECURE,
}
# A WATCH push (PROTOCOL.md §9.6) may go out whenever the session is open, whatever else waits on the application;
# that WATCH was answered OK in this session is checked by VehicleSession.push_watch before it gets here.
VEHICLE_TABLE.update({(s, _VI.APP_PUSH_WATCH): s for s in (
    _V.SECURE, _V.SECURE_AWAIT_APP, _V.SECURE_SHARE_AWAIT_APP, _V.SECURE_REVOCATIONS_AWAIT_APP)})
# Closing is allowed from every live state.
VEHICLE_TABLE.update({(s, _VI.CLOSE): _V.CLOSED for s in VState if s not in (_V.CLOSED, _V.ERROR)})
VEHICLE_APP_INPUTS = frozenset(
    {_VI.APP_RESPOND, _VI.APP_ACCEPT_PAIRING, _VI.APP_REFUSE_PAIRING, _VI.APP_FINISH_PAIRING, _VI.APP_ANSWER_SHARE,
     _VI.APP_ANSWER_REVOCATIONS, _VI.APP_PUSH_WATCH, _VI.CLOSE}
)
VEHICLE_WAITING_FOR_APP = frozenset({_V.AWAIT_APP, _V.PAIR_AWAIT_APP, _V.PAIR_AWAIT_ENROLL, _V.SECURE_AWAIT_APP,
                                     _V.SHARE_AWAIT_APP, _V.REVOCATIONS_AWAIT_APP, _V.SECURE_SHARE_AWAIT_APP,
                                     _V.SECURE_REVOCATIONS_AWAIT_APP})


class DState(enum.Enum):
    """Device-side session states."""

    WAIT_CHALLENGE = "wait-challenge"
    READY = "ready"  # holds an unspent challenge
    AWAIT_RESULT = "await-result"
    PAIR_SENT = "pair-sent"
    PAIR_CONFIRM_SENT = "pair-confirm-sent"
    PAIRED = "paired"
    OPENING = "opening"
    SECURE = "secure"
    SECURE_AWAIT = "secure-await"
    SHARE_SENT = "share-sent"  # a SHARE_PRESENT waits for its SHARE_ANSWER
    REVOCATIONS_SENT = "revocations-sent"
    SECURE_SHARE_SENT = "secure-share-sent"  # the same, inside an open session
    SECURE_REVOCATIONS_SENT = "secure-revocations-sent"
    CLOSED = "closed"
    ERROR = "error"


class DInput(enum.Enum):
    """What can happen to a device-side session."""

    CHALLENGE = "rx challenge"
    REQUEST_CHALLENGE = "app request-challenge"
    SEND_COMMAND = "app send-command"
    RESULT = "rx result"
    VEHICLE_ERROR = "rx error"
    SEND_PAIR_START = "app start-pairing"
    PAIR_REPLY_VERIFIED = "rx pair-reply (verified)"
    PAIR_DONE_VERIFIED = "rx pair-done (verified)"
    SEND_SESSION_OPEN = "app open-session"
    SESSION_ACCEPT_VERIFIED = "rx session-accept (verified)"
    SEND_SECURE = "app send-secure"
    SECURE_RESPONSE_VERIFIED = "rx secure-response (verified)"
    SEND_SHARE = "app present-share"
    SHARE_ANSWER_VERIFIED = "rx share-answer (verified)"
    SEND_REVOCATIONS = "app send-revocations"
    REVOCATIONS_ANSWER_VERIFIED = "rx revocations-answer (verified)"
    CLOSE = "close"


_D = DState
_DI = DInput
DEVICE_TABLE: dict[tuple[DState, DInput], DState] = {
    (_D.WAIT_CHALLENGE, _DI.CHALLENGE): _D.READY,
    (_D.WAIT_CHALLENGE, _DI.REQUEST_CHALLENGE): _D.WAIT_CHALLENGE,
    (_D.READY, _DI.CHALLENGE): _D.READY,
    (_D.READY, _DI.REQUEST_CHALLENGE): _D.WAIT_CHALLENGE,
    (_D.READY, _DI.SEND_COMMAND): _D.AWAIT_RESULT,
    (_D.READY, _DI.SEND_PAIR_START): _D.PAIR_SENT,
    (_D.READY, _DI.SEND_SESSION_OPEN): _D.OPENING,
    (_D.AWAIT_RESULT, _DI.CHALLENGE): _D.AWAIT_RESULT,  # kept for the next command
    (_D.AWAIT_RESULT, _DI.RESULT): _D.WAIT_CHALLENGE,  # the challenge is spent
    (_D.AWAIT_RESULT, _DI.VEHICLE_ERROR): _D.WAIT_CHALLENGE,
    (_D.PAIR_SENT, _DI.CHALLENGE): _D.PAIR_SENT,
    (_D.PAIR_SENT, _DI.PAIR_REPLY_VERIFIED): _D.PAIR_CONFIRM_SENT,
    (_D.PAIR_SENT, _DI.VEHICLE_ERROR): _D.CLOSED,
    (_D.PAIR_CONFIRM_SENT, _DI.CHALLENGE): _D.PAIR_CONFIRM_SENT,
    (_D.PAIR_CONFIRM_SENT, _DI.PAIR_DONE_VERIFIED): _D.PAIRED,
    (_D.PAIR_CONFIRM_SENT, _DI.VEHICLE_ERROR): _D.CLOSED,
    (_D.PAIRED, _DI.CHALLENGE): _D.PAIRED,
    # The new key goes straight on, on the same link: a fresh challenge, SESSION_OPEN, AD_SECRET (PROTOCOL.md §13.4).
    (_D.PAIRED, _DI.REQUEST_CHALLENGE): _D.WAIT_CHALLENGE,
    (_D.OPENING, _DI.CHALLENGE): _D.OPENING,
    (_D.OPENING, _DI.SESSION_ACCEPT_VERIFIED): _D.SECURE,
    (_D.OPENING, _DI.RESULT): _D.WAIT_CHALLENGE,  # the vehicle refused the session, signed
    (_D.OPENING, _DI.VEHICLE_ERROR): _D.WAIT_CHALLENGE,
    (_D.SECURE, _DI.CHALLENGE): _D.SECURE,
    (_D.SECURE, _DI.SEND_SECURE): _D.SECURE_AWAIT,
    (_D.SECURE_AWAIT, _DI.CHALLENGE): _D.SECURE_AWAIT,
    (_D.SECURE_AWAIT, _DI.SECURE_RESPONSE_VERIFIED): _D.SECURE,
    # A share goes after the CHALLENGE arrived and before the first COMMAND; a list after a RESULT (challenge
    # spent) or with one held; either inside an open session with nothing in flight (PROTOCOL.md §12.3). The
    # challenge is not spent: after the answer the device is back in WAIT_CHALLENGE, or READY if it holds one.
    (_D.READY, _DI.SEND_SHARE): _D.SHARE_SENT,
    (_D.SHARE_SENT, _DI.CHALLENGE): _D.SHARE_SENT,
    (_D.SHARE_SENT, _DI.SHARE_ANSWER_VERIFIED): _D.WAIT_CHALLENGE,
    (_D.WAIT_CHALLENGE, _DI.SEND_REVOCATIONS): _D.REVOCATIONS_SENT,
    (_D.READY, _DI.SEND_REVOCATIONS): _D.REVOCATIONS_SENT,
    (_D.REVOCATIONS_SENT, _DI.CHALLENGE): _D.REVOCATIONS_SENT,
    (_D.REVOCATIONS_SENT, _DI.REVOCATIONS_ANSWER_VERIFIED): _D.WAIT_CHALLENGE,
    (_D.SECURE, _DI.SEND_SHARE): _D.SECURE_SHARE_SENT,
    (_D.SECURE_SHARE_SENT, _DI.CHALLENGE): _D.SECURE_SHARE_SENT,
    (_D.SECURE_SHARE_SENT, _DI.SHARE_ANSWER_VERIFIED): _D.SECURE,
    (_D.SECURE, _DI.SEND_REVOCATIONS): _D.SECURE_REVOCATIONS_SENT,
    (_D.SECURE_REVOCATIONS_SENT, _DI.CHALLENGE): _D.SECURE_REVOCATIONS_SENT,
    (_D.SECURE_REVOCATIONS_SENT, _DI.REVOCATIONS_ANSWER_VERIFIED): _D.SECURE,
}
DEVICE_TABLE.update({(s, _DI.CLOSE): _D.CLOSED for s in DState if s not in (_D.CLOSED, _D.ERROR)})
DEVICE_LOCAL_INPUTS = frozenset(
    {_DI.REQUEST_CHALLENGE, _DI.SEND_COMMAND, _DI.SEND_PAIR_START, _DI.SEND_SESSION_OPEN, _DI.SEND_SECURE,
     _DI.SEND_SHARE, _DI.SEND_REVOCATIONS, _DI.CLOSE}
)
# States in which the device holds an open confidential session (a WATCH push may arrive in any of them).
DEVICE_SECURE_STATES = frozenset({_D.SECURE, _D.SECURE_AWAIT, _D.SECURE_SHARE_SENT, _D.SECURE_REVOCATIONS_SENT})


S = TypeVar("S", bound=enum.Enum)
In = TypeVar("In", bound=enum.Enum)


class _TableMachine(Generic[S, In]):
    """A state advanced only through its table; any pair not in it moves to ERROR and raises."""

    def __init__(self, start: S, error: S, table: dict[tuple[S, In], S], local_inputs: frozenset[In]) -> None:
        self.state = start
        self._error = error
        self._table = table
        self._local = local_inputs

    def advance(self, event: In) -> S:
        """Move by the table, or to ERROR raising Local/RemoteProtocolError if the pair is not in it."""
        nxt = self._table.get((self.state, event))
        if nxt is None:
            was, self.state = self.state, self._error
            err = LocalProtocolError if event in self._local else RemoteProtocolError
            raise err(f"{event.value} is not allowed in state {was.value}")
        self.state = nxt
        return nxt


class VehicleStateMachine(_TableMachine[VState, VInput]):
    """The vehicle-side state, advanced only through VEHICLE_TABLE."""

    def __init__(self) -> None:
        super().__init__(VState.READY, VState.ERROR, VEHICLE_TABLE, VEHICLE_APP_INPUTS)


class DeviceStateMachine(_TableMachine[DState, DInput]):
    """The device-side state, advanced only through DEVICE_TABLE."""

    def __init__(self) -> None:
        super().__init__(DState.WAIT_CHALLENGE, DState.ERROR, DEVICE_TABLE, DEVICE_LOCAL_INPUTS)
