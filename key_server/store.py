"""The vehicle's key store: enrolled device keys, pending pairings and small metadata in one SQLite file.

Durability and sharing (docs/PROTOCOL.md §11 property 6, docs/DEPLOY.md §6):
- WAL journal + ``synchronous=FULL``: every committed change (a revocation above all) is fsynced to the WAL
  before the call returns, so an acknowledged change survives a crash or a power cut.
- The running server and the CLI are separate processes on the same file. Every change runs in one
  ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two writers queue on ``busy_timeout``
  instead of failing half-way); readers never block writers in WAL mode.
- ``change_counter()`` goes up on every key or pairing change, so the server can notice CLI changes with one
  cheap SELECT and drop sessions of a key that was just revoked.
- ``transaction()`` groups several calls, e.g. a revocation and its audit entry (key_server.audit), into one
  atomic, durable commit. Calls nest: an inner call that fails is rolled back to its savepoint, so a caller that
  catches the error never commits half of it.
- Schema changes are numbered migrations (``MIGRATIONS``), each applied in its own transaction together with
  ``PRAGMA user_version``; to change the schema append a function, never edit an old one.
- Only ``key-server init`` creates a store (``open(create=True)``). Every other open refuses, without touching
  it, a file that is missing (``StoreMissing``), empty, truncated, not SQLite or of another schema
  (``UnusableStore``): re-creating it would silently drop every key and the whole audit history. It also
  refuses a file others can access or a state directory others can write (``InsecureStore``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shlex
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from protocol import KEY_ID_LEN, PUBLIC_KEY_LEN, AdSecret, Role, is_published_test_key

__all__ = [
    "CHANGE_COUNTER_KEY",
    "KEY_STATES",
    "MIGRATIONS",
    "PAIRING_SLOTS",
    "PRS_LEN",
    "SCHEMA_VERSION",
    "DuplicateKey",
    "InsecureStore",
    "KeyRecord",
    "KeyStore",
    "KeyWasRevoked",
    "LastOwnerError",
    "NoFreeSlot",
    "PairingMismatch",
    "PendingPairing",
    "PublishedTestKey",
    "StoreError",
    "StoreMissing",
    "UnknownKey",
    "UnknownPairing",
    "UnusableStore",
    "VIAS",
    "AlreadyRevoked",
    "HeldRevocationList",
    "key_state",
]

PRS_LEN: Final = 32
PAIRING_SLOTS: Final = 100  # slot numbers 0..99 are part of the printed pairing code
DEFAULT_BUSY_TIMEOUT_MS: Final = 5000
CHANGE_COUNTER_KEY: Final = "change_counter"
MAX_NAME_LEN: Final = 64
SHARE_SERIAL_LEN: Final = 8
# How a key was enrolled: a pairing code (typed or scanned; issued at the Pi or by an owner over the air), an
# owner's share certificate, or the vehicle itself (its CLI, tests, tools).
VIAS: Final = ("code", "share", "vehicle")
# What a listing says about a key: computed from the record and the guarded time, never stored.
KEY_STATES: Final = ("active", "not_yet_valid", "expired", "revoked")  # as the protocol's KeyState labels


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One enrolled device key; validity is the half-open interval [valid_from, valid_until) in Unix seconds."""

    key_id: bytes
    public_key: bytes = field(repr=False)  # 65 bytes of noise in every log line otherwise
    name: str
    role: Role
    valid_from: int | None
    valid_until: int | None
    schedule: str | None
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None
    via: str = "code"  # one of VIAS
    enrolled_by: bytes | None = None  # the owner key whose share or remotely issued code enrolled this key
    share_serial: bytes | None = None  # the serial of the share certificate that enrolled it (via "share")

    def __post_init__(self) -> None:
        """Reject records the table could not hold, so errors surface where the record is built."""
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_LEN:
            raise ValueError(f"key_id must be {KEY_ID_LEN} bytes")
        if (
            not isinstance(self.public_key, bytes)
            or len(self.public_key) != PUBLIC_KEY_LEN
            or self.public_key[0] != 0x04
        ):
            raise ValueError("public_key must be a 65-byte uncompressed SEC1 point (0x04 || X || Y)")
        _check_name(self.name)
        # Accept the plain string too (rows, JSON), but always hold the enum.
        object.__setattr__(self, "role", Role(self.role))
        _check_window(self.valid_from, self.valid_until)
        if self.via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}")
        if self.enrolled_by is not None and (not isinstance(self.enrolled_by, bytes)
                                             or len(self.enrolled_by) != KEY_ID_LEN):
            raise ValueError(f"enrolled_by must be a {KEY_ID_LEN}-byte key id or None")
        if self.share_serial is not None and (not isinstance(self.share_serial, bytes)
                                              or len(self.share_serial) != SHARE_SERIAL_LEN):
            raise ValueError(f"share_serial must be {SHARE_SERIAL_LEN} bytes or None")

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked (forever, unless explicitly re-enrolled)."""
        return self.revoked_at is not None

    def state(self, now: int) -> str:
        """The key's state at `now` (pass the guarded time): one of KEY_STATES."""
        return key_state(self, now)

    def active_owner(self, now: int) -> bool:
        """True for an unrevoked owner key whose validity window contains `now` (it can manage keys now)."""
        return self.role is Role.OWNER and self.state(now) == "active"


def key_state(rec: KeyRecord, now: int) -> str:
    """Revoked beats everything; then the validity window [valid_from, valid_until) decides (not the schedule)."""
    if rec.revoked:
        return "revoked"
    if rec.valid_from is not None and now < rec.valid_from:
        return "not_yet_valid"
    if rec.valid_until is not None and now >= rec.valid_until:
        return "expired"
    return "active"


