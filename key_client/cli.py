"""`key-client`: argument parsing and output formatting over the use cases of key_client.app.

`main()` parses, then runs the command under one asyncio.run() and returns the exit code
(dkey_link.exit_codes.ExitCode). Tests await `amain([...])` in their own loop with `--radio mock` after
`radios.register_mock(air)`. Every failure ends in one plain line on stderr (and, with --json, one object on
stdout) and a documented exit code; --debug adds the traceback of an unexpected error.

Start-up time counts (a person waits for `unlock`): this module imports only argparse and the exit-code table
at load; each command imports what it needs when it runs (see docs/CLIENT.md, "Start-up time").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from dkey_link.exit_codes import ExitCode, help_table

from .errors import ClientError, UsageError
from .paths import default_path

if TYPE_CHECKING:
    import asyncio

    from protocol import AuditRecord, Command, KeyInfo, StatusReport

    from .app import AutoEvent, DeviceApp
    from .keychain import VehicleEntry

# The codes key-client can return (the --help epilog and docs/CLIENT.md list exactly these).
CLIENT_CODES = (ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.DENIED, ExitCode.NOT_FOUND,
                ExitCode.TIMED_OUT, ExitCode.OUTCOME_UNKNOWN, ExitCode.BUSY, ExitCode.KEYS, ExitCode.AUDIT_TAMPERED,
                ExitCode.CONFIG, ExitCode.INTERRUPTED)
# With --json these print one JSON array (`[]` when empty, like key-server's lists); the others one object per
# result, and `auto` one per event as they happen.
LIST_COMMANDS = frozenset({"scan", "keys", "audit", "vehicles"})
DISTRIBUTION = "wearable-dkey"  # whose installed version --version prints
MAX_SCAN_TIME = 300.0  # --scan-time upper bound: five minutes is already far longer than anyone waits
MAX_CONNECT_ATTEMPTS = 10  # --connect-attempts upper bound: 50 s of connecting is past anyone's patience


class Interrupted(ClientError):
    """Ctrl-C or SIGTERM before anything that could act was sent."""

    exit_code = ExitCode.INTERRUPTED


# ---------------------------------------------------------------------- output


class Printer:
    """Results on stdout (text, or JSON with --json); notes and errors on stderr.

    With --json a list command (`listing`) prints one JSON array of its results, `[]` when there are none, once it
    has finished (finish()); every other command prints one JSON object per result, one per line.
    """

    def __init__(self, json_mode: bool, stream: TextIO | None = None, *, listing: bool = False) -> None:
        self.json = json_mode
        self._err = stream
        self._items: list[dict[str, Any]] | None = [] if listing else None

    @property
    def err(self) -> TextIO:
        """stderr (looked up late: tests capture it)."""
        return self._err or sys.stderr

    def result(self, obj: dict[str, Any], text: str) -> None:
        """Print one result (a list command's JSON results wait for finish())."""
        if self.json and self._items is not None:
            self._items.append(obj)
        elif self.json:
            import json

            print(json.dumps(obj, sort_keys=True), flush=True)
        else:
            print(text, flush=True)

    def finish(self) -> None:
        """The command succeeded: a list command prints its JSON array now (`[]` if it found nothing)."""
        if self.json and self._items is not None:
            import json

            print(json.dumps(self._items, sort_keys=True), flush=True)

    def heading(self, text: str) -> None:
        """A line of text output that has no JSON form (a table's title)."""
        if not self.json:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A remark for the person at the terminal (never on stdout, so --json output stays parseable)."""
        clear = "\r\x1b[K" if getattr(self.err, "isatty", lambda: False)() else ""
        print(f"{clear}{text}", file=self.err, flush=True)

    def error(self, exc: ClientError) -> None:
        """Report a failure: one plain line on stderr; with --json also an object on stdout."""
        code = ExitCode(int(exc.exit_code))
        self.note(f"key-client: {_one_line(str(exc))}")
        if self.json:
            import json

            print(json.dumps({"ok": False, "error": str(exc), "exit_code": int(code), "exit": code.name.lower(),
                              "may_have_succeeded": bool(exc.may_have_succeeded),
                              "temporary": bool(exc.temporary)}, sort_keys=True), flush=True)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


class Progress:
    """A spinner line on stderr while scanning/connecting (only on a TTY); with -v, plain lines instead."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, *, verbose: bool) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.verbose = verbose
        self.message = ""
        self._task: asyncio.Task[None] | None = None

    def __call__(self, message: str) -> None:
        """The app's progress callback."""
        self.message = message
        if not self.tty and self.verbose:
            print(f"key-client: {message}", file=self.stream, flush=True)

    async def __aenter__(self) -> Progress:
        if self.tty:
            import asyncio

            self._task = asyncio.create_task(self._spin())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            import asyncio
            import contextlib

            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    async def _spin(self) -> None:
        import asyncio

        for i in range(1 << 62):
            self.stream.write(f"\r\x1b[K{self.FRAMES[i % len(self.FRAMES)]} {self.message}")
            self.stream.flush()
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (UsageError) instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Version(argparse.Action):
    """--version: `key-client X.Y.Z`, read from the installed distribution only when asked (start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"key-client {installed_version()}", flush=True)
        parser.exit()


def installed_version() -> str:
    """The version of the installed wearable-dkey distribution ("unknown" when running from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (wearable-dkey is not installed)"


def _radio_kind(value: str) -> str:
    if value not in ("ble", "sim", "mock"):
        raise argparse.ArgumentTypeError(f"unknown radio {value!r} (choose ble or sim)")
    return value


def _number(low: float, high: float | None, *, integer: bool = False, low_open: bool = False
            ) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with low_open; no upper bound if None)."""

    def parse(text: str) -> float:
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        too_low = value <= low if low_open else value < low
        if value != value or too_low or (high is not None and value > high) or value in (float("inf"), -float("inf")):
            def shown(v: float) -> str:
                return str(int(v)) if integer else f"{v:g}"

            kind = "an integer" if integer else "a finite number"
            bound = f"above {shown(low)}" if low_open else f"at least {shown(low)}"
            upper = f" and at most {shown(high)}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} is out of range (allowed: {kind} {bound}{upper})")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse


def _epilog() -> str:
    return "\n".join([
        help_table(CLIENT_CODES),
        "",
        "time limits: finding the vehicle takes at most --scan-time seconds; then at most --connect-attempts",
        "connection attempts (3), within 5 s per attempt (15 s); then 8 s for the answer (30 s for pairing).",
        "A command that was sent is never resent.",
        "Ctrl-C / SIGTERM: before an unlock, lock, start, revoke, issue-code, edit or pairing was sent -> 130",
        "(interrupted); after -> 6 (outcome unknown: the vehicle may have acted; check with `key-client status`).",
        "`auto`, and `watch` once it shows the state, stop on Ctrl-C with exit 0.",
        "",
        "environment: DKEY_KEYCHAIN (keychain dir), DKEY_RADIO (ble|sim), DKEY_SIM_DIR (sim air dir),",
        "DKEY_PASSPHRASE (passphrase for protected device keys).",
        "",
        "examples:",
        "  key-client pair 4212-3456         pair with the code `key-server pair` printed",
        "  key-client unlock                 unlock the only vehicle in the keychain",
        "  key-client --vehicle van lock     lock one of several",
        "  key-client --radio sim unlock     talk to `key-server run --radio sim` on this machine",
        "  key-client request-share          on a new watch: show its request (text and QR)",
        "  key-client share REQUEST --role guest --until 3d   on the owner's phone, offline",
        "  key-client import-share SHARE     on the watch; its first unlock enrols the key",
    ])


def build_parser() -> argparse.ArgumentParser:
    """The key-client argument parser."""
    p = _Parser(
        prog="key-client",
        description="A digital key for your vehicle: pair this device once, then unlock and lock over Bluetooth LE.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version, help="print key-client's version and exit")
    p.add_argument("--keychain", type=Path, help=f"keychain directory (default: $DKEY_KEYCHAIN or {default_path()})")
    p.add_argument("--radio", type=_radio_kind, metavar="{ble,sim}",
                   help="ble = this machine's Bluetooth (default; $DKEY_RADIO); sim = simulated radio")
    p.add_argument("--adapter", help="Bluetooth adapter, e.g. hci1 (Linux)")
    p.add_argument("--sim-dir", type=Path, help="sim radio directory (default: $DKEY_SIM_DIR or /tmp/dkey-sim-UID)")
    p.add_argument("--scan-time", type=_number(0, MAX_SCAN_TIME, low_open=True), default=10.0, metavar="S",
                   help=f"seconds to look for vehicles, above 0 and at most {MAX_SCAN_TIME:g} (10)")
    p.add_argument("--connect-attempts", type=_number(1, MAX_CONNECT_ATTEMPTS, integer=True), default=3, metavar="N",
                   help=f"connection attempts after the vehicle was found, 1..{MAX_CONNECT_ATTEMPTS} (3), "
                        "all within 5 s per attempt")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv: debug)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    # Also accepted after the command (`key-client unlock --vehicle van --json`): SUPPRESS keeps the
    # sub-parser from resetting a value given before the command.
    common = _Parser(add_help=False)
    for parser, top in ((p, True), (common, False)):
        parser.add_argument("--vehicle", default=None if top else argparse.SUPPRESS, metavar="NAME",
                            help="which vehicle (nickname or vehicle-id prefix) when the keychain holds several")
        parser.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="JSON on stdout: one array for scan, keys, audit and vehicles; else one object "
                             "per result, one per line")

    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    s = cmd("scan", "list vehicles in range with their signal strength")
    s.add_argument("--identify", action="store_true",
                   help="connect to each one to read the vehicle id it claims and match it to the keychain")
    s = cmd("pair", "pair with a vehicle using the one-time code (or dkey://pair QR text) from `key-server pair`")
    s.add_argument("code", help="8-digit code like 4212-3456, or the dkey://pair?... URI of the QR code")
    s.add_argument("--name", help="nickname for the vehicle (default: its advertised name)")
    store = s.add_mutually_exclusive_group()  # default: a plain 0600 file, which works headless (docs/CLIENT.md)
    store.add_argument("--passphrase", action="store_true",
                       help="protect the new device key with a passphrase (asked for, or $DKEY_PASSPHRASE)")
    store.add_argument("--keyring", action="store_true",
                       help="keep the new device key in the OS keyring (macOS Keychain, Windows Credential Locker, "
                            "Secret Service); needs wearable-dkey[keyring] and a desktop session")
    cmd("unlock", "unlock the vehicle")
    cmd("lock", "lock the vehicle")
    cmd("status", "show lock, door and start-enable state")
    cmd("start", "enable the start output (if the vehicle has one wired)")
    cmd("set-time", "tell the vehicle this device's time, confirming its clock (owner and driver keys)")
    cmd("keys", "list the keys enrolled on the vehicle (owner keys only)")
    s = cmd("revoke", "revoke a key: on the vehicle at once when it is in reach, and on this device's revocation "
                      "list when it can name the key offline (owner keys only)")
    s.add_argument("key", help="hex key-id prefix or name, as `key-client keys` shows them; offline: the name or "
                               "key-id prefix of a share this device issued, or a full 8-digit key id")
    s.add_argument("--with-shares", action="store_true",
                   help="also revoke every key this key enrolled by share")
    s.add_argument("--offline", action="store_true",
                   help="do not look for the vehicle: only put the key on this device's revocation list")
    s.add_argument("--rotate-secret", action="store_true",
                   help="also have the vehicle replace its advertising secret, so the revoked device no longer "
                        "recognises the car on air (vehicle in reach)")
    s = cmd("audit", "read the vehicle's audit log (owner keys only)")
    s.add_argument("--limit", type=_number(1, 10_000, integer=True), default=20, metavar="N",
                   help="how many entries, 1 to 10000 (20)")
    s.add_argument("--after", type=_number(0, 2**63 - 1, integer=True), metavar="SEQ",  # PROTOCOL.md §5.4
                   help="entries after this sequence number, >= 0 (default: the newest N)")
    cmd("vehicles", "list the vehicles in this device's keychain")
    s = cmd("forget", "delete this device's key for a vehicle (revoke it on the vehicle too)")
    s.add_argument("name", metavar="VEHICLE")
    s = cmd("request-share", "show this device's share request (text and QR) for an owner to turn into a share")
    s.add_argument("--name", help="the name this device suggests for its key, at most 32 bytes "
                                  "(default: the earlier request's, else none)")
    s.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    s = cmd("share", "sign a share for another device's request: its key works on the vehicle without a code "
                     "(owner keys only; offline)")
    s.add_argument("request", metavar="REQUEST", help="the dkey://share-request?... text `request-share` showed")
    s.add_argument("--role", choices=("driver", "guest"), required=True, help="what the shared key may do")
    s.add_argument("--name", help="the key's name in the vehicle's key list, at most 32 bytes "
                                  "(default: the name in the request)")
    s.add_argument("--from", dest="valid_from", metavar="T",
                   help="valid from (default: now): 2026-12-24, 2026-12-24T18:00, or from now: 90m, 2h, 3d, 1w")
    s.add_argument("--until", dest="valid_until", metavar="T", help="valid until (same formats; default: no expiry)")
    s.add_argument("--schedule", metavar="S", help='weekly schedule, at most 64 bytes, e.g. "Mon-Fri 08:00-18:00"')
    s.add_argument("--out", type=Path, metavar="FILE", help="also write the share text to FILE")
    s.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    s = cmd("import-share", "keep a share an owner signed for this device's request; the first connection "
                            "enrols the key")
    s.add_argument("share", metavar="SHARE", help="the dkey://share?... text, or @FILE to read it from FILE")
    s.add_argument("--name", help="nickname for the vehicle (default: the name in the share)")
    s = cmd("issue-code", "ask the vehicle for a one-time pairing code for a new device, shown like `key-server "
                          "pair` shows it (owner keys only)")
    s.add_argument("--role", choices=("owner", "driver", "guest"), required=True, help="the new key's role")
    s.add_argument("--name", required=True, help="the new key's name in the vehicle's key list (at most 64 bytes)")
    s.add_argument("--expires", metavar="T", help="when the code stops working, within 7 days: 30m, 2h, 1d or a "
                                                   "date and time (default: 10 minutes)")
    s.add_argument("--attempts", type=_number(1, 20, integer=True), default=5, metavar="N",
                   help="wrong tries the code survives, 1 to 20 (5)")
    s.add_argument("--valid-from", metavar="T", help="the key is valid from (2026-12-24, 2026-12-24T18:00, 3d ...)")
    s.add_argument("--valid-until", metavar="T", help="the key expires (same formats; default: no expiry)")
    s.add_argument("--schedule", metavar="S", help='weekly schedule, e.g. "Mon-Fri 08:00-18:00; Sat 10:00-14:00"')
    s.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    s = cmd("edit", "change a key's name, role, validity window or schedule on the vehicle (owner keys only)")
    s.add_argument("key", help="hex key-id prefix or name, as `key-client keys` shows them")
    s.add_argument("--name", help="new name (at most 64 bytes)")
    s.add_argument("--role", choices=("owner", "driver", "guest"), help="new role")
    s.add_argument("--valid-from", metavar="T", help="valid from (2026-12-24, 2026-12-24T18:00, 3d ...)")
    expiry = s.add_mutually_exclusive_group()
    expiry.add_argument("--valid-until", metavar="T", help="expires (same formats)")
    expiry.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    sched = s.add_mutually_exclusive_group()
    sched.add_argument("--schedule", metavar="S", help='new weekly schedule, e.g. "Mon-Fri 08:00-18:00"')
    sched.add_argument("--no-schedule", action="store_true", help="remove the schedule")
    cmd("watch", "print the vehicle's lock, door and start-enable state, then one line per change, until Ctrl-C "
                 "(owner and driver keys; sealed in the confidential session)")
    s = cmd("auto", "passive entry: unlock when near, lock when you walk away (weaker against relay attacks)")
    s.add_argument("--i-understand-relay-risk", action="store_true", help="opt in (see the warning in docs)")
    s.add_argument("--unlock-rssi", type=_number(-127, 20, integer=True), metavar="DBM",
                   help="unlock at or above this RSSI, -127 to 20 dBm (-60)")
    s.add_argument("--lock-rssi", type=_number(-127, 20, integer=True), metavar="DBM",
                   help="lock below this RSSI, -127 to 20 dBm (-75)")
    s.add_argument("--dwell", type=_number(0, 600), metavar="S",
                   help="seconds the signal must stay strong before unlocking, 0 to 600 (2)")
    s.add_argument("--lost", type=_number(0.1, 3600), metavar="S",
                   help="seconds the signal must stay weak or gone before locking, 0.1 to 3600 (5)")
    s.add_argument("--interval", type=_number(0.01, 60), metavar="S", help="seconds between readings, 0.01 to 60 (1)")
    s.add_argument("--for", dest="duration", type=_number(0, None, low_open=True), metavar="S",
                   help="stop after S seconds (default: Ctrl-C or SIGTERM)")
    return p


# ---------------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """Run key-client; returns the exit code."""
    try:
        parsed = _parse(argv)
        if isinstance(parsed, int):
            return parsed
        import asyncio

        return asyncio.run(_run(parsed))
    except KeyboardInterrupt:  # before the command's own handler was in place: nothing was sent
        print("key-client: interrupted before anything that could act was sent", file=sys.stderr, flush=True)
        return int(ExitCode.INTERRUPTED)


async def amain(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command in the running loop; returns the exit code."""
    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    return await _run(parsed)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code if parsing already ended the run (--help, a usage error)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    except UsageError as exc:
        json_mode = "--json" in (sys.argv[1:] if argv is None else argv)
        Printer(json_mode).error(exc)
        return int(exc.exit_code)


async def _run(args: argparse.Namespace) -> int:
    """Run the parsed command with Ctrl-C / SIGTERM handled; every failure becomes one line and an exit code."""
    _setup_logging(args.verbose, args.debug)
    out = Printer(args.json, listing=args.command in LIST_COMMANDS)
    with _Interrupts() as interrupts:
        try:
            code = await _COMMANDS[args.command](args, out, interrupts)
        except ClientError as exc:
            if interrupts.fired:
                interrupts.absorb()  # the driver turned the cancel into OutcomeUnknown
            out.error(exc)
            return int(exc.exit_code)
        except BaseException as exc:  # noqa: BLE001 - the one place that turns anything left into an exit code
            import asyncio

            if isinstance(exc, asyncio.CancelledError) and interrupts.fired:
                interrupts.absorb()
                err: ClientError = Interrupted("interrupted before anything that could act was sent")
            elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            else:
                err = _plain_error(exc, debug=args.debug)
            out.error(err)
            return int(err.exit_code)
        out.finish()  # only on success: a failed list command prints its error object, not a partial list
        return code


def _plain_error(exc: BaseException, *, debug: bool) -> ClientError:
    """One line for an error no command turned into a ClientError (a radio fault, a file, a bug)."""
    import logging

    from dkey_link.contract import RadioError

    if isinstance(exc, RadioError):
        return ClientError(f"radio problem: {exc}")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return ClientError(f"{exc.strerror or exc}{where}")
    # A backend library's own exception (bleak, D-Bus) or a bug: one line for people, the trace with --debug.
    logging.getLogger("key_client").debug("unexpected error", exc_info=exc)
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return ClientError(f"unexpected error: {type(exc).__name__}: {exc} "
                       f"({'traceback above' if debug else 'run with --debug for details'})")


class _Interrupts:
    """Ctrl-C / SIGTERM while a command runs: sets `stop` if the command registered one (auto), else cancels
    the command's task; the driver turns a cancel after an acting command was written into OutcomeUnknown."""

    def __init__(self) -> None:
        self.fired = 0
        self.stop: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._installed: list[int] = []

    def __enter__(self) -> _Interrupts:
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._fire)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not Unix
                continue
            self._installed.append(sig)
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)

    def _fire(self) -> None:
        self.fired += 1
        if self.stop is not None and not self.stop.is_set():
            self.stop.set()  # auto: finish the action in hand, then stop
        elif self._task is not None:
            self._task.cancel()

    def absorb(self) -> None:
        """The cancel has been turned into an exit code: the task goes on to report it."""
        if self._task is not None:
            self._task.uncancel()


