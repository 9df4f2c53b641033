"""`key-server backup` / `restore`: a consistent private copy while the store is open, and a restore that replaces
nothing until the backup proves to be a sound key store with an intact audit chain.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_server.audit import AuditEvent, AuditLog
from key_server.cli import main
from key_server.store import KeyRecord, KeyStore
from protocol import KeyPair, Role


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    assert main(["--state-dir", str(d), "init"]) == ExitCode.OK
    return d


def run(state: Path, *args: str) -> int:
    return main(["--state-dir", str(state), *args])


def enroll(state: Path, name: str) -> KeyPair:
    kp = KeyPair.generate()
    with KeyStore.open(state / "keys.db") as store:
        store.add_key(KeyRecord(kp.key_id, kp.public_bytes, name, Role.OWNER, None, None, None, int(time.time())))
    return kp


def names(db: Path) -> set[str]:
    with KeyStore.open(db) as store:
        return {k.name for k in store.list_keys()}


def test_backup_is_private_single_file_and_complete_while_the_store_is_open(state: Path, tmp_path: Path) -> None:
    enroll(state, "phone")
    dest = tmp_path / "b" / "keys.backup"
    dest.parent.mkdir()
    with KeyStore.open(state / "keys.db") as live:  # the server holds it open (WAL) meanwhile
        AuditLog(live).append(AuditEvent.ADMIN, ts=int(time.time()), detail={"action": "test"})
        assert run(state, "backup", str(dest)) == ExitCode.OK
    assert os.stat(dest).st_mode & 0o777 == 0o600
    assert not Path(str(dest) + "-wal").exists()
    db = sqlite3.connect(dest)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert {r[0] for r in db.execute("SELECT name FROM keys")} == {"phone"}
        assert db.execute("SELECT count(*) FROM audit").fetchone()[0] >= 2  # init + the entry above
    finally:
        db.close()


def test_backup_never_overwrites(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "existing"
    dest.write_text("precious")
    assert run(state, "backup", str(dest)) == ExitCode.ALREADY_EXISTS
    assert dest.read_text() == "precious"


def test_restore_brings_back_keys_and_audit(state: Path, tmp_path: Path) -> None:
    enroll(state, "phone")
    backup = tmp_path / "keys.backup"
    assert run(state, "backup", str(backup)) == ExitCode.OK
    (state / "keys.db").unlink()
    assert run(state, "restore", str(backup)) == ExitCode.OK
    assert names(state / "keys.db") == {"phone"}
    assert run(state, "audit", "--verify") == ExitCode.OK
    assert os.stat(state / "keys.db").st_mode & 0o777 == 0o600


def test_restore_refuses_to_replace_a_store_unless_forced(state: Path, tmp_path: Path) -> None:
    enroll(state, "old phone")
    backup = tmp_path / "keys.backup"
    assert run(state, "backup", str(backup)) == ExitCode.OK
    enroll(state, "new phone")
    assert run(state, "restore", str(backup)) == ExitCode.ALREADY_EXISTS
    assert names(state / "keys.db") == {"old phone", "new phone"}
    assert run(state, "restore", str(backup), "--force") == ExitCode.OK
    assert names(state / "keys.db") == {"old phone"}


def test_restore_refuses_a_backup_with_a_tampered_audit_chain(state: Path, tmp_path: Path) -> None:
    enroll(state, "phone")
    backup = tmp_path / "keys.backup"
    assert run(state, "backup", str(backup)) == ExitCode.OK
    db = sqlite3.connect(backup)
    db.execute("UPDATE audit SET detail = '{\"action\": \"nothing to see\"}' WHERE seq = 1")
    db.commit()
    db.close()
    before = (state / "keys.db").read_bytes()
    assert run(state, "restore", str(backup), "--force") == ExitCode.STORE_UNUSABLE
    assert (state / "keys.db").read_bytes() == before  # the live store is untouched
    assert sorted(p.name for p in state.iterdir() if "restoring" in p.name) == []


@pytest.mark.parametrize("content", [b"", b"not sqlite at all" * 100], ids=["empty", "garbage"])
def test_restore_refuses_what_is_not_a_key_store(state: Path, tmp_path: Path, content: bytes) -> None:
    backup = tmp_path / "bad.backup"
    backup.write_bytes(content)
    (state / "keys.db").unlink()
    assert run(state, "restore", str(backup)) == ExitCode.STORE_UNUSABLE
    assert not (state / "keys.db").exists()


def test_a_missing_store_beside_the_vehicle_key_points_to_restore(state: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (state / "keys.db").unlink()
    capsys.readouterr()
    assert run(state, "keys") == ExitCode.NOT_INITIALISED
    err = capsys.readouterr().err
    assert "key-server --state-dir" in err and "restore BACKUP" in err and "init" not in err
    # init would refuse here: the vehicle key exists.
    assert run(state, "init") == ExitCode.ALREADY_EXISTS
