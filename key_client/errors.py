"""The client's errors: each says whether the vehicle may have acted and whether retrying can help."""

from __future__ import annotations

import enum

from protocol import Status


class ExitCode(enum.IntEnum):
    """`key-client` exit codes (documented in --help)."""

    OK = 0
    ERROR = 1  # anything else: bad usage, local file problems
    USAGE = 2
    DENIED = 3  # the vehicle refused (authenticated answer): revoked, expired, not permitted, wrong code
    NOT_FOUND = 4  # no vehicle found in range
    TIMED_OUT = 5  # no answer; the command was NOT delivered, safe to retry
    OUTCOME_UNKNOWN = 6  # the command was sent but no answer came: the vehicle may have acted
    BUSY = 7  # the vehicle is rate-limiting or busy with another device; retry shortly
    KEYCHAIN = 8  # keychain problem: no key for that vehicle, unsafe file permissions, bad passphrase


class ClientError(Exception):
    """Base of key-client errors."""

    exit_code = ExitCode.ERROR
    may_have_succeeded = False
    temporary = False


class VehicleNotFound(ClientError):
    """No advertiser of our service (or not the wanted vehicle) was found in time."""

    exit_code = ExitCode.NOT_FOUND
    temporary = True


class ConnectFailed(ClientError):
    """A vehicle was found but the link could not be set up (after the retries that are safe)."""

    exit_code = ExitCode.TIMED_OUT
    temporary = True


class TimedOut(ClientError):
    """Nothing was delivered before the deadline: the vehicle did not act."""

    exit_code = ExitCode.TIMED_OUT
    temporary = True


class OutcomeUnknown(ClientError):
    """The command reached the vehicle (or may have) but no answer came: do NOT blindly resend an unlock."""

    exit_code = ExitCode.OUTCOME_UNKNOWN
    may_have_succeeded = True


class Refused(ClientError):
    """The vehicle refused; `authenticated` says whether the refusal was signed by the pinned vehicle key."""

    def __init__(self, status: Status, *, authenticated: bool, message: str | None = None) -> None:
        super().__init__(message or _REFUSAL_TEXT.get(status, f"vehicle refused: {status.name.lower()}"))
        self.status = status
        self.authenticated = authenticated

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        """BUSY for rate limiting, else DENIED."""
        return ExitCode.BUSY if self.status is Status.BUSY else ExitCode.DENIED

    @property
    def may_have_succeeded(self) -> bool:  # type: ignore[override]
        """Only an authenticated non-acting status proves the vehicle did nothing."""
        return self.status in (Status.ACTUATOR_FAILED, Status.INTERNAL_ERROR) or not self.authenticated

    @property
    def temporary(self) -> bool:  # type: ignore[override]
        """True if a later retry may succeed."""
        return self.status in (Status.BUSY, Status.CHALLENGE_INVALID, Status.OUTSIDE_SCHEDULE,
                               Status.KEY_NOT_YET_VALID)


class KeychainError(ClientError):
    """The local keychain cannot serve this request."""

    exit_code = ExitCode.KEYCHAIN


class ProtocolViolation(ClientError):
    """The peer broke the protocol (forged or malformed answer): treat the vehicle as untrusted."""

    exit_code = ExitCode.OUTCOME_UNKNOWN
    may_have_succeeded = True


_REFUSAL_TEXT = {
    Status.DENIED: "the vehicle refused this key (unknown, revoked, or not this vehicle's key)",
    Status.NOT_PERMITTED: "this key's role does not allow that command",
    Status.KEY_EXPIRED: "this key has expired",
    Status.KEY_NOT_YET_VALID: "this key is not valid yet",
    Status.OUTSIDE_SCHEDULE: "this key is outside its allowed schedule right now",
    Status.BUSY: "the vehicle is busy or rate-limiting failed attempts; try again in a few seconds",
    Status.ACTUATOR_FAILED: "the vehicle accepted the command but its lock actuator reported a fault",
    Status.DOOR_OPEN: "the door is open: close it before locking",
    Status.NOT_SUPPORTED: "the vehicle does not support that command (is the output wired and configured?)",
    Status.PAIRING_REFUSED: "pairing refused: the code is wrong, expired or used up (ask for a new one)",
    Status.CHALLENGE_INVALID: "the vehicle's challenge expired before the command arrived",
    Status.BAD_REQUEST: "the vehicle did not understand the request arguments",
    Status.MALFORMED: "the vehicle could not parse our message",
}