def _setup_logging(verbose: int, debug: bool) -> None:
    import logging

    logger = logging.getLogger("key_client")
    logger.setLevel(logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("key-client: %(message)s"))
        logger.addHandler(handler)


# ---------------------------------------------------------------------- shared plumbing


def _app(args: argparse.Namespace, progress: Callable[[str], None] | None = None,
         note: Callable[[str], None] | None = None) -> DeviceApp:
    from .app import DeviceApp, RadioChoice

    kind = args.radio or os.environ.get("DKEY_RADIO") or "ble"
    if kind not in ("ble", "sim") and not (kind == "mock" and args.radio == "mock"):
        raise UsageError(f"DKEY_RADIO={kind!r} is not a radio: use ble or sim")
    return DeviceApp(args.keychain, RadioChoice(kind, args.adapter, args.sim_dir), passphrase=_passphrase,
                     scan_time=args.scan_time, connect_attempts=int(args.connect_attempts), progress=progress,
                     note=note)


async def _passphrase(prompt: str, confirm: bool) -> bytes:
    """$DKEY_PASSPHRASE, else ask on the terminal; KeychainError if neither is possible."""
    import asyncio
    import getpass

    from .errors import KeychainError

    env = os.environ.get("DKEY_PASSPHRASE")
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise KeychainError("a passphrase is needed: set DKEY_PASSPHRASE or run from a terminal")
    first = await asyncio.to_thread(getpass.getpass, prompt)
    if confirm and first != await asyncio.to_thread(getpass.getpass, "again: "):
        raise KeychainError("the passphrases do not match")
    if not first:
        raise KeychainError("an empty passphrase protects nothing")
    return first.encode()


