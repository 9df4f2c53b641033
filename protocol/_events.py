"""Events the state machines hand to the application: frozen, slotted dataclasses (PROTOCOL.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import CommandFailed, Status
from ._payloads import StatusReport
from ._shares import RevocationList, ShareCertificate
from ._vocab import Command, Role


class Event:
    """Base of every event."""


# ------------------------------------------------------------------ vehicle side


@dataclass(frozen=True, slots=True)
class CommandRequested(Event):
    """An authenticated command; answer it with `VehicleSession.respond`."""

    key_id: bytes
    command: Command
    args: bytes
    secure: bool


@dataclass(frozen=True, slots=True)
class Refused(Event):
    """A request was refused before reaching the application; the reply is already queued."""

    status: Status
    key_id: bytes | None
    reason: str  # for the audit log only: the wire status stays uniform


@dataclass(frozen=True, slots=True)
class PairingRequested(Event):
    """A device wants to pair with the code in `slot`; answer with accept_pairing or refuse_pairing."""

    slot: int


@dataclass(frozen=True, slots=True)
class PairingKeyReceived(Event):
    """The code was right and the device proved its key; answer with finish_pairing or refuse_pairing."""

    slot: int
    public_key: bytes
    key_id: bytes


@dataclass(frozen=True, slots=True)
class PairingFailed(Event):
    """A pairing attempt failed (wrong code, bad share); the session is closed."""

    slot: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionOpened(Event):
    """A confidential session is open for `key_id`."""

    key_id: bytes
    session_id: bytes


@dataclass(frozen=True, slots=True)
class ShareOffered(Event):
    """A well-formed share certificate (signature not yet checked); answer with `VehicleSession.answer_share`."""

    certificate: ShareCertificate
    raw: bytes  # the certificate's bytes as received


@dataclass(frozen=True, slots=True)
class RevocationsOffered(Event):
    """A well-formed revocation list (signature not yet checked); answer with `VehicleSession.answer_revocations`."""

    revocations: RevocationList
    raw: bytes  # the list's bytes as received


# ------------------------------------------------------------------ device side


@dataclass(frozen=True, slots=True)
class ChallengeReceived(Event):
    """The vehicle pushed a challenge; `ours` is False if it named a vehicle other than the pinned one.

    `vehicle_id` is None when the challenge did not name one (PROTOCOL.md §3.11): the device picked this car by
    its advertising token, and every answer it will accept is signed by the pinned vehicle key anyway.
    """

    vehicle_id: bytes | None
    ours: bool


@dataclass(frozen=True, slots=True)
class CommandResult(Event):
    """The vehicle's authenticated answer to our command."""

    command: Command | int  # an int only for a code this implementation does not know
    status: Status
    data: bytes
    secure: bool

    def raise_for_status(self) -> CommandResult:
        """Return self if OK, else raise CommandFailed (with may_have_succeeded and temporary)."""
        if self.status != Status.OK:
            raise CommandFailed(self.status, authenticated=True)
        return self


@dataclass(frozen=True, slots=True)
class VehicleError(Event):
    """An unauthenticated ERROR message routed to us (malformed request, refused pairing)."""

    status: Status

    def raise_for_status(self) -> None:
        """Always raise CommandFailed: an unauthenticated error proves nothing about what the vehicle did."""
        raise CommandFailed(self.status, authenticated=False)


@dataclass(frozen=True, slots=True)
class SessionReady(Event):
    """Our confidential session is open."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class Paired(Event):
    """Pairing succeeded: pin this vehicle key; our key is enrolled with this role and validity."""

    vehicle_public_key: bytes
    vehicle_id: bytes
    key_id: bytes
    role: Role
    valid_from: int | None
    valid_until: int | None


@dataclass(frozen=True, slots=True)
class ShareAnswered(Event):
    """The vehicle's signed verdict on our SHARE_PRESENT (OK: enrolled; NO_CHANGE: already enrolled)."""

    key_id: bytes
    status: Status


@dataclass(frozen=True, slots=True)
class RevocationsAnswered(Event):
    """The vehicle's signed verdict on our REVOCATIONS: the version it now holds for that issuer (0: none)."""

    issuer_id: bytes
    version: int
    status: Status


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    """A WATCH push: the vehicle's lock, door or start-enable state changed (PROTOCOL.md §9.6)."""

    report: StatusReport
