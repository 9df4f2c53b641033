"""The `key-server` command line: init, run, pair, keys, revoke, rotate-secret, edit, audit, doctor, actuate, config,
print-file.

Each command is a thin shell over the use cases (keyadmin.py, enrollment.py) or the runner; every failure ends
as one line on stderr and an exit code from dkey_link.exit_codes (cli_errors.explain), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn

from dkey_link.exit_codes import ExitCode, help_table
from hardware import ActuatorError, actuate_test, build_lock, install_signal_failsafe
from protocol import DEFAULT_CHALLENGE_TTL, AdSecret, Role

from .audit import MAX_READ, AuditEvent, AuditLog
from .cli_errors import CliError, explain
from .clock import GuardedClock
from .config import CHALLENGE_TTL_MAX, CHALLENGE_TTL_MIN, SAMPLE_CONFIG, Config, ConfigError, load_config, override
from .deploy_files import DEPLOY_FILES, deploy_file
from .enrollment import MAX_ATTEMPTS, Enrollment
from .identity import IdentityExists, create_identity
from .keyadmin import UNCHANGED, KeyAdmin, Unchanged
from .pairing import PairingTicket
from .policy import parse_schedule, parse_when
from .radio import check_advertised_name
from .runner import load_vehicle, missing_store, schedule_zone
from .store import (
    PAIRING_SLOTS,
    AlreadyRevoked,
    KeyRecord,
    KeyStore,
    LastOwnerError,
    NoFreeSlot,
    StoreError,
    UnknownKey,
)
from .timezone import local_zone

log = logging.getLogger("key_server")

RADIOS: Final = ("ble", "sim")
MAX_HOLD_S: Final = 60.0  # actuate --test: longer than any sane strike hold, short enough to notice a typo

# The part of the shared table key-server can return (never TIMED_OUT, OUTCOME_UNKNOWN or BUSY: no radio peer).
SERVER_EXIT_CODES: Final = (
    ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.DENIED, ExitCode.NOT_FOUND, ExitCode.KEYS,
    ExitCode.NOT_INITIALISED, ExitCode.ALREADY_EXISTS, ExitCode.AUDIT_TAMPERED, ExitCode.CHECK_FAILED,
    ExitCode.CONFIG, ExitCode.STORE_UNUSABLE, ExitCode.HARDWARE_UNAVAILABLE, ExitCode.INTERRUPTED,
)

EPILOG = help_table(SERVER_EXIT_CODES) + """

environment:
  DKEY_STATE_DIR  state directory (--state-dir wins over it)
  DKEY_RADIO      ble | sim: the radio `run` serves (--radio, else $DKEY_RADIO, else [server] radio)
  DKEY_SIM_DIR    sim radio air directory (--sim-dir, else $DKEY_SIM_DIR, else [server] sim_dir)

files: <state-dir>/vehicle_key.pem (0600), <state-dir>/keys.db (0600; only init creates it);
       the state dir must not be writable by others (init makes it 0700)
state dir: --state-dir, else $DKEY_STATE_DIR, else /var/lib/dkey as root or as the user owning it (the service
       user), else ~/.local/state/dkey
config: --config FILE, else whichever of <state-dir>/config.toml and /etc/dkey/config.toml exists (both: an
       error, never a silent pick), else the defaults (simulated lock); init writes <state-dir>/config.toml only
       when neither exists