@dataclass(frozen=True, slots=True)
class PendingPairing:
    """A one-time pairing code waiting to be used; `prs` is derived from the code, the code itself is never kept."""

    slot: int
    prs: bytes = field(repr=False)  # never logged: it is a short code's hash, open to offline guessing
    role: Role
    name: str
    expires_at: int
    key_valid_from: int | None
    key_valid_until: int | None
    schedule: str | None
    attempts_left: int
    created_at: int
    failures: int = 0  # attempts that ended without a key: wrong code, or abandoned mid-PAKE (`pair --list`)
    issued_by: bytes | None = None  # the owner key that issued the code over the air; None: the Pi's CLI

    def key_record(self, key_id: bytes, public_key: bytes, now: int) -> KeyRecord:
        """Build the KeyRecord this pairing grants to `public_key` (what complete_pairing expects)."""
        return KeyRecord(
            via="code",
            enrolled_by=self.issued_by,
            key_id=key_id,
            public_key=public_key,
            name=self.name,
            role=self.role,
            valid_from=self.key_valid_from,
            valid_until=self.key_valid_until,
            schedule=self.schedule,
            created_at=now,
        )


class StoreError(Exception):
    """Base of every key store error; also raised for a broken or busy database."""


class StoreMissing(StoreError):
    """There is no key store file: `key-server init` has not run here (only init creates one)."""


class UnusableStore(StoreError):
    """The file is not a key store this server can use: empty, truncated, not SQLite, or of another schema."""


class InsecureStore(StoreError):
    """The key store file or its directory is open to other users; the message names the path and the chmod."""


class UnknownKey(StoreError, KeyError):
    """No key matches."""

    def __str__(self) -> str:
        """Show the message, not KeyError's quoted repr of it."""
        return str(self.args[0]) if self.args else "unknown key"


class DuplicateKey(StoreError):
    """The key id or public key is already enrolled."""


class PublishedTestKey(StoreError):
    """The key is one of the published test keys (docs/PROTOCOL.md §10.1): its private key is public."""


class KeyWasRevoked(StoreError):
    """The key was revoked; enrolling it again needs allow_reenroll=True (an explicit act)."""


class LastOwnerError(StoreError):
    """Revoking (or demoting) this key would leave no active owner; revoking needs force=True."""


class AlreadyRevoked(StoreError):
    """The key is already revoked: nothing was written (a repeated revocation is not a new act)."""


@dataclass(frozen=True, slots=True)
class HeldRevocationList:
    """The newest revocation list applied from one issuer (an owner key): its version and its exact bytes."""

    issuer: bytes
    version: int
    issued_at: int
    applied_at: int
    raw: bytes = field(repr=False)


class NoFreeSlot(StoreError):
    """All pairing slots are in use; cancel one or wait for expiry."""


class UnknownPairing(StoreError):
    """No such pending pairing (never created, completed, cancelled, exhausted or expired)."""


class PairingMismatch(StoreError):
    """The key offered to complete_pairing does not carry the role/validity/schedule the pairing grants."""


# --------------------------------------------------------------------------------------------------------------
# Schema migrations. MIGRATIONS[i] takes the schema from version i to i + 1 inside an open transaction.

Migration = Callable[[sqlite3.Connection], None]

_SCHEMA_1: Final[tuple[str, ...]] = (
    """
    CREATE TABLE keys (
        key_id       BLOB PRIMARY KEY CHECK (typeof(key_id) = 'blob' AND length(key_id) = 4),
        public_key   BLOB NOT NULL UNIQUE
                     CHECK (typeof(public_key) = 'blob' AND length(public_key) = 65),
        name         TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('owner', 'driver', 'guest')),
        valid_from   INTEGER,
        valid_until  INTEGER,
        schedule     TEXT,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at   INTEGER
    ) WITHOUT ROWID
    """,
    "CREATE INDEX keys_name ON keys (name)",
    """
    CREATE TABLE pairings (
        slot            INTEGER PRIMARY KEY CHECK (slot BETWEEN 0 AND 99),
        prs             BLOB NOT NULL CHECK (typeof(prs) = 'blob' AND length(prs) = 32),
        role            TEXT NOT NULL CHECK (role IN ('owner', 'driver', 'guest')),
        name            TEXT NOT NULL,
        expires_at      INTEGER NOT NULL,
        key_valid_from  INTEGER,
        key_valid_until INTEGER,
        schedule        TEXT,
        attempts_left   INTEGER NOT NULL CHECK (attempts_left >= 0),
        created_at      INTEGER NOT NULL
    )
    """,
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
    """
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        ts        INTEGER NOT NULL,
        event     TEXT NOT NULL,
        key_id    BLOB,
        detail    TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash      BLOB NOT NULL
    )
    """,
)


def _migration_1(db: sqlite3.Connection) -> None:
    """Create the initial schema: keys, pairings, meta, audit."""
    for statement in _SCHEMA_1:
        db.execute(statement)


def _migration_2(db: sqlite3.Connection) -> None:
    """Count each pending code's failed attempts, so the owner can see a code being guessed at."""
    db.execute("ALTER TABLE pairings ADD COLUMN failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0)")


