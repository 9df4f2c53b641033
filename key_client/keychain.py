"""The device's keychain: one P-256 key pair per vehicle, the pinned vehicle key, and what pairing told us.

Layout of the keychain directory (mode 0700):

    keychain.json        the index (written atomically, 0600; refused if others can write it): no secrets in it
    keys/<key-id>.pem    this device's private key for one vehicle (0600, optionally passphrase-encrypted; keys/ 0700),
                         unless it is in the OS keyring (`pair --keyring`, key_client/oskeyring.py)
    adsecrets/<vehicle-id>  the vehicle's advertising secret: generation (u32) || secret (16 bytes), 0600 in a 0700
                         directory; it lets this device recognise the car's rotating token (PROTOCOL.md §13)
    config.toml          optional settings (key_client/config.py, docs/CLIENT.md)

A vehicle is identified by its id (the key id of its public key, checked against the pinned key on every
load); the last address we saw it at is only a hint that orders scan results, never an identity.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dkey_link.secretfile import SecretFileError, read_secret, write_secret
from protocol import AdSecret, KeyPair, Paired, Role, key_id, load_private_key, serialize_private_key

from .errors import KeychainError
from .paths import default_path

log = logging.getLogger("key_client.keychain")
INDEX = "keychain.json"
KEYS_DIR = "keys"
AD_SECRETS_DIR = "adsecrets"
INDEX_VERSION = 1
_NAME_RE = re.compile(r"[^\w.@+-]+")


@dataclass(frozen=True, slots=True)
class VehicleEntry:
    """One vehicle this device holds a key for."""

    name: str  # local nickname, unique in this keychain
    vehicle_id: bytes
    vehicle_public_key: bytes  # pinned at pairing: every answer must verify against it
    key_id: bytes  # this device's key id for this vehicle
    role: str  # owner | driver | guest, as the vehicle said at pairing
    valid_from: int | None
    valid_until: int | None
    paired_at: int
    advertised_name: str | None = None
    address_hint: str | None = None  # last address it answered on: orders candidates, proves nothing
    encrypted: bool = False  # the key file is passphrase-encrypted
    keyring: bool = False  # the key is in the OS keyring, not in keys/ (key_client/oskeyring.py)
    via: str = "code"  # how this device got its key: code (pairing) | share (an owner's certificate, import-share)

    @property
    def key_file(self) -> str:
        """The private key's file name under keys/."""
        return f"{self.key_id.hex()}.pem"

    def to_json(self) -> dict[str, Any]:
        """The index record (hex for bytes)."""
        d = asdict(self)
        for k in ("vehicle_id", "vehicle_public_key", "key_id"):
            d[k] = d[k].hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VehicleEntry:
        """Parse an index record; KeychainError if it is inconsistent (the pinned key must match the id)."""
        try:
            entry = cls(
                name=str(d["name"]),
                vehicle_id=bytes.fromhex(d["vehicle_id"]),
                vehicle_public_key=bytes.fromhex(d["vehicle_public_key"]),
                key_id=bytes.fromhex(d["key_id"]),
                role=str(d["role"]),
                valid_from=_opt_int(d.get("valid_from")),
                valid_until=_opt_int(d.get("valid_until")),
                paired_at=int(d["paired_at"]),
                advertised_name=d.get("advertised_name"),
                address_hint=d.get("address_hint"),
                encrypted=bool(d.get("encrypted", False)),
                keyring=bool(d.get("keyring", False)),
                via=str(d.get("via", "code")),  # absent in indexes written before shares existed
            )
            pinned_id = key_id(entry.vehicle_public_key)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeychainError(f"the keychain index has a damaged record ({exc})") from None
        if pinned_id != entry.vehicle_id:
            # A hand-edited or tampered index would otherwise make us trust another vehicle key.
            raise KeychainError(f"the keychain record {entry.name!r} pins a key that does not match its vehicle id")
        return entry


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