def _when(ts: int | None) -> str:
    from datetime import datetime

    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M")


def _validity(entry_from: int | None, entry_until: int | None) -> str:
    if entry_from is None and entry_until is None:
        return "no expiry"
    parts = ([f"from {_when(entry_from)}"] if entry_from else []) + ([f"until {_when(entry_until)}"]
                                                                     if entry_until else [])
    return " ".join(parts)


def _entry_json(e: VehicleEntry) -> dict[str, Any]:
    d = e.to_json()
    d.pop("vehicle_public_key")
    d["vehicle"] = d.pop("name")
    return d


_DONE = {"unlock": "unlocked", "lock": "locked", "start": "start enabled on", "status": "status of"}


def _report_json(entry: VehicleEntry, cmd: Command, rep: StatusReport | None) -> dict[str, Any]:
    """A done command as JSON: the full report for `status`, what OK means for a fast-path command."""
    from protocol import Command

    out: dict[str, Any] = {"ok": True, "vehicle": entry.name, "vehicle_id": entry.vehicle_id.hex(),
                           "command": cmd.label}
    if rep is not None:
        out.update(lock=rep.lock.name.lower(), door=rep.door.name.lower(), start_enabled=rep.start_enabled)
    elif cmd is Command.START:
        out["start_enabled"] = True
    else:  # the fast path answers without a report (PROTOCOL.md §5.3): OK means the commanded position
        out["lock"] = "unlocked" if cmd is Command.UNLOCK else "locked"
    return out


