"""Choosing the keychain directory, and moving one left in the old default location (docs/CLIENT.md, "The keychain").

Earlier versions kept the keychain in ~/.config/dkey on every system; it now lives in the platform's data directory
(key_client/paths.py says why). The first command that uses the default location moves an old keychain there:

1. Same file system: one rename(2) of the whole directory. Atomic: the keychain is complete in exactly one of the
   two places at every instant, and modes, owner and times stay as they were.
2. Another file system (EXDEV): a copy into a fresh 0700 directory beside the destination (so no copied file is
   reachable by others while its mode is being set), every file and directory fsynced, one rename into place, and
   only then the old tree removed. A crash before that rename leaves the old keychain in use and a stray
   `.dkey-moving-*` directory; a crash after it leaves an identical old copy, removed by the next run (2b).
   2b. An old keychain whose every file is byte-identical in the new one (and is not the same file) is that copy.
3. Anything else that stops the move (a symbolic link, both places holding different keychains, a permission
   error): nothing is moved or deleted, the command uses the keychain it finds (the old one if the new one does
   not exist), and a note says what to do.

Two key-client processes starting at once: the second one's rename finds its source gone (or the destination
there), sees the new keychain and uses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .paths import legacy_paths, platform_path

Note = Callable[[str], None]
_MARKERS = ("keychain.json", "keys")  # what makes a directory a keychain (config.toml alone is only settings)
_SKIP = (".lock",)  # the index lock file: recreated on demand, never compared


def keychain_dir(explicit: Path | None, note: Note) -> Path:
    """The keychain to use: `explicit` (--keychain), else $DKEY_KEYCHAIN, else the platform's (moving an old one)."""
    if explicit is not None:
        return explicit
    env = os.environ.get("DKEY_KEYCHAIN")
    if env:
        return Path(env).expanduser()
    return adopt_legacy(platform_path(), legacy_paths(), note)


def adopt_legacy(new: Path, olds: list[Path], note: Note) -> Path:
    """`new`, after moving the first keychain found in `olds` there; the old one if it must stay (see the docstring)."""
    for old in olds:
        if not _looks_like_keychain(old) or _same_place(old, new):
            continue
        if old.is_symlink():
            if os.path.lexists(new):
                note(f"note: an older keychain is still at {old} (a symbolic link), not used: {new} is used")
                return new
            note(f"note: the keychain at {old} is a symbolic link and was not moved; move it to {new} by hand "
                 f"(or set DKEY_KEYCHAIN={old}): it is used where it is for now")
            return old
        if os.path.lexists(new):
            if _is_copy_of(old, new):
                try:
                    shutil.rmtree(old)
                except OSError as exc:
                    note(f"note: {old} is an old copy of the keychain at {new} but could not be removed "
                         f"({exc.strerror}): delete it by hand")
                else:
                    note(f"removed {old}, an old copy of the keychain now at {new}")
            else:
                note(f"note: an older keychain is still at {old}, not used: {new} is used. "
                     f"Pair again or copy what you need, then delete {old} (it holds private keys)")
            return new
        try:
            _move(old, new)
        except OSError as exc:
            if _looks_like_keychain(new):  # another key-client moved it meanwhile
                return new
            note(f"note: could not move the keychain from {old} to {new} ({exc.strerror or exc}); "
                 f"it is used where it is")
            return old
        note(f"moved the keychain from {old} to {new} (the per-user data directory, not synced with dotfiles)")
        return new
    return new


def _looks_like_keychain(path: Path) -> bool:
    return path.is_dir() and any(os.path.lexists(path / m) for m in _MARKERS)


def _same_place(a: Path, b: Path) -> bool:
    """True if `a` and `b` are one directory (a symlink, a bind mount, XDG_DATA_HOME = XDG_CONFIG_HOME)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _move(old: Path, new: Path) -> None:
    """Move the directory `old` to `new` (absent), atomically at the destination; OSError if it could not."""
    new.parent.mkdir(parents=True, exist_ok=True)  # shared parents (~/.local/share) keep the usual mode
    try:
        os.rename(old, new)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    else:
        _fsync_dir(new.parent)
        _fsync_dir(old.parent)
        return
    outer = Path(tempfile.mkdtemp(prefix=".dkey-moving-", dir=new.parent))  # 0700: a private staging area
    try:
        staged = outer / new.name
        shutil.copytree(old, staged, symlinks=True, ignore=shutil.ignore_patterns(*_SKIP))
        for path in [*_tree(staged), staged]:
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
            elif path.is_dir():
                _fsync_dir(path)
        os.rename(staged, new)  # fails if `new` appeared meanwhile: nothing is overwritten
        _fsync_dir(new.parent)
    finally:
        shutil.rmtree(outer, ignore_errors=True)
    shutil.rmtree(old)  # only now: the complete copy is durable at `new`


def _tree(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            yield Path(dirpath) / name


def _is_copy_of(old: Path, new: Path) -> bool:
    """True if every file under `old` is under `new` too, byte for byte, and no file is shared between them."""
    try:
        for path in _tree(old):
            if path.name in _SKIP or path.is_dir():
                continue
            twin = new / path.relative_to(old)
            if not twin.is_file() or os.path.samefile(path, twin) or path.read_bytes() != twin.read_bytes():
                return False
    except OSError:
        return False
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be opened for fsync
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["adopt_legacy", "keychain_dir"]
