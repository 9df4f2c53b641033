"""The client's errors: each carries its exit code and says whether the vehicle may have acted and whether
retrying can help (`may_have_succeeded`, `temporary`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dkey_link.exit_codes import ExitCode

if TYPE_CHECKING:  # not at run time: `key-client --help` and usage errors load no protocol (no cryptography)
    from protocol import Status


class ClientError(Exception):
    """Base of key-client errors; the message is one plain line for the person at the terminal."""

    exit_code = ExitCode.ERROR
    may_have_succeeded = False
    temporary = False


class UsageError(ClientError):
    """The command line asks for something that cannot be done as given."""

    exit_code = ExitCode.USAGE


class ConfigError(ClientError):
    """The keychain's config.toml is invalid: the message names the file, key, value and what is allowed."""

    exit_code = ExitCode.CONFIG


class VehicleNotFound(ClientError):
    """No advertiser of our service (or not the wanted vehicle) was found in time."""

    exit_code = ExitCode.NOT_FOUND
    temporary = True


class ConnectFailed(ClientError):
    """A vehicle was found but the link could not be set up within the retry budget; nothing was sent."""

    exit_code = ExitCode.TIMED_OUT
    temporary = True


class TimedOut(ClientError):
    """Nothing was delivered before the deadline: the vehicle did not act."""

    exit_code = ExitCode.TIMED_OUT
    temporary = True


class OutcomeUnknown(ClientError):
    """The command reached the vehicle (or may have) but no answer came: never resend it blindly."""

    exit_code = ExitCode.OUTCOME_UNKNOWN
    may_have_succeeded = True


class VehicleRefused(ClientError):
    """The vehicle refused; `authenticated` says whether the refusal was signed by the pinned vehicle key."""

    def __init__(self, status: Status, *, authenticated: bool, message: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message or _refusal_text(status, retry_after))
        self.status = status
        self.authenticated = authenticated
        self.retry_after = retry_after  # seconds, when the vehicle said (a signed BUSY, PROTOCOL.md §5.4)

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        """BUSY for rate limiting, else DENIED."""
        from protocol import Status

        return ExitCode.BUSY if self.status is Status.BUSY else ExitCode.DENIED

    @property
    def may_have_succeeded(self) -> bool:  # type: ignore[override]
        """Only an authenticated status that proves inaction says the vehicle did nothing."""
        return self.status.may_have_acted or not self.authenticated

    @property
    def temporary(self) -> bool:  # type: ignore[override]
        """True if a later retry may succeed."""
        return self.status.temporary


class KeychainError(ClientError):
    """The local keychain cannot serve this request (missing key, unsafe permissions, bad passphrase...)."""

    exit_code = ExitCode.KEYS


class ProtocolViolation(ClientError):
    """The peer broke the protocol (forged or malformed answer): treat the vehicle as untrusted."""

    exit_code = ExitCode.OUTCOME_UNKNOWN
    may_have_succeeded = True



BUSY_ATT_TEXT = ("the vehicle is busy: it is rate-limiting this connection (too many failed attempts, requests "
                 "waiting or devices connected); try again in a few seconds")


def _refusal_text(status: Status, retry_after: int | None = None) -> str:
    """What a refusal with `status` means, in plain words (`retry_after`: seconds the vehicle named for a BUSY)."""
    from protocol import Status

    if status is Status.BUSY and retry_after is not None:
        return f"the vehicle is busy: this key has moved it too often; try again in {max(1, retry_after)} s"

    text = {
        Status.DENIED: "the vehicle refused this key (unknown, revoked, or not this vehicle's key)",
        Status.NOT_PERMITTED: "this key's role does not allow that command",
        Status.KEY_EXPIRED: "this key has expired",
        Status.KEY_NOT_YET_VALID: "this key is not valid yet",
        Status.OUTSIDE_SCHEDULE: "this key is outside its allowed schedule right now",
        Status.BUSY: "the vehicle is busy: it is rate-limiting (too many failed attempts nearby, or this key "
                     "acting too often); try again in a few seconds",
        Status.ACTUATOR_FAILED: "the vehicle accepted the command but its lock actuator reported a fault",
        Status.DOOR_OPEN: "the door is open: close it before locking",
        Status.NOT_SUPPORTED: "the vehicle does not support that command (is the output wired and configured?)",
        Status.PAIRING_REFUSED: "pairing refused: the code is wrong, expired or used up (ask for a new one)",
        Status.CHALLENGE_INVALID: "the vehicle's challenge expired before the command arrived",
        Status.BAD_REQUEST: "the vehicle did not understand the request arguments",
        Status.MALFORMED: "the vehicle could not parse our message",
        Status.CLOCK_UNTRUSTED: "the vehicle's clock is not yet trusted; an owner's device fixes this by connecting",
    }
    return text.get(status, f"vehicle refused: {status.name.lower()}")


__all__ = ["ClientError", "ConfigError", "ConnectFailed", "KeychainError", "OutcomeUnknown", "ProtocolViolation",
           "TimedOut", "UsageError", "VehicleNotFound", "VehicleRefused"]