"""


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _open_store(cfg: Config) -> Iterator[KeyStore]:
    if not cfg.store_path.exists():
        raise CliError(missing_store(cfg), ExitCode.NOT_INITIALISED)
    with KeyStore.open(cfg.store_path) as store:
        yield store


def _admin(store: KeyStore) -> KeyAdmin:
    return KeyAdmin(store, AuditLog(store), GuardedClock(store))


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M")


def _key_json(rec: KeyRecord, now: int) -> dict[str, Any]:
    return {"key_id": rec.key_id.hex(), "name": rec.name, "role": rec.role.label, "state": rec.state(now),
            "valid_from": rec.valid_from, "valid_until": rec.valid_until, "schedule": rec.schedule,
            "via": rec.via, "enrolled_by": rec.enrolled_by.hex() if rec.enrolled_by is not None else None,
            "share_serial": rec.share_serial.hex() if rec.share_serial is not None else None,
            "created_at": rec.created_at, "last_used_at": rec.last_used_at, "revoked_at": rec.revoked_at}


def _window(rec: KeyRecord) -> str:
    """The validity window as a person reads it: "always", "until T", "from T", "T - T"."""
    if rec.valid_from is None and rec.valid_until is None:
        return "always"
    if rec.valid_from is None:
        return f"until {_when(rec.valid_until)}"
    if rec.valid_until is None:
        return f"from {_when(rec.valid_from)}"
    return f"{_when(rec.valid_from)} - {_when(rec.valid_until)}"


def _via(rec: KeyRecord, names: dict[bytes, str]) -> str:
    """How the key was enrolled and by which owner key (its name when the store still knows it)."""
    if rec.enrolled_by is None:
        return rec.via
    return f"{rec.via} by {names.get(rec.enrolled_by, rec.enrolled_by.hex())}"


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
        raise CliError(f"{exc}. To start over, move the state directory away first.",
                       ExitCode.ALREADY_EXISTS) from None
    with KeyStore.open(cfg.store_path, create=True) as store:  # the one command that may create a store
        AuditLog(store).append(AuditEvent.ADMIN, ts=GuardedClock(store).now(), detail={"action": "init"})
    config_file = cfg.state_dir / "config.toml"
    if cfg.source is not None:
        # A config exists already (--config, /etc/dkey/config.toml): a second one in the state dir would shadow it
        # or make the two ambiguous (config.find_config), so init writes none.
        print(f"configuration: {cfg.source}")
        if args.name is not None:
            print(f"--name not written anywhere: set [server] name = \"{args.name}\" in {cfg.source}")
    elif not config_file.exists():
        # args.name passed check_advertised_name: it cannot break out of the TOML string.
        text = SAMPLE_CONFIG if args.name is None else SAMPLE_CONFIG.replace('name = "dkey"', f'name = "{args.name}"')
        config_file.write_text(text)
    print(f"vehicle id {identity.key_id.hex()}  (state in {cfg.state_dir})")
    print("next: `key-server run` (or the systemd unit), then `key-server pair --role owner --name 'my phone'`")
    return ExitCode.OK


def cmd_pair(cfg: Config, args: argparse.Namespace) -> int:
    """Create a one-time pairing code (works while `run` is running: they share the store)."""
    identity = load_vehicle(cfg)
    tz = schedule_zone(cfg) or local_zone()
    attempts = cfg.pairing.attempts
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise CliError(f"configuration error: [pairing] attempts = {attempts}: allowed 1..{MAX_ATTEMPTS}",
                       ExitCode.CONFIG)
    with _open_store(cfg) as store:
        enrollment = Enrollment(store, AuditLog(store), GuardedClock(store), identity.key_id)
        if args.list or args.cancel is not None:
            return _pairings(enrollment, args)
        now = enrollment.clock.now()
        try:
            expires_at = parse_when(args.code_ttl or cfg.pairing.code_ttl, now, tz)
            valid_from = parse_when(args.valid_from, now, tz) if args.valid_from else None
            valid_until = parse_when(args.expires, now, tz, end_of_day=True) if args.expires else None
            if args.schedule:
                parse_schedule(args.schedule)  # refuse it here, with its reason, rather than at the first unlock
            schedule: str | None = args.schedule or None
            ticket, pairing = enrollment.issue(role=Role(args.role), name=args.device_name, expires_at=expires_at,
                                               key_valid_from=valid_from, key_valid_until=valid_until,
                                               schedule=schedule, attempts=attempts)
        except NoFreeSlot:
            raise CliError(f"all {PAIRING_SLOTS} pairing slots are in use: "
                           "cancel some (`key-server pair --list`, then --cancel SLOT)") from None
        except (StoreError, ValueError) as exc:
            raise CliError(str(exc), ExitCode.USAGE) from None
    if args.json:
        print(json.dumps({"code": ticket.code, "uri": ticket.uri(), "slot": ticket.slot,
                          "expires_at": pairing.expires_at, "role": args.role, "name": args.device_name}))
        return ExitCode.OK
    _show_ticket(ticket, args, pairing.expires_at, attempts)
    return ExitCode.OK


def _show_ticket(ticket: PairingTicket, args: argparse.Namespace, expires_at: int, attempts: int) -> None:
    print(f"one-time pairing code for {args.device_name!r} ({args.role}): {ticket.display}")
    print(f"valid until {_when(expires_at)}, {attempts} tries; on the device run:")
    print(f"    key-client pair {ticket.code}")
    if not args.no_qr:
        with contextlib.suppress(Exception):  # a QR code is a convenience; never fail pairing over it
            import segno

            segno.make(ticket.uri(), error="m").terminal(compact=True)


def _pairings(enrollment: Enrollment, args: argparse.Namespace) -> int:
    if args.cancel is not None:
        try:
            enrollment.cancel(args.cancel)
        except StoreError as exc:
            raise CliError(str(exc), ExitCode.NOT_FOUND) from None
        print(f"pairing code in slot {args.cancel:02d} cancelled")
        return ExitCode.OK
    pend = enrollment.pending()
    if args.json:
        print(json.dumps([{"slot": p.slot, "name": p.name, "role": p.role.label, "expires_at": p.expires_at,
                           "attempts_left": p.attempts_left, "wrong_attempts": p.failures} for p in pend]))
    elif not pend:
        print("no pending pairing codes")
    else:
        # WRONG counts tries that ended without a key (a wrong code, or a device that left mid-pairing): a code
        # the owner has not tried yet that shows some is being guessed at; cancel it and issue a new one.
        _print_table([[f"{p.slot:02d}", p.name, p.role.label, _when(p.expires_at), str(p.attempts_left),
                       str(p.failures)] for p in pend], ["SLOT", "NAME", "ROLE", "EXPIRES", "TRIES", "WRONG"])
    return ExitCode.OK


def cmd_keys(cfg: Config, args: argparse.Namespace) -> int:
    """List enrolled keys with their state at the guarded time, window, schedule and enrolment."""
    with _open_store(cfg) as store:
        admin = _admin(store)
        everyone = admin.keys()
        now = admin.clock.now()
    keys = everyone if args.all else [k for k in everyone if not k.revoked]
    if args.json:
        print(json.dumps([_key_json(k, now) for k in keys]))
        return ExitCode.OK
    if not keys:
        print("no keys enrolled: `key-server pair --role owner --name 'my phone'`")
        return ExitCode.OK
    names = {k.key_id: k.name for k in everyone}
    _print_table([[k.key_id.hex(), k.name, k.role.label,
                   "revoked " + _when(k.revoked_at) if k.revoked else k.state(now).replace("_", " "), _window(k),
                   k.schedule or "-", _via(k, names), _when(k.last_used_at)]
                  for k in keys], ["KEY ID", "NAME", "ROLE", "STATE", "WINDOW", "SCHEDULE", "VIA", "LAST USED"])
    return ExitCode.OK


def _one_key(admin: KeyAdmin, text: str) -> KeyRecord:
    """The key `text` names (hex id prefix or name), or a CliError saying why not."""
    try:
        return admin.find(text)
    except UnknownKey:
        raise CliError(f"no key matches {text!r}: see `key-server keys --all`", ExitCode.NOT_FOUND) from None
    except StoreError as exc:  # several keys match
        raise CliError(str(exc), ExitCode.NOT_FOUND) from None


def cmd_revoke(cfg: Config, args: argparse.Namespace) -> int:
    """Revoke a key; committed to disk before this returns, effective for the server's next message."""
    with _open_store(cfg) as store:
        admin = _admin(store)
        rec = _one_key(admin, args.key)
        try:
            done = admin.revoke(rec.key_id, by="cli", force=args.force, with_shares=args.with_shares)
        except LastOwnerError:
            raise CliError(f"{rec.name!r} is the last owner key; revoking it leaves nobody able to manage the "
                           "vehicle. Pair another owner first, or pass --force.", ExitCode.DENIED) from None
        except AlreadyRevoked:
            print(f"{rec.key_id.hex()} ({rec.name}) is already revoked"
                  + (", and so is every key its shares enrolled" if args.with_shares else "") + ": nothing changed")
            if args.rotate_secret:
                _rotated(admin.rotate_ad_secret(by="cli"))
            return ExitCode.OK
        rotated = admin.rotate_ad_secret(by="cli") if args.rotate_secret else None
    if not rec.revoked:
        print(f"revoked {rec.key_id.hex()} ({rec.name}); a running server refuses it from its next message on")
    for share in done.shares:
        print(f"revoked {share.key_id.hex()} ({share.name}), enrolled by a share of {rec.name}")
    for share in done.kept:
        print(f"kept {share.key_id.hex()} ({share.name}), enrolled by a share of {rec.name}: it is the last "
              "active owner (--force revokes it too)")
    if rotated is not None:
        _rotated(rotated)
    return ExitCode.OK