def _migration_3(db: sqlite3.Connection) -> None:
    """Remember how each key was enrolled and by whom, and the owners' revocation lists (shares, issue 12)."""
    db.execute("ALTER TABLE keys ADD COLUMN via TEXT NOT NULL DEFAULT 'code' "
               "CHECK (via IN ('code', 'share', 'vehicle'))")
    db.execute("ALTER TABLE keys ADD COLUMN enrolled_by BLOB "
               "CHECK (enrolled_by IS NULL OR (typeof(enrolled_by) = 'blob' AND length(enrolled_by) = 4))")
    db.execute("ALTER TABLE keys ADD COLUMN share_serial BLOB "
               "CHECK (share_serial IS NULL OR (typeof(share_serial) = 'blob' AND length(share_serial) = 8))")
    db.execute("CREATE INDEX keys_enrolled_by ON keys (enrolled_by)")
    db.execute("CREATE INDEX keys_share_serial ON keys (share_serial)")
    db.execute("ALTER TABLE pairings ADD COLUMN issued_by BLOB "
               "CHECK (issued_by IS NULL OR (typeof(issued_by) = 'blob' AND length(issued_by) = 4))")
    db.execute("""
        CREATE TABLE revocation_lists (
            issuer     BLOB PRIMARY KEY CHECK (typeof(issuer) = 'blob' AND length(issuer) = 4),
            version    INTEGER NOT NULL CHECK (version >= 1),
            issued_at  INTEGER NOT NULL,
            applied_at INTEGER NOT NULL,
            list       BLOB NOT NULL
        ) WITHOUT ROWID
    """)
    # Every key id a list named, enrolled or not: a share for it must never enrol it later.
    db.execute("""
        CREATE TABLE revoked_key_ids (
            key_id  BLOB PRIMARY KEY CHECK (typeof(key_id) = 'blob' AND length(key_id) = 4),
            issuer  BLOB,
            version INTEGER,
            at      INTEGER NOT NULL
        ) WITHOUT ROWID
    """)


# meta: the advertising secret, "<generation>:<32 hex digits>" (PROTOCOL.md §13)
AD_SECRET_KEY: Final = "ad_secret"  # noqa: S105 - the name of a meta row, not a secret


def _encode_ad_secret(ad: AdSecret) -> str:
    return f"{ad.generation}:{ad.secret.hex()}"


def _migration_4(db: sqlite3.Connection) -> None:
    """Give the vehicle an advertising secret (generation 1), for a new store and an existing one alike."""
    db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING",
               (AD_SECRET_KEY, _encode_ad_secret(AdSecret.generate(1))))


# Append new migrations here; SCHEMA_VERSION follows. Read at open() time, so tests can extend it.
MIGRATIONS: list[Migration] = [_migration_1, _migration_2, _migration_3, _migration_4]
SCHEMA_VERSION: Final = len(MIGRATIONS)

_KEY_COLUMNS: Final = (
    "key_id, public_key, name, role, valid_from, valid_until, schedule, created_at, last_used_at, revoked_at, "
    "via, enrolled_by, share_serial"
)
_PAIRING_COLUMNS: Final = (
    "slot, prs, role, name, expires_at, key_valid_from, key_valid_until, schedule, attempts_left, created_at, "
    "failures, issued_by"
)


