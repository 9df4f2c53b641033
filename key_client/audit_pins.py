"""The highest audit head this device has seen per vehicle, and the rule that checks a new one against it.

Each READ_AUDIT answer carries the vehicle's signed head (PROTOCOL.md §5.6). An owner's device keeps the highest
head it has seen for each vehicle in `audit_pins.json` beside the keychain (key_client/paths.py), mode 0600, and
checks every new head against it before moving the pin forward (check()): a chain that got shorter, or that holds
another entry at the pinned sequence number, was cut or rewritten since the last read. The file is a JSON object,
rewritten atomically; it holds no secret, but whoever can write it could make the device forget a pin, so it is
owner-only like the keychain.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dkey_link.exit_codes import ExitCode

from .errors import ClientError
from .paths import audit_pins_path

__all__ = ["PINS_VERSION", "AuditPins", "AuditTampered", "Pin", "PinCheck", "check"]

PINS_VERSION: Final = 1


class AuditTampered(ClientError):
    """The vehicle's audit log was cut or rewritten since this device last read it, or its head is not signed."""

    exit_code = ExitCode.AUDIT_TAMPERED


@dataclass(frozen=True, slots=True)
class Pin:
    """A head seen earlier: the newest entry's seq and hash, the vehicle's signature over it, and when it was seen."""

    seq: int
    entry_hash: bytes
    pruned_through: int = 0
    signature: bytes = b""
    seen_at: int = 0

    @property
    def text(self) -> str:
        """SEQ:HASH, the form `key-server audit --verify --pinned` takes."""
        return f"{self.seq}:{self.entry_hash.hex()}"

    def to_json(self) -> dict[str, Any]:
        """The file's form of the pin."""
        return {"seq": self.seq, "hash": self.entry_hash.hex(), "pruned_through": self.pruned_through,
                "signature": self.signature.hex(), "seen_at": self.seen_at}

    @classmethod
    def from_json(cls, d: object) -> Pin:
        """Parse the file's form; ValueError if it is not a pin."""
        if not isinstance(d, dict):
            raise ValueError("not an object")  # noqa: TRY004 - a bad file, reported as unreadable like the rest
        seq, digest = d.get("seq"), bytes.fromhex(str(d.get("hash", "")))
        pruned, seen = d.get("pruned_through", 0), d.get("seen_at", 0)
        if not isinstance(seq, int) or not isinstance(pruned, int) or not isinstance(seen, int) \
                or isinstance(seq, bool) or seq < 0 or len(digest) != 32:
            raise ValueError("bad seq or hash")
        return cls(seq, digest, pruned, bytes.fromhex(str(d.get("signature", ""))), seen)


@dataclass(frozen=True, slots=True)
class PinCheck:
    """What check() needs beyond the two heads: the entry the new chain holds at the pin's seq, if it was read."""

    entry_hash_at_pin: bytes | None  # None: the new chain has no entry at the pin's seq (or it was not asked for)


def check(pin: Pin | None, head: Pin, at_pin: PinCheck) -> str | None:
    """Why `head` cannot follow `pin` (a cut or a fork), or None when it is the same chain, grown or pruned.

    Honest growth moves the head forward with the pinned entry unchanged; retention prunes the oldest entries,
    so a pin inside the pruned prefix (`head.pruned_through >= pin.seq`) can only be checked for length.
    """
    if pin is None or pin.seq == 0:
        return None
    if head.seq < pin.seq:
        return (f"the vehicle's audit log now ends at entry {head.seq}, but this device saw it reach entry "
                f"{pin.seq}: its newest entries were deleted (the log was cut)")
    if head.seq == pin.seq:
        if head.entry_hash != pin.entry_hash:
            return (f"the vehicle's audit log has another entry {pin.seq} than the one this device saw: "
                    "it was rewritten (a fork)")
        return None
    if head.pruned_through >= pin.seq:
        return None  # pruned by retention: the length check above is all that remains possible
    if at_pin.entry_hash_at_pin is None:
        return (f"the vehicle's audit log no longer holds entry {pin.seq}, which this device saw, although it was "
                "not pruned: it was deleted")
    if at_pin.entry_hash_at_pin != pin.entry_hash:
        return (f"the vehicle's audit log has another entry {pin.seq} than the one this device saw: "
                "it was rewritten from there (a fork)")
    return None


class AuditPins:
    """The pins file of one keychain directory."""

    def __init__(self, keychain_dir: Path) -> None:
        """Pins beside the keychain in `keychain_dir`."""
        self.path = audit_pins_path(keychain_dir)

    def get(self, vehicle_id: bytes) -> Pin | None:
        """The pin for this vehicle, or None if this device never read its audit log."""
        return self._read().get(vehicle_id.hex())

    def advance(self, vehicle_id: bytes, head: Pin) -> Pin:
        """Pin `head` if it is higher than the pin held (check() first); return the pin held afterwards."""
        with self._locked():  # two `audit` runs at once must not move a pin back
            pins = self._read()
            held = pins.get(vehicle_id.hex())
            if held is not None and held.seq >= head.seq:
                return held
            pins[vehicle_id.hex()] = Pin(head.seq, head.entry_hash, head.pruned_through, head.signature,
                                         head.seen_at or int(time.time()))
            self._write(pins)
            return pins[vehicle_id.hex()]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the pins between key-client processes (no flock on Windows)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        fd = os.open(self.path.with_name(".audit_pins.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> dict[str, Pin]:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise AuditTampered(f"cannot read the audit pins {self.path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if sys.platform != "win32" and (st.st_uid != os.geteuid() or st.st_mode & 0o022):
                # Whoever can write it can make this device forget a pin, and so hide a cut log.
                raise AuditTampered(f"the audit pins {self.path} can be written by other users "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}): fix it with: "
                                    f"chmod 600 {shlex.quote(str(self.path))}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(1 << 20)
        finally:
            os.close(fd)
        try:
            return _parse(raw)
        except ValueError as exc:
            # Not silently reset: a damaged file would otherwise forget every pin, which is what a cutter wants.
            raise AuditTampered(f"the audit pins {self.path} are unreadable ({exc}): move it away to start "
                                "pinning afresh") from None

    def _write(self, pins: dict[str, Pin]) -> None:
        from .keychain import _write_atomic  # the keychain's atomic, fsynced 0600 writer

        doc = {"version": PINS_VERSION, "vehicles": {k: p.to_json() for k, p in sorted(pins.items())}}
        _write_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _parse(raw: bytes) -> dict[str, Pin]:
    """The pins in a pins file's bytes; ValueError if it is not one of this version."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != PINS_VERSION or not isinstance(doc.get("vehicles"), dict):
        raise ValueError("not a pins file of this version")
    return {str(k): Pin.from_json(v) for k, v in doc["vehicles"].items()}