def _rotated(new: AdSecret) -> None:
    print(f"rotated the advertising secret to generation {new.generation}: a running server advertises tokens of "
          "it within a second; enrolled devices fetch it in their next session, and a device holding only the old "
          "one no longer recognises the car on air")


def cmd_rotate_secret(cfg: Config, args: argparse.Namespace) -> int:
    """Replace the advertising secret (PROTOCOL.md §13), audited; a running server changes its token at once."""
    with _open_store(cfg) as store:
        _rotated(_admin(store).rotate_ad_secret(by="cli"))
    return ExitCode.OK


def cmd_edit(cfg: Config, args: argparse.Namespace) -> int:
    """Change a key's name, role, validity window or schedule; effective for the server's next command."""
    tz = schedule_zone(cfg) or local_zone()
    with _open_store(cfg) as store:
        admin = _admin(store)
        rec = _one_key(admin, args.key)
        now = admin.clock.now()
        try:
            valid_from: int | None | Unchanged = (parse_when(args.valid_from, now, tz)
                                                  if args.valid_from else UNCHANGED)
            valid_until: int | None | Unchanged = (None if args.no_expiry else parse_when(
                args.valid_until, now, tz, end_of_day=True) if args.valid_until else UNCHANGED)
            schedule: str | None | Unchanged = (None if args.no_schedule else args.schedule or UNCHANGED)
            new = admin.edit_key(rec.key_id, by="cli", name=args.device_name or UNCHANGED,
                                 role=Role(args.role) if args.role else UNCHANGED, valid_from=valid_from,
                                 valid_until=valid_until, schedule=schedule)
        except LastOwnerError:
            raise CliError(f"{rec.name!r} is the last active owner key: it cannot be demoted or given a window "
                           "that excludes now. Pair another owner first.", ExitCode.DENIED) from None
        except AlreadyRevoked:
            raise CliError(f"{rec.key_id.hex()} ({rec.name}) is revoked: a revoked key is not edited",
                           ExitCode.DENIED) from None
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.USAGE) from None
    if new == rec:
        print(f"{rec.key_id.hex()} ({rec.name}): nothing to change")
        return ExitCode.OK
    print(f"{new.key_id.hex()} ({new.name}): {new.role.label}, {new.state(now).replace('_', ' ')}, "
          f"window {_window(new)}, "
          f"schedule {new.schedule or '-'}")
    return ExitCode.OK


