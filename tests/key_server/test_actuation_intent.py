"""An actuation's intent is in the audit log before the relay is energised (issue 10): in process, mock radio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hardware import ActuatorConfig, ActuatorStatus, SimulatedLock
from key_client.errors import VehicleRefused
from key_server.audit import AuditEntry, AuditLog
from key_server.commands import Outcome
from key_server.store import StoreError
from protocol import Command, Role, Status

from .harness import Harness


class WitnessLock(SimulatedLock):
    """A simulated lock that reads the audit log, from its own connection, at the moment it is driven."""

    def __init__(self, db: Path, **config: int) -> None:
        super().__init__(ActuatorConfig(kind="sim", **config))
        self.db = db
        self.seen: list[tuple[str, list[AuditEntry]]] = []  # (operation, the committed log when it was called)

    def _witness(self, op: str) -> None:
        # A second connection sees only what is committed: the intent must be durable, not merely written.
        from key_server.store import KeyStore

        with KeyStore.open(self.db) as store:
            self.seen.append((op, AuditLog(store).read(limit=1000)))

    async def unlock(self) -> ActuatorStatus:
        """Witness, then unlock."""
        self._witness("unlock")
        return await super().unlock()

    async def lock(self) -> ActuatorStatus:
        """Witness, then lock."""
        self._witness("lock")
        return await super().lock()

    async def start_enable(self) -> ActuatorStatus:
        """Witness, then enable start."""
        self._witness("start")
        return await super().start_enable()


def intents(rows: list[AuditEntry]) -> list[tuple[bytes | None, str | int | bool | None]]:
    return [(e.key_id, e.detail.get("command")) for e in rows if e.event == "actuate"]


@pytest.mark.parametrize(("cmd", "op"), [(Command.UNLOCK, "unlock"), (Command.LOCK, "lock"),
                                         (Command.START, "start")])
async def test_the_intent_is_committed_before_the_lock_is_driven(tmp_path: Path, cmd: Command, op: str) -> None:
    lock = WitnessLock(tmp_path / "keys.db", pulse_ms=5)
    h = await Harness(tmp_path, lock=lock).start()
    try:
        owner = h.enroll()
        link = await h.connect(owner)
        assert (await link.command(cmd)).status is Status.OK
        await link.close()
        [(called, seen)] = lock.seen
        assert called == op and intents(seen) == [(owner.key_id, op)]
        assert seen[-1].event == "actuate"  # the newest committed row when the relay was about to move
        outcome = [e for e in h.audit.read(limit=1000) if e.event == op]
        assert [dict(e.detail) for e in outcome] == [{"status": "OK", "intent": seen[-1].seq}]  # two rows in all
        assert h.audit.verify().ok
    finally:
        await h.stop()


async def test_a_refused_or_rate_limited_command_writes_no_intent(tmp_path: Path) -> None:
    lock = WitnessLock(tmp_path / "keys.db", pulse_ms=5)
    h = await Harness(tmp_path, lock=lock, trusted_clock=True).start()
    try:
        guest = h.enroll(Role.GUEST, "guest", valid_from=int(h.wall) + 3600)  # not yet valid
        link = await h.connect(guest)
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.UNLOCK)
        assert info.value.status is Status.KEY_NOT_YET_VALID
        await link.close()
        owner = h.enroll(Role.GUEST, "tom")
        link = await h.connect(owner)
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.START)  # a guest may not start the vehicle
        assert info.value.status is Status.NOT_PERMITTED
        await link.close()
        assert lock.seen == [] and intents(h.audit.read(limit=1000)) == []
        assert [e.event for e in h.audit.read(limit=1000)][-2:] == ["refused", "refused"]
    finally:
        await h.stop()


async def test_no_intent_no_actuation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail closed: an actuation that cannot be recorded first does not happen.
    lock = WitnessLock(tmp_path / "keys.db", pulse_ms=5)
    h = await Harness(tmp_path, lock=lock).start()
    try:
        owner = h.enroll()

        def disk_full(*_: object, **__: object) -> AuditEntry:
            raise StoreError("database or disk is full")

        monkeypatch.setattr(h.audit, "append", disk_full)
        link = await h.connect(owner)
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.UNLOCK)
        assert info.value.status is Status.INTERNAL_ERROR
        await link.close()
        assert lock.seen == [] and lock.output_history() == []
        monkeypatch.undo()  # the disk recovers: the next unlock is recorded and carried out
        link = await h.connect(owner)
        assert (await link.command(Command.UNLOCK)).status is Status.OK
        await link.close()
        assert [op for op, _ in lock.seen] == ["unlock"]
    finally:
        monkeypatch.undo()
        await h.stop()


async def test_a_clean_stop_mid_unlock_leaves_the_intent(tmp_path: Path) -> None:
    # A long strike hold answered late: the server stops while the command is still running.
    lock = WitnessLock(tmp_path / "keys.db", pulse_ms=1500)
    h = await Harness(tmp_path, lock=lock, reply_after=30.0).start()
    try:
        owner = h.enroll()
        link = await h.connect(owner)
        task = asyncio.create_task(link.command(Command.UNLOCK, timeout=5.0))
        for _ in range(400):  # until the relay is energised, whatever the machine's speed
            if any(r.energised for r in lock.relays.values()):
                break
            await asyncio.sleep(0.005)
        assert any(r.energised for r in lock.relays.values())
        await h.service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rows = h.audit.read(limit=1000)
        assert intents(rows) == [(owner.key_id, "unlock")] and "unlock" not in [e.event for e in rows]
        assert rows[-1].event == "server_stop" and h.audit.verify().ok
    finally:
        await h.lock.aclose()
        h.clock.close()
        h.store.close()


async def test_the_outcome_is_audited_even_when_the_last_use_cannot_be_stored(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path)
    try:
        owner = h.enroll()

        def disk_full(*_: object) -> None:
            raise StoreError("database or disk is full")

        monkeypatch.setattr(h.store, "mark_used", disk_full)
        h.service.commands.record(Outcome(owner.key_id, Command.UNLOCK, int(h.wall), Status.OK, intent=7))
        [row] = h.audit.read()
        assert (row.event, dict(row.detail)) == ("unlock", {"status": "OK", "intent": 7})
    finally:
        monkeypatch.undo()
        await h.stop()
