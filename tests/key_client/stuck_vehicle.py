"""A key server on the sim radio whose lock never finishes an unlock, so the answer never comes: a separate
process for the Ctrl-C tests (tests/key_client/test_interrupt.py).

Run: python -m tests.key_client.stuck_vehicle DIR NAME. Prints `code CODE` (a one-time owner pairing code),
then `ready`, then `unlock received` each time an unlock reaches the lock; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from dkey_link.sim import SimPeripheral
from hardware import ActuatorConfig, ActuatorStatus, SimulatedLock
from key_server.audit import AuditLog
from key_server.clock import GuardedClock
from key_server.pairing import issue_code
from key_server.service import KeyService, ServiceConfig
from key_server.store import KeyStore
from protocol import KeyPair, Role


class StuckLock(SimulatedLock):
    """An unlock that reaches the lock and then never completes (a jammed actuator, a very slow one)."""

    async def unlock(self) -> ActuatorStatus:
        print("unlock received", flush=True)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def serve(root: Path, name: str) -> None:
    store = KeyStore.open(root / "keys.db", create=True)
    audit = AuditLog(store)
    clock = GuardedClock(store)
    identity = KeyPair.generate()
    lock = StuckLock(ActuatorConfig(kind="sim", pulse_ms=5))
    peripheral = SimPeripheral(name, air_dir=root / "air")
    # reply_after: the answer waits for the lock (which never finishes) instead of coming after 0.1 s.
    service = KeyService(identity=identity, store=store, audit=audit, clock=clock, lock=lock, peripheral=peripheral,
                         config=ServiceConfig(reply_after=3600.0, poll_interval=0.05))
    code, _ = issue_code(store, identity.key_id, role=Role.OWNER, name="device", expires_at=clock.now() + 600,
                         key_valid_from=None, key_valid_until=None, schedule=None, attempts=5,
                         now=clock.now())
    print(f"code {code}", flush=True)
    await service.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await service.stop()
    store.close()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), sys.argv[2]))
