"""The `key-server` command line: init, run, pair, keys, revoke, audit, doctor, actuate, config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dkey_link.secretfile import InsecureSecretFile
from hardware import ActuatorError, actuate_test, build_lock, install_signal_failsafe
from protocol import Role

from .audit import AuditEvent, AuditLog
from .clock import GuardedClock
from .config import SAMPLE_CONFIG, Config, ConfigError, load_config
from .identity import IdentityExists, create_identity, load_identity
from .pairing import PairingTicket, issue_code
from .policy import parse_schedule, parse_when
from .store import KeyRecord, KeyStore, LastOwnerError, NoFreeSlot, StoreError, UnknownKey

log = logging.getLogger("key_server")


class Exit(enum.IntEnum):
    """key-server exit codes."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_INITIALISED = 3
    ALREADY_EXISTS = 4
    NO_SUCH_KEY = 5
    REFUSED = 6
    AUDIT_TAMPERED = 7
    INSECURE_FILE = 8
    CHECK_FAILED = 9


EPILOG = """\
exit codes:
  0  success
  1  error (the message says what failed and what to do)
  2  bad usage
  3  not initialised: run `key-server init` first
  4  already exists (init refuses to overwrite the vehicle key)
  5  no such key (or the name/prefix matches several)
  6  refused (e.g. revoking the last owner without --force)
  7  audit log verification failed: entries were edited or deleted
  8  a key file is readable by others: chmod 600 it
  9  doctor or actuate found a problem

files: <state-dir>/vehicle_key.pem (0600), <state-dir>/keys.db, <state-dir>/config.toml
state dir: --state-dir, else $DKEY_STATE_DIR, else /var/lib/dkey as root, else ~/.local/state/dkey
"""


class CliError(Exception):
    """A failure with a plain-word message and an exit code."""

    def __init__(self, message: str, code: Exit = Exit.ERROR) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------- helpers


def _open_store(cfg: Config) -> KeyStore:
    if not cfg.store_path.exists():
        raise CliError(f"no key store in {cfg.state_dir}: run `key-server --state-dir {cfg.state_dir} init` first",
                       Exit.NOT_INITIALISED)
    return KeyStore.open(cfg.store_path)


def _identity(cfg: Config):  # type: ignore[no-untyped-def]
    try:
        return load_identity(cfg.identity_path)
    except FileNotFoundError:
        raise CliError(f"no vehicle key at {cfg.identity_path}: run `key-server init` first",
                       Exit.NOT_INITIALISED) from None
    except InsecureSecretFile as exc:
        raise CliError(str(exc), Exit.INSECURE_FILE) from None


def _tz(cfg: Config) -> Any:
    if cfg.server.timezone:
        return ZoneInfo(cfg.server.timezone)
    return datetime.now().astimezone().tzinfo


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M")


def _key_json(rec: KeyRecord) -> dict[str, Any]:
    return {"key_id": rec.key_id.hex(), "name": rec.name, "role": rec.role.label, "valid_from": rec.valid_from,
            "valid_until": rec.valid_until, "schedule": rec.schedule, "created_at": rec.created_at,
            "last_used_at": rec.last_used_at, "revoked_at": rec.revoked_at}


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------------------------------- commands