class Keychain:
    """A keychain directory; every mutation rewrites the index atomically under a lock file."""

    def __init__(self, path: Path, entries: list[VehicleEntry]) -> None:
        self.path = path
        self._entries = entries

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path | None = None, *, create: bool = True) -> Keychain:
        """Open (and with `create`, make, mode 0700) the keychain at `path` (default: default_path())."""
        path = Path(path) if path is not None else default_path()
        if not path.exists():
            if not create:
                return cls(path, [])
            try:
                path.mkdir(mode=0o700, parents=True)
                (path / KEYS_DIR).mkdir(mode=0o700)
            except OSError as exc:
                raise KeychainError(f"cannot create the keychain at {path}: {exc.strerror}") from exc
        _check_dir(path)
        if (path / KEYS_DIR).exists():
            # keys/ needs the same rule as the keychain: whoever can write it can swap this device's key.
            _check_dir(path / KEYS_DIR)
        return cls(path, _read_index(path))

    def reload(self) -> None:
        """Re-read the index (another key-client process may have changed it)."""
        self._entries = _read_index(self.path)

    # ------------------------------------------------------------------ queries

    def vehicles(self) -> list[VehicleEntry]:
        """Every vehicle, in pairing order."""
        return list(self._entries)

    def get(self, name_or_id: str) -> VehicleEntry:
        """The vehicle with this nickname (exact, then case-insensitive) or hex vehicle-id prefix."""
        want = name_or_id.strip()
        for match in ([e for e in self._entries if e.name == want],
                      [e for e in self._entries if e.name.casefold() == want.casefold()]):
            if len(match) == 1:
                return match[0]
        hexwant = want.lower()
        if len(hexwant) >= 2 and all(c in "0123456789abcdef" for c in hexwant):
            by_id = [e for e in self._entries if e.vehicle_id.hex().startswith(hexwant)]
            if len(by_id) == 1:
                return by_id[0]
            if len(by_id) > 1:
                raise KeychainError(f"{want!r} matches several vehicles: "
                                    f"{', '.join(e.name for e in by_id)}; use more of the id or the name")
        known = ", ".join(e.name for e in self._entries) or "none yet: pair with `key-client pair CODE`"
        raise KeychainError(f"no vehicle called {want!r} in the keychain (known: {known})")

    def find_vehicle_id(self, vehicle_id: bytes) -> VehicleEntry | None:
        """The entry for this vehicle id, if we hold a key for it."""
        return next((e for e in self._entries if e.vehicle_id == vehicle_id), None)

    def default(self) -> VehicleEntry:
        """The only vehicle; KeychainError if there is none or several."""
        if not self._entries:
            raise KeychainError(f"no vehicle in the keychain at {self.path}: pair with `key-client pair CODE`")
        if len(self._entries) > 1:
            raise KeychainError("several vehicles: pick one with --vehicle "
                                f"({', '.join(e.name for e in self._entries)})")
        return self._entries[0]

    def select(self, name_or_id: str | None) -> VehicleEntry:
        """get(name_or_id) if given, else default()."""
        return self.get(name_or_id) if name_or_id else self.default()

    # ------------------------------------------------------------------ keys

    def new_device_key(self, passphrase: bytes | None = None, *, keyring: bool = False) -> KeyPair:
        """Generate a device key and store it (keys/, 0600, or the OS keyring) BEFORE pairing, so an enrolled
        key is never lost."""
        pair = KeyPair.generate()
        if keyring:
            if passphrase:
                raise KeychainError("a key in the OS keyring is protected by the keyring, not by a passphrase")
            from . import oskeyring

            oskeyring.store(pair.key_id, serialize_private_key(pair.private_key))
            return pair
        keys = self.path / KEYS_DIR
        keys.mkdir(mode=0o700, exist_ok=True)
        try:
            write_secret(keys / f"{pair.key_id.hex()}.pem", serialize_private_key(pair.private_key, passphrase))
        except SecretFileError as exc:
            raise KeychainError(f"cannot store the new device key: {exc}") from exc
        return pair

    def discard_device_key(self, pair: KeyPair, *, keyring: bool = False) -> None:
        """Delete a key made by new_device_key whose pairing failed (the vehicle never enrolled it)."""
        if self.find_key_id(pair.key_id) is None:
            if keyring:
                from . import oskeyring

                with contextlib.suppress(KeychainError):  # best effort: the key was never enrolled anywhere
                    oskeyring.delete(pair.key_id)
                return
            with contextlib.suppress(FileNotFoundError):
                (self.path / KEYS_DIR / f"{pair.key_id.hex()}.pem").unlink()

    def find_key_id(self, kid: bytes) -> VehicleEntry | None:
        """The entry using this device key id, if any."""
        return next((e for e in self._entries if e.key_id == kid), None)

    def load_key(self, entry: VehicleEntry, passphrase: bytes | None = None) -> KeyPair:
        """This device's key pair for `entry` (from its file or the OS keyring); refuses a key file others can read."""
        path = self.path / KEYS_DIR / entry.key_file
        if entry.keyring:
            from . import oskeyring

            stored = oskeyring.load(entry.key_id)
            if stored is None:
                raise KeychainError(f"the key for {entry.name!r} is not in the OS keyring (service "
                                    f"{oskeyring.SERVICE!r}, user {entry.key_id.hex()}): forget this vehicle and "
                                    "pair again")
            return self._check_loaded(entry, stored, None, f"the OS keyring's item {entry.key_id.hex()}")
        try:
            data = read_secret(path)
        except FileNotFoundError:
            raise KeychainError(f"the key file for {entry.name!r} is missing ({path}): "
                                f"forget this vehicle and pair again") from None
        except SecretFileError as exc:
            raise KeychainError(str(exc)) from exc
        if entry.encrypted and not passphrase:
            raise KeychainError(f"the key for {entry.name!r} is protected by a passphrase: "
                                "set DKEY_PASSPHRASE or run from a terminal to be asked")
        return self._check_loaded(entry, data, passphrase if entry.encrypted else None, f"the key file {path}")

    def load_request_key(self, kid: bytes) -> KeyPair:
        """A key made for a share request (keys/<key-id>.pem, no passphrase); KeychainError if it is gone."""
        path = self.path / KEYS_DIR / f"{kid.hex()}.pem"
        try:
            data = read_secret(path)
        except FileNotFoundError:
            raise KeychainError(f"the key file of share request {kid.hex()} is missing ({path}): "
                                "run `key-client request-share` again") from None
        except SecretFileError as exc:
            raise KeychainError(str(exc)) from exc
        try:
            pair = KeyPair.from_private_key(load_private_key(data, None))
        except ValueError:
            raise KeychainError(f"the key file {path} is not an unprotected P-256 private key") from None
        if pair.key_id != kid:
            raise KeychainError(f"the key file {path} does not hold the key its name says")
        return pair

    @staticmethod
    def _check_loaded(entry: VehicleEntry, data: bytes, passphrase: bytes | None, where: str) -> KeyPair:
        """Parse a stored device key and check it is the one the index names."""
        try:
            key = load_private_key(data, passphrase)
        except ValueError:
            if entry.encrypted:
                raise KeychainError(f"wrong passphrase for the key of {entry.name!r}") from None
            raise KeychainError(f"{where} is not a P-256 private key") from None
        pair = KeyPair.from_private_key(key)
        if pair.key_id != entry.key_id:
            raise KeychainError(f"{where} does not hold the key the index names")
        return pair

    # ------------------------------------------------------------------ mutations

    def unique_name(self, wanted: str | None) -> str:
        """A nickname not yet used here: 'car', then 'car-2', 'car-3' ..."""
        base = _NAME_RE.sub("-", (wanted or "vehicle").strip()).strip("-")[:40] or "vehicle"
        taken = {e.name.casefold() for e in self._entries}
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def add(self, device: KeyPair, paired: Paired, *, name: str | None = None, advertised_name: str | None = None,
            address: str | None = None, encrypted: bool = False, keyring: bool = False,
            now: int | None = None) -> VehicleEntry:
        """Record a finished pairing for `device` (made by new_device_key); returns the new entry."""
        if paired.key_id != device.key_id:
            raise KeychainError("the vehicle enrolled a different key than ours")
        if key_id(paired.vehicle_public_key) != paired.vehicle_id:
            raise KeychainError("the vehicle's public key does not match its id")
        if not keyring and not (self.path / KEYS_DIR / f"{device.key_id.hex()}.pem").exists():
            raise KeychainError("the device key was not made by this keychain (use new_device_key)")
        with self._locked():
            if name is not None and any(e.name.casefold() == name.casefold() for e in self._entries):
                raise KeychainError(f"the keychain already has a vehicle called {name!r}")
            entry = VehicleEntry(
                name=name or self.unique_name(advertised_name),
                vehicle_id=paired.vehicle_id,
                vehicle_public_key=paired.vehicle_public_key,
                key_id=device.key_id,
                role=Role.label_of(paired.role),
                valid_from=paired.valid_from,
                valid_until=paired.valid_until,
                paired_at=int(now if now is not None else time.time()),
                advertised_name=advertised_name,
                address_hint=address,
                encrypted=encrypted,
                keyring=keyring,
            )
            self._entries.append(entry)
            self._save()
        return entry

    def add_shared(self, device_key_id: bytes, vehicle_public_key: bytes, role: Role, *, valid_from: int | None,
                   valid_until: int | None, advertised_name: str | None = None, name: str | None = None,
                   now: int | None = None) -> VehicleEntry:
        """Record a vehicle this device holds a share for (`import-share`); the key (made by new_device_key for
        `request-share`) stays where it is, and the vehicle key is pinned from the share."""
        if not (self.path / KEYS_DIR / f"{device_key_id.hex()}.pem").exists():
            raise KeychainError("the share's key was not made by this keychain (run `key-client request-share`)")
        vehicle_id = key_id(vehicle_public_key)
        with self._locked():
            if (have := self.find_vehicle_id(vehicle_id)) is not None:
                raise KeychainError(f"this device already holds a key for that vehicle ({have.name}); "
                                    f"`key-client forget {have.name}` first to import a share for it")
            if (used := self.find_key_id(device_key_id)) is not None:
                raise KeychainError(f"the requested key {device_key_id.hex()} is already used for {used.name}: "
                                    "run `key-client request-share` again for a new request")
            if name is not None and any(e.name.casefold() == name.casefold() for e in self._entries):
                raise KeychainError(f"the keychain already has a vehicle called {name!r}")
            entry = VehicleEntry(
                name=name or self.unique_name(advertised_name),
                vehicle_id=vehicle_id,
                vehicle_public_key=vehicle_public_key,
                key_id=device_key_id,
                role=Role.label_of(role),
                valid_from=valid_from,
                valid_until=valid_until,
                paired_at=int(now if now is not None else time.time()),
                advertised_name=advertised_name,
                via="share",
            )
            self._entries.append(entry)
            self._save()
        return entry

    def set_role(self, entry: VehicleEntry, role: str) -> VehicleEntry:
        """Record the role the vehicle now lists for this device's key (an owner may have changed it)."""
        if entry.role == role:
            return entry
        with self._locked():
            current = self.find_key_id(entry.key_id)
            if current is None:
                return entry
            updated = replace(current, role=role)
            self._entries = [updated if e.key_id == entry.key_id else e for e in self._entries]
            self._save()
        return updated

    def remember_address(self, entry: VehicleEntry, address: str) -> VehicleEntry:
        """Store the address the vehicle last answered on (an ordering hint only)."""
        if entry.address_hint == address:
            return entry
        with self._locked():
            current = self.find_key_id(entry.key_id)
            if current is None:
                return entry  # forgotten meanwhile by another process
            updated = replace(current, address_hint=address)
            self._entries = [updated if e.key_id == entry.key_id else e for e in self._entries]
            self._save()
        return updated

    def rename(self, entry: VehicleEntry, new_name: str) -> VehicleEntry:
        """Give a vehicle another nickname."""
        with self._locked():
            if any(e.name.casefold() == new_name.casefold() and e.key_id != entry.key_id for e in self._entries):
                raise KeychainError(f"the keychain already has a vehicle called {new_name!r}")
            current = self.find_key_id(entry.key_id) or entry
            updated = replace(current, name=new_name)
            self._entries = [updated if e.key_id == entry.key_id else e for e in self._entries]
            self._save()
        return updated

    def ad_secret(self, entry: VehicleEntry) -> AdSecret | None:
        """The vehicle's advertising secret as last received, or None (none yet, or a file we cannot trust)."""
        path = self.path / AD_SECRETS_DIR / entry.vehicle_id.hex()
        try:
            return AdSecret.unpack(read_secret(path))
        except FileNotFoundError:
            return None
        except (SecretFileError, ValueError) as exc:
            # Without it the device still finds the car (the fallback of docs/CLIENT.md), and the next session
            # stores a good one over it.
            log.warning("ignoring the advertising secret of %s (%s): %s", entry.name, path, exc)
            return None

    def ad_secrets(self) -> dict[str, bytes]:
        """Every held advertising secret by vehicle name, for resolving tokens (PROTOCOL.md §13)."""
        held = {e.name: self.ad_secret(e) for e in self._entries}
        return {name: ad.secret for name, ad in held.items() if ad is not None}

    def store_ad_secret(self, entry: VehicleEntry, ad: AdSecret) -> bool:
        """Keep `ad` for `entry`'s vehicle unless the one held is the same or newer; True if it was written."""
        held = self.ad_secret(entry)
        if held is not None and (held == ad or held.generation > ad.generation):
            return False  # an older generation (a stale share) never replaces a newer one
        directory = self.path / AD_SECRETS_DIR
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            _check_dir(directory)
            write_secret(directory / entry.vehicle_id.hex(), ad.pack())
        except (OSError, KeychainError) as exc:
            raise KeychainError(f"cannot store the advertising secret of {entry.name}: {exc}") from exc
        return True

    def forget(self, name_or_id: str) -> VehicleEntry:
        """Remove a vehicle and delete its private key; the vehicle still lists the key until it is revoked."""
        with self._locked():
            entry = self.get(name_or_id)
            self._entries = [e for e in self._entries if e.key_id != entry.key_id]
            # Index first: a crash between the two leaves an orphan key file, never an entry without its key.
            self._save()
            if entry.keyring:
                from . import oskeyring

                try:
                    oskeyring.delete(entry.key_id)
                except KeychainError as exc:
                    raise KeychainError(f"forgot {entry.name!r}, but {exc}: delete the keyring item (service "
                                        f"{oskeyring.SERVICE!r}, user {entry.key_id.hex()}) by hand") from exc
            with contextlib.suppress(FileNotFoundError):
                (self.path / KEYS_DIR / entry.key_file).unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.path / AD_SECRETS_DIR / entry.vehicle_id.hex()).unlink()
        return entry

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the index between key-client processes (re-reads it inside)."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent pairing from two shells is unlikely there
            self.reload()
            yield
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.reload()
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _save(self) -> None:
        doc = {"version": INDEX_VERSION, "vehicles": [e.to_json() for e in self._entries]}
        _write_atomic(self.path / INDEX, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _check_dir(path: Path) -> None:
    """Refuse a keychain directory others may write: they could swap the pinned vehicle keys."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeychainError(f"cannot open the keychain at {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise KeychainError(f"{path} is not a directory")
    if sys.platform == "win32":
        return
    if st.st_uid != os.geteuid():
        raise KeychainError(f"the keychain {path} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o022:
        raise KeychainError(f"the keychain {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                            f"fix it with: chmod 700 {shlex.quote(str(path))}")


def _read_index(path: Path) -> list[VehicleEntry]:
    index = path / INDEX
    try:
        fd = os.open(index, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeychainError(f"cannot read {index}: {exc.strerror}") from exc
    try:
        # fstat the file we read, not the name: the index pins each vehicle's public key, so a copy others
        # can write (even in a private directory, after a careless cp or chmod) is refused like the directory.
        st = os.fstat(fd)
        if sys.platform != "win32" and st.st_uid != os.geteuid():
            raise KeychainError(f"the keychain index {index} belongs to uid {st.st_uid}, not to you")
        if sys.platform != "win32" and st.st_mode & 0o022:
            raise KeychainError(f"the keychain index {index} is writable by other users "
                                f"(mode {stat.S_IMODE(st.st_mode):04o}), who could swap the pinned vehicle keys: "
                                f"fix it with: chmod 600 {shlex.quote(str(index))}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError as exc:
        raise KeychainError(f"cannot read {index}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise KeychainError(f"{path / INDEX} is not valid JSON: restore it from a backup") from None
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION or not isinstance(doc.get("vehicles"), list):
        raise KeychainError(f"{path / INDEX} is not a keychain index this version understands")
    return [VehicleEntry.from_json(d) for d in doc["vehicles"]]


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` via a same-directory temp file, fsync and rename (never a torn index)."""
    import secrets  # only when writing: reading commands (unlock) skip it

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeychainError(f"cannot write {path}: {exc.strerror}") from exc


__all__ = ["Keychain", "KeychainError", "VehicleEntry", "default_path"]
