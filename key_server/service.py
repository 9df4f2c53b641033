"""The vehicle's session service: one protocol session per connected central, policy, actuator, audit.

Data flows one way (DESIGN.md §2): radio backend -> VehicleSession (framing, crypto, state) -> policy and
key store -> actuator, and back out as notifications. The radio callbacks are synchronous and cheap:
they feed bytes to the session and schedule a drain task; crypto, SQLite and GPIO run in that task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo

from cryptography.hazmat.primitives.asymmetric import ec

from dkey_link.contract import AttError, AttErrorCode, Peripheral
from hardware import (
    ActuatorError,
    ActuatorStatus,
    DoorOpenError,
    Lock,
    NotConfiguredError,
)
from protocol import (
    AuditRecord,
    ChallengeBook,
    Command,
    CommandRequested,
    DecodeError,
    Event,
    FramingError,
    KeyInfo,
    KeyPair,
    KeyProtocolError,
    LockState,
    PairingFailed,
    PairingKeyReceived,
    PairingRequested,
    Refused,
    RemoteProtocolError,
    SessionOpened,
    Status,
    StatusReport,
    VehicleSession,
    decode_public_key,
    encode_audit_page,
    encode_key_page,
    parse_list_keys_args,
    parse_read_audit_args,
    parse_revoke_args,
)

from .audit import AuditEvent, AuditLog
from .clock import GuardedClock
from .policy import Refusal, authorize
from .ratelimit import FailureLimiter
from .store import KeyStore, LastOwnerError, PendingPairing, StoreError, UnknownKey

log = logging.getLogger("key_server.service")

# What the device is told. Unknown and revoked keys get DENIED, exactly like a bad signature.
_REFUSAL_STATUS = {
    Refusal.UNKNOWN_KEY: Status.DENIED,
    Refusal.REVOKED: Status.DENIED,
    Refusal.NOT_YET_VALID: Status.KEY_NOT_YET_VALID,
    Refusal.EXPIRED: Status.KEY_EXPIRED,
    Refusal.OUTSIDE_SCHEDULE: Status.OUTSIDE_SCHEDULE,
    Refusal.NOT_PERMITTED: Status.NOT_PERMITTED,
}
_AUDIT_EVENT = {Command.UNLOCK: AuditEvent.UNLOCK, Command.LOCK: AuditEvent.LOCK, Command.STATUS: AuditEvent.STATUS,
                Command.START: AuditEvent.START}


@dataclass(slots=True)
class ServiceConfig:
    """Tunables of the session service (every one is also a key-server config option)."""

    challenge_ttl: float = 5.0
    link_idle_timeout: float = 30.0  # connect, act, disconnect: an idle link is dropped to free the slot
    poll_interval: float = 0.5  # how often CLI changes to the store (revocations) are looked for
    reply_after: float = 0.1  # answer an actuation still pulsing after this long (its relay is energised)
    tz: tzinfo | None = None  # for guest schedules; None = the system's local time zone
    limiter: FailureLimiter = field(default_factory=FailureLimiter)


@dataclass(slots=True)
class ServiceStats:
    """Counters for benchmarks, `doctor` and tests."""

    connects: int = 0
    commands: int = 0
    refused: int = 0
    framing_errors: int = 0
    protocol_errors: int = 0
    rate_limited: int = 0
    pairings: int = 0
    sessions_ended_by_revocation: int = 0


@dataclass(slots=True)
class _Link:
    """One connected central."""

    link: str
    session: VehicleSession
    last_activity: float
    task: asyncio.Task[None] | None = None
    pairing: PendingPairing | None = None
    secure_key_id: bytes | None = None
    after: list[Callable[[], None]] = field(default_factory=list)  # bookkeeping run after the reply is sent


def to_status_report(status: ActuatorStatus) -> StatusReport:
    """The wire form of an actuator status (the actuator and the wire share one LockState and DoorState)."""
    return StatusReport(status.lock, status.door, status.start_enabled)


class KeyService:
    """Serves the key protocol on a peripheral; implements the radio's PeripheralHandler."""

    def __init__(
        self,
        *,
        identity: KeyPair,
        store: KeyStore,
        audit: AuditLog,
        clock: GuardedClock,
        lock: Lock,
        peripheral: Peripheral,
        config: ServiceConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.store = store
        self.audit = audit
        self.clock = clock
        self.lock = lock
        self.peripheral = peripheral
        self.config = config or ServiceConfig()
        self._mono = monotonic
        self.challenges = ChallengeBook(ttl=self.config.challenge_ttl)
        self.limiter = self.config.limiter
        self.links: dict[str, _Link] = {}
        self.stats = ServiceStats()
        self._keys: dict[bytes, tuple[bytes, ec.EllipticCurvePublicKey]] = {}  # decoded public keys
        self._send_lock = asyncio.Lock()  # whole messages never interleave when notifications are broadcast
        self._broadcaster = self._new_session(20)  # pushes challenges when the backend cannot name the link
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._change_counter = -1
        self._tz = self.config.tz

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start advertising and the housekeeping task."""
        self._change_counter = self.store.change_counter()
        self.audit.append(AuditEvent.SERVER_START, ts=self.clock.now(),
                          detail={"vehicle_id": self.identity.key_id.hex()})
        await self.peripheral.start(self)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop advertising, end every session, and leave the actuator de-energised."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        tasks = [lk.task for lk in self.links.values() if lk.task and not lk.task.done()] + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for lk in list(self.links.values()):
            lk.session.close()
        self.links.clear()
        await self.peripheral.stop()
        self.audit.append(AuditEvent.SERVER_STOP, ts=self.clock.now())

    def _new_session(self, chunk_size: int) -> VehicleSession:
        return VehicleSession(self.identity, challenges=self.challenges, lookup_key=self._lookup,
                              chunk_size=max(20, chunk_size))

    def _lookup(self, key_id: bytes) -> ec.EllipticCurvePublicKey | None:
        """The public key of an enrolled, unrevoked key; read from the store every time (revocation is live)."""
        rec = self.store.get_key(key_id)
        if rec is None or rec.revoked:
            return None
        cached = self._keys.get(key_id)
        if cached is None or cached[0] != rec.public_key:
            cached = (rec.public_key, decode_public_key(rec.public_key))
            self._keys[key_id] = cached
        return cached[1]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ PeripheralHandler (sync, cheap)

    def on_connect(self, link: str, mtu: int) -> None:
        """A central connected: give it a fresh session sized to its MTU."""
        self.stats.connects += 1
        self.links[link] = _Link(link, self._new_session(mtu - 3), self._mono())

    def _link(self, link: str) -> _Link:
        lk = self.links.get(link)
        if lk is None:  # a backend that saw the write before the connection (bless learns links from writes)
            self.on_connect(link, 23)
            lk = self.links[link]
        return lk

    def on_subscribe(self, link: str | None) -> None:
        """Push a fresh challenge: to that link, or to every subscriber if the backend cannot tell which."""
        now = self._mono()
        if link is None:
            self._broadcaster.push_challenge(now)
            self._spawn(self._send(None, self._broadcaster.data_to_send()))
            return
        lk = self._link(link)
        lk.session.push_challenge(now)
        self._spawn(self._send(link, lk.session.data_to_send()))

    def on_write(self, link: str, data: bytes) -> None:
        """One ATT write: cheap checks here, then hand over to the link's drain task."""
        now = self._mono()
        if not self.limiter.allow(link, now):
            self.stats.rate_limited += 1
            raise AttError(AttErrorCode.APP_BUSY, "too many failed attempts; try again later")
        lk = self._link(link)
        lk.last_activity = now
        try:
            lk.session.receive_data(data, now)
        except FramingError as exc:
            self.stats.framing_errors += 1
            self.limiter.failed(link, now)
            raise AttError(AttErrorCode.APP_REJECTED, str(exc)) from None
        except KeyProtocolError as exc:  # the session already ended (error or revoked)
            raise AttError(AttErrorCode.APP_REJECTED, str(exc)) from None
        if lk.task is None or lk.task.done():
            lk.task = asyncio.get_running_loop().create_task(self._drain(lk))

    def on_disconnect(self, link: str) -> None:
        """The central left: end its session."""
        lk = self.links.pop(link, None)
        if lk is not None:
            # A drain task in progress finishes its current event (an actuation runs to its end: the actuator
            # guards its own timing); the closed session then yields no further events.
            lk.session.close()

    # ------------------------------------------------------------------ processing

    async def _send(self, link: str | None, chunks: list[bytes]) -> None:
        if not chunks:
            return
        try:
            if self.peripheral.notify_targets_one_link:
                for ch in chunks:
                    await self.peripheral.notify(ch, link)
            else:
                async with self._send_lock:
                    for ch in chunks:
                        await self.peripheral.notify(ch, link)
        except Exception as exc:  # noqa: BLE001 - a vanished link must not kill the service
            log.info("notify to %s failed: %s", link, exc)

    async def _drain(self, lk: _Link) -> None:
        """Process every complete message of one link, in order, sending each reply before the next."""
        while True:
            now = self._mono()
            try:
                event = lk.session.next_event(now)
            except RemoteProtocolError as exc:
                self.stats.protocol_errors += 1
                self.limiter.failed(lk.link, now)
                self._audit(AuditEvent.REFUSED, None, reason=f"protocol error: {exc}", status="MALFORMED")
                await self._send(lk.link, lk.session.data_to_send())
                await self._drop(lk)
                return
            except KeyProtocolError:
                return  # the session was closed under us (disconnect, revocation)
            if event is None:
                await self._send(lk.link, lk.session.data_to_send())
                return
            try:
                await self._handle(lk, event, now)
            except Exception:  # a bug must not leave the central waiting forever, nor kill the service
                log.exception("internal error while handling %r", event)
                await self._drop(lk)
                return
            await self._send(lk.link, lk.session.data_to_send())
            for job in lk.after:
                job()
            lk.after.clear()

    async def _drop(self, lk: _Link) -> None:
        self.links.pop(lk.link, None)
        lk.session.close()
        with contextlib.suppress(Exception):
            await self.peripheral.disconnect(lk.link)

    def _audit(self, event: AuditEvent, key_id: bytes | None, **detail: str | int | bool | None) -> None:
        try:
            self.audit.append(event, ts=self.clock.now(), key_id=key_id, detail=detail or None)
        except StoreError:
            log.exception("could not write the audit log")

    async def _handle(self, lk: _Link, event: Event, now: float) -> None:
        if isinstance(event, CommandRequested):
            await self._command(lk, event)
        elif isinstance(event, Refused):
            self.stats.refused += 1
            self.limiter.failed(lk.link, now)
            lk.after.append(lambda: self._audit(AuditEvent.REFUSED, event.key_id, reason=event.reason,
                                                status=event.status.name))
        elif isinstance(event, SessionOpened):
            lk.secure_key_id = event.key_id
        elif isinstance(event, PairingRequested):
            self._pairing_requested(lk, event)
        elif isinstance(event, PairingKeyReceived):
            self._pairing_key(lk, event)
        elif isinstance(event, PairingFailed):
            self.limiter.failed(lk.link, now)
            slot, live = event.slot, lk.pairing is not None
            lk.pairing = None
            if live:
                self.store.fail_pairing_attempt(slot)
            self._audit(AuditEvent.PAIR_FAILED, None, slot=slot,
                        reason=event.reason if live else "no usable code in this slot")
            lk.after.append(self._dropper(lk))

    def _pairing_requested(self, lk: _Link, event: PairingRequested) -> None:
        pairing = self.store.spend_pairing_attempt(event.slot, self.clock.now())
        lk.pairing = pairing
        # No usable code in that slot: run the PAKE with a random password anyway, so a prober cannot tell
        # a live slot from a dead one; the device's key confirmation then fails like a wrong code.
        lk.session.accept_pairing(pairing.prs if pairing is not None else os.urandom(32))

    def _pairing_key(self, lk: _Link, event: PairingKeyReceived) -> None:
        pairing, lk.pairing = lk.pairing, None
        if pairing is None:  # unreachable: a decoy PAKE's confirmation cannot verify
            lk.session.refuse_pairing(Status.PAIRING_REFUSED)
            return
        rec = pairing.key_record(event.key_id, event.public_key, self.clock.now())
        try:
            self.store.complete_pairing(pairing.slot, rec)
        except StoreError as exc:
            lk.session.refuse_pairing(Status.PAIRING_REFUSED)
            self._audit(AuditEvent.PAIR_FAILED, event.key_id, slot=pairing.slot, reason=str(exc))
            return
        self.stats.pairings += 1
        lk.session.finish_pairing(pairing.role, pairing.key_valid_from, pairing.key_valid_until)
        self._audit(AuditEvent.PAIR, event.key_id, name=pairing.name, role=pairing.role.label)

    async def _command(self, lk: _Link, ev: CommandRequested) -> None:
        self.stats.commands += 1
        wall = self.clock.now()
        rec = self.store.get_key(ev.key_id)
        refusal = authorize(rec, ev.command, wall, self._tz or _local_tz())
        if refusal is not None:
            lk.session.respond(_REFUSAL_STATUS[refusal])
            lk.after.append(lambda: self._audit(AuditEvent.REFUSED, ev.key_id, reason=refusal.value,
                                                command=ev.command.name.lower()))
            return
        status, data = Status.OK, b""
        try:
            status, data = await self._execute(lk, ev, wall)
        except DoorOpenError:
            status = Status.DOOR_OPEN
        except NotConfiguredError:
            status = Status.NOT_SUPPORTED
        except ActuatorError as exc:
            log.warning("actuator failed: %s", exc)
            status = Status.ACTUATOR_FAILED
        except DecodeError:
            status = Status.BAD_REQUEST
        with contextlib.suppress(KeyProtocolError):  # the central left mid-command: still audit what was done
            lk.session.respond(status, data)
        kid, cmd = ev.key_id, ev.command

        def bookkeeping() -> None:
            if cmd in _AUDIT_EVENT:
                self.store.mark_used(kid, wall)
                self._audit(_AUDIT_EVENT[cmd], kid, status=status.name)
            elif status is not Status.OK or cmd is not Command.REVOKE_KEY:
                self._audit(AuditEvent.ADMIN, kid, command=cmd.name.lower(), status=status.name)

        lk.after.append(bookkeeping)

    async def _execute(self, lk: _Link, ev: CommandRequested, wall: int) -> tuple[Status, bytes]:
        cmd = ev.command
        if cmd is Command.UNLOCK:
            return Status.OK, (await self._actuate(self.lock.unlock, LockState.UNLOCKED, ev.key_id)).encode()
        if cmd is Command.LOCK:
            return Status.OK, (await self._actuate(self.lock.lock, LockState.LOCKED, ev.key_id)).encode()
        if cmd is Command.START:
            return Status.OK, (await self._actuate(self.lock.start_enable, None, ev.key_id)).encode()
        if cmd is Command.STATUS:
            return Status.OK, to_status_report(self.lock.status()).encode()
        if cmd is Command.LIST_KEYS:
            offset, limit = parse_list_keys_args(ev.args)
            keys = self.store.list_keys()
            page = [KeyInfo(k.key_id, k.role, k.name, k.created_at, k.valid_from, k.valid_until,
                            k.last_used_at, k.revoked_at) for k in keys[offset : offset + limit]]
            data, _ = encode_key_page(page, len(keys))
            return Status.OK, data
        if cmd is Command.READ_AUDIT:
            after, limit = parse_read_audit_args(ev.args)
            entries = self.audit.read(after_seq=after, limit=max(1, min(limit, 100)))
            records = [AuditRecord(e.seq, e.ts, str(e.event), _json(dict(e.detail)), e.hash, e.key_id)
                       for e in entries]
            data, _ = encode_audit_page(records, self.audit.head()[0])
            return Status.OK, data
        if cmd is Command.REVOKE_KEY:
            target, force = parse_revoke_args(ev.args)
            try:
                with self.store.transaction():
                    self.store.revoke_key(target, wall, force=force)
                    self.audit.append(AuditEvent.REVOKE, ts=wall, key_id=target,
                                      detail={"by": ev.key_id.hex(), "force": force})
            except LastOwnerError:
                return Status.NOT_PERMITTED, b""
            except UnknownKey:
                return Status.BAD_REQUEST, b""
            self._end_sessions_of(target, keep=lk.link if target != ev.key_id else None)
            return Status.OK, b""
        return Status.NOT_SUPPORTED, b""

    async def _actuate(self, op: Callable[[], Awaitable[ActuatorStatus]], commanded: LockState | None,
                       key_id: bytes) -> StatusReport:
        """Drive the actuator; answer once it is done or, for a long pulse, once it has been driving a while.

        The drivers energise first and then hold the pulse, so an operation still running after `reply_after`
        has its relay energised: the device is told now (a 3 s door-strike hold must not look like a timeout),
        and a fault later in the pulse goes to the log and the audit log.
        """
        task: asyncio.Task[ActuatorStatus] = asyncio.get_running_loop().create_task(op())  # type: ignore[arg-type]
        done, _ = await asyncio.wait({task}, timeout=self.config.reply_after)
        if task in done:
            return to_status_report(task.result())
        self._background.add(task)  # type: ignore[arg-type]

        def finished(t: asyncio.Task[ActuatorStatus]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("actuator fault after the reply was sent: %s", t.exception())
                self._audit(AuditEvent.REFUSED, key_id, reason=f"actuator fault after reply: {t.exception()}",
                            status=Status.ACTUATOR_FAILED.name)

        task.add_done_callback(finished)
        report = to_status_report(self.lock.status())
        return replace(report, lock=commanded) if commanded is not None else report

    # ------------------------------------------------------------------ revocation and housekeeping

    def _end_sessions_of(self, key_id: bytes, keep: str | None = None) -> None:
        """End every open confidential session of a revoked key (the asking link replies first)."""
        for lk in list(self.links.values()):
            if lk.secure_key_id == key_id and lk.link != keep:
                self.stats.sessions_ended_by_revocation += 1
                if lk.task is asyncio.current_task():
                    lk.after.append(self._dropper(lk))
                else:
                    self._spawn(self._drop(lk))

    def _dropper(self, lk: _Link) -> Callable[[], None]:
        return lambda: self._spawn(self._drop(lk))

    def check_store_changes(self) -> None:
        """Notice changes made by another process (key-server revoke): end sessions of revoked keys."""
        counter = self.store.change_counter()
        if counter == self._change_counter:
            return
        self._change_counter = counter
        self._keys.clear()
        for lk in list(self.links.values()):
            if lk.secure_key_id is not None:
                rec = self.store.get_key(lk.secure_key_id)
                if rec is None or rec.revoked:
                    self._end_sessions_of(lk.secure_key_id)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                self.sweep()
            except Exception:
                log.exception("housekeeping failed")

    def sweep(self) -> None:
        """Drop idle links, notice revocations made elsewhere, forget expired challenges."""
        now = self._mono()
        for lk in list(self.links.values()):
            busy = lk.task is not None and not lk.task.done()
            if not busy and now - lk.last_activity > self.config.link_idle_timeout:
                self._spawn(self._drop(lk))
        self.check_store_changes()
        self.challenges.purge(now)
        self.clock.now()  # advances (and persists) the high-water mark while the server runs


def _json(detail: object) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"))


def _local_tz() -> tzinfo:
    """The system's current local time zone (re-read each time: the Pi's zone may change while running)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz
