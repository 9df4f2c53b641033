"""The pinned, signed audit head: a cut or rewritten log is caught by the owner's client and by `audit --pinned`.

The attack (issue 10, finding 5): someone with the SD card deletes the newest audit rows and moves the head record
back; the chain alone still verifies. The honest cases: the log grows, or retention prunes its oldest entries.
"""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from dkey_link.exit_codes import ExitCode
from key_client.audit_pins import AuditPins, Pin, PinCheck, check
from key_server import cli as server_cli
from key_server.audit import AUDIT_HEAD_KEY
from protocol import KeyPair

from ..key_server.harness import Harness
from . import Cli
from .test_cli import pair, run  # noqa: F401 - the `run` fixture


def _cut(h: Harness, keep: int) -> None:
    """The attack: delete every entry after `keep` and move the head record back to it (the chain still verifies)."""
    db = sqlite3.connect(h.store.path)
    try:
        (digest,) = db.execute("SELECT hash FROM audit WHERE seq = ?", (keep,)).fetchone()
        db.execute("DELETE FROM audit WHERE seq > ?", (keep,))
        db.execute("UPDATE meta SET v = ? WHERE k = ?", (f"{keep}:{bytes(digest).hex()}", AUDIT_HEAD_KEY))
        db.commit()
    finally:
        db.close()


def _fork(h: Harness, keep: int, rows: int) -> None:
    """Cut back to `keep`, then write `rows` other entries: a chain that verifies, but not the one seen before."""
    _cut(h, keep)
    for i in range(rows):
        h.audit.append("admin", ts=int(h.wall), detail={"action": f"forged {i}"})


def _server(h: Harness, *args: str) -> int:
    return server_cli.main(["--state-dir", str(h.tmp), "audit", *args])


async def _read(run: Cli) -> tuple[int, Pin | None, str]:  # noqa: F811
    """`key-client --json audit`: its exit code, the head it printed, and its stderr."""
    r = await run("--json", "audit", "--limit", "5")
    objs = [o for o in r.json() if "head" in o]
    head = Pin(objs[0]["seq"], bytes.fromhex(objs[0]["hash"])) if objs else None
    return r.code, head, r.err


def _pins(run: Cli, h: Harness) -> Pin | None:  # noqa: F811
    return AuditPins(run.keychain).get(h.identity.key_id)


# ---------------------------------------------------------------------- the attacks


async def test_client_catches_a_cut_audit_log_that_verify_alone_passes(run: Cli, h: Harness, capsys) -> None:  # noqa: F811
    await pair(run, h)
    for _ in range(4):
        await run("status")
    code, seen, _ = await _read(run)
    assert code == ExitCode.OK and seen is not None
    assert _pins(run, h) == Pin(seen.seq, seen.entry_hash, 0, _pins(run, h).signature, _pins(run, h).seen_at)
    _cut(h, seen.seq - 3)  # the unlocks and reads of the last minutes, gone
    assert _server(h, "--verify") == ExitCode.OK  # the chain alone cannot tell
    capsys.readouterr()
    code, _, err = await _read(run)
    assert code == ExitCode.AUDIT_TAMPERED
    assert "WARNING: the audit log of test-car was tampered with" in err and "were deleted" in err
    assert f"--pinned {seen.seq}:{seen.entry_hash.hex()}" in err
    assert _pins(run, h).seq == seen.seq  # the pin never moves back
    # On the Pi: the pin the client printed catches the same cut.
    capsys.readouterr()
    assert _server(h, "--verify", "--pinned", f"{seen.seq}:{seen.entry_hash.hex()}") == ExitCode.AUDIT_TAMPERED
    assert "truncated" in capsys.readouterr().out


async def test_client_catches_a_rewritten_log_that_grew_past_the_pin(run: Cli, h: Harness, capsys) -> None:  # noqa: F811
    await pair(run, h)
    await run("status")
    code, seen, _ = await _read(run)
    assert code == ExitCode.OK and seen is not None
    _fork(h, seen.seq - 2, 10)  # a different entry at the pinned seq, and a longer chain that verifies
    assert h.audit.verify().ok
    code, _, err = await _read(run)
    assert code == ExitCode.AUDIT_TAMPERED and "a fork" in err
    capsys.readouterr()
    assert _server(h, "--verify", "--pinned", f"{seen.seq}:{seen.entry_hash.hex()}") == ExitCode.AUDIT_TAMPERED
    assert "a fork" in capsys.readouterr().out