def cmd_init(cfg: Config, args: argparse.Namespace) -> int:
    """Create the state directory, the vehicle key and the key store."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cfg.state_dir, 0o700)
    try:
        identity = create_identity(cfg.identity_path)
    except IdentityExists as exc:
        raise CliError(f"{exc}. To start over, move the state directory away first.", Exit.ALREADY_EXISTS) from None
    with KeyStore.open(cfg.store_path) as store:
        AuditLog(store).append(AuditEvent.ADMIN, ts=int(time.time()), detail={"action": "init"})
    config_file = cfg.state_dir / "config.toml"
    if not config_file.exists():
        text = SAMPLE_CONFIG if args.name is None else SAMPLE_CONFIG.replace('name = "dkey"', f'name = "{args.name}"')
        config_file.write_text(text)
    print(f"vehicle id {identity.key_id.hex()}  (state in {cfg.state_dir})")
    print("next: `key-server run` (or the systemd unit), then `key-server pair --role owner --name 'my phone'`")
    return Exit.OK


def cmd_pair(cfg: Config, args: argparse.Namespace) -> int:
    """Create a one-time pairing code (works while `run` is running: they share the store)."""
    identity = _identity(cfg)
    now = int(time.time())
    tz = _tz(cfg)
    with _open_store(cfg) as store:
        clock_now = max(now, GuardedClock(store).now())
        if args.list or args.cancel is not None:
            return _pairings(store, args, clock_now)
        try:
            ttl = parse_when(args.code_ttl or cfg.pairing.code_ttl, clock_now, tz) - clock_now
            valid_from = parse_when(args.valid_from, clock_now, tz) if args.valid_from else None
            valid_until = parse_when(args.expires, clock_now, tz, end_of_day=True) if args.expires else None
            schedule = parse_schedule(args.schedule) and args.schedule if args.schedule else None
        except ValueError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        if ttl <= 0:
            raise CliError("the code lifetime must be positive", Exit.USAGE)
        try:
            code, pairing = issue_code(store, identity.key_id, role=Role(args.role), name=args.name,
                                       expires_at=clock_now + ttl, key_valid_from=valid_from,
                                       key_valid_until=valid_until, schedule=schedule,
                                       attempts=cfg.pairing.attempts, now=clock_now)
        except NoFreeSlot:
            raise CliError("all 100 pairing slots are in use: cancel some with `key-server pair --list`") from None
        except (StoreError, ValueError) as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        AuditLog(store).append(AuditEvent.ADMIN, ts=clock_now,
                               detail={"action": "pair_code", "slot": pairing.slot, "role": args.role,
                                       "name": args.name})
    ticket = PairingTicket(code, identity.key_id, args.name)
    if args.json:
        print(json.dumps({"code": ticket.code, "uri": ticket.uri(), "slot": ticket.slot,
                          "expires_at": pairing.expires_at, "role": args.role, "name": args.name}))
        return Exit.OK
    print(f"one-time pairing code for {args.name!r} ({args.role}): {ticket.display}")
    print(f"valid until {_when(pairing.expires_at)}, {cfg.pairing.attempts} tries; on the device run:")
    print(f"    key-client pair {ticket.code}")
    if not args.no_qr:
        with contextlib.suppress(Exception):  # a QR code is a convenience; never fail pairing over it
            import segno

            segno.make(ticket.uri(), error="m").terminal(compact=True)
    return Exit.OK


def _pairings(store: KeyStore, args: argparse.Namespace, now: int) -> int:
    if args.cancel is not None:
        try:
            store.cancel_pairing(args.cancel)
        except StoreError as exc:
            raise CliError(str(exc), Exit.NO_SUCH_KEY) from None
        print(f"pairing code in slot {args.cancel:02d} cancelled")
        return Exit.OK
    pend = store.list_pairings(now)
    if args.json:
        print(json.dumps([{"slot": p.slot, "name": p.name, "role": p.role.label, "expires_at": p.expires_at,
                           "attempts_left": p.attempts_left} for p in pend]))
    elif not pend:
        print("no pending pairing codes")
    else:
        _print_table([[f"{p.slot:02d}", p.name, p.role.label, _when(p.expires_at), str(p.attempts_left)]
                      for p in pend], ["SLOT", "NAME", "ROLE", "EXPIRES", "TRIES"])
    return Exit.OK


def cmd_keys(cfg: Config, args: argparse.Namespace) -> int:
    """List enrolled keys."""
    with _open_store(cfg) as store:
        keys = store.list_keys()
    if not args.all:
        keys = [k for k in keys if not k.revoked]
    if args.json:
        print(json.dumps([_key_json(k) for k in keys]))
        return Exit.OK
    if not keys:
        print("no keys enrolled: `key-server pair --role owner --name 'my phone'`")
        return Exit.OK
    _print_table([[k.key_id.hex(), k.name, k.role.label, _when(k.valid_until) if k.valid_until else "never",
                   _when(k.last_used_at), "revoked " + _when(k.revoked_at) if k.revoked else "active"]
                  for k in keys], ["KEY ID", "NAME", "ROLE", "EXPIRES", "LAST USED", "STATE"])
    return Exit.OK


def cmd_revoke(cfg: Config, args: argparse.Namespace) -> int:
    """Revoke a key; committed to disk before this returns, effective for the server's next message."""
    with _open_store(cfg) as store:
        try:
            rec = store.find_key(args.key)
        except UnknownKey:
            raise CliError(f"no key matches {args.key!r}: see `key-server keys`", Exit.NO_SUCH_KEY) from None
        except StoreError as exc:
            raise CliError(str(exc), Exit.NO_SUCH_KEY) from None
        now = max(int(time.time()), GuardedClock(store).now())
        try:
            with store.transaction():
                store.revoke_key(rec.key_id, now, force=args.force)
                AuditLog(store).append(AuditEvent.REVOKE, ts=now, key_id=rec.key_id,
                                       detail={"by": "cli", "force": args.force})
        except LastOwnerError:
            raise CliError(f"{rec.name!r} is the last owner key; revoking it leaves nobody able to manage the "
                           "vehicle. Pair another owner first, or pass --force.", Exit.REFUSED) from None
    print(f"revoked {rec.key_id.hex()} ({rec.name}); a running server refuses it from its next message on")
    return Exit.OK


