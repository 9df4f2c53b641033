"""A real key server on the in-memory mock radio, with a simulated lock and a controllable wall clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dkey_link.mock import MockAir, MockPeripheral
from hardware import ActuatorConfig, SimulatedLock
from key_client.driver import Target, VehicleLink, connect_vehicle
from key_server.audit import AuditLog
from key_server.clock import GuardedClock, Probe, Source
from key_server.commands import to_status_report
from key_server.pairing import issue_code
from key_server.ratelimit import LINK_QUEUE, MAX_LINK_LIFETIME, MAX_LINKS, ActuationLimiter, FailureLimiter
from key_server.service import KeyService, ServiceConfig
from key_server.store import KeyRecord, KeyStore
from protocol import Command, KeyPair, Role, Status, StatusReport
from protocol._payloads import TIME_WANTED_HINT

T0 = 1_800_000_000  # a fixed "now" (2027-01-15) for validity windows


@dataclass
class Harness:
    """Everything a server test needs; call `await h.start()` and `await h.stop()`."""

    tmp: Path
    broadcast: bool = False
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    actuations: ActuationLimiter = field(default_factory=ActuationLimiter)
    wall: float = T0
    air: MockAir = field(default_factory=MockAir)
    # None: a simulated lock with 5 ms pulses whose changes reach the service (WATCH pushes), as runner.serve wires
    # a real one; a lock given here is not wired.
    lock: SimulatedLock = None  # type: ignore[assignment]
    reply_after: float = 0.1  # ServiceConfig.reply_after: answer a pulse still running after this long
    link_queue: int = LINK_QUEUE
    max_links: int = MAX_LINKS
    max_link_lifetime: float = MAX_LINK_LIFETIME
    monotonic: Callable[[], float] = time.monotonic  # the service's clock: tests of lifetimes move it by hand
    # The vehicle starts with an untrusted clock, as after a boot: guests and windowed keys are refused
    # CLOCK_UNTRUSTED. Tests about something else that use such keys say trusted_clock=True (as if an RTC had
    # confirmed `wall` at start).
    trusted_clock: bool = False
    probes: dict[Source, Probe] = field(default_factory=dict)  # the clock's RTC/NTP sources (none: statements only)
    statements: dict[Role, int] | None = None  # ServiceConfig.statements (None: the defaults)
    token_rotation: float = 900.0  # ServiceConfig.token_rotation: seconds between advertising tokens

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=5),
                                      on_change=lambda event: self.service.actuator_changed(event))
        self.store = KeyStore.open(self.tmp / "keys.db", create=True)
        self.audit = AuditLog(self.store)
        self.clock = GuardedClock(self.store, source=lambda: self.wall, probes=self.probes)
        if self.trusted_clock:
            self.trust_clock()
        self.identity = KeyPair.generate()
        self.peripheral: MockPeripheral = self.air.peripheral("test-car", broadcast_notify=self.broadcast)
        self.service = KeyService(identity=self.identity, store=self.store, audit=self.audit, clock=self.clock,
                                  lock=self.lock, peripheral=self.peripheral,
                                  config=ServiceConfig(limiter=self.limiter, actuations=self.actuations,
                                                       poll_interval=0.05, reply_after=self.reply_after,
                                                       link_queue=self.link_queue, max_links=self.max_links,
                                                       max_link_lifetime=self.max_link_lifetime,
                                                       token_rotation=self.token_rotation,
                                                       **({} if self.statements is None
                                                          else {"statements": self.statements})),
                                  monotonic=self.monotonic)

    def trust_clock(self) -> None:
        """Confirm the vehicle's clock at `wall`, as an RTC or NTP would."""
        assert self.clock.confirm(int(self.wall), Source.RTC)

    async def start(self) -> Harness:
        await self.service.start()
        return self

    async def stop(self) -> None:
        await self.service.stop()
        await self.lock.aclose()
        self.clock.close()
        self.store.close()

    def enroll(self, role: Role = Role.OWNER, name: str = "phone", *, valid_from: int | None = None,
               valid_until: int | None = None, schedule: str | None = None) -> KeyPair:
        """Enroll a fresh device key directly in the store (pairing is tested separately)."""
        device = KeyPair.generate()
        self.store.add_key(KeyRecord(device.key_id, device.public_bytes, name, role, valid_from, valid_until,
                                     schedule, int(self.wall)))
        return device

    def new_code(self, role: Role = Role.OWNER, name: str = "new device", attempts: int = 5,
                 expires_in: int = 600) -> str:
        """What `key-server pair` does: create a pairing slot and return its one-time code."""
        code, _ = issue_code(self.store, self.identity.key_id, role=role, name=name,
                             expires_at=int(self.wall) + expires_in, key_valid_from=None, key_valid_until=None,
                             schedule=None, attempts=attempts, now=int(self.wall))
        return code

    async def connect(self, device: KeyPair, *, mtu: int = 247, pinned: bool = True,
                      ad_secret: bool = True) -> VehicleLink:
        """A new central connected to the vehicle with a session for `device` (which, with `ad_secret`, holds the
        advertising secret, as an enrolled device does: it finds the car by its token, PROTOCOL.md §13)."""
        central = self.air.central(mtu=mtu)
        target = Target(self.identity.public_bytes if pinned else None,
                        ad_secret=self.store.ad_secret().secret if pinned and ad_secret else None)
        return await connect_vehicle(central, device, target, scan_time=1.0, attempts=1)


async def unlock(h: Harness, device: KeyPair, cmd: Command = Command.UNLOCK, **kw: object) -> StatusReport:
    """Run `cmd` as a device would (STATUS inside a confidential session) and return the lock's report after it.

    A fast-path RESULT carries no report (PROTOCOL.md §5.3), so the state is read from the vehicle's lock.
    """
    link = await h.connect(device, **kw)  # type: ignore[arg-type]
    try:
        if cmd is Command.STATUS:
            await link.open_secure()
            return StatusReport.decode((await link.secure(cmd)).data)
        result = await link.command(cmd)
        # Nothing in clear but, while the clock is untrusted, the time_wanted hint (PROTOCOL.md §5.3).
        assert result.status is Status.OK and result.data in (b"", TIME_WANTED_HINT), "a fast-path RESULT carried state"
        return to_status_report(h.lock.status())
    finally:
        await link.close()