async def test_client_catches_another_head_at_the_pinned_seq(run: Cli, h: Harness) -> None:  # noqa: F811
    await pair(run, h)
    code, seen, _ = await _read(run)
    assert code == ExitCode.OK and seen is not None
    # The client's own read is audited when its link ends (one row): cut that and one more, forge two.
    _fork(h, seen.seq - 1, 1)
    assert h.audit.head()[0] == seen.seq
    code, _, err = await _read(run)
    assert code == ExitCode.AUDIT_TAMPERED and "a fork" in err


async def test_client_refuses_an_audit_head_the_vehicle_did_not_sign(run: Cli, h: Harness) -> None:  # noqa: F811
    await pair(run, h)
    h.service.commands.identity = KeyPair.generate()  # a vehicle that signs with a key the device never pinned
    code, _, err = await _read(run)
    assert code == ExitCode.AUDIT_TAMPERED and "signature on its audit head does not verify" in err
    assert _pins(run, h) is None


async def test_audit_pins_open_to_others_are_refused(run: Cli, h: Harness) -> None:  # noqa: F811
    await pair(run, h)
    assert (await _read(run))[0] == ExitCode.OK
    path = AuditPins(run.keychain).path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o666)
    code, _, err = await _read(run)
    assert code == ExitCode.AUDIT_TAMPERED and "chmod 600" in err


# ---------------------------------------------------------------------- the honest cases


async def test_a_growing_log_moves_the_pin_forward(run: Cli, h: Harness, capsys) -> None:  # noqa: F811
    await pair(run, h)
    _, first, _ = await _read(run)
    for _ in range(3):
        await run("status")
    code, second, _ = await _read(run)
    assert code == ExitCode.OK and first is not None and second is not None and second.seq > first.seq
    assert _pins(run, h).seq == second.seq
    capsys.readouterr()
    assert _server(h, "--verify", "--pinned", f"{first.seq}:{first.entry_hash.hex()}") == ExitCode.OK
    assert f"holds the pinned head {first.seq}" in capsys.readouterr().out


async def test_retention_pruning_is_neither_a_cut_nor_a_fork(run: Cli, h: Harness, capsys) -> None:  # noqa: F811
    await pair(run, h)
    _, seen, _ = await _read(run)
    assert seen is not None
    h.audit.max_entries = 100  # the server's retention bound, as [audit] max_entries sets it
    for i in range(150):
        h.audit.append("admin", ts=int(h.wall), detail={"n": i})
    pruned = h.audit.pruned_through()
    assert pruned >= seen.seq and h.audit.head()[0] - pruned <= 100  # the pinned entry itself is gone
    code, now, err = await _read(run)
    assert code == ExitCode.OK, err
    assert now is not None and _pins(run, h).seq == now.seq
    capsys.readouterr()
    assert _server(h, "--verify", "--pinned", f"{seen.seq}:{seen.entry_hash.hex()}") == ExitCode.OK
    assert "pruned by retention" in capsys.readouterr().out
    # A pin inside the kept part still catches a cut after pruning.
    _cut(h, now.seq - 2)
    assert (await _read(run))[0] == ExitCode.AUDIT_TAMPERED


def test_pinned_needs_verify_and_a_well_formed_head(tmp_path, capsys) -> None:
    h = Harness(tmp_path)
    try:
        h.audit.append("admin", ts=1, detail={})
        assert _server(h, "--pinned", f"1:{'00' * 32}") == ExitCode.USAGE
        assert _server(h, "--verify", "--pinned", "1:abc") == ExitCode.USAGE
        assert "SEQ:HASH" in capsys.readouterr().err
    finally:
        h.clock.close()
        h.store.close()


# ---------------------------------------------------------------------- the rule itself


@pytest.mark.parametrize(("pin", "head", "at_pin", "verdict"), [
    (None, (5, b"a"), None, None),  # nothing pinned yet
    ((5, b"a"), (5, b"a"), None, None),  # unchanged
    ((5, b"a"), (9, b"z"), b"a", None),  # grew, the pinned entry unchanged
    ((5, b"a"), (9, b"z", 7), None, None),  # grew, the pinned entry pruned by retention
    ((5, b"a"), (4, b"d"), None, "were deleted"),  # shorter
    ((5, b"a"), (5, b"b"), None, "a fork"),  # same length, another head
    ((5, b"a"), (9, b"z"), b"x", "a fork"),  # another entry at the pinned seq
    ((5, b"a"), (9, b"z", 3), None, "it was deleted"),  # gone although not pruned
])
def test_pin_rule(pin, head, at_pin, verdict) -> None:
    def p(t: tuple) -> Pin:
        return Pin(t[0], t[1].ljust(32, b"\0"), t[2] if len(t) > 2 else 0)

    got = check(p(pin) if pin else None, p(head), PinCheck(at_pin.ljust(32, b"\0") if at_pin else None))
    assert (got is None) if verdict is None else (got is not None and verdict in got)