class KeyStore:
    """Keys, pairings and metadata in one SQLite file, shared safely by the server and the CLI processes.

    Thread-safe (one connection behind a lock). Use ``KeyStore.open(path)``; close it (or use ``with``).
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        """Wrap an already configured and migrated connection; use KeyStore.open instead."""
        self._db: sqlite3.Connection | None = db
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0  # nesting depth of transaction(): 0 = none, 1 = BEGIN, >1 = savepoints

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, create: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ) -> KeyStore:
        """Open and migrate the store at `path`; only with `create` is a missing or empty file made a new store.

        Raises StoreMissing, UnusableStore (empty, truncated, not SQLite, another schema) or InsecureStore
        without changing the file; its directory must exist.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(f"state directory {path.parent} does not exist (run: key-server init)")
        _check_state_dir(path.parent)
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT if create else 0)
        try:
            # Create it 0600 ourselves: pairing hashes of short codes must not be readable by other users, and
            # SQLite gives the -wal and -shm files the same mode as the database file.
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            raise StoreMissing(f"no key store at {path}: run `key-server init` first") from None
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            _check_store_file(path, os.fstat(fd))
            header = os.read(fd, _HEADER_LEN)
            # The size after the header: a server checkpointing meanwhile only grows the file, so a header
            # read first can never claim more pages than the size taken second (no false "truncated").
            st = os.fstat(fd)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        fresh = create and st.st_size == 0
        if not fresh:
            # Before SQLite sees it: SQLite would happily turn an empty or foreign file into a new store.
            _check_header(path, st.st_size, header)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit transactions
        # do not cover DDL and would not take the write lock up front).
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        try:
            # Before _configure: switching to WAL would already write to a file that turns out not to be ours.
            _check_schema(db, path, fresh=fresh)
            _configure(db, path, busy_timeout_ms)
            _migrate(db, path)
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection (idempotent). Close a GuardedClock using this store first."""
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                db.close()

    def __enter__(self) -> KeyStore:
        """Use the store as a context manager that closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        self.close()

    # ---- transactions ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one atomic, durable write transaction; nested use joins it through a savepoint.

        Everything inside commits together (synced to disk before the block exits) or not at all.
        """
        with self._lock:
            db = self._conn()
            if self._depth == 0:
                self._begin(db)
                self._depth = 1
                try:
                    yield
                except sqlite3.Error as exc:
                    self._depth = 0
                    self._rollback(db)
                    raise StoreError(f"{self._path}: {exc}") from exc
                except BaseException:
                    self._depth = 0
                    self._rollback(db)
                    raise
                self._depth = 0
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback(db)
                    raise StoreError(f"commit to {self._path} failed: {exc}") from exc
            else:
                savepoint = f"sp{self._depth}"
                db.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    # SQLite may already have rolled the whole transaction back (I/O error, disk full); then
                    # the savepoint is gone and the outer level reports the failure.
                    if db.in_transaction:
                        db.execute(f"ROLLBACK TO {savepoint}")
                        db.execute(f"RELEASE {savepoint}")
                    raise
                else:
                    db.execute(f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Read several statements from one consistent snapshot without taking the write lock."""
        with self._lock:
            db = self._conn()
            if self._depth:
                yield db  # already inside our own transaction: that is a snapshot too
                return
            try:
                db.execute("BEGIN DEFERRED")
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def _begin(self, db: sqlite3.Connection) -> None:
        """Take the write lock now (waiting up to busy_timeout for the other process)."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self._path} is busy (another key-server process holds it): {exc}") from exc

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Roll back if SQLite has not already done so (it does on some errors, e.g. I/O errors)."""
        if db.in_transaction:
            db.execute("ROLLBACK")

    def _conn(self) -> sqlite3.Connection:
        """The open connection, or StoreError if closed."""
        if self._db is None:
            raise StoreError("the key store is closed")
        return self._db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one SELECT (package-internal; key_server.audit uses it) and return all rows."""
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement inside transaction() (package-internal; key_server.audit uses it)."""
        if self._depth == 0:
            raise RuntimeError("_execute must run inside KeyStore.transaction()")
        return self._conn().execute(sql, params)

    def _bump(self) -> None:
        """Advance the change counter (inside the current transaction)."""
        self._execute(
            "INSERT INTO meta (k, v) VALUES (?, '1') "
            "ON CONFLICT (k) DO UPDATE SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)",
            (CHANGE_COUNTER_KEY,),
        )

    # ---- keys --------------------------------------------------------------------------------------------------

    def add_key(self, rec: KeyRecord, *, allow_reenroll: bool = False) -> None:
        """Enroll a key; DuplicateKey if its id or public key is enrolled, KeyWasRevoked unless allow_reenroll."""
        if rec.revoked_at is not None:
            raise ValueError("add_key enrolls an active key: revoked_at must be None")
        _check_p256_point(rec.public_key)
        if is_published_test_key(rec.public_key):  # anyone can sign with it: enrolling it opens the car to all
            raise PublishedTestKey(f"key {rec.key_id.hex()} is a published test key (PROTOCOL.md §10.1): "
                                   "never enroll it")
        with self.transaction():
            rows = self._execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ? OR public_key = ?",  # noqa: S608
                (rec.key_id, rec.public_key),
            ).fetchall()
            existing = [_key_from_row(row) for row in rows]
            active = [r for r in existing if not r.revoked]
            if active:
                other = active[0]
                what = "key id" if other.key_id == rec.key_id else "public key"
                raise DuplicateKey(f"{what} already enrolled as {other.key_id.hex()} ({other.name!r})")
            if existing:
                if not allow_reenroll:
                    old = existing[0]
                    raise KeyWasRevoked(
                        f"key {old.key_id.hex()} ({old.name!r}) was revoked; re-enrolling it must be explicit"
                    )
                # Re-enrolment replaces the revoked row(s): the new record carries the new grant.
                for old in existing:
                    self._execute("DELETE FROM keys WHERE key_id = ?", (old.key_id,))
            self._execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    rec.key_id,
                    rec.public_key,
                    rec.name,
                    rec.role.label,
                    rec.valid_from,
                    rec.valid_until,
                    rec.schedule,
                    rec.created_at,
                    rec.last_used_at,
                    None,
                    rec.via,
                    rec.enrolled_by,
                    rec.share_serial,
                ),
            )
            self._bump()

    def get_key(self, key_id: bytes) -> KeyRecord | None:
        """The key with this id (revoked ones included, so policy can say REVOKED), or None. One SELECT."""
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?", (key_id,))  # noqa: S608
        return _key_from_row(rows[0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, key_id")  # noqa: S608
        return [_key_from_row(row) for row in rows]

    def find_key(self, prefix_or_name: str) -> KeyRecord:
        """The one key whose hex id starts with `prefix_or_name` or whose name equals it (CLI lookup).

        Raises UnknownKey if none matches and StoreError (listing the candidates) if several do.
        """
        text = prefix_or_name.strip()
        if not text:
            raise UnknownKey("empty key id or name")
        prefix = text.lower()
        is_hex = len(prefix) <= 2 * KEY_ID_LEN and all(c in "0123456789abcdef" for c in prefix)
        matches = [
            rec
            for rec in self.list_keys()
            if rec.name == text or (is_hex and rec.key_id.hex().startswith(prefix))
        ]
        if not matches:
            raise UnknownKey(f"no key with id prefix or name {text!r} (see: key-server keys)")
        if len(matches) > 1:
            listed = ", ".join(f"{m.key_id.hex()} ({m.name!r})" for m in matches)
            raise StoreError(f"{text!r} matches several keys: {listed}; give more of the key id")
        return matches[0]

    def revoke_key(self, key_id: bytes, now: int, *, force: bool = False) -> KeyRecord:
        """Revoke a key durably (synced before return) and return it; already revoked: return it unchanged.

        Raises UnknownKey, or LastOwnerError when this is the last active owner and not `force`.
        """
        with self.transaction():
            rows = self._execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)  # noqa: S608
            ).fetchall()
            if not rows:
                raise UnknownKey(f"no key {key_id.hex()}")
            rec = _key_from_row(rows[0])
            if rec.revoked:
                return rec
            if rec.role is Role.OWNER and not force:
                if self._other_active_owners(key_id, now) == 0:
                    raise LastOwnerError(
                        f"{key_id.hex()} ({rec.name!r}) is the last active owner key; revoking it leaves only "
                        "the Pi's own CLI to manage keys (use --force if that is what you want)"
                    )
            self._execute("UPDATE keys SET revoked_at = ? WHERE key_id = ?", (now, key_id))
            self._bump()
        return dataclasses.replace(rec, revoked_at=now)

    def _other_active_owners(self, key_id: bytes, now: int) -> int:
        """How many owner keys other than `key_id` are active at `now` (inside the current transaction)."""
        # "Active" = could manage keys right now: not revoked and inside its validity window.
        (others,) = self._execute(
            "SELECT count(*) FROM keys WHERE role = 'owner' AND revoked_at IS NULL AND key_id != ? "
            "AND (valid_from IS NULL OR valid_from <= ?) AND (valid_until IS NULL OR valid_until > ?)",
            (key_id, now, now),
        ).fetchone()
        return int(others)

    def update_key(self, rec: KeyRecord, now: int) -> KeyRecord:
        """Store `rec`'s name, role, validity window and schedule over the unrevoked key with its id; return it.

        Raises UnknownKey, AlreadyRevoked (a revoked key is not edited), or LastOwnerError when the key is the last
        active owner and `rec` would no longer be one at `now` (a demotion, or a window that excludes now).
        Everything else of the stored key (public key, enrolment, last use) is kept.
        """
        with self.transaction():
            old = self._key_row(rec.key_id)
            if old is None:
                raise UnknownKey(f"no key {rec.key_id.hex()}")
            if old.revoked:
                raise AlreadyRevoked(f"{old.key_id.hex()} ({old.name!r}) is revoked: it cannot be edited")
            new = dataclasses.replace(old, name=rec.name, role=rec.role, valid_from=rec.valid_from,
                                      valid_until=rec.valid_until, schedule=rec.schedule)
            if (old.active_owner(now) and not new.active_owner(now)
                    and self._other_active_owners(old.key_id, now) == 0):
                raise LastOwnerError(f"{old.key_id.hex()} ({old.name!r}) is the last active owner key: it cannot "
                                     "be demoted or given a window that excludes now")
            self._execute(
                "UPDATE keys SET name = ?, role = ?, valid_from = ?, valid_until = ?, schedule = ? WHERE key_id = ?",
                (new.name, new.role.label, new.valid_from, new.valid_until, new.schedule, new.key_id),
            )
            self._bump()
        return new

    def _key_row(self, key_id: bytes) -> KeyRecord | None:
        """The key with this id read inside the current transaction, or None."""
        rows = self._execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchall()  # noqa: S608
        return _key_from_row(rows[0]) if rows else None

    def keys_enrolled_by(self, key_id: bytes) -> list[KeyRecord]:
        """The keys enrolled by a share `key_id` issued (revoked ones included), oldest first."""
        rows = self._query(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE enrolled_by = ? AND via = 'share' "  # noqa: S608
            "ORDER BY created_at, key_id", (key_id,))
        return [_key_from_row(row) for row in rows]

    def share_serial_used(self, serial: bytes) -> KeyRecord | None:
        """The key a share with this serial enrolled (revoked or not), or None: a serial enrols at most once."""
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM keys WHERE share_serial = ?", (serial,))  # noqa: S608
        return _key_from_row(rows[0]) if rows else None

    # ---- revocation lists --------------------------------------------------------------------------------------

    def revocation_list(self, issuer: bytes) -> HeldRevocationList | None:
        """The newest list applied from `issuer`, or None if none was."""
        rows = self._query("SELECT issuer, version, issued_at, applied_at, list FROM revocation_lists "
                           "WHERE issuer = ?", (issuer,))
        return HeldRevocationList(*rows[0]) if rows else None

    def revocation_lists(self) -> list[HeldRevocationList]:
        """Every issuer's newest applied list, by issuer."""
        rows = self._query("SELECT issuer, version, issued_at, applied_at, list FROM revocation_lists ORDER BY issuer")
        return [HeldRevocationList(*row) for row in rows]

    def put_revocation_list(self, issuer: bytes, version: int, issued_at: int, now: int, raw: bytes) -> None:
        """Hold `raw` as `issuer`'s list `version`; ValueError unless newer than the one held (lists only grow)."""
        with self.transaction():
            rows = self._execute("SELECT version FROM revocation_lists WHERE issuer = ?", (issuer,)).fetchall()
            if rows and int(rows[0][0]) >= version:
                raise ValueError(f"revocation list version {version} is not newer than the held {rows[0][0]}")
            self._execute(
                "INSERT INTO revocation_lists (issuer, version, issued_at, applied_at, list) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (issuer) DO UPDATE SET version = excluded.version, issued_at = excluded.issued_at, "
                "applied_at = excluded.applied_at, list = excluded.list",
                (issuer, version, issued_at, now, raw),
            )
            self._bump()

    def remember_revoked_id(self, key_id: bytes, issuer: bytes | None, version: int | None, now: int) -> None:
        """Remember `key_id` as revoked even if it is not enrolled (yet): no share may enrol it later."""
        with self.transaction():
            self._execute("INSERT INTO revoked_key_ids (key_id, issuer, version, at) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (key_id) DO NOTHING", (key_id, issuer, version, now))

    def key_id_revoked(self, key_id: bytes) -> bool:
        """True if `key_id` is a revoked key of the store or was named by an applied revocation list."""
        rows = self._query("SELECT 1 FROM revoked_key_ids WHERE key_id = ? UNION ALL "
                           "SELECT 1 FROM keys WHERE key_id = ? AND revoked_at IS NOT NULL", (key_id, key_id))
        return bool(rows)

    def mark_used(self, key_id: bytes, now: int) -> None:
        """Record that the key was just used (not counted as a change: it would wake every poller)."""
        with self.transaction():
            cur = self._execute("UPDATE keys SET last_used_at = ? WHERE key_id = ?", (now, key_id))
            if cur.rowcount == 0:
                raise UnknownKey(f"no key {key_id.hex()}")

    # ---- pairings ----------------------------------------------------------------------------------------------

    def create_pairing(
        self,
        prs_for_slot: Callable[[int], bytes],
        *,
        role: Role,
        name: str,
        expires_at: int,
        key_valid_from: int | None,
        key_valid_until: int | None,
        schedule: str | None,
        attempts: int = 5,
        now: int,
        issued_by: bytes | None = None,
    ) -> PendingPairing:
        """Reserve a random free slot, store prs_for_slot(slot) for it and return the pending pairing.

        Expired pairings are purged first; NoFreeSlot if all 100 slots are taken. prs_for_slot runs inside the
        transaction (holding the write lock), so it should be quick.
        """
        role = Role(role)
        _check_name(name)
        _check_window(key_valid_from, key_valid_until)
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if expires_at <= now:
            raise ValueError("expires_at must be in the future")
        with self.transaction():
            self._purge_expired(now)
            used = {row[0] for row in self._execute("SELECT slot FROM pairings").fetchall()}
            free = [slot for slot in range(PAIRING_SLOTS) if slot not in used]
            if not free:
                raise NoFreeSlot(f"all {PAIRING_SLOTS} pairing slots are in use; cancel one or wait")
            # The slot is part of the code the user types, so it must not be predictable.
            slot = secrets.choice(free)
            prs = prs_for_slot(slot)
            if not isinstance(prs, bytes) or len(prs) != PRS_LEN:
                raise ValueError(f"prs_for_slot must return {PRS_LEN} bytes")
            pairing = PendingPairing(
                slot=slot,
                prs=prs,
                role=role,
                name=name,
                expires_at=expires_at,
                key_valid_from=key_valid_from,
                key_valid_until=key_valid_until,
                schedule=schedule,
                attempts_left=attempts,
                created_at=now,
                issued_by=issued_by,
            )
            self._execute(
                f"INSERT INTO pairings ({_PAIRING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",  # noqa: S608
                (
                    slot,
                    prs,
                    role.label,
                    name,
                    expires_at,
                    key_valid_from,
                    key_valid_until,
                    schedule,
                    attempts,
                    now,
                    issued_by,
                ),
            )
            self._bump()
        return pairing

    def get_pairing(self, slot: int, now: int) -> PendingPairing | None:
        """The usable pairing in `slot`, or None if absent, expired (purged) or out of attempts."""
        pairing = self._pairing_row(slot)
        if pairing is None:
            return None
        if pairing.expires_at <= now:
            with self.transaction():
                self._purge_expired(now)
            return None
        return pairing if pairing.attempts_left > 0 else None

    def spend_pairing_attempt(self, slot: int, now: int) -> PendingPairing | None:
        """Take one attempt before running the PAKE; return the pairing as it was, or None if unusable.

        An attempt counts until it succeeds. When the last attempt is taken the row stays, invisible to
        get/list/spend, so that this last attempt can still complete_pairing; fail_pairing_attempt (or expiry)
        removes it; asking again also removes it (the in-flight last attempt has had its chance).
        A live slot and an empty one run the same statements (each matches no row when the slot is empty) and
        bump the change counter alike, so the work done does not tell a prober which slots hold a code.
        """
        with self.transaction():
            self._execute("DELETE FROM pairings WHERE expires_at <= ? OR (slot = ? AND attempts_left <= 0)",
                          (now, slot))
            rows = self._execute(
                f"SELECT {_PAIRING_COLUMNS} FROM pairings WHERE slot = ?", (slot,)  # noqa: S608
            ).fetchall()
            self._execute("UPDATE pairings SET attempts_left = attempts_left - 1 WHERE slot = ?", (slot,))
            self._bump()
        return _pairing_from_row(rows[0]) if rows else None

    def fail_pairing_attempt(self, slot: int, prs: bytes | None = None) -> None:
        """Count a failed PAKE attempt against the code in `slot`; remove the code if that was its last attempt.

        With `prs`, only the code with that PRS counts it (the slot may hold a newer code by now). The same
        statements run whether or not the code is still there.
        """
        match = "slot = ? AND (? IS NULL OR prs = ?)"
        with self.transaction():
            self._execute(f"UPDATE pairings SET failures = failures + 1 WHERE {match}", (slot, prs, prs))  # noqa: S608
            self._execute(f"DELETE FROM pairings WHERE {match} AND attempts_left <= 0", (slot, prs, prs))  # noqa: S608
            self._bump()

    def complete_pairing(self, slot: int, rec: KeyRecord) -> None:
        """Atomically delete the pairing and enroll `rec`; on any failure nothing changes.

        Raises UnknownPairing if the pairing is gone, PairingMismatch if `rec` does not carry the pairing's
        role/validity/schedule, and whatever add_key raises (DuplicateKey, KeyWasRevoked).
        """
        with self.transaction():
            pairing = self._pairing_row(slot)
            if pairing is None:
                raise UnknownPairing(f"no pending pairing in slot {slot}")
            granted = (pairing.role, pairing.key_valid_from, pairing.key_valid_until, pairing.schedule, "code",
                       pairing.issued_by)
            offered = (rec.role, rec.valid_from, rec.valid_until, rec.schedule, rec.via, rec.enrolled_by)
            if granted != offered:
                raise PairingMismatch(f"pairing {slot} grants {granted}, the key carries {offered}")
            self._execute("DELETE FROM pairings WHERE slot = ?", (slot,))
            self.add_key(rec)  # joins this transaction; its failure rolls the DELETE back too

    def cancel_pairing(self, slot: int) -> None:
        """Delete a pending pairing; UnknownPairing if there is none in `slot`."""
        with self.transaction():
            cur = self._execute("DELETE FROM pairings WHERE slot = ?", (slot,))
            if cur.rowcount == 0:
                raise UnknownPairing(f"no pending pairing in slot {slot}")
            self._bump()

    def pairing_pending(self, now: int) -> bool:
        """True if a usable pairing code waits (unexpired, attempts left): one read, nothing purged."""
        return bool(self._query("SELECT 1 FROM pairings WHERE attempts_left > 0 AND expires_at > ? LIMIT 1", (now,)))

    def list_pairings(self, now: int) -> list[PendingPairing]:
        """Usable pending pairings (expired ones purged first), by slot."""
        with self.transaction():
            self._purge_expired(now)
            rows = self._execute(
                f"SELECT {_PAIRING_COLUMNS} FROM pairings WHERE attempts_left > 0 ORDER BY slot"  # noqa: S608
            ).fetchall()
        return [_pairing_from_row(row) for row in rows]

    def _pairing_row(self, slot: int) -> PendingPairing | None:
        """The raw pairing row in `slot` whatever its state."""
        rows = self._query(f"SELECT {_PAIRING_COLUMNS} FROM pairings WHERE slot = ?", (slot,))  # noqa: S608
        return _pairing_from_row(rows[0]) if rows else None

    def _purge_expired(self, now: int) -> None:
        """Delete expired pairings (inside the current transaction)."""
        cur = self._execute("DELETE FROM pairings WHERE expires_at <= ?", (now,))
        if cur.rowcount:
            self._bump()

    # ---- meta --------------------------------------------------------------------------------------------------

    def change_counter(self) -> int:
        """A number that grows on every key or pairing change, by any process (one SELECT)."""
        value = self.get_meta(CHANGE_COUNTER_KEY)
        return int(value) if value is not None else 0

    def get_meta(self, k: str) -> str | None:
        """The metadata value for `k`, or None."""
        rows = self._query("SELECT v FROM meta WHERE k = ?", (k,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, k: str, v: str) -> None:
        """Set a metadata value (one transaction)."""
        with self.transaction():
            self._execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (k, v))

    def max_meta_int(self, k: str, v: int) -> int:
        """Atomically raise the integer stored at `k` to at least `v`; return the stored value afterwards.

        Never lowers it, even when another process wrote a larger value meanwhile (used by GuardedClock).
        """
        with self.transaction():
            rows = self._execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchall()
            current = _int_or_none(rows[0][0]) if rows else None
            if current is not None and current >= v:
                return current
            self._execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (k, str(v))
            )
        return v

    def ad_secret(self) -> AdSecret:
        """The vehicle's advertising secret (PROTOCOL.md §13); StoreError if the store holds none or a bad one."""
        raw = self.get_meta(AD_SECRET_KEY)
        if raw is None:
            raise StoreError("the key store holds no advertising secret (schema older than 4?)")
        return _decode_ad_secret(raw)

    def rotate_ad_secret(self) -> AdSecret:
        """Replace the advertising secret with a fresh one of the next generation (one transaction); the new one.

        Bumps the change counter, so a running server notices and advertises a token of the new secret at once.
        """
        with self.transaction():
            rows = self._execute("SELECT v FROM meta WHERE k = ?", (AD_SECRET_KEY,)).fetchall()
            current = _decode_ad_secret(str(rows[0][0])) if rows else None
            new = current.rotated() if current is not None else AdSecret.generate(1)
            self._execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                          (AD_SECRET_KEY, _encode_ad_secret(new)))
            self._bump()
        return new

    def schema_version(self) -> int:
        """The schema version of the open file (PRAGMA user_version)."""
        return int(self._query("PRAGMA user_version")[0][0])

    def integrity_check(self) -> list[str]:
        """Problems PRAGMA integrity_check finds (an empty list means the file is sound); for `doctor`."""
        result = [str(row[0]) for row in self._query("PRAGMA integrity_check")]
        return [] if result == ["ok"] else result

    def backup_to(self, dest: Path) -> None:
        """Copy the whole store to a new file `dest` (mode 0600) with SQLite's online backup API.

        One snapshot: keys, pairings and the audit chain as of one moment, even while the server writes (the
        copy restarts if a writer changes a page mid-way). The copy is a single file (rollback journal, not WAL).
        Raises FileExistsError if `dest` exists: a backup never overwrites anything.
        """
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
        try:
            target = sqlite3.connect(dest, isolation_level=None)
            try:
                with self._lock:
                    self._conn().backup(target)
                target.execute("PRAGMA journal_mode=DELETE")  # no -wal file beside the backup
                problems = [str(r[0]) for r in target.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise StoreError(f"the backup {dest} does not verify: {problems}")
            finally:
                target.close()
            with open(dest, "rb") as fh:
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise


# --------------------------------------------------------------------------------------------------------------
# helpers


def _configure(db: sqlite3.Connection, path: Path, busy_timeout_ms: int) -> None:
    """Set the per-connection pragmas and switch the file to WAL."""
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        # FULL (not WAL's usual NORMAL): every commit fsyncs the WAL, so an acknowledged revocation is on disk.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable key store: {exc}") from exc
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: the filesystem does not support SQLite's WAL mode (got {mode!r})")


# SQLite's file header (https://www.sqlite.org/fileformat.html §1.3): magic, page size, page count.
_HEADER_LEN: Final = 100
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
def _decode_ad_secret(raw: str) -> AdSecret:
    """Parse the meta value _encode_ad_secret wrote; StoreError if it is damaged."""
    try:
        generation, hex_secret = raw.split(":")
        return AdSecret(int(generation), bytes.fromhex(hex_secret))
    except ValueError:
        raise StoreError("the key store's advertising secret is damaged") from None


# The tables schema version 1 made; a file at version >= 1 without them is not ours, whatever it claims.
_SCHEMA_1_TABLES: Final = frozenset({"keys", "pairings", "meta", "audit"})
_RESTORE: Final = "restore keys.db from a backup (`key-server restore`, docs/DEPLOY.md §7); it is never re-created"


def _check_state_dir(directory: Path) -> None:
    """InsecureStore if others can write the state directory: they could swap keys.db or the vehicle key."""
    if not hasattr(os, "geteuid"):
        return  # Windows: POSIX modes do not describe its ACLs
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise StoreError(f"cannot open {directory}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise InsecureStore(
            f"the state directory {directory} is writable by other users (mode {mode:04o}), who could replace the "
            f"key store or the vehicle key: fix it with: chmod 700 {shlex.quote(str(directory))}"
        )


def _check_store_file(path: Path, st: os.stat_result) -> None:
    """InsecureStore unless the store is a regular file of ours that nobody else may read or write."""
    if not stat.S_ISREG(st.st_mode):
        raise UnusableStore(f"{path} is not a regular file: {_RESTORE}")
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:
        return
    quoted = shlex.quote(str(path))
    if st.st_uid != geteuid():
        raise InsecureStore(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {geteuid()}): run this as the user that owns it, "
            f"or take it over with: sudo chown {geteuid()} {quoted} && chmod 600 {quoted}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        # It holds the enrolled keys, the pairing-code hashes (open to offline guessing) and the audit log.
        raise InsecureStore(
            f"the key store {path} has mode {mode:04o} (other users can access it): fix it with: chmod 600 {quoted}"
        )


def _check_header(path: Path, size: int, header: bytes) -> None:
    """UnusableStore unless `path` starts like a whole SQLite database (empty, truncated, foreign files fail)."""
    if size == 0:
        raise UnusableStore(f"the key store {path} is empty (0 bytes), its keys and audit log lost: {_RESTORE}")
    if not header.startswith(_SQLITE_MAGIC):
        raise UnusableStore(f"{path} is not an SQLite database, so not a key store: {_RESTORE}")
    if size < _HEADER_LEN:
        raise UnusableStore(f"the key store {path} is truncated ({size} bytes): {_RESTORE}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The in-header page count is valid only when "version-valid-for" matches the change counter. With a
    # non-empty WAL beside it, a checkpoint cut short may legitimately leave the file shorter: SQLite replays it.
    counted = header[24:28] == header[92:96] and not _has_wal(path)
    if page_size < 512 or size % page_size or (counted and size < pages * page_size):
        expected = f" of {pages * page_size}" if counted else ""
        raise UnusableStore(f"the key store {path} is truncated ({size} bytes{expected}): {_RESTORE}")


def _has_wal(path: Path) -> bool:
    """True if a non-empty write-ahead log sits beside the database (it holds committed pages not yet copied)."""
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


def _check_schema(db: sqlite3.Connection, path: Path, *, fresh: bool) -> None:
    """UnusableStore if the file is SQLite but not a key store: no schema (and not `fresh`) or missing tables."""
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise UnusableStore(f"the key store {path} is damaged ({exc}): {_RESTORE}") from exc
    if version == 0 and not fresh:
        what = "holds no key store" if not tables else f"is another application's database (tables: {len(tables)})"
        raise UnusableStore(f"{path} {what}: {_RESTORE}")
    if version >= 1 and not _SCHEMA_1_TABLES <= tables:
        missing = ", ".join(sorted(_SCHEMA_1_TABLES - tables))
        raise UnusableStore(f"{path} is not a key store (schema {version} without the {missing} table): {_RESTORE}")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply pending MIGRATIONS in order, each in its own transaction together with its user_version.

    Only a fresh file (just created by init) reaches this at version 0: _check_schema refuses any other.
    """
    target = len(MIGRATIONS)
    while True:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > target:
            raise StoreError(
                f"{path} has schema version {version}, newer than this key-server understands ({target}); "
                "upgrade key-server"
            )
        if version == target:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{path} is busy: {exc}") from exc
        try:
            # Re-read under the write lock: another process may have migrated while we waited.
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version < target:
                MIGRATIONS[version](db)
                db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _check_name(name: str) -> None:
    """Names are shown in lists and audit entries: short, printable, non-empty."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name must be a non-empty string")
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"name must be at most {MAX_NAME_LEN} characters")
    if not name.isprintable():
        raise ValueError("name must not contain control characters")


