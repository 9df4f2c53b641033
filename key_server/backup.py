"""`key-server backup` and `restore`: a consistent copy of keys.db, and putting one back only once it verifies.

A backup is SQLite's online backup of the live store (KeyStore.backup_to): keys, pairings and the audit chain of
one moment, safe while the server runs. A restore checks the copy first (an SQLite key store of a schema this
version reads, integrity_check clean, the audit hash chain intact), in a scratch file beside keys.db, and only then
renames it into place, so a bad backup never replaces anything. It refuses to replace an existing keys.db unless
told to (`force`): that store may be live, and the server must be stopped first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .audit import AuditLog
from .store import KeyStore, StoreError, UnusableStore

__all__ = ["AuditChainBroken", "RestoreRefused", "backup", "restore"]


class RestoreRefused(StoreError):
    """keys.db exists and the restore was not forced."""


class AuditChainBroken(StoreError):
    """The live store's audit chain does not verify, so no backup was made."""


def backup(store_path: Path, dest: Path) -> int:
    """Write a backup of the store at `store_path` to the new file `dest`; returns the audit entries checked.

    The live audit chain is verified first: a backup of a tampered log would carry the damage into the copy
    (and `restore` would refuse it), so this says so now, while the original is still there to look at.
    """
    with KeyStore.open(store_path) as store:
        verdict = AuditLog(store).verify()
        if not verdict.ok:
            raise AuditChainBroken(f"the audit chain of {store_path} does not verify (entry "
                                   f"{verdict.first_bad_seq}: {verdict.reason}): no backup written")
        store.backup_to(dest)
    return verdict.entries


def restore(backup_path: Path, store_path: Path, *, force: bool = False) -> int:
    """Replace (or create) the store at `store_path` from a verified backup; returns its audit entries.

    Raises UnusableStore if the backup is not a sound key store or its audit chain does not verify,
    RestoreRefused if `store_path` exists and not `force`; `store_path` is untouched in both cases.
    """
    if store_path.exists() and not force:
        raise RestoreRefused(f"{store_path} exists (it may be the live store): stop key-server "
                             "(systemctl stop key-server) and pass --force to replace it")
    scratch = store_path.with_name(store_path.name + ".restoring")
    with contextlib.suppress(FileNotFoundError):
        scratch.unlink()
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(backup_path, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        # KeyStore.open refuses a file that is not a key store of a schema this version reads (and migrates
        # an older one); the scratch copy is in the state directory, so its checks are the live store's.
        try:
            with KeyStore.open(scratch) as store:
                problems = store.integrity_check()
                verdict = AuditLog(store).verify()
        except UnusableStore as exc:
            raise UnusableStore(f"{backup_path} is not a usable key store backup: {exc}") from None
        if problems:
            raise UnusableStore(f"{backup_path} fails SQLite's integrity check: {problems[:3]}")
        if not verdict.ok:
            raise UnusableStore(f"{backup_path}: its audit chain does not verify (entry {verdict.first_bad_seq}: "
                                f"{verdict.reason}); not restored")
        # A -wal or -shm file of the old store beside the new one would be replayed into it: remove them first.
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(store_path) + suffix)
        os.replace(scratch, store_path)
        dir_fd = os.open(store_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return verdict.entries
    finally:
        for leftover in (scratch, Path(str(scratch) + "-wal"), Path(str(scratch) + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
