"""The vehicle's session service: a pump between the radio's links and one protocol session per central.

Data flows one way (docs/PROTOCOL.md §7.1): radio backend -> VehicleSession (framing, crypto, state) -> the use
cases (commands.py, enrollment.py, keyadmin.py) -> actuator and key store, and back out as notifications. The
radio callbacks are synchronous and cheap: they feed bytes to the session and schedule a drain task; crypto,
SQLite and GPIO run in that task. This module decides nothing about keys; it keeps links, sessions, rate limits
and revocation of open sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo

from cryptography.hazmat.primitives.asymmetric import ec

from dkey_link.contract import AttError, AttErrorCode, Peripheral
from hardware import ActuatorEvent, DoorChanged, Lock, LockChanged
from protocol import (
    DEFAULT_CHALLENGE_TTL,
    PUBLISHED_TEST_KEYS,
    AdSecret,
    ChallengeBook,
    Command,
    CommandRequested,
    Event,
    FramingError,
    KeyPair,
    KeyProtocolError,
    PairingFailed,
    PairingKeyReceived,
    PairingRequested,
    Refused,
    RemoteProtocolError,
    RetryAfter,
    RevocationsOffered,
    Role,
    SessionOpened,
    ShareOffered,
    Status,
    StatusReport,
    VehicleSession,
    decode_public_key,
    fast_result_data,
    make_token,
)

from .audit import AuditEvent, AuditLog
from .clock import GuardedClock
from .commands import DEFAULT_STATEMENTS, KeyCommands, to_status_report
from .config import DEFAULT_LINK_IDLE_TIMEOUT, DEFAULT_TOKEN_ROTATION
from .enrollment import Enrollment
from .keyadmin import KeyAdmin
from .policy import authorize
from .ratelimit import LINK_QUEUE, MAX_LINK_LIFETIME, MAX_LINKS, ActuationLimiter, FailureLimiter
from .refusals import MAX_ROWS_PER_WINDOW, REFUSAL_WINDOW, RefusalDigest
from .shares import Shares
from .store import KeyStore, PendingPairing, StoreError
from .timezone import local_zone

log = logging.getLogger("key_server.service")
CLOCK_TRUSTED_EVENT = "clock_trusted"  # audit event: a source (rtc, ntp, system) first confirmed the clock



@dataclass(slots=True)
class ServiceConfig:
    """Tunables of the session service (every one is also a key-server config option)."""

    challenge_ttl: float = DEFAULT_CHALLENGE_TTL
    link_idle_timeout: float = DEFAULT_LINK_IDLE_TIMEOUT  # connect, act, disconnect: an idle link frees its slot
    poll_interval: float = 0.5  # how often CLI changes to the store (revocations) are looked for
    reply_after: float = 0.1  # answer an actuation still pulsing after this long (its relay is energised)
    tz: tzinfo | None = None  # for guest schedules; None = the system's local time zone
    link_queue: int = LINK_QUEUE  # complete messages one link may have waiting; past it writes get APP_BUSY
    max_links: int = MAX_LINKS  # links served at once; a link past it is dropped at connect
    max_link_lifetime: float = MAX_LINK_LIFETIME  # a link connected longer is dropped, busy or not
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    actuations: ActuationLimiter = field(default_factory=ActuationLimiter)
    refusal_window: float = REFUSAL_WINDOW  # unauthenticated refusals are audited as counts per link and window
    refusal_rows: int = MAX_ROWS_PER_WINDOW  # at most this many such rows per window
    # Roles whose SET_TIME counts, and how far each may move an untrusted clock forward ([clock] in the config).
    statements: Mapping[Role, int] = field(default_factory=lambda: dict(DEFAULT_STATEMENTS))
    # Seconds between two advertising tokens ([ble] token_rotation); a fresh one also at every start (§13).
    token_rotation: float = DEFAULT_TOKEN_ROTATION


@dataclass(slots=True)
class ServiceStats:
    """Counters for benchmarks, `doctor` and tests."""

    connects: int = 0
    commands: int = 0
    refused: int = 0
    framing_errors: int = 0
    protocol_errors: int = 0
    rate_limited: int = 0  # writes answered APP_BUSY plus queued messages shed, all before any crypto
    admitted: int = 0  # queued messages that passed admission and were processed (crypto included)
    shed: int = 0  # queued messages discarded at dequeue, over budget: no crypto, no audit row
    queue_full: int = 0  # writes answered APP_BUSY because the link's queue was at its cap
    peak_queue: int = 0  # the most complete messages one link ever had waiting
    links_refused: int = 0  # connections dropped because max_links were already served
    links_expired: int = 0  # links dropped for outliving max_link_lifetime
    pair_attempts: int = 0
    pairings: int = 0
    pairings_abandoned: int = 0
    sessions_ended_by_revocation: int = 0
    internal_errors: int = 0  # commands answered INTERNAL_ERROR because handling them raised
    shares_enrolled: int = 0  # keys enrolled by an owner's share (SHARE_PRESENT answered OK)
    lists_applied: int = 0  # owners' revocation lists applied (REVOCATIONS answered OK)
    watch_pushes: int = 0  # status reports pushed to watching sessions
    tokens_advertised: int = 0  # advertising tokens handed to the radio (start, rotations, secret changes)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """A pairing attempt under way: its slot, the code behind it (None: a decoy) and the PRS the PAKE runs with."""

    slot: int
    pairing: PendingPairing | None
    prs: bytes = field(repr=False)


@dataclass(slots=True)
class _Central:
    """One connected central: its link id, its protocol session and what is pending on it."""

    link: str
    session: VehicleSession
    last_activity: float
    connected_at: float
    task: asyncio.Task[None] | None = None
    attempt: _Attempt | None = None  # from PAIR_START until a key is enrolled or the attempt fails
    secure_key_id: bytes | None = None
    after: list[Callable[[], None]] = field(default_factory=list)  # bookkeeping run after the reply is sent
    reads: dict[Command, int] = field(default_factory=dict)  # answered reads, audited once when the link ends
    gone: bool = False  # the link ended: a read answered after that is audited at once
    lane: bytes | None = None  # the enrolled key named by the message being processed (the limiter's key lane)
    # WATCH answered OK in this session: the last status report it was sent (a push goes out when one differs).
    watching: StatusReport | None = None
    # Held while taking a link's queued chunks and notifying them: an answer and a WATCH push queued meanwhile
    # never interleave their chunks (each message's chunks go out together, in the order they were queued).
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)


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
        self.admin = KeyAdmin(store, audit, clock)
        self.enrollment = Enrollment(store, audit, clock, identity.key_id)
        self.shares = Shares(store, audit, clock, identity.key_id)
        self.commands = KeyCommands(self.admin, lock, tz=self.config.tz, reply_after=self.config.reply_after,
                                    actuations=self.config.actuations, monotonic=monotonic, identity=identity,
                                    statements=self.config.statements, enrollment=self.enrollment)
        self.refusals = RefusalDigest(self._write_refusals, window=self.config.refusal_window,
                                      max_rows=self.config.refusal_rows)
        self._mono = monotonic
        self.challenges = ChallengeBook(ttl=self.config.challenge_ttl)
        self.limiter = self.config.limiter
        self.links: dict[str, _Central] = {}
        self.stats = ServiceStats()
        self._keys: dict[bytes, tuple[bytes, ec.EllipticCurvePublicKey]] = {}  # decoded public keys
        self._send_lock = asyncio.Lock()  # whole messages never interleave when notifications are broadcast
        self._broadcaster = self._new_session(20)  # pushes challenges when the backend cannot name the link
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._change_counter = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ad_secret: AdSecret | None = None  # the secret the advertised token is made with
        self._token_at = 0.0  # monotonic time the advertised token was made
        self._rotating: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start advertising and the housekeeping task."""
        self._change_counter = self.store.change_counter()
        self._loop = asyncio.get_running_loop()
        self.audit.append(AuditEvent.SERVER_START, ts=self.clock.now(),
                          detail={"vehicle_id": self.identity.key_id.hex()})
        self._refresh_clock(force=True)
        await self._advertise_new_token()  # a fresh prand at every start: no token repeats across boots
        await self.peripheral.start(self)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop advertising, end every session, and leave the actuator de-energised."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        tasks = [c.task for c in self.links.values() if c.task and not c.task.done()] + list(self._background)
        if self._rotating is not None and not self._rotating.done():
            tasks.append(self._rotating)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.commands.stop()
        for central in list(self.links.values()):
            central.session.close()
            self._end_attempt(central, "abandoned: the server stopped", failure=False)
            self._end_reads(central)
        self.links.clear()
        self.refusals.flush()
        await self.peripheral.stop()
        self.audit.append(AuditEvent.SERVER_STOP, ts=self.clock.now())

    async def _advertise_new_token(self) -> None:
        """Hand the radio a token of the store's current secret with a fresh prand (PROTOCOL.md §13)."""
        self._ad_secret = self.store.ad_secret()
        self._token_at = self._mono()
        await self.peripheral.advertise_token(make_token(self._ad_secret.secret))
        self.stats.tokens_advertised += 1
        log.debug("advertising a new token (secret generation %d)", self._ad_secret.generation)

    def _rotate_token(self) -> None:
        """Start a token change unless one is under way (the sweep and a secret change may both ask)."""
        if self._rotating is not None and not self._rotating.done():
            return
        self._rotating = asyncio.get_running_loop().create_task(self._rotate_logged())

    async def _rotate_logged(self) -> None:
        try:
            await self._advertise_new_token()
        except Exception:
            # The old token stays on air (still resolvable by our devices); the next sweep tries again.
            log.exception("could not advertise a new token")

    def _new_session(self, chunk_size: int) -> VehicleSession:
        return VehicleSession(self.identity, challenges=self.challenges, lookup_key=self._lookup,
                              chunk_size=max(20, chunk_size), names_itself=self._code_pending)

    def _code_pending(self) -> bool:
        """True while a pairing code waits: only then does a CHALLENGE carry the vehicle id (PROTOCOL.md §3.11)."""
        try:
            return self.store.pairing_pending(self.clock.now())
        except StoreError:
            log.exception("could not read the pending pairing codes: not naming the vehicle")
            return False

    def _lookup(self, key_id: bytes) -> ec.EllipticCurvePublicKey | None:
        """The public key of an enrolled, unrevoked key; read from the store every time (revocation is live).

        A published test key (PROTOCOL.md §10.1) enrolled before the store refused them counts as unknown too.
        """
        rec = self.store.get_key(key_id)
        if rec is None or rec.revoked or rec.public_key in PUBLISHED_TEST_KEYS:
            return None
        cached = self._keys.get(key_id)
        if cached is None or cached[0] != rec.public_key:
            cached = (rec.public_key, decode_public_key(rec.public_key))
            self._keys[key_id] = cached
        return cached[1]

    def _enrolled(self, key_id: bytes | None) -> bytes | None:
        """`key_id` if it names an enrolled, unrevoked key (a store read, no crypto), else None."""
        if key_id is None:
            return None
        rec = self.store.get_key(key_id)
        return key_id if rec is not None and not rec.revoked else None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ PeripheralHandler (sync, cheap)

    def on_connect(self, link: str, mtu: int) -> None:
        """A central connected: give it a fresh session sized to its MTU, or drop it if max_links are served."""
        self._admit_link(link, mtu)

    def _admit_link(self, link: str, mtu: int) -> _Central | None:
        self.stats.connects += 1
        if link not in self.links and len(self.links) >= self.config.max_links:
            # Refusing the newcomer (not evicting the oldest) keeps a served device's command whole; the lifetime
            # cap frees hogged slots within max_link_lifetime.
            self.stats.links_refused += 1
            self._spawn(self._disconnect(link))
            return None
        now = self._mono()
        central = self.links[link] = _Central(link, self._new_session(mtu - 3), now, now)
        return central

    def on_mtu(self, link: str, mtu: int) -> None:
        """The link's ATT MTU became known after it connected: reply in chunks that use it."""
        central = self.links.get(link)
        if central is not None:
            central.session.link_mtu(mtu)

    async def _disconnect(self, link: str) -> None:
        with contextlib.suppress(Exception):
            await self.peripheral.disconnect(link)

    def _central(self, link: str) -> _Central | None:
        central = self.links.get(link)
        if central is None:  # a write from a link the backend did not report connecting (bless: a missed signal)
            central = self._admit_link(link, 23)
        return central

    def on_subscribe(self, link: str | None) -> None:
        """Push a fresh challenge: to that link, or to every subscriber if the backend cannot tell which."""
        now = self._mono()
        if link is None:
            self._broadcaster.push_challenge(now)
            self._spawn(self._send(None, self._broadcaster.data_to_send()))
            return
        central = self._central(link)
        if central is None:
            return
        central.session.push_challenge(now)
        self._spawn(self._flush(central))

    def on_write(self, link: str, data: bytes) -> None:
        """One ATT write: cheap checks here, then hand over to the link's drain task."""
        now = self._mono()
        # Only the link's own bucket here: the global budget is applied at dequeue, where an enrolled key's lane
        # can still admit an honest device while a flood has emptied it.
        if not self.limiter.link_allows(link, now):
            self.stats.rate_limited += 1
            raise AttError(AttErrorCode.APP_BUSY, "too many failed attempts; try again later")
        central = self._central(link)
        if central is None:
            self.stats.rate_limited += 1
            raise AttError(AttErrorCode.APP_BUSY, "too many centrals connected; try again later")
        if central.session.queued >= self.config.link_queue:
            # Hard cap: an honest device waits for each answer, so only a pipelining peer gets here; its further
            # writes are refused (not queued) until the drain task has worked the queue down.
            self.stats.queue_full += 1
            self.stats.rate_limited += 1
            raise AttError(AttErrorCode.APP_BUSY, "too many requests waiting on this link; try again later")
        central.last_activity = now
        try:
            central.session.receive_data(data, now)
        except FramingError as exc:
            self.stats.framing_errors += 1
            self.limiter.failed(link, now)
            raise AttError(AttErrorCode.APP_REJECTED, str(exc)) from None
        except KeyProtocolError as exc:  # the session already ended (error or revoked)
            raise AttError(AttErrorCode.APP_REJECTED, str(exc)) from None
        self.stats.peak_queue = max(self.stats.peak_queue, central.session.queued)
        if central.task is None or central.task.done():
            central.task = asyncio.get_running_loop().create_task(self._drain(central))

    def on_disconnect(self, link: str) -> None:
        """The central left: end its session."""
        central = self.links.pop(link, None)
        if central is not None:
            # A drain task in progress finishes its current event (an actuation runs to its end: the actuator
            # guards its own timing); the closed session then yields no further events.
            central.session.close()
            # Leaving mid-PAKE is what a guesser does once the vehicle's confirmation shows the guess was wrong:
            # it is a failed attempt, for the code and for the limiter. The store write runs off this callback.
            asyncio.get_running_loop().call_soon(self._forget, central)
            self._end_reads(central)

    def _forget(self, central: _Central) -> None:
        """After a link ended: charge an abandoned pairing, free the link's bucket (bounded memory), write its count."""
        self._end_attempt(central, "abandoned")
        if central.link not in self.links:  # not reconnected under the same id meanwhile
            self.limiter.forget(central.link)
            self.refusals.end_link(central.link, self._mono())  # its refusal count: one audit row, now

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

    async def _flush(self, central: _Central) -> None:
        """Send every chunk the link's session has queued, under the link's send lock (whole messages, in order)."""
        async with central.sending:
            await self._send(central.link, central.session.data_to_send())

    async def _drain(self, central: _Central) -> None:
        """Process every complete message of one link, in order, sending each reply before the next."""
        while True:
            now = self._mono()
            central.lane = None
            if central.session.ready:
                # Admission control, right before the message would reach crypto: over budget, it is shed unread
                # (an unsigned BUSY when it names a challenge) with no signature, no verification, no audit row.
                # A request inside a confidential session names no key: it runs under the session's own key.
                central.lane = self._enrolled(central.session.next_key_id() or central.secure_key_id)
                if not self.limiter.allow(central.link, now, central.lane):
                    self.stats.rate_limited += 1
                    self.stats.shed += 1
                    central.session.shed()
                    await self._flush(central)
                    continue
                self.stats.admitted += 1
            try:
                event = central.session.next_event(now)
            except RemoteProtocolError as exc:
                self.stats.protocol_errors += 1
                self.limiter.failed(central.link, now, central.lane)
                if central.attempt is not None:  # mid-PAKE: the attempt's own row says why it failed
                    self._end_attempt(central, f"protocol error: {exc}", failure=False)
                else:  # counted, not written now: a malformed message proves nothing about its sender
                    self.refusals.refused(central.link, now, self.clock.now(), status="MALFORMED",
                                          reason=f"protocol error: {exc}")
                await self._flush(central)
                await self._drop(central)
                return
            except KeyProtocolError:
                return  # the session was closed under us (disconnect, revocation)
            if event is None:
                await self._flush(central)
                return
            try:
                await self._handle(central, event, now)
            except Exception:  # a bug must not leave the central waiting forever, nor kill the service
                log.exception("internal error while handling %r", event)
                if not self._answer_internal_error(central):
                    await self._drop(central)
                    return
            await self._flush(central)
            for job in central.after:
                job()
            central.after.clear()

    def _answer_internal_error(self, central: _Central) -> bool:
        """Answer a command whose handling failed with INTERNAL_ERROR (the link stays up); False if none waits."""
        key_id = central.session.pending_key_id
        if key_id is None:
            return False  # mid-pairing or between commands: nothing to answer, the link is dropped
        self.stats.internal_errors += 1
        try:
            central.session.respond(Status.INTERNAL_ERROR)
        except KeyProtocolError:
            return False
        try:  # the failure may be the audit log's own (a failing disk): the answer above already went out
            self.audit.record(AuditEvent.REFUSED, ts=self.clock.now(), key_id=key_id,
                              detail={"reason": "internal error", "status": Status.INTERNAL_ERROR.name})
        except Exception:  # noqa: BLE001 - logged; a second failure must not take the link down too
            log.exception("could not audit the internal error")
        central.after.clear()  # whatever the failed handler queued belongs to an answer that was never given
        return True

    async def _drop(self, central: _Central) -> None:
        if self.links.get(central.link) is central:
            del self.links[central.link]
        central.session.close()
        self._end_attempt(central, "abandoned")  # e.g. an idle link swept mid-PAKE
        self._end_reads(central)
        if central.link not in self.links:
            self.limiter.forget(central.link)
            self.refusals.end_link(central.link, self._mono())
        with contextlib.suppress(Exception):
            await self.peripheral.disconnect(central.link)

    def _write_refusals(self, detail: dict[str, str | int | bool | None], key_id: bytes | None) -> None:
        self.audit.record(AuditEvent.REFUSALS, ts=self.clock.now(), key_id=key_id, detail=detail)

    async def _handle(self, central: _Central, event: Event, now: float) -> None:
        if isinstance(event, CommandRequested):
            await self._command(central, event)
        elif isinstance(event, Refused):
            self.stats.refused += 1
            self.limiter.failed(central.link, now, central.lane)
            # Counted under the link, written as one row per link and window (key_server/refusals.py): nothing
            # here is authenticated, so a flood of these must cost no disk write each.
            self.refusals.refused(central.link, now, self.clock.now(), status=event.status.name,
                                  reason=event.reason, key_id=event.key_id)
        elif isinstance(event, SessionOpened):
            central.secure_key_id = event.key_id
        elif isinstance(event, ShareOffered):
            self._share(central, event, now)
        elif isinstance(event, RevocationsOffered):
            self._revocations(central, event, now)
        elif isinstance(event, PairingRequested):
            self.stats.pair_attempts += 1
            pairing = self.enrollment.begin(event.slot)  # spent and audited, live slot or not, before the PAKE
            # No usable code in that slot: run the PAKE with a random password anyway, so a prober cannot tell
            # a live slot from a dead one; the device's key confirmation then fails like a wrong code.
            prs = pairing.prs if pairing is not None else os.urandom(32)
            central.attempt = _Attempt(event.slot, pairing, prs)
            central.session.accept_pairing(prs)
        elif isinstance(event, PairingKeyReceived):
            self._pairing_key(central, event)
        elif isinstance(event, PairingFailed):
            self.limiter.failed(central.link, now)
            attempt, central.attempt, reason = central.attempt, None, event.reason
            if attempt is not None:  # written after the ERROR is sent: the answer's timing says nothing of the slot
                central.after.append(lambda: self._attempt_failed(attempt, reason))
            central.after.append(self._dropper(central))

    def _share(self, central: _Central, event: ShareOffered, now: float) -> None:
        """SHARE_PRESENT: check the owner's certificate and enroll its key; the session signs the answer."""
        result = self.shares.enroll(event.certificate)
        central.session.answer_share(result.status)
        if result.status is Status.OK:
            self.stats.shares_enrolled += 1  # its audit row was committed with the key
        elif result.status is not Status.NO_CHANGE:
            # Anyone can replay a certificate: a refusal is counted with the link's other unauthenticated ones
            # (one row per link and window). A DENIED one (forged, unknown or revoked issuer, revoked subject) is
            # charged to the link like a bad signature; an honest device refused for an untrusted clock, an
            # expired share or an owner role is not throttled for it.
            self.stats.refused += 1
            if result.status is Status.DENIED:
                self.limiter.failed(central.link, now, central.lane)
            self.refusals.refused(central.link, now, self.clock.now(), status=result.status.name,
                                  reason=result.reason, key_id=event.certificate.subject_key_id)

    def _revocations(self, central: _Central, event: RevocationsOffered, now: float) -> None:
        """REVOCATIONS: apply an owner's newer list; end the revoked keys' sessions; the session signs the answer."""
        result = self.shares.apply(event.revocations, event.raw)
        central.session.answer_revocations(result.status, result.version)
        if result.status is Status.OK:
            self.stats.lists_applied += 1
            for key_id in result.revoked:
                # The carrier hears its answer first; a carrier whose own key the list revoked is dropped after.
                self._end_sessions_of(key_id)
        elif result.status is Status.DENIED:
            self.stats.refused += 1
            self.limiter.failed(central.link, now, central.lane)
            self.refusals.refused(central.link, now, self.clock.now(), status=result.status.name,
                                  reason=result.reason, key_id=event.revocations.issuer_id)

    def _end_attempt(self, central: _Central, reason: str, *, failure: bool = True) -> None:
        """End the central's pairing attempt, if one is under way, as failed; `failure` also charges the limiter."""
        attempt, central.attempt = central.attempt, None
        if attempt is None:
            return
        if failure:
            self.limiter.failed(central.link, self._mono())
        if reason.startswith("abandoned"):
            self.stats.pairings_abandoned += 1
        self._attempt_failed(attempt, reason)

    def _attempt_failed(self, attempt: _Attempt, reason: str) -> None:
        self.enrollment.failed(attempt.slot, prs=attempt.prs, live=attempt.pairing is not None, reason=reason)

    def _pairing_key(self, central: _Central, event: PairingKeyReceived) -> None:
        attempt, central.attempt = central.attempt, None
        pairing = attempt.pairing if attempt is not None else None
        if pairing is None:  # unreachable: a decoy PAKE's confirmation cannot verify
            central.session.refuse_pairing(Status.PAIRING_REFUSED)
            return
        if self.enrollment.complete(pairing, event.key_id, event.public_key) is None:
            central.session.refuse_pairing(Status.PAIRING_REFUSED)
            return
        self.stats.pairings += 1
        central.session.finish_pairing(pairing.role, pairing.key_valid_from, pairing.key_valid_until)

    async def _command(self, central: _Central, ev: CommandRequested) -> None:
        self.stats.commands += 1
        outcome = await self.commands.run(ev.key_id, ev.command, ev.args)
        for revoked in outcome.revoked:  # committed: end their other sessions now; the asker hears the answer first
            self._end_sessions_of(revoked, keep=central.link if revoked != ev.key_id else None)
        with contextlib.suppress(KeyProtocolError):  # the central left mid-command: still audit what was done
            # Result data only inside a confidential session: a signed RESULT is readable by anyone (§5.3), but for
            # the time_wanted hint and a BUSY's retry record (when to try again, §5.4): neither says anything about
            # the lock or the door.
            if ev.secure:
                data = outcome.data
            elif outcome.status is Status.BUSY and RetryAfter.fits(outcome.data):
                data = outcome.data
            else:
                data = fast_result_data(outcome.data)
            central.session.respond(outcome.status, data)
            if ev.command is Command.WATCH and ev.secure and outcome.status is Status.OK:
                # From now on every change of the lock, door or start output is pushed to this session.
                central.watching = StatusReport.decode(outcome.data)
        if self.commands.is_counted_read(outcome):
            central.after.append(lambda: self._count_read(central, outcome.command))
        else:
            central.after.append(lambda: self.commands.record(outcome))

    def _count_read(self, central: _Central, cmd: Command) -> None:
        central.reads[cmd] = central.reads.get(cmd, 0) + 1
        if central.gone:  # answered after the link ended (a drain finishing its event): nothing flushes later
            self._end_reads(central)

    def _end_reads(self, central: _Central) -> None:
        """The link ended: audit its counted reads (once; idempotent, every way a link ends calls it)."""
        central.gone = True
        reads, central.reads = central.reads, {}
        if reads and central.secure_key_id is not None:
            self.commands.record_reads(central.secure_key_id, reads)

    # ------------------------------------------------------------------ WATCH: pushed status changes

    def actuator_changed(self, event: ActuatorEvent) -> None:
        """The lock's on_change listener (any thread): push the new status to every watching session.

        The report is taken now, in the caller's thread, with the event's own value over the snapshot, so each
        change is reported as it happened even when the next one follows at once (nothing is debounced here: the
        door input is debounced by the hardware layer, and every change it reports is a real one).
        """
        report = to_status_report(self.lock.status())
        if isinstance(event, LockChanged):
            report = dataclasses.replace(report, lock=event.lock)
        elif isinstance(event, DoorChanged):
            report = dataclasses.replace(report, door=event.door)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._status_changed, report)
        except RuntimeError:  # the loop closed meanwhile (server stopping): nobody is watching any more
            pass

    def _status_changed(self, report: StatusReport) -> None:
        """Push `report` to every watching session whose last report differs and whose key may still watch."""
        for central in list(self.links.values()):
            if central.watching is None or central.watching == report or central.gone:
                continue
            # Asked once, checked at every push: a key whose window ended, that left its schedule or was demoted
            # to guest since it asked hears no more (a revoked key's session is dropped by check_store_changes).
            rec = self.store.get_key(central.secure_key_id) if central.secure_key_id is not None else None
            if authorize(rec, Command.WATCH, self.clock.now(), self.config.tz or local_zone(),
                         trusted=self.clock.trusted) is not None:
                central.watching = None
                continue
            try:
                central.session.push_watch(report.encode())
            except KeyProtocolError:  # the session ended (revoked, closed): no more pushes
                central.watching = None
                continue
            central.watching = report
            self.stats.watch_pushes += 1
            self._spawn(self._flush(central))

    # ------------------------------------------------------------------ revocation and housekeeping

    def _end_sessions_of(self, key_id: bytes, keep: str | None = None) -> None:
        """End every open confidential session of a revoked key (the asking link replies first)."""
        for central in list(self.links.values()):
            if central.secure_key_id == key_id and central.link != keep:
                self.stats.sessions_ended_by_revocation += 1
                if central.task is asyncio.current_task():
                    central.after.append(self._dropper(central))
                else:
                    self._spawn(self._drop(central))

    def _dropper(self, central: _Central) -> Callable[[], None]:
        return lambda: self._spawn(self._drop(central))

    def check_store_changes(self) -> None:
        """Notice changes made by another process (key-server revoke): end sessions of revoked keys."""
        counter = self.store.change_counter()
        if counter == self._change_counter:
            return
        self._change_counter = counter
        self._keys.clear()
        if self._ad_secret is not None and self.store.ad_secret() != self._ad_secret:
            # `key-server rotate-secret` (or revoke --rotate-secret) ran: the old token must leave the air now.
            self._rotate_token()
        for central in list(self.links.values()):
            if central.secure_key_id is not None:
                rec = self.store.get_key(central.secure_key_id)
                if rec is None or rec.revoked:
                    self._end_sessions_of(central.secure_key_id)

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
        for central in list(self.links.values()):
            busy = central.task is not None and not central.task.done()
            if now - central.connected_at > self.config.max_link_lifetime:
                # Busy or not: a link that keeps itself busy must not hold its slot forever. A drain task in
                # progress finishes its current event; the closed session yields no more.
                self.stats.links_expired += 1
                log.info("dropping %s: connected for %.1f s (max_link_lifetime)", central.link,
                         now - central.connected_at)
                self._spawn(self._drop(central))
            elif (not busy and central.watching is None
                  and now - central.last_activity > self.config.link_idle_timeout):
                # A watching session is not idle: it waits for pushes (max_link_lifetime still bounds it).
                # A silent central too: with bless, BlueZ does not advertise while it is connected.
                log.info("dropping %s: idle for %.1f s (link_idle_timeout)", central.link, now - central.last_activity)
                self._spawn(self._drop(central))
        self.check_store_changes()
        if (self._ad_secret is not None and now - self._token_at >= self.config.token_rotation
                and not (self.links and getattr(self.peripheral, "rotation_waits_for_idle", False))):
            # A radio that must power-cycle for a new address (legacy advertising) rotates once no central is
            # connected: a token that changed while the address stayed would be linked to the old one by it.
            self._rotate_token()
        self.challenges.purge(now)
        self.refusals.tick(now)
        self._refresh_clock()
        self.clock.now()  # advances (and persists) the high-water mark while the server runs

    def _refresh_clock(self, *, force: bool = False) -> None:
        """Ask the clock's sources (RTC, NTP) again; audit the moment one of them first confirms the time."""
        if self.clock.trusted:
            self.clock.refresh(force=force)  # keeps the anchor fresh against the monotonic clock's drift
            return
        self.clock.refresh(force=force)
        if self.clock.trusted:
            source = self.clock.trusted_by or "unknown"
            log.info("the clock is now trusted (confirmed by %s)", source)
            self.audit.record(CLOCK_TRUSTED_EVENT, ts=self.clock.now(), detail={"source": str(source)})
