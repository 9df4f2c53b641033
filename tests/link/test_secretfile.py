"""Secret files: atomic 0600 writes that leave no temp files, and reads that refuse files others can access."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dkey_link.secretfile import MAX_SECRET_SIZE, InsecureSecretFile, SecretFileError, read_secret, write_secret

SECRET = b"\x01" * 32 + b"not really a key"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "vehicle.key"
    write_secret(path, SECRET)
    assert mode(path) == 0o600
    assert read_secret(path) == SECRET
    assert os.listdir(tmp_path) == ["vehicle.key"]  # no temp file left behind


def test_write_is_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "k", SECRET)
    finally:
        os.umask(old)
    assert mode(tmp_path / "k") == 0o600


def test_overwrite_replaces_file_and_its_lax_mode(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_secret(path, b"new")
    assert mode(path) == 0o600
    assert read_secret(path) == b"new"
    assert sorted(os.listdir(tmp_path)) == ["k"]


def test_write_syncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_secret(tmp_path / "k", SECRET)
    assert synced == [False, True]  # the file's data, then the directory entry of the rename


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "k"
    target.mkdir()  # os.replace onto a directory fails
    with pytest.raises(SecretFileError, match="cannot write"):
        write_secret(target, SECRET)
    assert os.listdir(tmp_path) == ["k"]

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SecretFileError, match="Input/output"):
        write_secret(tmp_path / "other", SECRET)
    assert os.listdir(tmp_path) == ["k"]


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="cannot create"):
        write_secret(tmp_path / "missing" / "k", SECRET)


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o610])
def test_read_refuses_files_others_can_access(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "device key.pem"
    write_secret(path, SECRET)
    path.chmod(bad_mode)
    with pytest.raises(InsecureSecretFile) as excinfo:
        read_secret(path)
    message = str(excinfo.value)
    assert f"chmod 600 '{path}'" in message  # the exact command to run, quoted for the shell
    assert f"{bad_mode:04o}" in message
    assert isinstance(excinfo.value, PermissionError)
    assert isinstance(excinfo.value, SecretFileError)


@pytest.mark.parametrize("good_mode", [0o600, 0o400, 0o700])
def test_read_accepts_private_files(tmp_path: Path, good_mode: int) -> None:
    path = tmp_path / "k"
    write_secret(path, SECRET)
    path.chmod(good_mode)
    assert read_secret(path) == SECRET


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_read_refuses_a_file_owned_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret(path, SECRET)
    os.chown(path, 12345, -1)
    with pytest.raises(InsecureSecretFile, match="owned by uid 12345") as excinfo:
        read_secret(path)
    assert "chown" in str(excinfo.value)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_secret(tmp_path / "missing")
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(tmp_path)
    big = tmp_path / "big"
    write_secret(big, b"x" * (MAX_SECRET_SIZE + 1))
    with pytest.raises(SecretFileError, match="too large"):
        read_secret(big)


def test_read_follows_a_symlink_but_checks_the_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    write_secret(target, SECRET)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_secret(link) == SECRET
    target.chmod(0o644)
    with pytest.raises(InsecureSecretFile):
        read_secret(link)