def _check_window(valid_from: int | None, valid_until: int | None) -> None:
    """A validity window must not be empty."""
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise ValueError("valid_until must be after valid_from")


def _check_p256_point(public_key: bytes) -> None:
    """Refuse bytes that are not a point on P-256: a key nobody can ever use is a bug at the caller."""
    from cryptography.hazmat.primitives.asymmetric import ec  # deferred: only enrolment needs it

    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    except ValueError as exc:
        raise ValueError(f"public_key is not a valid P-256 point: {exc}") from exc


def _int_or_none(value: object) -> int | None:
    """Parse a meta value as an integer, None if it is not one."""
    try:
        return int(str(value))
    except ValueError:
        return None


def _key_from_row(row: Sequence[Any]) -> KeyRecord:
    """Build a KeyRecord from a keys row in _KEY_COLUMNS order."""
    return KeyRecord(
        key_id=row[0],
        public_key=row[1],
        name=row[2],
        role=Role(row[3]),
        valid_from=row[4],
        valid_until=row[5],
        schedule=row[6],
        created_at=row[7],
        last_used_at=row[8],
        revoked_at=row[9],
        via=row[10],
        enrolled_by=row[11],
        share_serial=row[12],
    )


def _pairing_from_row(row: Sequence[Any]) -> PendingPairing:
    """Build a PendingPairing from a pairings row in _PAIRING_COLUMNS order."""
    return PendingPairing(
        slot=row[0],
        prs=row[1],
        role=Role(row[2]),
        name=row[3],
        expires_at=row[4],
        key_valid_from=row[5],
        key_valid_until=row[6],
        schedule=row[7],
        attempts_left=row[8],
        created_at=row[9],
        failures=row[10],
        issued_by=row[11],
    )