def _report_text(rep: StatusReport) -> str:
    return (f"lock {rep.lock.name.lower()}, door {rep.door.name.lower()}, "
            f"start {'enabled' if rep.start_enabled else 'disabled'}")


def _done_text(entry: VehicleEntry, cmd: Command, rep: StatusReport | None) -> str:
    """One line for a done command: `car: lock locked, ...` for status, `unlocked car` for the others."""
    if rep is not None:
        return f"{entry.name}: {_report_text(rep)}"
    return f"{_DONE[cmd.label]} {entry.name}"


def _print_qr(text: str, args: argparse.Namespace, out: Printer) -> None:
    """The QR code of `text` on stdout, like `key-server pair` (text mode only; needs segno: wearable-dkey[qr])."""
    if out.json or getattr(args, "no_qr", False):
        return
    try:
        import segno
    except ImportError:
        out.note("(no QR code: segno is not installed; `pip install 'wearable-dkey[qr]'` adds it)")
        return
    import contextlib

    with contextlib.suppress(Exception):  # a QR code is a convenience; never fail the command over it
        segno.make(text, error="m").terminal(out=sys.stdout, compact=True)
        sys.stdout.flush()


# ---------------------------------------------------------------------- commands

Handler = Callable[[argparse.Namespace, Printer, _Interrupts], Awaitable[int]]


