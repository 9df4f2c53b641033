"""The one exit-code table both CLIs use (`key-server --help` and `key-client --help` print their part of it)."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """Process exit codes of `key-server` and `key-client`: one number, one meaning, on both sides."""

    OK = 0
    ERROR = 1  # anything not listed: the message says what failed; details with --debug
    USAGE = 2  # bad arguments (argparse's own code)
    DENIED = 3  # refused: the vehicle refused this key or command, or the server refused (last owner, ...)
    NOT_FOUND = 4  # no vehicle in range, or no such key / vehicle / slot
    TIMED_OUT = 5  # no answer, and the command was NOT delivered: safe to retry
    OUTCOME_UNKNOWN = 6  # the command was (or may have been) delivered but no answer came: the vehicle may have acted
    BUSY = 7  # the vehicle is rate-limiting or busy with another device: retry shortly
    KEYS = 8  # a local key file or keychain: missing key, unsafe permissions, unreadable, bad passphrase
    NOT_INITIALISED = 9  # no vehicle identity yet: run `key-server init`
    ALREADY_EXISTS = 10  # `init` found an identity and would not overwrite it
    AUDIT_TAMPERED = 11  # the audit log's hash chain does not verify
    CHECK_FAILED = 12  # `doctor` found a failing check, or `actuate --test` an actuator fault
    CONFIG = 13  # a configuration file is invalid: the message names the file, key, value and what is allowed
    STORE_UNUSABLE = 14  # keys.db is empty, truncated, not SQLite or another schema: restore it, never re-created
    HARDWARE_UNAVAILABLE = 16  # the GPIO backend (lgpio) or the vehicle install (bless) is missing: no restart helps
    INTERRUPTED = 130  # Ctrl-C or SIGTERM before anything was sent (after an actuating command: OUTCOME_UNKNOWN)


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "error: the message says what failed (details with --debug)",
    ExitCode.USAGE: "bad usage",
    ExitCode.DENIED: "refused (the vehicle refused this key or command, or the request is not allowed)",
    ExitCode.NOT_FOUND: "not found (no vehicle in range, no such key, vehicle or pairing slot)",
    ExitCode.TIMED_OUT: "timed out before the command was sent: nothing happened, safe to retry",
    ExitCode.OUTCOME_UNKNOWN: "outcome unknown: the command was sent but not answered; the vehicle may have acted",
    ExitCode.BUSY: "the vehicle is busy or rate-limiting: retry in a few seconds",
    ExitCode.KEYS: "key file or keychain problem (missing key, unsafe permissions, unreadable, passphrase)",
    ExitCode.NOT_INITIALISED: "not initialised: `key-server init` (or `key-server restore` if the vehicle key exists)",
    ExitCode.ALREADY_EXISTS: "already initialised (init never overwrites a vehicle identity)",
    ExitCode.AUDIT_TAMPERED: "the audit log failed verification",
    ExitCode.CHECK_FAILED: "a check failed (`doctor`, or `actuate --test` found an actuator fault)",
    ExitCode.CONFIG: "invalid configuration (file, key, value and what is allowed are named)",
    ExitCode.STORE_UNUSABLE: "the key store is empty, truncated or not a key store: restore it from a backup",
    ExitCode.HARDWARE_UNAVAILABLE: "the GPIO backend or the vehicle install is missing (see docs/DEPLOY.md)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C / SIGTERM) before anything was sent",
}


def help_table(codes: Iterable[ExitCode]) -> str:
    """The 'exit codes:' block of a CLI's --help, for the codes that CLI can return."""
    lines = ["exit codes:"]
    lines += [f"  {int(code):<3d} {MEANING[code]}" for code in sorted(set(codes))]
    return "\n".join(lines)