def cmd_audit(cfg: Config, args: argparse.Namespace) -> int:
    """Show or verify the hash-chained audit log."""
    with _open_store(cfg) as store:
        admin = _admin(store)
        if args.pinned is not None and not args.verify:
            raise CliError("--pinned SEQ:HASH checks the chain: use it with --verify", ExitCode.USAGE)
        if args.verify:
            verdict = admin.verify_audit(args.pinned)
            if args.json:
                print(json.dumps({"ok": verdict.ok, "entries": verdict.entries, "first_bad_seq": verdict.first_bad_seq,
                                  "reason": verdict.reason, "head": _head_text(verdict.head_seq, verdict.head_hash)
                                  if verdict.ok else None, "pruned_through": verdict.pruned_through}))
            elif verdict.ok:
                print(f"audit log OK: {verdict.reason}; head {_head_text(verdict.head_seq, verdict.head_hash)}")
            else:
                print(f"audit log TAMPERED: {verdict.entries} entries"
                      f"; first bad entry {verdict.first_bad_seq}: {verdict.reason}")
            return ExitCode.OK if verdict.ok else ExitCode.AUDIT_TAMPERED
        entries = admin.audit_tail(args.limit)
    if args.json:
        print(json.dumps([e.to_json() for e in entries]))
        return ExitCode.OK
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in dict(e.detail).items())
        print(f"{e.seq:6d}  {_when(e.ts)}  {str(e.event):12s} {e.key_id.hex() if e.key_id else '-':8s}  {detail}")
    return ExitCode.OK


