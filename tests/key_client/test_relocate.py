"""A keychain in the old default place (~/.config/dkey) moves to the data directory and never loses a key."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_client import cli, relocate
from key_client.keychain import INDEX, KEYS_DIR, Keychain

from .test_keychain import add_vehicle, mode


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A HOME with no XDG variables and no DKEY_KEYCHAIN: the defaults apply."""
    for var in ("DKEY_KEYCHAIN", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def old_keychain(home: Path) -> tuple[Path, bytes, bytes]:
    """A keychain where earlier versions made it: one vehicle, a config.toml; (path, index bytes, key bytes)."""
    kc = Keychain.open(home / ".config" / "dkey")
    entry, _, _ = add_vehicle(kc)
    (kc.path / "config.toml").write_text("[auto]\nrelay_risk_accepted = true\n")
    return kc.path, (kc.path / INDEX).read_bytes(), (kc.path / KEYS_DIR / entry.key_file).read_bytes()


def assert_intact(path: Path, index: bytes, key: bytes) -> None:
    """The keychain at `path` holds the same index and key, with its private modes, and opens."""
    kc = Keychain.open(path, create=False)
    (entry,) = kc.vehicles()
    assert (path / INDEX).read_bytes() == index and (path / KEYS_DIR / entry.key_file).read_bytes() == key
    assert mode(path) == 0o700 and mode(path / KEYS_DIR) == 0o700 and mode(path / KEYS_DIR / entry.key_file) == 0o600
    assert (path / "config.toml").exists()
    kc.load_key(entry)


def test_old_keychain_is_moved_with_a_message(home: Path) -> None:
    old, index, key = old_keychain(home)
    notes: list[str] = []
    new = relocate.keychain_dir(None, notes.append)
    assert new == home / ".local" / "share" / "dkey"
    assert not old.exists()
    assert_intact(new, index, key)
    assert notes == [f"moved the keychain from {old} to {new} (the per-user data directory, not synced with dotfiles)"]
    assert relocate.keychain_dir(None, notes.append) == new and len(notes) == 1  # once


def test_xdg_config_home_keychain_is_found_and_moved_to_xdg_data_home(home: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    kc = Keychain.open(tmp_path / "cfg" / "dkey")
    add_vehicle(kc)
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == tmp_path / "data" / "dkey"
    assert Keychain.open(tmp_path / "data" / "dkey", create=False).get("car")
    assert not kc.path.exists() and len(notes) == 1


def test_across_file_systems_it_copies_privately_then_removes_the_old_one(home: Path, monkeypatch) -> None:
    old, index, key = old_keychain(home)
    real_rename = os.rename
    staged_modes: list[int] = []

    def rename(src, dst):  # the first rename is old -> new: refuse it as a cross-device move would
        if Path(src) == old:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        staged_modes.append(mode(Path(src).parent))  # the staging area the copy was made in
        return real_rename(src, dst)

    monkeypatch.setattr(relocate.os, "rename", rename)
    notes: list[str] = []
    new = relocate.keychain_dir(None, notes.append)
    assert staged_modes == [0o700]
    assert not old.exists()
    assert_intact(new, index, key)
    assert not [p for p in new.parent.iterdir() if p.name.startswith(".dkey-moving-")]
    assert notes and notes[0].startswith("moved the keychain")


def test_a_copy_that_fails_half_way_keeps_the_old_keychain(home: Path, monkeypatch) -> None:
    old, index, key = old_keychain(home)

    def rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copytree(src, dst, **kw):
        os.makedirs(dst)
        (Path(dst) / INDEX).write_bytes(b"{")  # a partial copy, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(relocate.os, "rename", rename)
    monkeypatch.setattr(relocate.shutil, "copytree", copytree)
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == old
    assert_intact(old, index, key)
    new = home / ".local" / "share" / "dkey"
    assert not new.exists() and not list(new.parent.iterdir())  # the staging area is gone too
    assert notes == [f"note: could not move the keychain from {old} to {new} (No space left on device); "
                     "it is used where it is"]


def test_a_move_that_is_refused_keeps_the_old_keychain(home: Path, monkeypatch) -> None:
    old, index, key = old_keychain(home)

    def rename(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(relocate.os, "rename", rename)
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == old
    assert_intact(old, index, key)
    assert "Permission denied" in notes[0]


def test_an_identical_copy_left_by_a_crash_is_removed(home: Path) -> None:
    old, index, key = old_keychain(home)
    new = home / ".local" / "share" / "dkey"
    new.parent.mkdir(parents=True)
    shutil.copytree(old, new)  # a crash after the copy's rename, before the old tree was removed
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == new
    assert not old.exists()
    assert_intact(new, index, key)
    assert notes == [f"removed {old}, an old copy of the keychain now at {new}"]


def test_two_different_keychains_are_both_kept(home: Path) -> None:
    old, index, key = old_keychain(home)
    new = Keychain.open(home / ".local" / "share" / "dkey")
    add_vehicle(new, name="van")
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == new.path
    assert_intact(old, index, key)  # never deleted: it holds a key the new keychain lacks
    assert Keychain.open(new.path).get("van")
    assert "an older keychain is still at" in notes[0] and "it holds private keys" in notes[0]


def test_the_same_directory_under_two_names_is_left_alone(home: Path) -> None:
    old, index, key = old_keychain(home)
    new = home / ".local" / "share" / "dkey"
    new.parent.mkdir(parents=True)
    new.symlink_to(old)  # someone pointed the new place at the old one: "both" are one keychain
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == new
    assert_intact(old, index, key)
    assert notes == []


def test_a_symlinked_old_keychain_is_not_moved(home: Path, tmp_path: Path) -> None:
    real = Keychain.open(tmp_path / "dotfiles" / "dkey")
    add_vehicle(real)
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "dkey").symlink_to(real.path)
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == home / ".config" / "dkey"
    assert Keychain.open(real.path).get("car") and not (home / ".local" / "share" / "dkey").exists()
    assert "symbolic link" in notes[0]


def test_the_flag_and_the_environment_still_choose_the_keychain(home: Path, monkeypatch, tmp_path) -> None:
    old, index, key = old_keychain(home)
    notes: list[str] = []
    assert relocate.keychain_dir(tmp_path / "flag", notes.append) == tmp_path / "flag"
    monkeypatch.setenv("DKEY_KEYCHAIN", str(old))
    assert relocate.keychain_dir(None, notes.append) == old
    assert_intact(old, index, key)  # an explicit choice is never moved
    assert notes == [] and not (home / ".local" / "share" / "dkey").exists()


async def test_key_client_moves_it_and_says_so(home: Path, capsys) -> None:
    old, _, _ = old_keychain(home)
    new = home / ".local" / "share" / "dkey"
    assert await cli.amain(["--json", "vehicles"]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert f"moved the keychain from {old} to {new}" in err  # on stderr: --json output stays parseable
    assert '"vehicle": "car"' in out and not old.exists()


def test_an_old_keychain_that_differs_in_any_file_is_kept(home: Path) -> None:
    old, index, key = old_keychain(home)
    new = home / ".local" / "share" / "dkey"
    new.parent.mkdir(parents=True)
    shutil.copytree(old, new)
    (new / "config.toml").write_text("[auto]\n")  # same files, one of them changed since
    notes: list[str] = []
    assert relocate.keychain_dir(None, notes.append) == new
    assert_intact(old, index, key)
    assert "an older keychain is still at" in notes[0]
