"""The vehicle's use cases on their own (KeyAdmin, Enrollment, KeyCommands): no radio, no session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import ActuatorConfig, SimulatedLock
from key_server.audit import AuditLog
from key_server.clock import GuardedClock
from key_server.commands import REFUSAL_STATUS, KeyCommands, Outcome
from key_server.enrollment import MAX_ATTEMPTS, MAX_CODE_TTL, Enrollment
from key_server.keyadmin import KeyAdmin
from key_server.policy import Refusal
from key_server.store import KeyRecord, KeyStore, LastOwnerError, UnknownKey
from protocol import Command, KeyPair, LockState, Role, Status, StatusReport

T0 = 1_800_000_000


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[KeyAdmin]:
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        yield KeyAdmin(store, AuditLog(store), GuardedClock(store, source=lambda: T0))


def enroll(admin: KeyAdmin, role: Role = Role.OWNER, name: str = "phone") -> KeyPair:
    kp = KeyPair.generate()
    admin.store.add_key(KeyRecord(kp.key_id, kp.public_bytes, name, role, None, None, None, T0))
    return kp


def events(admin: KeyAdmin) -> list[str]:
    return [e.event for e in admin.audit.read()]


# ---------------------------------------------------------------------------------------------- KeyAdmin


def test_revoke_commits_the_revocation_and_its_audit_entry(admin: KeyAdmin) -> None:
    enroll(admin, name="laptop")
    phone = enroll(admin, Role.DRIVER)
    rec = admin.revoke(phone.key_id, by="cli").key
    assert rec.revoked and admin.store.get_key(phone.key_id).revoked_at == T0  # type: ignore[union-attr]
    [entry] = admin.audit.read()
    assert (entry.event, entry.key_id, dict(entry.detail)) == ("revoke", phone.key_id,
                                                                  {"by": "cli", "force": False, "with_shares": False})


def test_a_refused_revocation_writes_nothing(admin: KeyAdmin) -> None:
    owner = enroll(admin)
    with pytest.raises(LastOwnerError):
        admin.revoke(owner.key_id, by="cli")
    with pytest.raises(UnknownKey):
        admin.revoke(b"\x00\x01\x02\x03", by="cli")
    assert not admin.store.get_key(owner.key_id).revoked  # type: ignore[union-attr]
    assert events(admin) == []


def test_audit_tail_is_bounded(admin: KeyAdmin) -> None:
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match="between 1 and 1000"):
            admin.audit_tail(bad)


# ---------------------------------------------------------------------------------------------- Enrollment


@pytest.fixture
def enrollment(admin: KeyAdmin) -> Enrollment:
    return Enrollment(admin.store, admin.audit, admin.clock, b"\xca\xfe\xf0\x0d")


def issue(enrollment: Enrollment, **changes: object) -> object:
    kwargs: dict[str, object] = {"role": Role.GUEST, "name": "Tom", "expires_at": T0 + 600, "key_valid_from": None,
                                 "key_valid_until": None, "schedule": None, "attempts": 5}
    kwargs.update(changes)
    return enrollment.issue(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("changes", [{"expires_at": T0}, {"expires_at": T0 + MAX_CODE_TTL + 1},
                                     {"key_valid_until": T0 - 1}, {"key_valid_until": T0},
                                     {"attempts": 0}, {"attempts": MAX_ATTEMPTS + 1}])
def test_issue_refuses_a_dead_code_or_a_dead_key(enrollment: Enrollment, admin: KeyAdmin,
                                                  changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        issue(enrollment, **changes)
    assert enrollment.pending() == [] and events(admin) == []


def test_issue_stores_the_code_and_audits_it_together(enrollment: Enrollment, admin: KeyAdmin) -> None:
    ticket, pairing = issue(enrollment, key_valid_until=T0 + 3600)  # type: ignore[misc]
    assert ticket.slot == pairing.slot and [p.slot for p in enrollment.pending()] == [pairing.slot]
    [entry] = admin.audit.read()
    assert entry.event == "admin" and dict(entry.detail)["action"] == "pair_code"
    assert dict(entry.detail)["role"] == "guest"


def test_completing_a_used_pairing_is_refused_and_audited(enrollment: Enrollment, admin: KeyAdmin) -> None:
    _, pairing = issue(enrollment)  # type: ignore[misc]
    assert enrollment.begin(pairing.slot) is not None
    device = KeyPair.generate()
    assert enrollment.complete(pairing, device.key_id, device.public_bytes) is not None
    other = KeyPair.generate()
    assert enrollment.complete(pairing, other.key_id, other.public_bytes) is None
    assert events(admin)[-2:] == ["pair", "pair_failed"]
    assert admin.store.get_key(other.key_id) is None


# ---------------------------------------------------------------------------------------------- KeyCommands


def test_every_policy_refusal_has_a_status_and_unknown_equals_revoked() -> None:
    assert set(REFUSAL_STATUS) == set(Refusal)
    assert REFUSAL_STATUS[Refusal.UNKNOWN_KEY] is REFUSAL_STATUS[Refusal.REVOKED] is Status.DENIED


@pytest.fixture
def commands(admin: KeyAdmin) -> KeyCommands:
    return KeyCommands(admin, SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=1)))


def test_an_unknown_key_moves_nothing_and_is_recorded_as_refused(commands: KeyCommands, admin: KeyAdmin) -> None:
    before = commands.lock.status()
    outcome = asyncio.run(commands.run(b"\x00\x01\x02\x03", Command.UNLOCK, b""))
    assert (outcome.status, outcome.refusal) == (Status.DENIED, Refusal.UNKNOWN_KEY)
    assert commands.lock.status() == before
    commands.record(outcome)
    assert events(admin) == ["refused"]


def test_unlock_answers_and_record_notes_the_use(commands: KeyCommands, admin: KeyAdmin) -> None:
    phone = enroll(admin)
    outcome = asyncio.run(commands.run(phone.key_id, Command.UNLOCK, b""))
    assert outcome.status is Status.OK and StatusReport.decode(outcome.data).lock is LockState.UNLOCKED
    [intent] = admin.audit.read()  # only the intent is written before the answer goes out
    assert (intent.event, intent.key_id, dict(intent.detail)) == ("actuate", phone.key_id, {"command": "unlock"})
    commands.record(outcome)
    assert dict(admin.audit.read()[-1].detail) == {"status": "OK", "intent": intent.seq}
    assert events(admin) == ["actuate", "unlock"] and admin.store.get_key(phone.key_id).last_used_at == T0  # type: ignore[union-attr]


def test_record_leaves_a_done_revocation_to_its_own_entry(commands: KeyCommands, admin: KeyAdmin) -> None:
    kid = enroll(admin).key_id
    commands.record(Outcome(kid, Command.REVOKE_KEY, T0, Status.OK, revoked=(b"\x00\x01\x02\x03",)))
    assert events(admin) == []
    commands.record(Outcome(kid, Command.REVOKE_KEY, T0, Status.NOT_PERMITTED))
    assert events(admin) == ["admin"]