def _head_text(seq: int, digest: bytes) -> str:
    return f"{seq}:{digest.hex()}"


def _pin(text: str) -> tuple[int, bytes]:
    """argparse type of --pinned: SEQ:HASH, as `key-client audit` and `audit --verify` print a head."""
    seq_text, sep, hash_hex = text.strip().partition(":")
    try:
        seq, digest = int(seq_text), bytes.fromhex(hash_hex)
    except ValueError:
        seq, digest = -1, b""
    if not sep or not 0 <= seq <= 2**63 - 1 or len(digest) != 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a head: give SEQ:HASH, a sequence number and 64 hex "
                                         "digits, as `key-client audit` prints it")
    return seq, digest


def cmd_config(cfg: Config | None, args: argparse.Namespace) -> int:
    """Print a sample config file with every option (needs no config, so it helps fix a broken one)."""
    print(SAMPLE_CONFIG, end="")
    return ExitCode.OK


def cmd_backup(cfg: Config, args: argparse.Namespace) -> int:
    """Write a consistent copy of keys.db (safe while the server runs) to a new file, mode 0600."""
    from .backup import AuditChainBroken, backup

    if not cfg.store_path.exists():
        raise CliError(f"no key store at {cfg.store_path}: nothing to back up", ExitCode.NOT_INITIALISED)
    try:
        entries = backup(cfg.store_path, args.path)
    except FileExistsError:
        raise CliError(f"{args.path} exists: a backup never overwrites a file; name a new one",
                       ExitCode.ALREADY_EXISTS) from None
    except AuditChainBroken as exc:
        raise CliError(str(exc), ExitCode.AUDIT_TAMPERED) from None
    print(f"backed up {cfg.store_path} to {args.path} (mode 0600, {entries} audit entries, chain intact); "
          f"back up {cfg.identity_path} too")
    return ExitCode.OK


def cmd_restore(cfg: Config, args: argparse.Namespace) -> int:
    """Put a backup of keys.db back, after checking its schema, integrity and audit chain."""
    from .backup import RestoreRefused, restore

    if not args.path.is_file():
        raise CliError(f"{args.path}: no such backup file", ExitCode.NOT_FOUND)
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        entries = restore(args.path, cfg.store_path, force=args.force)
    except RestoreRefused as exc:
        raise CliError(str(exc), ExitCode.ALREADY_EXISTS) from None
    print(f"restored {cfg.store_path} from {args.path} ({entries} audit entries, chain intact)")
    if not cfg.identity_path.exists():
        print(f"no vehicle key at {cfg.identity_path}: restore it too (install -m 600 BACKUP {cfg.identity_path})")
    return ExitCode.OK


def cmd_print_file(cfg: Config | None, args: argparse.Namespace) -> int:
    """Print one deployment file shipped in the package (the unit, the drop-in, the udev rule, the sample config)."""
    print(deploy_file(args.name), end="")
    return ExitCode.OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wearable-dkey")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def cmd_actuate(cfg: Config, args: argparse.Namespace) -> int:
    """Pulse the lock once with no key, to test the wiring."""
    if not args.test:
        raise CliError("say `key-server actuate --test` to pulse the lock once with no key", ExitCode.USAGE)
    from .doctor import check_lgpio_workdir

    workdir = check_lgpio_workdir(cfg)
    if workdir is not None and workdir.level == "fail":  # else lgpio fails with "Unable to load any pin factory"
        raise CliError(workdir.detail, ExitCode.HARDWARE_UNAVAILABLE)

    async def go() -> int:
        lock = build_lock(cfg.actuator)
        restore = install_signal_failsafe(lock)
        try:
            print(f"actuator {cfg.actuator.kind}: unlocking, relocking after {args.hold} s ...", flush=True)
            status = await actuate_test(lock, hold_s=args.hold)
        except ActuatorError as exc:
            print(f"key-server: actuator fault: {exc}", file=sys.stderr)
            return ExitCode.CHECK_FAILED
        else:
            print(f"done: lock {status.lock.label}, door {status.door.label}")
            return ExitCode.OK
        finally:
            await lock.aclose()
            restore()

    return asyncio.run(go())


