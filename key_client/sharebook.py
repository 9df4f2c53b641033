"""What this device knows about shares and revocation lists (PROTOCOL.md §12), in `shares.json` beside the keychain.

Four kinds of record, none of them secret (the private keys stay in keys/ or the OS keyring):

    requests   keys made by `key-client request-share` that no vehicle uses yet (key id, suggested name, when)
    issued     shares this device signed as an owner: serial, subject key id, name, role, window, schedule,
               issued_at, and whether this device has since revoked the subject (`revoke`, offline or online)
    imported   certificates this device received (`import-share`), one per vehicle, and whether the vehicle has
               enrolled the key yet (SHARE_ANSWER OK or NO_CHANGE)
    lists      the newest revocation list held per vehicle per issuer (its bytes and version), with the version that
               vehicle last acknowledged to this device (REVOCATIONS_ANSWER), so a list is carried until it lands

The file is rewritten atomically (temp file, fsync, rename), mode 0600, under a lock file, and refused when
others can write it, like the keychain index: whoever could edit it could make this device forget that a
revocation is still to be delivered, or mark a share enrolled that the vehicle never saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from .errors import KeychainError

__all__ = ["SHARES", "SHARES_VERSION", "HeldList", "ImportedShare", "IssuedShare", "PendingRequest", "ShareBook"]

SHARES: Final = "shares.json"
SHARES_VERSION: Final = 1
MAX_FILE = 4 << 20  # far above any real book (64 revocations per list, a few dozen shares); a bigger file is damage

R = TypeVar("R")


def _hex(d: dict[str, Any], key: str, length: int | None = None) -> bytes:
    value = bytes.fromhex(str(d[key]))
    if length is not None and len(value) != length:
        raise ValueError(f"{key} must be {length} bytes")
    return value


def _int(d: dict[str, Any], key: str) -> int:
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    return value


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else _int(d, key)


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A device key made for a share request that no vehicle entry uses yet."""

    key_id: bytes
    name: str  # the name the request suggests to the owner
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The file's form."""
        return {"key_id": self.key_id.hex(), "name": self.name, "created_at": self.created_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingRequest:
        """Parse the file's form (ValueError, KeyError or TypeError if it is not one)."""
        return cls(_hex(d, "key_id", 4), str(d["name"]), _int(d, "created_at"))


@dataclass(frozen=True, slots=True)
class IssuedShare:
    """A share certificate this device signed as an owner of `vehicle_id`."""

    vehicle_id: bytes
    serial: bytes
    subject_key_id: bytes
    name: str
    role: str  # driver | guest
    valid_from: int
    valid_until: int | None
    schedule: str | None
    issued_at: int
    revoked: bool = False  # this device put the subject on its revocation list

    def to_json(self) -> dict[str, Any]:
        """The file's form."""
        return {"vehicle_id": self.vehicle_id.hex(), "serial": self.serial.hex(),
                "subject_key_id": self.subject_key_id.hex(), "name": self.name, "role": self.role,
                "valid_from": self.valid_from, "valid_until": self.valid_until, "schedule": self.schedule,
                "issued_at": self.issued_at, "revoked": self.revoked}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IssuedShare:
        """Parse the file's form (ValueError, KeyError or TypeError if it is not one)."""
        return cls(_hex(d, "vehicle_id", 4), _hex(d, "serial", 8), _hex(d, "subject_key_id", 4), str(d["name"]),
                   str(d["role"]), _int(d, "valid_from"), _opt_int(d, "valid_until"), _opt_str(d, "schedule"),
                   _int(d, "issued_at"), bool(d.get("revoked", False)))


@dataclass(frozen=True, slots=True)
class ImportedShare:
    """A certificate for this device's key on `vehicle_id`, and whether that vehicle has enrolled the key."""

    vehicle_id: bytes
    certificate: bytes  # the exact bytes the owner signed: SHARE_PRESENT carries them unchanged
    enrolled: bool
    imported_at: int

    def to_json(self) -> dict[str, Any]:
        """The file's form."""
        return {"vehicle_id": self.vehicle_id.hex(), "certificate": self.certificate.hex(),
                "enrolled": self.enrolled, "imported_at": self.imported_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImportedShare:
        """Parse the file's form (ValueError, KeyError or TypeError if it is not one)."""
        return cls(_hex(d, "vehicle_id", 4), _hex(d, "certificate"), bool(d["enrolled"]), _int(d, "imported_at"))


@dataclass(frozen=True, slots=True)
class HeldList:
    """The newest revocation list this device holds from one issuer for one vehicle."""

    vehicle_id: bytes
    issuer_id: bytes
    version: int
    raw: bytes  # the signed list, exactly as REVOCATIONS carries it
    acknowledged: int = 0  # the version that vehicle last said it holds from this issuer (0: none known)

    @property
    def undelivered(self) -> bool:
        """True while the vehicle has not acknowledged this version (or a newer one)."""
        return self.version > self.acknowledged

    def to_json(self) -> dict[str, Any]:
        """The file's form."""
        return {"vehicle_id": self.vehicle_id.hex(), "issuer_id": self.issuer_id.hex(), "version": self.version,
                "list": self.raw.hex(), "acknowledged": self.acknowledged}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HeldList:
        """Parse the file's form (ValueError, KeyError or TypeError if it is not one)."""
        held = cls(_hex(d, "vehicle_id", 4), _hex(d, "issuer_id", 4), _int(d, "version"), _hex(d, "list"),
                   _int(d, "acknowledged"))
        if held.version < 1 or held.acknowledged < 0:
            raise ValueError("a list version is >= 1 and an acknowledged version >= 0")
        return held


@dataclass(frozen=True, slots=True)
class _Book:
    requests: tuple[PendingRequest, ...] = ()
    issued: tuple[IssuedShare, ...] = ()
    imported: tuple[ImportedShare, ...] = ()
    lists: tuple[HeldList, ...] = ()


class ShareBook:
    """The shares file of one keychain directory; every mutation is a locked read-modify-write."""

    def __init__(self, keychain_dir: Path) -> None:
        """The book in `keychain_dir` (the file need not exist yet: an absent file is an empty book)."""
        self.path = Path(keychain_dir) / SHARES

    # ------------------------------------------------------------------ requests

    def requests(self) -> list[PendingRequest]:
        """Keys made for share requests and not used by any vehicle yet, oldest first."""
        return list(self._read().requests)

    def add_request(self, request: PendingRequest) -> None:
        """Remember a key made for a share request (replacing an older record of the same key)."""
        self._update(lambda b: replace(b, requests=(*[r for r in b.requests if r.key_id != request.key_id],
                                                    request)))

    def drop_request(self, kid: bytes) -> None:
        """Forget a request (its key is now used by a vehicle, or was deleted)."""
        self._update(lambda b: replace(b, requests=tuple(r for r in b.requests if r.key_id != kid)))

    # ------------------------------------------------------------------ issued shares

    def issued(self, vehicle_id: bytes | None = None) -> list[IssuedShare]:
        """Shares this device issued (for one vehicle, or all), oldest first."""
        return [s for s in self._read().issued if vehicle_id is None or s.vehicle_id == vehicle_id]

    def record_issued(self, share: IssuedShare) -> None:
        """Remember a share this device signed; KeychainError if that serial is already recorded."""
        def change(b: _Book) -> _Book:
            if any(s.serial == share.serial for s in b.issued):
                raise KeychainError(f"a share with serial {share.serial.hex()} is already recorded")
            return replace(b, issued=(*b.issued, share))

        self._update(change)

    def mark_revoked(self, vehicle_id: bytes, subject_key_id: bytes) -> int:
        """Mark every share issued for `subject_key_id` on the vehicle revoked; returns how many were marked."""
        marked = 0

        def change(b: _Book) -> _Book:
            nonlocal marked
            out = []
            for s in b.issued:
                if s.vehicle_id == vehicle_id and s.subject_key_id == subject_key_id and not s.revoked:
                    s = replace(s, revoked=True)
                    marked += 1
                out.append(s)
            return replace(b, issued=tuple(out))

        self._update(change)
        return marked

    # ------------------------------------------------------------------ imported shares

    def imported(self, vehicle_id: bytes) -> ImportedShare | None:
        """The certificate imported for this vehicle, if any."""
        return next((s for s in self._read().imported if s.vehicle_id == vehicle_id), None)

    def add_imported(self, share: ImportedShare) -> None:
        """Store an imported certificate (one per vehicle: a new one replaces the old)."""
        self._update(lambda b: replace(b, imported=(*[s for s in b.imported if s.vehicle_id != share.vehicle_id],
                                                    share)))

    def mark_enrolled(self, vehicle_id: bytes) -> None:
        """The vehicle enrolled the key of the imported share (or already had it): never present it again."""
        self._update(lambda b: replace(b, imported=tuple(replace(s, enrolled=True) if s.vehicle_id == vehicle_id
                                                         else s for s in b.imported)))

    def drop_vehicle(self, vehicle_id: bytes) -> None:
        """Forget the imported share and the lists held for a vehicle (`forget`); issued shares stay on record."""
        self._update(lambda b: replace(b, imported=tuple(s for s in b.imported if s.vehicle_id != vehicle_id),
                                       lists=tuple(h for h in b.lists if h.vehicle_id != vehicle_id)))

    # ------------------------------------------------------------------ revocation lists

    def lists(self, vehicle_id: bytes) -> list[HeldList]:
        """The newest list held from each issuer for this vehicle."""
        return [h for h in self._read().lists if h.vehicle_id == vehicle_id]

    def held(self, vehicle_id: bytes, issuer_id: bytes) -> HeldList | None:
        """The newest list held from `issuer_id` for this vehicle, if any."""
        return next((h for h in self.lists(vehicle_id) if h.issuer_id == issuer_id), None)

    def undelivered(self, vehicle_id: bytes) -> list[HeldList]:
        """Lists newer than what the vehicle last acknowledged: what the next connection carries."""
        return [h for h in self.lists(vehicle_id) if h.undelivered]

    def store_list(self, vehicle_id: bytes, issuer_id: bytes, version: int, raw: bytes, *,
                   expect_version: int | None = None) -> bool:
        """Keep `raw` as the newest list from this issuer if its version is higher than the one held.

        Returns whether it was kept (an older or equal version changes nothing: lists only grow). With
        `expect_version`, KeychainError unless the held version is exactly that (0: none), so two `revoke` runs at
        once cannot both sign version N+1 from the same N.
        """
        kept = False

        def change(b: _Book) -> _Book:
            nonlocal kept
            old = next((h for h in b.lists if h.vehicle_id == vehicle_id and h.issuer_id == issuer_id), None)
            held_version = old.version if old is not None else 0
            if expect_version is not None and held_version != expect_version:
                raise KeychainError(f"the revocation list changed meanwhile (version {held_version}, expected "
                                    f"{expect_version}): run the command again")
            if version <= held_version:
                return b
            kept = True
            new = HeldList(vehicle_id, issuer_id, version, raw, old.acknowledged if old is not None else 0)
            return replace(b, lists=(*[h for h in b.lists if h is not old], new))

        self._update(change)
        return kept

    def acknowledge(self, vehicle_id: bytes, issuer_id: bytes, version: int) -> None:
        """The vehicle said it holds `version` from this issuer: remember the highest such version."""
        def change(b: _Book) -> _Book:
            out = []
            for h in b.lists:
                if h.vehicle_id == vehicle_id and h.issuer_id == issuer_id and version > h.acknowledged:
                    h = replace(h, acknowledged=version)
                out.append(h)
            return replace(b, lists=tuple(out))

        self._update(change)

    # ------------------------------------------------------------------ the file

    def _update(self, change: Callable[[_Book], _Book]) -> None:
        with self._locked():
            before = self._read()
            after = change(before)
            if after != before:
                self._write(after)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write between key-client processes (no flock on Windows)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        try:
            fd = os.open(self.path.with_name(".shares.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeychainError(f"cannot lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> _Book:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return _Book()
        except OSError as exc:
            raise KeychainError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if sys.platform != "win32" and st.st_uid != os.geteuid():
                raise KeychainError(f"the share book {self.path} belongs to uid {st.st_uid}, not to you")
            if sys.platform != "win32" and st.st_mode & 0o022:
                raise KeychainError(f"the share book {self.path} is writable by other users "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}), who could hide a revocation still to "
                                    f"be delivered: fix it with: chmod 600 {shlex.quote(str(self.path))}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_FILE + 1)
        except OSError as exc:
            raise KeychainError(f"cannot read {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        try:
            return _parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # Never reset silently: an emptied book forgets the revocations this device still has to deliver.
            raise KeychainError(f"the share book {self.path} is damaged ({exc}): restore it from a backup, or move "
                                "it away to start afresh (undelivered revocation lists are then lost)") from None

    def _write(self, book: _Book) -> None:
        from .keychain import _write_atomic  # the keychain's atomic, fsynced 0600 writer

        doc = {"version": SHARES_VERSION,
               "requests": [r.to_json() for r in book.requests],
               "issued": [s.to_json() for s in book.issued],
               "imported": [s.to_json() for s in book.imported],
               "lists": [h.to_json() for h in book.lists]}
        _write_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _parse(raw: bytes) -> _Book:
    """The book in a shares file's bytes; ValueError (or KeyError/TypeError) if it is not one of this version."""
    if len(raw) > MAX_FILE:
        raise ValueError("too large")
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != SHARES_VERSION:
        raise ValueError("not a share book of this version")

    def each(key: str, parse: Callable[[dict[str, Any]], R]) -> tuple[R, ...]:
        items = doc.get(key, [])
        if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
            raise ValueError(f"{key} is not a list of records")
        return tuple(parse(d) for d in items)

    return _Book(each("requests", PendingRequest.from_json), each("issued", IssuedShare.from_json),
                 each("imported", ImportedShare.from_json), each("lists", HeldList.from_json))
