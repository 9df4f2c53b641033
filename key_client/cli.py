"""`key-client`: pair this device with vehicles, then unlock, lock, manage keys, or let proximity do it.

`main()` parses, runs `amain()` under one asyncio.run() and returns the exit code (errors.ExitCode). Tests
await `amain([...])` in their own loop with `--radio mock` after `radios.register_mock(air)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from dkey_link.contract import Advertisement, Central, RadioError
from protocol import (
    AuditRecord,
    Command,
    DecodeError,
    KeyInfo,
    KeyPair,
    Role,
    Status,
    StatusReport,
    decode_audit_page,
    decode_key_page,
    list_keys_args,
    parse_code,
    read_audit_args,
    revoke_args,
)

from . import driver
from .driver import Target, VehicleLink, connect_vehicle
from .errors import (
    ClientError,
    ConnectFailed,
    ExitCode,
    KeychainError,
    OutcomeUnknown,
    ProtocolViolation,
    Refused,
    TimedOut,
    VehicleNotFound,
)
from .keychain import Keychain, VehicleEntry, default_path, load_config
from .proximity import Action, ProximityPolicy, ProximityRunner
from .radios import KINDS, make_central

log = logging.getLogger("key_client.cli")

EXIT_TEXT = {
    ExitCode.OK: "done",
    ExitCode.ERROR: "other error (radio unavailable, local problem)",
    ExitCode.USAGE: "bad usage (unknown option, malformed code, missing opt-in)",
    ExitCode.DENIED: "the vehicle refused: revoked, expired, not permitted, wrong pairing code",
    ExitCode.NOT_FOUND: "no (matching) vehicle found in range",
    ExitCode.TIMED_OUT: "no answer, and the command was NOT delivered: safe to retry",
    ExitCode.OUTCOME_UNKNOWN: "the command was sent but no answer came: the vehicle MAY have acted;\n"
                              "check with `key-client status` (never retried automatically)",
    ExitCode.BUSY: "the vehicle is busy or rate-limiting: retry in a few seconds",
    ExitCode.KEYCHAIN: "keychain problem: no key for that vehicle, unsafe permissions, bad passphrase",
}

RELAY_WARNING = (
    "`auto` unlocks without you touching anything, so it is weaker against relay attacks: two radios "
    "forwarding the link can make the vehicle look close while you are away. Opt in with "
    "--i-understand-relay-risk (or `relay_risk_accepted = true` under [auto] in the keychain's config.toml)."
)

PAIR_TIMEOUT = 30.0  # pairing runs a PAKE on both sides: slower than a command on a Pi Zero


class UsageError(ClientError):
    """The command line asks for something that cannot be done as given."""

    exit_code = ExitCode.USAGE


# ---------------------------------------------------------------------- output


class Output:
    """Results on stdout (text, or one JSON object per result with --json); notes and errors on stderr."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def result(self, obj: dict[str, Any], text: str) -> None:
        """Print one result."""
        if self.json:
            print(json.dumps(obj, sort_keys=True), flush=True)
        else:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A remark for the person at the terminal (never on stdout, so --json output stays parseable)."""
        print(text, file=sys.stderr, flush=True)

    def error(self, exc: ClientError) -> None:
        """Report a failure: plain words on stderr; with --json also an object on stdout."""
        code = ExitCode(int(exc.exit_code))
        print(f"key-client: {exc}", file=sys.stderr, flush=True)
        if self.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": int(code), "exit": code.name.lower(),
                              "may_have_succeeded": bool(exc.may_have_succeeded),
                              "temporary": bool(exc.temporary)}, sort_keys=True), flush=True)


class Progress:
    """A spinner line on stderr while scanning/connecting (only on a TTY); with -v, plain log lines instead."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, *, verbose: bool) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.verbose = verbose
        self.message = ""
        self._task: asyncio.Task[None] | None = None

    def __call__(self, message: str) -> None:
        """The driver's on_progress callback."""
        self.message = message
        if not self.tty and self.verbose:
            print(f"key-client: {message}", file=self.stream, flush=True)

    async def __aenter__(self) -> Progress:
        if self.tty:
            self._task = asyncio.create_task(self._spin())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    async def _spin(self) -> None:
        for i in range(1 << 62):
            self.stream.write(f"\r\x1b[K{self.FRAMES[i % len(self.FRAMES)]} {self.message}")
            self.stream.flush()
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- parser