def cmd_audit(cfg: Config, args: argparse.Namespace) -> int:
    """Show or verify the hash-chained audit log."""
    with _open_store(cfg) as store:
        audit = AuditLog(store)
        if args.verify:
            verdict = audit.verify()
            if args.json:
                print(json.dumps({"ok": verdict.ok, "entries": verdict.entries, "first_bad_seq": verdict.first_bad_seq,
                                  "reason": verdict.reason}))
            else:
                print(f"audit log {'OK' if verdict.ok else 'TAMPERED'}: {verdict.entries} entries"
                      + ("" if verdict.ok else f"; first bad entry {verdict.first_bad_seq}: {verdict.reason}"))
            return Exit.OK if verdict.ok else Exit.AUDIT_TAMPERED
        entries = audit.tail(args.limit)
    if args.json:
        print(json.dumps([e.to_json() for e in entries]))
        return Exit.OK
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in dict(e.detail).items())
        print(f"{e.seq:6d}  {_when(e.ts)}  {str(e.event):12s} {e.key_id.hex() if e.key_id else '-':8s}  {detail}")
    return Exit.OK


def cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    """Print a sample config file with every option."""
    print(SAMPLE_CONFIG, end="")
    return Exit.OK


def cmd_actuate(cfg: Config, args: argparse.Namespace) -> int:
    """Pulse the lock once with no key, to test the wiring."""
    if not args.test:
        raise CliError("say `key-server actuate --test` to pulse the lock once with no key", Exit.USAGE)

    async def go() -> int:
        lock = build_lock(cfg.actuator)
        restore = install_signal_failsafe(lock)
        try:
            print(f"actuator {cfg.actuator.kind}: unlocking, relocking after {args.hold} s ...", flush=True)
            status = await actuate_test(lock, hold_s=args.hold)
        except ActuatorError as exc:
            print(f"actuator fault: {exc}", file=sys.stderr)
            return Exit.CHECK_FAILED
        else:
            print(f"done: lock {status.lock.label}, door {status.door.label}")
            return Exit.OK
        finally:
            await lock.aclose()
            restore()

    return asyncio.run(go())