def _fast(name: str) -> Handler:
    async def run(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
        from protocol import Command

        cmd = Command[name.upper()]
        async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
            done = await _app(args, say, out.note).command(cmd, args.vehicle)
        out.result(_report_json(done.entry, cmd, done.report), _done_text(done.entry, cmd, done.report))
        return int(ExitCode.OK)

    return run


def _key_json(k: KeyInfo, mine: bool) -> dict[str, Any]:
    from protocol import Role

    return {"key_id": k.key_id.hex(), "name": k.name, "role": Role.label_of(k.role), "state": _key_state(k),
            "created_at": k.created_at, "valid_from": k.valid_from, "valid_until": k.valid_until,
            "schedule": k.schedule, "via": k.via.label if k.via is not None else None,
            "enrolled_by": k.enrolled_by.hex() if k.enrolled_by is not None else None,
            "last_used_at": k.last_used_at, "revoked_at": k.revoked_at, "this_device": mine}


def _key_state(k: KeyInfo, now: float | None = None) -> str:
    """active / not_yet_valid / expired / revoked, as the vehicle computed it with its guarded time.

    A vehicle that does not send the state (an older one) gets it derived from the record and this device's
    clock, as key-client did before vehicles reported it.
    """
    import time

    from protocol import KeyState

    if k.state is not KeyState.UNKNOWN:
        return k.state.label
    now = time.time() if now is None else now
    if k.revoked_at is not None:
        return "revoked"
    if k.valid_until is not None and k.valid_until <= now:
        return "expired"
    if k.valid_from is not None and k.valid_from > now:
        return "not_yet_valid"
    return "active"


def _key_line(k: KeyInfo, mine: bool, now: float) -> str:
    """One row of `keys`: id, role, state, window, schedule, how it was enrolled, last use, name."""
    from protocol import Role

    state = _key_state(k, now).replace("_", " ")
    if k.revoked_at is not None:
        state += f" {_when(k.revoked_at)}"
    via = k.via.label if k.via is not None else "?"
    if k.enrolled_by is not None:
        via += f" by {k.enrolled_by.hex()}"
    window = _validity(k.valid_from, k.valid_until)
    return (f"  {k.key_id.hex()}  {Role.label_of(k.role):6s}  {state:24s}  {window:34s}  {k.schedule or 'any time':20s}"
            f"  {via:16s}  last used {_when(k.last_used_at):16s}  {k.name}"
            f"{'  (this device)' if mine else ''}")


async def cmd_keys(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`keys`: the vehicle's key list over the confidential session."""
    import time

    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        listing = await _app(args, say, out.note).keys(args.vehicle)
    now = time.time()
    out.heading(f"{len(listing.keys)} keys on {listing.entry.name}:")
    for k in listing.keys:
        mine = k.key_id == listing.entry.key_id
        out.result(_key_json(k, mine), _key_line(k, mine, now))
    return int(ExitCode.OK)


async def cmd_revoke(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`revoke KEY`: on the vehicle if in reach, and on this device's revocation list if it can name KEY offline."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        r = await _app(args, say, out.note).revoke(args.key, args.vehicle, with_shares=args.with_shares,
                                                   offline=args.offline, rotate_secret=args.rotate_secret)
    kid, name = r.key_id.hex(), r.name
    who = f"{kid} ({name})" if name else kid
    listed = r.listed
    obj: dict[str, Any] = {"ok": True, "vehicle": r.entry.name, "key_id": kid, "name": name,
                           "revoked": r.key is not None and not r.already_revoked,
                           "already_revoked": r.already_revoked, "this_device": r.this_device,
                           "with_shares": bool(args.with_shares), "reached": r.reached,
                           "list_version": listed.held.version if listed is not None else None,
                           "delivered": r.delivered,
                           "rotated_generation": r.rotated.generation if r.rotated is not None else None}
    lines: list[str] = []
    if r.key is not None:
        lines.append(f"{who} was already revoked on {r.entry.name}" if r.already_revoked else
                     f"revoked {who} on {r.entry.name}; it is refused from now on"
                     + (", with the keys it enrolled by share" if args.with_shares else ""))
    if listed is not None:
        version = listed.held.version
        if r.delivered:
            lines.append(f"this device's revocation list for {r.entry.name} (version {version}) reached the vehicle")
        else:
            lines.append(f"{who} is on this device's revocation list for {r.entry.name} (version {version}"
                         f"{', with the keys it enrolled by share' if listed.with_shares else ''}); it is "
                         "delivered on the next connection of any owner or driver device of this vehicle that "
                         "carries the list (this one: any command that succeeds)")
    if r.this_device and not r.already_revoked:
        lines.append("that was this device's own key: it can no longer open the vehicle")
    if r.rotated is not None:
        lines.append(f"rotated {r.entry.name}'s advertising secret (generation {r.rotated.generation}): the revoked "
                     "device no longer recognises the car on air; the others learn the new secret in their next "
                     "session")
    out.result(obj, "\n".join(lines))
    return int(ExitCode.OK)


def _audit_json(r: AuditRecord) -> dict[str, Any]:
    from .app import audit_detail

    return {"seq": r.seq, "ts": r.ts, "event": r.event, "key_id": r.key_id.hex() if r.key_id else None,
            "detail": audit_detail(r), "hash": r.entry_hash.hex()}


async def cmd_audit(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`audit`: the newest --limit entries (or those after --after) of the vehicle's audit log."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        listing = await _app(args, say, out.note).audit(args.vehicle, limit=args.limit, after=args.after)
    for r in listing.records:
        out.result(_audit_json(r), f"{r.seq:6d}  {_when(r.ts)}  {r.event:12s} "
                                   f"{r.key_id.hex() if r.key_id else '-':8s}  {r.detail}")
    if not listing.records:
        out.note("no audit entries")
    head = listing.head
    if head is not None:
        # The head to pin elsewhere: `key-server audit --verify --pinned SEQ:HASH` on the Pi checks the same chain.
        out.result({"head": head.text, "seq": head.seq, "hash": head.entry_hash.hex(),
                    "pruned_through": head.pruned_through, "signature": head.signature.hex()},
                   f"head {head.text}" + (f"  (entries up to {head.pruned_through} pruned by retention)"
                                          if head.pruned_through else ""))
    if listing.problem is not None:
        from .audit_pins import AuditTampered

        pinned = listing.pinned_before.text if listing.pinned_before is not None else "?"
        # A failed list command: the text lines above stay on screen, --json prints the error object alone.
        raise AuditTampered(f"WARNING: the audit log of {listing.entry.name} was tampered with: "
                            f"{listing.problem}. This device keeps its pin {pinned}; on the vehicle, run "
                            f"`key-server audit --verify --pinned {pinned}`")
    return int(ExitCode.OK)


async def cmd_set_time(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`set-time`: state this device's time over the confidential session (PROTOCOL.md §5.7)."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        r = await _app(args, say, out.note).set_time(args.vehicle)
    obj = {"ok": r.accepted, "vehicle": r.entry.name, "stated": r.stated, "vehicle_time": r.clock.time,
           "trusted": r.clock.trusted}
    if r.accepted:
        out.result(obj, f"{r.entry.name} accepted this device's time ({_when(r.stated)}); its clock is trusted")
        return int(ExitCode.OK)
    diff = r.clock.time - r.stated
    out.result(obj, f"{r.entry.name} refused this device's time: its clock reads {_when(r.clock.time)}, "
                    f"{abs(diff)} s {'ahead of' if diff > 0 else 'behind'} this device's "
                    f"({'it trusts its own clock' if r.clock.trusted else 'too far to move it'}); "
                    "check this device's clock")
    return int(ExitCode.DENIED)


async def cmd_vehicles(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`vehicles`: what this device's keychain holds."""
    path, entries = _app(args, note=out.note).vehicles()
    if not entries:
        out.note(f"no vehicles in {path}: pair with `key-client pair CODE`")
    for e in entries:
        out.result(_entry_json(e), f"{e.name:20s} {e.vehicle_id.hex()}  {e.role:6s}  "
                                   f"{_validity(e.valid_from, e.valid_until):24s}  key {e.key_id.hex()}"
                                   f"{'  (passphrase)' if e.encrypted else ''}{'  (keyring)' if e.keyring else ''}"
                                   f"{'  (share)' if e.via == 'share' else ''}")
    return int(ExitCode.OK)


async def cmd_forget(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`forget VEHICLE`: drop the local key; the vehicle keeps listing it until revoked."""
    e = _app(args, note=out.note).forget(args.name)
    out.result({"ok": True, "forgot": e.name, "vehicle_id": e.vehicle_id.hex(), "key_id": e.key_id.hex()},
               f"forgot {e.name}: this device's key {e.key_id.hex()} is deleted here.\n"
               f"The vehicle still lists it until an owner revokes it: `key-server revoke {e.key_id.hex()}`.")
    return int(ExitCode.OK)


async def cmd_scan(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`scan`: vehicles in range; --identify connects to read each one's claimed vehicle id."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        sightings = await _app(args, say, out.note).scan(identify=args.identify)
    for s in sightings:
        adv = s.advertisement
        obj: dict[str, Any] = {"name": adv.name, "address": adv.address, "rssi": adv.rssi,
                               "recognised_as": s.recognised_as}
        if s.recognised_as and not s.identified:
            # Its token resolves with the advertising secret we hold for that vehicle (PROTOCOL.md §13).
            obj.update(last_seen_as=s.last_seen_as)
            mark = f"= {s.recognised_as} (by its advertising token)"
        elif s.identified:
            vid = s.vehicle_id
            obj.update(vehicle_id=vid.hex() if vid else None, keychain=s.keychain_name)
            mark = (f"{vid.hex()}  " if vid else "(no id: no answer, or no pairing code pending there)  "
                    ) + (
                f"= {s.keychain_name} in keychain" if s.keychain_name else "")
        else:
            obj.update(last_seen_as=s.last_seen_as)
            mark = f"last seen as {s.last_seen_as} (unverified: --identify)" if s.last_seen_as else ""
        out.result(obj, f"{adv.name or '?':20s} {adv.rssi:4d} dBm  {adv.address}  {mark}".rstrip())
    if args.identify and not out.json:
        out.note("ids are as each vehicle claims them; unlock/lock verify them against the pinned vehicle key")
    return int(ExitCode.OK)


async def cmd_pair(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`pair CODE`: run the PAKE with the vehicle showing CODE and store what it tells us."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        entry = await _app(args, say, out.note).pair(args.code, name=args.name, protect=args.passphrase,
                                                     keyring=args.keyring)
    out.result({"ok": True, **_entry_json(entry)},
               f"paired with {entry.name} (vehicle id {entry.vehicle_id.hex()}) as {entry.role}, "
               f"{_validity(entry.valid_from, entry.valid_until)}; this device's key id is {entry.key_id.hex()}")
    return int(ExitCode.OK)


async def cmd_auto(args: argparse.Namespace, out: Printer, interrupts: _Interrupts) -> int:
    """`auto`: unlock/lock by proximity until Ctrl-C/SIGTERM or --for elapses."""
    import asyncio

    from .app import AutoOptions

    options = AutoOptions(relay_risk_accepted=args.i_understand_relay_risk, unlock_rssi=args.unlock_rssi,
                          lock_rssi=args.lock_rssi, dwell=args.dwell, lost=args.lost, interval=args.interval,
                          duration=args.duration)
    interrupts.stop = asyncio.Event()  # the first Ctrl-C / SIGTERM ends auto after the action in hand
    await _app(args, note=out.note).auto(args.vehicle, options, interrupts.stop, lambda ev: _auto_event(ev, out))
    return int(ExitCode.OK)


def _auto_event(ev: AutoEvent, out: Printer) -> None:
    """How `auto` shows what it did."""
    name = ev.entry.name
    if ev.kind == "learned" and ev.done is None:
        out.note(f"finding {name} once to learn its address")
    elif ev.kind == "learned" and ev.done is not None:
        out.result(_report_json(ev.entry, ev.done.command, ev.done.report),
                   _done_text(ev.entry, ev.done.command, ev.done.report))
    elif ev.kind == "watching" and ev.policy is not None:
        p = ev.policy
        out.note(f"auto for {name}: unlock at >= {p.unlock_rssi} dBm held {p.dwell_s:g} s, "
                 f"lock below {p.lock_rssi} dBm (or gone) for {p.lost_s:g} s. Ctrl-C stops.")
    elif ev.kind == "acted" and ev.done is not None:
        out.result({**_report_json(ev.entry, ev.done.command, ev.done.report), "event": ev.action},
                   _done_text(ev.entry, ev.done.command, ev.done.report))
    elif ev.kind == "unknown":
        out.note(f"{ev.action}: {ev.error}")
        out.result({"ok": False, "event": ev.action, "vehicle": name, "outcome": "unknown"},
                   f"{ev.action} {name}: outcome unknown (not retried)")
    elif ev.kind == "not_delivered":
        out.note(f"{ev.action} not delivered, will try again: {ev.error}")
    elif ev.kind == "refused_for_now":
        out.note(f"{ev.action} refused for now, will try again: {ev.error}")


async def cmd_request_share(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`request-share`: this device's public key as a dkey://share-request text and QR code."""
    r = _app(args, note=out.note).request_share(args.name)
    out.result({"request": r.uri, "key_id": r.key_id.hex()}, r.uri)
    _print_qr(r.uri, args, out)
    out.note(f"share request for this device's key {r.key_id.hex()}"
             + (" (the same key as the earlier request)" if r.reused else "")
             + ": the owner runs `key-client share REQUEST --vehicle V --role driver|guest --name N`, "
               "then this device runs `key-client import-share SHARE`")
    return int(ExitCode.OK)


def _window_text(valid_from: int | None, valid_until: int | None) -> str:
    return f"valid from {_when(valid_from)} " + (f"until {_when(valid_until)}" if valid_until else "with no expiry")


async def cmd_share(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`share REQUEST`: sign a certificate for another device's key, record it, print it (text, QR, --out)."""
    r = await _app(args, note=out.note).share(args.request, args.vehicle, role=args.role, name=args.name,
                                              valid_from=args.valid_from, valid_until=args.valid_until,
                                              schedule=args.schedule)
    s = r.share
    if args.out is not None:
        _write_text(args.out, r.uri + "\n")
    out.result({"ok": True, "share": r.uri, "serial": s.serial.hex(), "key_id": s.subject_key_id.hex(),
                "name": s.name, "role": s.role, "valid_from": s.valid_from, "valid_until": s.valid_until,
                "schedule": s.schedule, "vehicle_id": s.vehicle_id.hex(), "certificate_bytes": len(r.certificate),
                "revocation_list_version": r.carries_list}, r.uri)
    _print_qr(r.uri, args, out)
    out.note(f"share {s.serial.hex()} for {s.name!r} ({s.role}, key {s.subject_key_id.hex()}), "
             f"{_window_text(s.valid_from, s.valid_until)}{f', schedule {s.schedule!r}' if s.schedule else ''}: "
             "the device runs `key-client import-share SHARE`"
             + (f"; written to {args.out}" if args.out is not None else ""))
    return int(ExitCode.OK)


def _write_text(path: Path, text: str) -> None:
    """Write `text` to `path` (a share is no secret: only the requesting device's key can use it)."""
    from .errors import UsageError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


async def cmd_import_share(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`import-share SHARE|@FILE`: pin the vehicle, keep the certificate for the first connection."""
    from protocol import Role

    r = _app(args, note=out.note).import_share(args.share, name=args.name)
    e, c = r.entry, r.certificate
    out.result({"ok": True, **_entry_json(e), "serial": c.serial.hex(), "issuer_id": c.issuer_id.hex(),
                "schedule": c.schedule, "enrolled": False, "revocation_list_version": r.list_kept},
               f"imported a share for {e.name} (vehicle id {e.vehicle_id.hex()}) as {Role.label_of(c.role)}, "
               f"{_window_text(c.valid_from, c.valid_until)}{f', schedule {c.schedule!r}' if c.schedule else ''}, "
               f"signed by owner key {c.issuer_id.hex()}; this device's key id is {e.key_id.hex()}. "
               "The first connection to the vehicle enrols it (e.g. `key-client unlock`).")
    return int(ExitCode.OK)


async def cmd_issue_code(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`issue-code`: ISSUE_CODE over the confidential session, shown like `key-server pair`."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        r = await _app(args, say, out.note).issue_code(
            args.vehicle, role=args.role, name=args.name, expires=args.expires, attempts=int(args.attempts),
            valid_from=args.valid_from, valid_until=args.valid_until, schedule=args.schedule)
    t = r.terms
    out.result({"ok": True, "vehicle": r.entry.name, "code": r.code, "uri": r.uri, "slot": int(r.code[:2]),
                "expires_at": r.expires_at, "role": args.role, "name": t.name, "attempts": t.attempts,
                "valid_from": t.valid_from, "valid_until": t.valid_until, "schedule": t.schedule},
               f"one-time pairing code for {t.name!r} ({args.role}) on {r.entry.name}: {r.code[:4]} {r.code[4:]}\n"
               f"valid until {_when(r.expires_at)}, {t.attempts} tries; on the device run:\n"
               f"    key-client pair {r.code}")
    _print_qr(r.uri, args, out)
    return int(ExitCode.OK)


async def cmd_edit(args: argparse.Namespace, out: Printer, _interrupts: _Interrupts) -> int:
    """`edit KEY`: EDIT_KEY over the confidential session; prints the key as the vehicle now holds it."""
    import time

    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        r = await _app(args, say, out.note).edit_key(
            args.key, args.vehicle, name=args.name, role=args.role, valid_from=args.valid_from,
            valid_until=args.valid_until, no_expiry=args.no_expiry, schedule=args.schedule,
            no_schedule=args.no_schedule)
    mine = r.after.key_id == r.entry.key_id
    out.result({"ok": True, "vehicle": r.entry.name, **_key_json(r.after, mine)},
               f"changed {r.after.key_id.hex()} on {r.entry.name}:\n{_key_line(r.after, mine, time.time())}")
    return int(ExitCode.OK)


async def cmd_watch(args: argparse.Namespace, out: Printer, interrupts: _Interrupts) -> int:
    """`watch`: WATCH in a confidential session; the state now, then one line (object) per change until Ctrl-C."""
    import asyncio
    import time
    from datetime import datetime

    stop = asyncio.Event()

    def show(entry: VehicleEntry, rep: StatusReport, initial: bool) -> None:
        if initial:
            # Subscribed: from now on Ctrl-C / SIGTERM ends the watch with what it printed (exit 0); before, it
            # interrupts the connection like any reading command (130).
            interrupts.stop = stop
        now = time.time()
        stamp = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        out.result({"vehicle": entry.name, "vehicle_id": entry.vehicle_id.hex(), "at": int(now), "initial": initial,
                    "lock": rep.lock.name.lower(), "door": rep.door.name.lower(),
                    "start_enabled": rep.start_enabled},
                   f"{stamp}  {entry.name}: {_report_text(rep)}{'  (now)' if initial else ''}")

    seen = await _app(args, note=out.note).watch(args.vehicle, stop, show)
    out.note(f"stopped watching after {seen} change{'' if seen == 1 else 's'}")
    return int(ExitCode.OK)


_COMMANDS: dict[str, Handler] = {
    "scan": cmd_scan,
    "pair": cmd_pair,
    "unlock": _fast("unlock"),
    "lock": _fast("lock"),
    "status": _fast("status"),
    "start": _fast("start"),
    "keys": cmd_keys,
    "revoke": cmd_revoke,
    "set-time": cmd_set_time,
    "audit": cmd_audit,
    "vehicles": cmd_vehicles,
    "forget": cmd_forget,
    "auto": cmd_auto,
    "request-share": cmd_request_share,
    "share": cmd_share,
    "import-share": cmd_import_share,
    "issue-code": cmd_issue_code,
    "edit": cmd_edit,
    "watch": cmd_watch,
}

__all__ = ["CLIENT_CODES", "LIST_COMMANDS", "Interrupted", "Printer", "amain", "build_parser", "installed_version",
           "main"]
