"""What a failure means to the person at the terminal: one plain line and an exit code from dkey_link.exit_codes.

`key-server` never shows a traceback: every exception that reaches its entry point is turned into a line by
`explain()`. The mapping lives here, below the CLI and the runner, so both raise and translate the same way.
"""

from __future__ import annotations

import sqlite3

from dkey_link.contract import RadioError
from dkey_link.exit_codes import ExitCode
from dkey_link.secretfile import SecretFileError
from hardware import ActuatorConfigError, ActuatorError, BackendUnavailableError, HardwareUnavailableError

from .config import ConfigError
from .identity import UnusableIdentity
from .store import InsecureStore, StoreError, StoreMissing, UnusableStore

__all__ = ["CliError", "explain", "one_line"]


class CliError(Exception):
    """A failure with a plain-word message and the exit code it stands for."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: object) -> str:
    """`text` on one line: a message that spans lines would read as several errors."""
    return " ".join(str(text).split()) or "(no message)"


def explain(exc: BaseException) -> tuple[str, ExitCode]:
    """The message (without the 'key-server: ' prefix) and exit code for an exception that reached the CLI."""
    if isinstance(exc, CliError):
        return one_line(exc), exc.code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", ExitCode.INTERRUPTED
    if isinstance(exc, ConfigError | ActuatorConfigError):
        return f"configuration error: {one_line(exc)}", ExitCode.CONFIG
    if isinstance(exc, SecretFileError | UnusableIdentity):  # unsafe permissions, unreadable, not a key
        return one_line(exc), ExitCode.KEYS
    if isinstance(exc, RadioError):
        return f"radio problem: {one_line(exc)} (`key-server doctor` checks the Bluetooth stack)", ExitCode.ERROR
    if isinstance(exc, StoreMissing):
        return one_line(exc), ExitCode.NOT_INITIALISED
    if isinstance(exc, InsecureStore):  # unsafe permissions, like a key file
        return one_line(exc), ExitCode.KEYS
    if isinstance(exc, UnusableStore):
        return one_line(exc), ExitCode.STORE_UNUSABLE
    if isinstance(exc, StoreError | sqlite3.Error):
        return f"key store error: {one_line(exc)}", ExitCode.ERROR
    if isinstance(exc, BackendUnavailableError):  # an install problem: the unit's RestartPreventExitStatus stops here
        return f"actuator unavailable: {one_line(exc)}", ExitCode.HARDWARE_UNAVAILABLE
    if isinstance(exc, HardwareUnavailableError):  # a busy or invalid pin: a restart may find it free
        return f"actuator unavailable: {one_line(exc)}", ExitCode.ERROR
    if isinstance(exc, ActuatorError):
        return f"actuator fault: {one_line(exc)}", ExitCode.ERROR
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror}", ExitCode.ERROR
    return f"unexpected error: {one_line(repr(exc))} (run with --debug for the traceback)", ExitCode.ERROR