def cmd_doctor(cfg: Config, args: argparse.Namespace) -> int:
    """Check the state directory, key files, store, audit chain, Bluetooth stack and GPIO."""
    from .doctor import run_checks

    checks = asyncio.run(run_checks(cfg))
    worst = 0
    for level, name, detail in checks:
        worst = max(worst, {"ok": 0, "warn": 1, "fail": 2}[level])
        if not args.json:
            print(f"[{level.upper():4s}] {name}: {detail}")
    if args.json:
        print(json.dumps([{"level": lv, "check": n, "detail": d} for lv, n, d in checks]))
    return Exit.CHECK_FAILED if worst == 2 else Exit.OK


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    """Serve the key protocol until SIGTERM/SIGINT."""
    from .runner import serve

    return asyncio.run(serve(cfg))


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="key-server", description="The vehicle side of the wearable digital key.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", type=Path, help="where the vehicle key, key store and config live")
    p.add_argument("--config", type=Path,
                   help="config file (default: <state-dir>/config.toml, else /etc/dkey/config.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create the vehicle key and key store (refuses to overwrite)")
    s.add_argument("--name", help="advertised BLE name to put in the new config file")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("run", help="serve the key protocol (foreground; use the systemd unit on a Pi)")
    s.add_argument("--radio", choices=["ble", "sim"], help="ble = BlueZ via bless; sim = local simulated radio")
    s.add_argument("--adapter", help="BlueZ adapter, e.g. hci0")
    s.add_argument("--name", help="advertised name")
    s.add_argument("--sim-dir", help="sim radio air directory")
    s.add_argument("--actuator", choices=["sim", "pulse", "two-line", "latched"], help="override [actuator] kind")
    s.add_argument("--challenge-ttl", type=float, help="seconds a challenge stays valid")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("pair", help="print a one-time pairing code (and QR code) for a new device")
    s.add_argument("--role", choices=Role.labels(), default="driver")
    s.add_argument("--name", default="new device", help="what to call the device in key lists")
    s.add_argument("--expires", help="key expiry: 2026-12-24, 2026-12-24T18:00, 3d, 12h ...")
    s.add_argument("--valid-from", help="key valid from (same formats)")
    s.add_argument("--schedule", help='weekly schedule, e.g. "Mon-Fri 08:00-18:00; Sat 10:00-14:00"')
    s.add_argument("--code-ttl", help="how long the code lives (default from config: 10m)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    s.add_argument("--list", action="store_true", help="list pending codes")
    s.add_argument("--cancel", type=int, metavar="SLOT", help="cancel the pending code in SLOT")
    s.set_defaults(func=cmd_pair)

    s = sub.add_parser("keys", help="list enrolled keys")
    s.add_argument("--all", action="store_true", help="include revoked keys")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keys)

    s = sub.add_parser("revoke", help="revoke one key (by hex key-id prefix or name), effective immediately")
    s.add_argument("key")
    s.add_argument("--force", action="store_true", help="allow revoking the last owner")
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("audit", help="show the audit log, or --verify its hash chain")
    s.add_argument("--verify", action="store_true")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("doctor", help="check adapter, BlueZ, D-Bus, permissions, key files, store and GPIO")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("actuate", help="test the lock wiring: --test pulses once with no key")
    s.add_argument("--test", action="store_true")
    s.add_argument("--hold", type=float, default=2.0, help="seconds before relocking")
    s.set_defaults(func=cmd_actuate)

    s = sub.add_parser("config", help="print a sample config file with every option")
    s.set_defaults(func=cmd_config)
    return p


def _apply_overrides(cfg: Config, args: argparse.Namespace) -> None:
    for opt in ("radio", "adapter", "name", "sim_dir", "challenge_ttl"):
        value = getattr(args, opt, None)
        if value is not None:
            setattr(cfg.server, opt, value)
    if getattr(args, "actuator", None):
        from dataclasses import replace

        cfg.actuator = replace(cfg.actuator, kind=args.actuator)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        cfg = load_config(args.config, args.state_dir)
        _apply_overrides(cfg, args)
    except (ConfigError, ActuatorError, ValueError) as exc:
        print(f"key-server: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    level = logging.DEBUG if args.verbose else getattr(logging, cfg.server.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(cfg, args))
    except CliError as exc:
        print(f"key-server: {exc}", file=sys.stderr)
        return int(exc.code)
    except InsecureSecretFile as exc:
        print(f"key-server: {exc}", file=sys.stderr)
        return Exit.INSECURE_FILE
    except StoreError as exc:
        print(f"key-server: key store error: {exc}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


__all__ = ["Exit", "build_parser", "main"]