def cmd_doctor(cfg: Config | None, args: argparse.Namespace) -> int:
    """Check the config, state directory, key files, store, audit chain, Bluetooth stack and GPIO.

    Loads the config itself: a config that does not load is a failing check here, not an early exit. Runs the
    checks inside the unit's sandbox instead when asked (--as-service), or as root where the unit is installed.
    """
    from .doctor import DoctorCheck, config_failure, root_outside_unit_warning, run_checks, sandbox_check
    from .sandbox import SandboxError, run_doctor_in_unit

    where = _doctor_where(args)
    if where == "unit":
        try:
            return run_doctor_in_unit(json_output=args.json)
        except SandboxError as exc:
            raise CliError(str(exc), ExitCode.ERROR) from None
    context = sandbox_check()
    if context is None and where == "root-shell":
        context = root_outside_unit_warning()
    checks: list[DoctorCheck]
    try:
        if cfg is None:
            cfg = load_config(args.config, args.state_dir)
            _apply_overrides(cfg, args)
        checks = asyncio.run(run_checks(cfg))
    except ConfigError as exc:
        checks = [config_failure(exc), DoctorCheck("warn", "other checks", "skipped: fix the config first")]
    if context is not None:
        checks.insert(0, context)
    worst = 0
    for level, name, detail in checks:
        worst = max(worst, {"ok": 0, "warn": 1, "fail": 2}[level])
        if not args.json:
            print(f"[{level.upper():4s}] {name}: {detail}")
    if args.json:
        print(json.dumps([{"level": lv, "check": n, "detail": d} for lv, n, d in checks]))
    return ExitCode.CHECK_FAILED if worst == 2 else ExitCode.OK


def _doctor_where(args: argparse.Namespace) -> str:
    """Where doctor checks: "unit" (inside the unit's sandbox), "root-shell" (here, as root, unit installed), "here".

    As root, with no paths of its own, on a machine where the unit is installed, doctor checks inside the unit:
    root's results there are wrong both ways (the service user's files fail ownership checks that pass for the
    service; a device or path the unit blocks passes). --here keeps the checks in this shell.
    """
    from .sandbox import SANDBOX_ENV, systemd_booted, unit_installed

    if args.as_service:
        if args.state_dir is not None or args.config is not None:
            raise CliError("--as-service checks with the unit's own --state-dir and --config (its ExecStart): "
                           "leave yours off, or use --here", ExitCode.USAGE)
        return "unit"
    if os.environ.get(SANDBOX_ENV) or not hasattr(os, "geteuid") or os.geteuid() != 0 or not systemd_booted() \
            or not unit_installed():
        return "here"
    if args.here or args.state_dir is not None or args.config is not None or os.environ.get("DKEY_STATE_DIR"):
        return "root-shell"
    return "unit"


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    """Serve the key protocol until SIGTERM/SIGINT."""
    from .runner import serve

    return asyncio.run(serve(cfg))


