"""Crash safety: SIGKILL a process in the middle of revocations and pairings; nothing acknowledged is lost.

The child (_crash_child.py) prints a line only after each call returned. The parent kills it after a random
number of acknowledged operations, then checks the file: sound, every acknowledged revocation and pairing
present, every unacknowledged one all-or-nothing, and the audit chain intact with exactly one entry per
committed operation (they commit in one transaction).

This covers process crashes. Power loss additionally relies on fsync (synchronous=FULL), which a test
cannot cut power to check.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from key_server.audit import AuditLog
from key_server.store import KeyRecord, KeyStore
from protocol import Role

CHILD = Path(__file__).with_name("_crash_child.py")
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 8
NOW = 1_800_000_000


def new_key(name: str, role: Role) -> KeyRecord:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return KeyRecord(hashlib.sha256(pub).digest()[:4], pub, name, role, None, None, None, NOW)


class Acks:
    """What the children acknowledged so far."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.paired: dict[str, str] = {}  # name -> key id hex

    def record(self, line: str) -> None:
        parts = line.split()
        if parts[0] == "R":
            self.revoked.add(parts[1])
        elif parts[0] == "P":
            self.paired[parts[2]] = parts[1]
        else:
            raise AssertionError(f"unexpected child output {line!r}")


def run_and_kill(db: Path, seed: int, round_no: int, rng: random.Random, acks: Acks) -> int:
    """Run one child, SIGKILL it after a random number of acknowledgements; return how many it gave."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), str(seed), str(round_no)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    target = rng.randint(5, 40)
    seen = 0
    assert proc.stdout is not None
    try:
        while seen < target:
            line = proc.stdout.readline()
            if not line:
                break
            acks.record(line)
            seen += 1
        # Land the kill at varying points of the next operation (no assertion depends on this timing).
        time.sleep(rng.random() * 0.003)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"child died on its own: {err}"
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # printed and flushed before the kill: acknowledged too
            acks.record(line)
            seen += 1
    return seen


def check(db: Path, acks: Acks) -> None:
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        pairing_names = {r[0] for r in raw.execute("SELECT name FROM pairings")}
    finally:
        raw.close()
    with KeyStore.open(db, create=True) as store:
        keys = {r.key_id.hex(): r for r in store.list_keys()}
        for kid in acks.revoked:
            assert keys[kid].revoked, f"acknowledged revocation of {kid} lost"
        for name, kid in acks.paired.items():
            assert kid in keys and keys[kid].name == name, f"acknowledged pairing {name} lost"
            assert name not in pairing_names, f"completed pairing {name} still pending"
        # Unacknowledged work is all-or-nothing: a pairing is either still pending or enrolled, never both.
        assert not pairing_names & {r.name for r in keys.values()}
        audit = AuditLog(store)
        verdict = audit.verify()
        assert verdict.ok, verdict
        entries = []
        after = 0
        while batch := audit.read(after_seq=after, limit=1000):
            entries.extend(batch)
            after = batch[-1].seq
        revoke_entries = {e.key_id.hex() for e in entries if e.event == "revoke" and e.key_id}
        pair_entries = {str(e.detail["name"]) for e in entries if e.event == "pair"}
        # Each committed operation has exactly its one audit entry: they commit in the same transaction.
        assert revoke_entries == {k for k, r in keys.items() if r.revoked}
        assert pair_entries == {r.name for r in keys.values() if r.name.startswith("r")}
        assert len(entries) == len(revoke_entries) + len(pair_entries)


def test_sigkill_never_loses_an_acknowledged_change(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    with KeyStore.open(db, create=True) as store:
        store.add_key(new_key("owner", Role.OWNER))
        for i in range(40):
            store.add_key(new_key(f"driver-{i}", Role.DRIVER))
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    acks = Acks()
    total = 0
    for round_no in range(ROUNDS):
        total += run_and_kill(db, seed, round_no, rng, acks)
        check(db, acks)
    assert total >= ROUNDS, f"seed {seed}"
    assert acks.revoked and acks.paired, f"seed {seed}: both kinds of operation should have run"