def _radio_kind(value: str) -> str:
    if value not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown radio {value!r} (choose ble or sim)")
    return value


def _epilog() -> str:
    pad = "\n" + " " * 22
    lines = ["exit codes:"] + [f"  {int(c):<3d}{c.name.lower():<17s}{EXIT_TEXT[c].replace(chr(10), pad)}"
                               for c in ExitCode]
    lines += [
        "",
        "environment: DKEY_KEYCHAIN (keychain dir), DKEY_RADIO (ble|sim), DKEY_SIM_DIR (sim air dir),",
        "DKEY_PASSPHRASE (passphrase for protected device keys).",
        "",
        "examples:",
        "  key-client pair 4212-3456         pair with the code `key-server pair` printed",
        "  key-client unlock                 unlock the only vehicle in the keychain",
        "  key-client --vehicle van lock     lock one of several",
        "  key-client --radio sim unlock     talk to `key-server run --radio sim` on this machine",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The key-client argument parser."""
    p = argparse.ArgumentParser(
        prog="key-client",
        description="A digital key for your vehicle: pair this device once, then unlock and lock over Bluetooth LE.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keychain", type=Path, help=f"keychain directory (default: $DKEY_KEYCHAIN or {default_path()})")
    p.add_argument("--radio", type=_radio_kind, metavar="{ble,sim}",
                   help="ble = this machine's Bluetooth (default; $DKEY_RADIO); sim = simulated radio")
    p.add_argument("--adapter", help="Bluetooth adapter, e.g. hci1 (Linux)")
    p.add_argument("--sim-dir", type=Path, help="sim radio directory (default: $DKEY_SIM_DIR or /tmp/dkey-sim-UID)")
    p.add_argument("--scan-time", type=float, default=10.0, metavar="S", help="seconds to look for vehicles (10)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv: debug)")
    # Also accepted after the command (`key-client unlock --vehicle van --json`): SUPPRESS keeps the
    # sub-parser from resetting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    for parser, top in ((p, True), (common, False)):
        parser.add_argument("--vehicle", default=None if top else argparse.SUPPRESS, metavar="NAME",
                            help="which vehicle (nickname or vehicle-id prefix) when the keychain holds several")
        parser.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="one JSON object per result on stdout")

    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    s = cmd("scan", "list vehicles in range with their signal strength")
    s.add_argument("--identify", action="store_true",
                   help="connect to each one to read the vehicle id it claims and match it to the keychain")
    s = cmd("pair", "pair with a vehicle using the one-time code (or dkey://pair QR text) from `key-server pair`")
    s.add_argument("code", help="8-digit code like 4212-3456, or the dkey://pair?... URI of the QR code")
    s.add_argument("--name", help="nickname for the vehicle (default: its advertised name)")
    s.add_argument("--passphrase", action="store_true",
                   help="protect the new device key with a passphrase (asked for, or $DKEY_PASSPHRASE)")
    cmd("unlock", "unlock the vehicle")
    cmd("lock", "lock the vehicle")
    cmd("status", "show lock, door and start-enable state")
    cmd("start", "enable the start output (if the vehicle has one wired)")
    cmd("keys", "list the keys enrolled on the vehicle (owner keys only)")
    s = cmd("revoke", "revoke a key on the vehicle, effective at once (owner keys only)")
    s.add_argument("key", help="hex key-id prefix or name, as `key-client keys` shows them")
    s.add_argument("--force", action="store_true", help="allow revoking the last owner key")
    s = cmd("audit", "read the vehicle's audit log (owner keys only)")
    s.add_argument("--limit", type=int, default=20, help="how many entries (20)")
    s.add_argument("--after", type=int, metavar="SEQ", help="entries after this sequence number (default: newest)")
    cmd("vehicles", "list the vehicles in this device's keychain")
    s = cmd("forget", "delete this device's key for a vehicle (revoke it on the vehicle too)")
    s.add_argument("name", metavar="VEHICLE")
    s = cmd("auto", "passive entry: unlock when near, lock when you walk away (weaker against relay attacks)")
    s.add_argument("--i-understand-relay-risk", action="store_true", help="opt in (see the warning in docs)")
    s.add_argument("--unlock-rssi", type=int, help="unlock at or above this RSSI, dBm (-60)")
    s.add_argument("--lock-rssi", type=int, help="lock below this RSSI, dBm (-75)")
    s.add_argument("--dwell", type=float, help="seconds the signal must stay strong before unlocking (2)")
    s.add_argument("--lost", type=float, help="seconds the signal must stay weak or gone before locking (5)")
    s.add_argument("--interval", type=float, help="seconds between readings (1)")
    s.add_argument("--for", dest="duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    return p


# ---------------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """Run key-client; returns the exit code."""
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        print("key-client: interrupted", file=sys.stderr)
        return 130


async def amain(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command in the running loop; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    _setup_logging(args.verbose)
    out = Output(args.json)
    try:
        return await _COMMANDS[args.command](args, out)
    except ClientError as exc:
        out.error(exc)
        return int(exc.exit_code)
    except RadioError as exc:
        err = ClientError(f"radio problem: {exc}")
        out.error(err)
        return int(err.exit_code)
    except Exception as exc:
        # A backend library's own exception (bleak, D-Bus) or a bug: one line for people, the trace with -vv.
        log.debug("unexpected error", exc_info=True)
        err = ClientError(f"unexpected error: {exc!r} (run with -vv for details)")
        out.error(err)
        return int(err.exit_code)


def _setup_logging(verbose: int) -> None:
    logger = logging.getLogger("key_client")
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("key-client: %(message)s"))
        logger.addHandler(handler)


# ---------------------------------------------------------------------- shared plumbing


def _radio(args: argparse.Namespace) -> Central:
    kind = args.radio or os.environ.get("DKEY_RADIO") or "ble"
    if kind not in ("ble", "sim") and not (kind == "mock" and args.radio == "mock"):
        raise UsageError(f"DKEY_RADIO={kind!r} is not a radio: use ble or sim")
    return make_central(kind, adapter=args.adapter, sim_dir=args.sim_dir)


def _keychain(args: argparse.Namespace, *, create: bool = True) -> Keychain:
    return Keychain.open(args.keychain, create=create)


async def _passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    """$DKEY_PASSPHRASE, else ask on the terminal; KeychainError if neither is possible."""
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


async def _device_key(kc: Keychain, entry: VehicleEntry) -> KeyPair:
    secret = await _passphrase(f"passphrase for the key of {entry.name}: ") if entry.encrypted else None
    return kc.load_key(entry, secret)


async def _connect(args: argparse.Namespace, central: Central, device: KeyPair, target: Target,
                   hint: str | None = None) -> VehicleLink:
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        return await connect_vehicle(central, device, target, scan_time=args.scan_time, prefer_address=hint,
                                     on_progress=say)


async def _open_adv(central: Central, adv: Advertisement, device: KeyPair, target: Target,
                    attempts: int = driver.CONNECT_ATTEMPTS) -> VehicleLink:
    """Connect to one chosen advertiser (retrying transient faults) and wait for its challenge."""
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            # driver.open_link is the per-advertiser step of connect_vehicle; we need it alone because
            # pairing and --identify pick the advertiser themselves, from a scan they already did.
            return await driver.open_link(central, adv, device, target, 10.0)
        except (RadioError, TimedOut, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.3 * attempt)
    raise ConnectFailed(f"could not connect to {adv.name or adv.address}: {last}")


def _when(ts: int | None) -> str:
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


# ---------------------------------------------------------------------- fast-path commands

_DONE = {Command.UNLOCK: "unlocked", Command.LOCK: "locked", Command.START: "start enabled on",
         Command.STATUS: "status of"}


def _report_json(entry: VehicleEntry, cmd: Command, rep: StatusReport) -> dict[str, Any]:
    return {"ok": True, "vehicle": entry.name, "vehicle_id": entry.vehicle_id.hex(), "command": cmd.name.lower(),
            "lock": rep.lock.name.lower(), "door": rep.door.name.lower(), "start_enabled": rep.start_enabled}


def _report_text(rep: StatusReport) -> str:
    return (f"lock {rep.lock.name.lower()}, door {rep.door.name.lower()}, "
            f"start {'enabled' if rep.start_enabled else 'disabled'}")


async def _run_command(kc: Keychain, entry: VehicleEntry, args: argparse.Namespace, central: Central,
                       device: KeyPair, cmd: Command) -> tuple[StatusReport, VehicleEntry]:
    """Connect, run one fast-path command once (never resent if its outcome is unknown), disconnect."""
    link = await _connect(args, central, device, Target(entry.vehicle_public_key, entry.vehicle_id),
                          entry.address_hint)
    try:
        result = await link.command(cmd)
    except OutcomeUnknown as exc:
        raise OutcomeUnknown(f"{exc} (key-client never resends a command whose outcome is unknown)") from exc
    finally:
        await link.close()
    entry = kc.remember_address(entry, link.advertisement.address)
    try:
        return StatusReport.decode(result.data), entry
    except DecodeError as exc:
        raise ProtocolViolation(f"the vehicle's signed answer does not parse: {exc}") from exc


def _fast(cmd: Command) -> Callable[[argparse.Namespace, Output], Awaitable[int]]:
    async def run(args: argparse.Namespace, out: Output) -> int:
        kc = _keychain(args)
        entry = kc.select(args.vehicle)
        device = await _device_key(kc, entry)
        central = _radio(args)
        try:
            rep, entry = await _run_command(kc, entry, args, central, device, cmd)
        finally:
            await central.aclose()
        text = f"{entry.name}: {_report_text(rep)}" if cmd is Command.STATUS else \
            f"{_DONE[cmd]} {entry.name} ({_report_text(rep)})"
        out.result(_report_json(entry, cmd, rep), text)
        return int(ExitCode.OK)

    return run


# ---------------------------------------------------------------------- owner commands


async def _owner_session(args: argparse.Namespace, action: Callable[[VehicleLink, VehicleEntry], Awaitable[int]]
                         ) -> int:
    """Connect, open the confidential session, run `action`, disconnect."""
    kc = _keychain(args)
    entry = kc.select(args.vehicle)
    device = await _device_key(kc, entry)
    central = _radio(args)
    try:
        link = await _connect(args, central, device, Target(entry.vehicle_public_key, entry.vehicle_id),
                              entry.address_hint)
        try:
            try:
                await link.open_secure()
                code = await action(link, entry)
            except Refused as exc:
                if exc.status is Status.NOT_PERMITTED and entry.role != "owner":
                    raise Refused(exc.status, authenticated=exc.authenticated,
                                  message=f"this device holds a {entry.role} key for {entry.name}: "
                                          "only owner keys can manage keys and read the audit log") from exc
                raise
        finally:
            await link.close()
        kc.remember_address(entry, link.advertisement.address)
        return code
    finally:
        await central.aclose()


async def _list_keys(link: VehicleLink) -> list[KeyInfo]:
    keys: list[KeyInfo] = []
    while True:
        total, page = decode_key_page((await link.secure(Command.LIST_KEYS, list_keys_args(len(keys), 50))).data)
        keys += page
        # A page holds what fits the size cap, so advance by what came, not by what was asked.
        if not page or len(keys) >= total:
            return keys


def _key_json(k: KeyInfo, mine: bool) -> dict[str, Any]:
    return {"key_id": k.key_id.hex(), "name": k.name, "role": Role.label_of(k.role),
            "created_at": k.created_at, "valid_from": k.valid_from, "valid_until": k.valid_until,
            "last_used_at": k.last_used_at, "revoked_at": k.revoked_at, "this_device": mine}


def _key_state(k: KeyInfo, now: float) -> str:
    if k.revoked_at is not None:
        return f"revoked {_when(k.revoked_at)}"
    if k.valid_until is not None and k.valid_until < now:
        return "expired"
    return "active"


async def cmd_keys(args: argparse.Namespace, out: Output) -> int:
    """`keys`: the vehicle's key list over the confidential session."""

    async def action(link: VehicleLink, entry: VehicleEntry) -> int:
        keys = await _list_keys(link)
        now = time.time()
        if not out.json:
            print(f"{len(keys)} keys on {entry.name}:")
        for k in keys:
            mine = k.key_id == entry.key_id
            out.result(_key_json(k, mine),
                       f"  {k.key_id.hex()}  {Role.label_of(k.role):6s}  {_key_state(k, now):24s}  "
                       f"last used {_when(k.last_used_at):16s}  {k.name}{'  (this device)' if mine else ''}")
        return int(ExitCode.OK)

    return await _owner_session(args, action)


def resolve_key(keys: Sequence[KeyInfo], wanted: str) -> KeyInfo:
    """The one key `wanted` names (hex key-id prefix or name; active keys first); UsageError otherwise."""
    want = wanted.strip()
    active = [k for k in keys if k.revoked_at is None]
    for pool in (active, list(keys)):
        by_name = [k for k in pool if k.name.casefold() == want.casefold()]
        by_id = [k for k in pool if len(want) >= 2 and k.key_id.hex().startswith(want.lower())]
        found = by_name or by_id
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{k.key_id.hex()} ({k.name})" for k in found)
            raise UsageError(f"{want!r} matches several keys: {listed}; give more of the key id")
    raise UsageError(f"no key called {want!r} on the vehicle (see `key-client keys`)")


async def cmd_revoke(args: argparse.Namespace, out: Output) -> int:
    """`revoke KEY`: resolve KEY from the vehicle's key list and revoke it."""

    async def action(link: VehicleLink, entry: VehicleEntry) -> int:
        key = resolve_key(await _list_keys(link), args.key)
        obj = {"ok": True, "vehicle": entry.name, "key_id": key.key_id.hex(), "name": key.name}
        if key.revoked_at is not None:
            out.result({**obj, "already_revoked": True}, f"{key.key_id.hex()} ({key.name}) was already revoked")
            return int(ExitCode.OK)
        try:
            await link.secure(Command.REVOKE_KEY, revoke_args(key.key_id, args.force))
        except Refused as exc:
            if exc.status is Status.NOT_PERMITTED:
                raise Refused(exc.status, authenticated=exc.authenticated,
                              message=f"{key.name} is the last owner key: revoking it would lock every owner "
                                      "out; add another owner first, or use --force") from exc
            raise
        mine = key.key_id == entry.key_id
        out.result({**obj, "revoked": True, "this_device": mine},
                   f"revoked {key.key_id.hex()} ({key.name}) on {entry.name}; it is refused from now on"
                   + ("\nthat was this device's own key: it can no longer open the vehicle" if mine else ""))
        return int(ExitCode.OK)

    return await _owner_session(args, action)


def _audit_json(r: AuditRecord) -> dict[str, Any]:
    try:
        detail: Any = json.loads(r.detail)
    except ValueError:
        detail = r.detail
    return {"seq": r.seq, "ts": r.ts, "event": r.event, "key_id": r.key_id.hex() if r.key_id else None,
            "detail": detail, "hash": r.entry_hash.hex()}


async def cmd_audit(args: argparse.Namespace, out: Output) -> int:
    """`audit`: the newest --limit entries (or those after --after) of the vehicle's audit log."""
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")

    async def action(link: VehicleLink, entry: VehicleEntry) -> int:
        limit = args.limit
        after = args.after
        if after is None:
            # The page total is the newest sequence number: one small read tells where "the last N" start.
            total, _ = decode_audit_page((await link.secure(Command.READ_AUDIT, read_audit_args(0, 1))).data)
            after = max(0, total - limit)
        records: list[AuditRecord] = []
        while len(records) < limit:
            _, page = decode_audit_page(
                (await link.secure(Command.READ_AUDIT, read_audit_args(after, min(100, limit - len(records))))).data)
            if not page:
                break
            records += page
            after = page[-1].seq
        for r in records:
            out.result(_audit_json(r), f"{r.seq:6d}  {_when(r.ts)}  {r.event:12s} "
                                       f"{r.key_id.hex() if r.key_id else '-':8s}  {r.detail}")
        if not records:
            out.note("no audit entries")
        return int(ExitCode.OK)

    return await _owner_session(args, action)


# ---------------------------------------------------------------------- keychain commands


async def cmd_vehicles(args: argparse.Namespace, out: Output) -> int:
    """`vehicles`: what this device's keychain holds."""
    kc = _keychain(args, create=False)
    entries = kc.vehicles()
    if not entries:
        out.note(f"no vehicles in {kc.path}: pair with `key-client pair CODE`")
    for e in entries:
        out.result(_entry_json(e), f"{e.name:20s} {e.vehicle_id.hex()}  {e.role:6s}  "
                                   f"{_validity(e.valid_from, e.valid_until):24s}  key {e.key_id.hex()}"
                                   f"{'  (passphrase)' if e.encrypted else ''}")
    return int(ExitCode.OK)


async def cmd_forget(args: argparse.Namespace, out: Output) -> int:
    """`forget VEHICLE`: drop the local key; the vehicle keeps listing it until revoked."""
    kc = _keychain(args, create=False)
    e = kc.forget(args.name)
    out.result({"ok": True, "forgot": e.name, "vehicle_id": e.vehicle_id.hex(), "key_id": e.key_id.hex()},
               f"forgot {e.name}: this device's key {e.key_id.hex()} is deleted here.\n"
               f"The vehicle still lists it until an owner revokes it: `key-server revoke {e.key_id.hex()}`.")
    return int(ExitCode.OK)


# ---------------------------------------------------------------------- scan and pair


async def cmd_scan(args: argparse.Namespace, out: Output) -> int:
    """`scan`: vehicles in range; --identify connects to read each one's claimed vehicle id."""
    kc = _keychain(args, create=False)
    central = _radio(args)
    try:
        async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
            say(f"scanning for vehicles ({args.scan_time:.0f} s)")
            found = await central.scan(args.scan_time)
            ids: dict[str, bytes | None] = {}
            if args.identify:
                probe = KeyPair.generate()  # throwaway: identifying sends nothing signed
                for adv in found:
                    say(f"identifying {adv.name or adv.address}")
                    ids[adv.address] = await _identify(central, adv, probe)
    finally:
        await central.aclose()
    if not found:
        raise VehicleNotFound(f"no vehicle found in {args.scan_time:.0f} s: is key-server running and in range?")
    for adv in found:
        obj: dict[str, Any] = {"name": adv.name, "address": adv.address, "rssi": adv.rssi}
        if args.identify:
            vid = ids.get(adv.address)
            entry = kc.find_vehicle_id(vid) if vid else None
            obj.update(vehicle_id=vid.hex() if vid else None, keychain=entry.name if entry else None)
            mark = (f"{vid.hex()}  " if vid else "(no answer)  ") + (f"= {entry.name} in keychain" if entry else "")
        else:
            hinted = [e.name for e in kc.vehicles() if e.address_hint == adv.address]
            obj.update(last_seen_as=hinted[0] if hinted else None)
            mark = f"last seen as {hinted[0]} (unverified: --identify)" if hinted else ""
        out.result(obj, f"{adv.name or '?':20s} {adv.rssi:4d} dBm  {adv.address}  {mark}".rstrip())
    if args.identify and not out.json:
        out.note("ids are as each vehicle claims them; unlock/lock verify them against the pinned vehicle key")
    return int(ExitCode.OK)


async def _identify(central: Central, adv: Advertisement, probe: KeyPair) -> bytes | None:
    """The vehicle id in `adv`'s challenge (a claim, not proof), or None if it does not answer."""
    try:
        link = await driver.open_link(central, adv, probe, Target(None), 5.0)
    except (ClientError, RadioError, TimeoutError) as exc:
        log.info("could not identify %s: %s", adv.address, exc)
        return None
    try:
        return link.session.challenge_vehicle_id
    finally:
        await link.close()


async def cmd_pair(args: argparse.Namespace, out: Output) -> int:
    """`pair CODE`: run the PAKE with the vehicle showing CODE and store what it tells us."""
    try:
        code, qr_vehicle = parse_code(args.code)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    kc = _keychain(args)
    if qr_vehicle is not None and (have := kc.find_vehicle_id(qr_vehicle)) is not None:
        raise KeychainError(f"this device already holds a key for that vehicle ({have.name}); "
                            f"`key-client forget {have.name}` first to pair again")
    if args.name is not None and any(e.name.casefold() == args.name.casefold() for e in kc.vehicles()):
        raise KeychainError(f"the keychain already has a vehicle called {args.name!r}")
    secret = await _passphrase("passphrase for the new key: ", confirm=True) if args.passphrase else None
    device = kc.new_device_key(secret)  # on disk before the vehicle enrols it: an enrolled key is never lost
    paired = None
    central = _radio(args)
    try:
        if qr_vehicle is not None:
            # The QR code names the vehicle: connect only to the one whose challenge carries that id.
            link = await _connect(args, central, device, Target(None, qr_vehicle))
        else:
            link = await _pick_for_pairing(args, central, device, out)
        try:
            vid = link.session.challenge_vehicle_id or b""
            if (have := kc.find_vehicle_id(vid)) is not None:
                # Checked before the code is used, so the code stays good for another device.
                raise KeychainError(f"this device already holds a key for {link.advertisement.name or vid.hex()} "
                                    f"({have.name}); `key-client forget {have.name}` first to pair again")
            async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
                say(f"pairing with {link.advertisement.name or link.advertisement.address}")
                paired = await link.pair(code, int(code[:2]), timeout=PAIR_TIMEOUT)
        finally:
            await link.close()
    finally:
        await central.aclose()
        if paired is None:
            kc.discard_device_key(device)
    assert paired is not None
    entry = kc.add(device, paired, name=args.name, advertised_name=link.advertisement.name,
                   address=link.advertisement.address, encrypted=secret is not None)
    out.result({"ok": True, **_entry_json(entry)},
               f"paired with {entry.name} (vehicle id {entry.vehicle_id.hex()}) as {entry.role}, "
               f"{_validity(entry.valid_from, entry.valid_until)}; this device's key id is {entry.key_id.hex()}")
    return int(ExitCode.OK)


async def _pick_for_pairing(args: argparse.Namespace, central: Central, device: KeyPair, out: Output
                            ) -> VehicleLink:
    """A bare code does not name the vehicle: use the only one in range, else the strongest, and say so."""
    async with Progress(sys.stderr, verbose=args.verbose > 0) as say:
        say(f"scanning for vehicles ({args.scan_time:.0f} s)")
        found = await central.scan(args.scan_time)
        if not found:
            raise VehicleNotFound(f"no vehicle found in {args.scan_time:.0f} s: is key-server running and in range?")
        adv = found[0]  # scans come strongest first
        if len(found) > 1:
            others = ", ".join(f"{a.name or a.address} ({a.rssi} dBm)" for a in found[1:])
            out.note(f"{len(found)} vehicles in range; pairing with the strongest signal: {adv.name or adv.address} "
                     f"({adv.rssi} dBm), not {others}. To choose, scan the QR code or pass its dkey://pair text.")
        say(f"connecting to {adv.name or adv.address}")
        return await _open_adv(central, adv, device, Target(None))


# ---------------------------------------------------------------------- auto (proximity)


def _auto_settings(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, float]:
    def pick(flag: float | None, key: str, default: float) -> float:
        if flag is not None:
            return flag
        value = cfg.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise UsageError(f"config.toml [auto] {key} must be a number")
        return float(value)

    return {"unlock_rssi": pick(args.unlock_rssi, "unlock_rssi", -60),
            "lock_rssi": pick(args.lock_rssi, "lock_rssi", -75),
            "dwell": pick(args.dwell, "dwell", 2.0), "lost": pick(args.lost, "lost", 5.0),
            "interval": pick(args.interval, "interval", 1.0)}


async def cmd_auto(args: argparse.Namespace, out: Output) -> int:
    """`auto`: unlock/lock by proximity until Ctrl-C/SIGTERM or --for elapses."""
    kc = _keychain(args)
    cfg = load_config(kc.path).get("auto", {})
    if not (args.i_understand_relay_risk or cfg.get("relay_risk_accepted") is True):
        raise UsageError(RELAY_WARNING)
    s = _auto_settings(args, cfg)
    try:
        policy = ProximityPolicy(int(s["unlock_rssi"]), int(s["lock_rssi"]), s["dwell"], s["lost"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    entry = kc.select(args.vehicle)
    device = await _device_key(kc, entry)
    central = _radio(args)
    state = {"entry": entry}

    async def act(action: Action) -> bool:
        cmd = Command.UNLOCK if action is Action.UNLOCK else Command.LOCK
        try:
            rep, state["entry"] = await _run_command(kc, state["entry"], args, central, device, cmd)
        except OutcomeUnknown as exc:
            # Never resend: count it as done. The next action is the opposite one, which is safe either way.
            out.note(f"{action.value}: {exc}")
            out.result({"ok": False, "event": action.value, "vehicle": entry.name, "outcome": "unknown"},
                       f"{action.value} {entry.name}: outcome unknown (not retried)")
            return True
        except (TimedOut, ConnectFailed, VehicleNotFound) as exc:
            out.note(f"{action.value} not delivered, will try again: {exc}")
            return False
        except Refused as exc:
            if exc.temporary or exc.status is Status.DOOR_OPEN:
                out.note(f"{action.value} refused for now, will try again: {exc}")
                return False
            raise  # revoked, expired, not permitted: stop passive entry
        out.result({**_report_json(state["entry"], cmd, rep), "event": action.value},
                   f"{_DONE[cmd]} {entry.name} ({_report_text(rep)})")
        return True

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    timer = loop.call_later(args.duration, stop.set) if args.duration is not None else None
    try:
        if state["entry"].address_hint is None:
            # Advertisements carry no authenticated id: learn the vehicle's address from one verified
            # exchange (a status read), then follow the RSSI of that address.
            out.note(f"finding {entry.name} once to learn its address")
            rep, state["entry"] = await _run_command(kc, entry, args, central, device, Command.STATUS)
            out.result(_report_json(state["entry"], Command.STATUS, rep), f"{entry.name}: {_report_text(rep)}")
        out.note(f"auto for {entry.name}: unlock at >= {policy.unlock_rssi} dBm held {policy.dwell_s:g} s, "
                 f"lock below {policy.lock_rssi} dBm (or gone) for {policy.lost_s:g} s. Ctrl-C stops.")
        runner = ProximityRunner(central, policy, act, match=lambda adv: adv.address == state["entry"].address_hint,
                                 interval=s["interval"], scan_window=min(1.0, max(0.1, s["interval"])))
        await runner.run(stop)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await central.aclose()
    return int(ExitCode.OK)


_COMMANDS: dict[str, Callable[[argparse.Namespace, Output], Awaitable[int]]] = {
    "scan": cmd_scan,
    "pair": cmd_pair,
    "unlock": _fast(Command.UNLOCK),
    "lock": _fast(Command.LOCK),
    "status": _fast(Command.STATUS),
    "start": _fast(Command.START),
    "keys": cmd_keys,
    "revoke": cmd_revoke,
    "audit": cmd_audit,
    "vehicles": cmd_vehicles,
    "forget": cmd_forget,
    "auto": cmd_auto,
}

__all__ = ["EXIT_TEXT", "UsageError", "amain", "build_parser", "main", "resolve_key"]