# ---------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage itself is one --help away)."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line and exit with ExitCode.USAGE."""
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _ranged(kind: Callable[[str], Any], low: float, high: float, *, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` within [low, high] ((low, high] with low_open)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value > high or value < low or (low_open and value == low):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is out of range: allowed {'>' if low_open else '>='} {low:g}"
                                             f" and <= {high:g}")
        return value

    return parse


def _name(text: str) -> str:
    try:
        return check_advertised_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = _Parser(prog="key-server", description="The vehicle side of the wearable digital key.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"key-server {_version()}")
    p.add_argument("--state-dir", type=Path, help="where the vehicle key, key store and config live")
    p.add_argument("--config", type=Path,
                   help="config file (default: <state-dir>/config.toml or /etc/dkey/config.toml, whichever exists)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="debug logging, and the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create the vehicle key and key store (refuses to overwrite)")
    s.add_argument("--name", type=_name, help="advertised BLE name to put in the new config file")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("run", help="serve the key protocol (foreground; use the systemd unit on a Pi)")
    s.add_argument("--radio", choices=RADIOS,
                   help="ble = BlueZ via bless; sim = local simulated radio (default: $DKEY_RADIO, else config)")
    s.add_argument("--adapter", help="BlueZ adapter, e.g. hci0")
    s.add_argument("--name", type=_name, help="advertised name")
    s.add_argument("--sim-dir", help="sim radio air directory (default: $DKEY_SIM_DIR, else config)")
    s.add_argument("--actuator", choices=["sim", "pulse", "two-line", "latched"], help="override [actuator] kind")
    s.add_argument("--challenge-ttl", type=_ranged(float, CHALLENGE_TTL_MIN, CHALLENGE_TTL_MAX), metavar="S",
                   help=f"seconds a challenge stays valid (default {DEFAULT_CHALLENGE_TTL:g})")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("pair", help="print a one-time pairing code (and QR code) for a new device")
    s.add_argument("--role", choices=Role.labels(), default="driver")
    s.add_argument("--name", dest="device_name", default="new device", help="what to call the device in key lists")
    s.add_argument("--expires", help="key expiry, in the future: 2026-12-24, 2026-12-24T18:00, 3d, 12h ...")
    s.add_argument("--valid-from", help="key valid from (same formats)")
    s.add_argument("--schedule", help='weekly schedule, e.g. "Mon-Fri 08:00-18:00; Sat 10:00-14:00"')
    s.add_argument("--code-ttl", help="how long the code lives, at most 7d (default from config: 10m)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    s.add_argument("--list", action="store_true", help="list pending codes, with their tries left and wrong tries")
    s.add_argument("--cancel", type=_ranged(int, 0, PAIRING_SLOTS - 1), metavar="SLOT",
                   help="cancel the pending code in SLOT")
    s.set_defaults(func=cmd_pair)

    s = sub.add_parser("keys", help="list enrolled keys")
    s.add_argument("--all", action="store_true", help="include revoked keys")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keys)

    s = sub.add_parser("revoke", help="revoke one key (by hex key-id prefix or name), effective immediately")
    s.add_argument("key")
    s.add_argument("--force", action="store_true", help="allow revoking the last owner")
    s.add_argument("--with-shares", action="store_true",
                   help="also revoke every key this key's shares enrolled (say it for a lost owner phone)")
    s.add_argument("--rotate-secret", action="store_true",
                   help="also rotate the advertising secret, so the revoked device no longer recognises the car")
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("rotate-secret", help="replace the advertising secret: devices holding only the old one "
                       "(a former guest) no longer recognise the car on air")
    s.set_defaults(func=cmd_rotate_secret)

    s = sub.add_parser("edit", help="change a key's name, role, validity window or schedule")
    s.add_argument("key", help="hex key-id prefix or name")
    s.add_argument("--name", dest="device_name", help="new name")
    s.add_argument("--role", choices=Role.labels())
    s.add_argument("--valid-from", help="valid from: 2026-12-24, 2026-12-24T18:00, 3d, 12h ...")
    expiry = s.add_mutually_exclusive_group()
    expiry.add_argument("--valid-until", help="expiry (same formats; a bare date means the end of that day)")
    expiry.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    sched = s.add_mutually_exclusive_group()
    sched.add_argument("--schedule", help='weekly schedule, e.g. "Mon-Fri 08:00-18:00; Sat 10:00-14:00"')
    sched.add_argument("--no-schedule", action="store_true", help="remove the schedule")
    s.set_defaults(func=cmd_edit)

    s = sub.add_parser("audit", help="show the audit log, or --verify its hash chain")
    s.add_argument("--verify", action="store_true", help="check the hash chain (exit 11 if it does not verify)")
    s.add_argument("--pinned", type=_pin, metavar="SEQ:HASH",
                   help="with --verify: also check that the chain still holds this head, as an owner's "
                        "`key-client audit` printed it (exit 11 if it was cut or rewritten)")
    s.add_argument("--limit", type=_ranged(int, 1, MAX_READ), default=50, help=f"newest entries, 1..{MAX_READ} (50)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("doctor", help="check adapter, BlueZ, D-Bus, permissions, key files, store and GPIO",
                       description="Check the config, key files, store, audit chain, clock, Bluetooth stack and "
                       "GPIO; exit 12 on any [FAIL]. As root, with no --state-dir or --config, on a machine where "
                       "key-server.service is installed, the checks run inside the unit's sandbox, as with "
                       "--as-service; otherwise with your own permissions, in this shell.")
    s.add_argument("--json", action="store_true")
    place = s.add_mutually_exclusive_group()
    place.add_argument("--as-service", action="store_true",
                       help="(root) run the checks inside key-server.service's sandbox, as the service runs: its "
                       "user, groups, devices and file system view (systemd-run with the installed unit's "
                       "properties, else the shipped unit's)")
    place.add_argument("--here", action="store_true",
                       help="run the checks in this shell, with your own permissions, even as root")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("actuate", help="test the lock wiring: --test pulses once with no key")
    s.add_argument("--test", action="store_true")
    s.add_argument("--hold", type=_ranged(float, 0, MAX_HOLD_S), default=2.0,
                   help=f"seconds before relocking, 0..{MAX_HOLD_S:g} (2)")
    s.set_defaults(func=cmd_actuate)

    s = sub.add_parser("backup", help="write a consistent copy of keys.db to a new file (safe while running)")
    s.add_argument("path", type=Path, metavar="PATH", help="the new backup file (never overwritten)")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="put a verified backup of keys.db back (stop the service first)")
    s.add_argument("path", type=Path, metavar="PATH", help="a file written by `key-server backup`")
    s.add_argument("--force", action="store_true", help="replace an existing keys.db")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("config", help="print a sample config file with every option")
    s.set_defaults(func=cmd_config)

    where = "; ".join(f"{name} -> {path}" for name, path in DEPLOY_FILES.items())
    s = sub.add_parser("print-file", help="print a shipped deployment file: the systemd unit, drop-in, udev rule, "
                       "Pi config", description=f"Print a file docs/DEPLOY.md installs ({where}).")
    s.add_argument("name", choices=list(DEPLOY_FILES), metavar="NAME", help=", ".join(DEPLOY_FILES))
    s.set_defaults(func=cmd_print_file)
    return p


def _apply_overrides(cfg: Config, args: argparse.Namespace) -> None:
    """Command-line flags, then the environment, over the config file (the client's order for DKEY_RADIO)."""
    env_radio = os.environ.get("DKEY_RADIO")
    if getattr(args, "radio", None) is None and env_radio:
        if env_radio not in RADIOS:
            raise CliError(f"DKEY_RADIO={env_radio!r} is not a radio: use ble or sim", ExitCode.USAGE)
        override(cfg, "server", {"radio": env_radio}, origin="$DKEY_RADIO")
    env_sim_dir = os.environ.get("DKEY_SIM_DIR")
    if getattr(args, "sim_dir", None) is None and env_sim_dir:
        override(cfg, "server", {"sim_dir": env_sim_dir}, origin="$DKEY_SIM_DIR")
    # Flags pass through the config schema too: one set of rules, whichever way a value arrives.
    override(cfg, "server", {opt: getattr(args, opt, None)
                             for opt in ("radio", "adapter", "name", "sim_dir", "challenge_ttl")})
    if getattr(args, "actuator", None):
        override(cfg, "actuator", {"kind": args.actuator})


def _setup_logging(cfg: Config, args: argparse.Namespace) -> None:
    verbose = args.verbose or args.debug
    level = logging.DEBUG if verbose else getattr(logging, cfg.server.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Library warnings (gpiozero's pin-factory fallbacks: four two-line warnings on any machine without GPIO)
    # go to the log, shown with -v: the line that matters is the error they lead to, if any.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. Every failure is one line on stderr (a traceback only with --debug)."""
    debug = False
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error argparse has already printed
            return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        debug = bool(args.debug)
        if args.command in ("config", "print-file"):  # need no config: they help write one
            return int(args.func(None, args))
        if args.command == "doctor":  # reports a bad config as a failing check instead of stopping at it
            return cmd_doctor(None, args)
        cfg = load_config(args.config, args.state_dir)
        _apply_overrides(cfg, args)
        _setup_logging(cfg, args)
        return int(args.func(cfg, args))
    except Exception as exc:  # noqa: BLE001 - the promise: one line and an exit code, whatever went wrong
        return _fail(exc, debug)
    except KeyboardInterrupt as exc:
        return _fail(exc, debug=False)


def _fail(exc: BaseException, debug: bool) -> int:
    message, code = explain(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"key-server: {message}", file=sys.stderr)
    return int(code)


__all__ = ["EPILOG", "SERVER_EXIT_CODES", "build_parser", "main"]
