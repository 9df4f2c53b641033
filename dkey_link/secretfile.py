"""Private-key files: written atomically with mode 0600, read only when nobody else can read or own them.

Used for the vehicle identity key (key_server) and device keys (key_client). A crash while writing leaves
either the old file or the new one, never a torn mix, and never a moment where the secret sits in a file
other users can read.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import stat
from pathlib import Path

__all__ = ["MAX_SECRET_SIZE", "InsecureSecretFile", "SecretFileError", "read_secret", "write_secret"]

# Secrets are keys of a few hundred bytes; a cap keeps a mistaken path (a log, a disk image) from being read.
MAX_SECRET_SIZE = 64 * 1024


class SecretFileError(OSError):
    """A secret file could not be written or read (other than simply not existing)."""

    def __str__(self) -> str:
        """Show the human message alone: the errno is kept on the exception, not repeated in the text."""
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


class InsecureSecretFile(SecretFileError, PermissionError):
    """A secret file is readable or writable by others, or owned by someone else; the message says the fix."""


def write_secret(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600, file and directory fsynced; else SecretFileError."""
    path = Path(path)
    directory = path.parent
    # Same directory, so os.replace is a rename within one filesystem and therefore atomic.
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        # O_EXCL with mode 0600: the file is never, even for an instant, readable by anyone else
        # (the umask can only remove bits) and we never write through a pre-planted file or symlink.
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise SecretFileError(exc.errno, f"cannot create a file in {directory}: {exc.strerror}") from exc
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise SecretFileError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    # The rename itself lives in the directory: without this fsync a power cut can bring the old file back.
    _fsync_directory(directory)


def read_secret(path: Path) -> bytes:
    """Return the bytes of `path`; raise InsecureSecretFile if others can access it or someone else owns it.

    FileNotFoundError propagates unchanged so callers can tell "not initialised yet" from a broken file.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise SecretFileError(
            exc.errno, f"cannot read {path}: {exc.strerror}; run this as the user that owns it"
        ) from exc
    except OSError as exc:
        raise SecretFileError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
    try:
        # Check the file we opened (fstat), not the name, so a swap between check and read changes nothing.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(errno.EINVAL, f"{path} is not a regular file")
        _check_private(path, st)
        if st.st_size > MAX_SECRET_SIZE:
            raise SecretFileError(errno.EFBIG, f"{path} is {st.st_size} bytes: too large to be a key file")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, MAX_SECRET_SIZE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_SECRET_SIZE:
                raise SecretFileError(errno.EFBIG, f"{path} is too large to be a key file")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_private(path: Path, st: os.stat_result) -> None:
    """Raise InsecureSecretFile unless the file is owned by us and has no group/other permission bits."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:
        # Windows: POSIX modes and uids do not describe its ACLs; the per-user profile protects keys.
        return
    quoted = shlex.quote(str(path))
    me = geteuid()
    if st.st_uid != me:
        raise InsecureSecretFile(
            errno.EPERM,
            f"{path} is owned by uid {st.st_uid}, not by you (uid {me}): run this as the user that owns it, "
            f"or take it over with: sudo chown {me} {quoted} && chmod 600 {quoted}",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecureSecretFile(
            errno.EPERM,
            f"{path} holds a private key but its mode is {mode:04o} (other users can access it): "
            f"fix it with: chmod 600 {quoted}",
        )


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk where the platform allows it."""
    o_directory = getattr(os, "O_DIRECTORY", None)
    if o_directory is None:
        return  # Windows cannot open directories; NTFS journals the rename itself.
    try:
        dfd = os.open(directory, os.O_RDONLY | o_directory)
    except OSError as exc:
        raise SecretFileError(exc.errno, f"cannot open {directory} to sync it: {exc.strerror}") from exc
    try:
        os.fsync(dfd)
    except OSError as exc:
        # Some filesystems refuse fsync on a directory; the file data itself is already synced.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise SecretFileError(exc.errno, f"cannot sync {directory}: {exc.strerror}") from exc
    finally:
        os.close(dfd)


def _unlink_quietly(path: Path) -> None:
    """Remove a leftover temp file; a failure here must not hide the original error."""
    try:
        os.unlink(path)
    except OSError:
        pass
