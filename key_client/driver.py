"""The session driver: runs a DeviceSession over a radio Connection and turns its events into results.

It owns the timing decisions the sans-IO core leaves open and is the ONE layer that retries (docs/CLIENT.md,
"Time limits and retries"): finding the vehicle is bounded by the scan time, connecting by a number of
attempts and a number of seconds (RetryBudget), and the radio backends below it do not retry on their own.
Safe to retry: anything before the command's last chunk is written, and a refusal that proves the vehicle
did nothing. Not safe: a command written but unanswered, or interrupted (Ctrl-C) once written: OutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dkey_link.contract import Advertisement, AttError, AttErrorCode, Central, Connection, LinkLost, RadioError
from protocol import (
    ACTUATING_COMMANDS,
    ChallengeReceived,
    Command,
    CommandResult,
    DecodeError,
    DeviceSession,
    DState,
    Event,
    FramingError,
    KeyPair,
    KeyProtocolError,
    LocalProtocolError,
    Paired,
    RetryAfter,
    RevocationsAnswered,
    SessionReady,
    ShareAnswered,
    StateChanged,
    Status,
    StatusReport,
    VehicleError,
    resolve_token,
)

from .errors import (
    BUSY_ATT_TEXT,
    ClientError,
    ConnectFailed,
    OutcomeUnknown,
    ProtocolViolation,
    TimedOut,
    VehicleNotFound,
    VehicleRefused,
)

log = logging.getLogger("key_client.driver")

# Why these numbers: the vehicle answers a subscription with a challenge in ~50 ms on BlueZ (ble-vm
# measurements), so 3 s means "it is not going to"; a command's answer includes the actuator's pulse
# (up to ~1 s for a strike), so 8 s leaves margin without making a person wait forever.
CHALLENGE_TIMEOUT = 3.0
ANSWER_TIMEOUT = 8.0
# The retry budget (docs/CLIENT.md "Time limits and retries"), after the scan found a vehicle: at most
# CONNECT_ATTEMPTS connection attempts (connect + subscribe + challenge), together within CONNECT_WINDOW s,
# one attempt at most ATTEMPT_TIMEOUT s (bleak's own default connect timeout).
CONNECT_ATTEMPTS = 3
WINDOW_PER_ATTEMPT = 5.0  # the window grows with --connect-attempts: 3 attempts -> 15 s
CONNECT_WINDOW = CONNECT_ATTEMPTS * WINDOW_PER_ATTEMPT
ATTEMPT_TIMEOUT = 10.0
RETRY_PAUSE = 0.3  # s times the attempt number before retrying: the vehicle may be busy with another central
SCAN_RETRY_PAUSE = 0.5  # s times the failure number after a scan that could not run
# A scan that sees dkey vehicles but none advertising our token listens this long for ours (over ten advertising
# intervals at the default 152.5 ms, above one at BlueZ's default 1.28 s) before falling back to trying them.
RESOLVE_WAIT = 2.0
LINK_CHECK_INTERVAL = 0.2  # how often a wait for an answer checks that the link is still up
# Commands that change something on the vehicle: once written, an interruption leaves their outcome unknown.
MAY_ACT = ACTUATING_COMMANDS | {Command.REVOKE_KEY, Command.ISSUE_CODE, Command.EDIT_KEY}


class Clock(Protocol):
    """Time as the retry budget sees it (tests inject a fake one instead of sleeping)."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        ...


class LoopClock:
    """The running event loop's clock."""

    def now(self) -> float:
        """The loop's monotonic time."""
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep."""
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Target:
    """The vehicle we want: its pinned public key (None while pairing), optional vehicle id, advertising secret."""

    vehicle_public_key: bytes | None
    vehicle_id: bytes | None = None
    # The vehicle's advertising secret (PROTOCOL.md §13): recognises its token on air without connecting.
    ad_secret: bytes | None = field(default=None, repr=False)
    # A share certificate the vehicle has not enrolled yet: the fallback presents it instead of SESSION_OPEN (the
    # vehicle would refuse a session to a key it does not know yet), and its signed answer proves the vehicle.
    share: bytes | None = field(default=None, repr=False)

    def recognises(self, adv: Advertisement) -> bool:
        """True if `adv` carries a token made with our vehicle's advertising secret."""
        return self.ad_secret is not None and resolve_token(adv.service_data, {True: self.ad_secret}) is not None


class VehicleLink:
    """One connection to a vehicle with a protocol session on it."""

    def __init__(self, conn: Connection, session: DeviceSession, adv: Advertisement) -> None:
        self.conn = conn
        self.session = session
        self.advertisement = adv
        self._events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.stats = {"writes": 0, "notifications": 0, "bytes_up": 0, "bytes_down": 0}
        self.connected_at = time.monotonic()
        self._writer: asyncio.Task[None] | None = None
        self._used_challenge = False
        # True from the moment a request's last chunk starts on its way until its answer is read: an
        # interruption in that window may leave the vehicle having acted.
        self.unanswered = False
        self.session_open = False  # the confidential session is open (open_secure succeeded)
        self.probed = False  # found by connect_vehicle's fallback, not by its advertising token
        self.share_answer: ShareAnswered | None = None  # the fallback presented Target.share: the vehicle's answer
        # While probing an unrecognised advertiser (connect_vehicle's fallback): the session's count of answers
        # that failed verification with the pinned key when SESSION_OPEN went out; one more means not our car.
        self._probe_from: int | None = None

    # ------------------------------------------------------------------ plumbing

    def _on_notify(self, chunk: bytes) -> None:
        self.stats["notifications"] += 1
        self.stats["bytes_down"] += len(chunk)
        now = time.monotonic()
        try:
            self.session.receive_data(chunk, now)
            while (event := self.session.next_event(now)) is not None:
                self._events.put_nowait(event)
        except FramingError as exc:
            log.debug("dropped a bad chunk: %s", exc)  # someone else's garbage, or a lost chunk
        except KeyProtocolError as exc:
            self._events.put_nowait(exc)
            return
        if self._probe_from is not None and self.session.ignored_forgeries > self._probe_from:
            # Our SESSION_OPEN was answered, for our key and challenge, with a signature the pinned key does not
            # verify: another dkey vehicle (it refused a request signed for ours). Not ours: the caller moves on.
            self._probe_from = None
            self._events.put_nowait(_WrongVehicle(None))
        # Pairing answers PAIR_REPLY by itself (PAIR_CONFIRM): write what the session queued.
        pending = self.session.data_to_send()
        if pending:
            self._writer = asyncio.get_running_loop().create_task(self._write_chunks(pending))

    async def _write_chunks(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                await self.conn.write(chunk, response=True)
                self.stats["writes"] += 1
                self.stats["bytes_up"] += len(chunk)
        except RadioError as exc:
            self._events.put_nowait(exc)

    async def _flush(self) -> bool:
        """Write every queued chunk with response; True once the last chunk may have reached the vehicle.

        A message acts only when its last chunk arrives, so a failure on an earlier chunk proves the vehicle
        did nothing (TimedOut), while a failure on the last one leaves the outcome open (OutcomeUnknown).
        """
        chunks = self.session.data_to_send()
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self.unanswered = self.unanswered or last
            try:
                await self.conn.write(chunk, response=True)
            except AttError as exc:
                # RX is write-with-response only (PROTOCOL.md §1.1), so the vehicle's refusals arrive here.
                if exc.code == AttErrorCode.APP_BUSY:
                    raise VehicleRefused(Status.BUSY, authenticated=False, message=BUSY_ATT_TEXT) from exc
                if exc.code == AttErrorCode.APP_REJECTED:
                    raise TimedOut("the vehicle rejected our message as malformed or out of place (ATT error 0x81); "
                                   "it did not act") from exc
                raise TimedOut(f"the vehicle rejected our write (ATT error 0x{exc.code:02x})") from exc
            except RadioError as exc:
                if last:
                    raise OutcomeUnknown(f"the link failed while the command was being delivered: {exc}; the "
                                         "vehicle may have acted: check with `key-client status`") from exc
                raise TimedOut(f"the link failed before the command was delivered: {exc}") from exc
            self.stats["writes"] += 1
            self.stats["bytes_up"] += len(chunk)
        return bool(chunks)

    async def _next(self, want: tuple[type[Event], ...], timeout: float | None) -> Event:
        """The next event of a wanted type (timeout None: no limit); others are skipped; raises on a violation."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    # Wake up now and then to notice a dropped link instead of waiting out the whole timeout.
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns an item that arrives in the
                    # same loop turn as a cancel and drops the cancel, so a Ctrl-C could wait out the answer.
                    async with asyncio.timeout(LINK_CHECK_INTERVAL):
                        item = await self._events.get()
                except TimeoutError:
                    if not self.conn.is_connected:
                        raise LinkLost("the link dropped while waiting for the vehicle's answer") from None
                    continue
                if isinstance(item, RadioError | _WrongVehicle):
                    raise item
                if isinstance(item, BaseException):
                    raise ProtocolViolation(f"the vehicle's answer failed verification: {item}") from item
                if isinstance(item, want) or isinstance(item, VehicleError):
                    return item

    async def wait_challenge(self, timeout: float = CHALLENGE_TIMEOUT) -> ChallengeReceived:
        """Wait for a challenge from our vehicle (asking for one once if the pushed one is missing)."""
        deadline = time.monotonic() + timeout
        # The first challenge is pushed on subscription; after that, one is only sent when asked for.
        asked = False
        if self._used_challenge and self.session.state in (DState.WAIT_CHALLENGE, DState.PAIRED):
            asked = True
            self.session.request_challenge()
            await self._flush()
        while True:
            if self.session.state is DState.READY and self.session.challenge is not None:
                self._used_challenge = True
                return ChallengeReceived(vehicle_id=self.session.challenge_vehicle_id, ours=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimedOut("the vehicle sent no challenge: is it a key-server of a compatible version?")
            try:
                ev = await self._next((ChallengeReceived,), min(remaining, timeout / 2 if not asked else remaining))
            except TimeoutError:
                if not asked and self.session.state is DState.WAIT_CHALLENGE:
                    asked = True
                    self.session.request_challenge()
                    await self._flush()
                continue
            if isinstance(ev, ChallengeReceived) and not ev.ours:
                raise _WrongVehicle(ev.vehicle_id)

    async def close(self) -> None:
        """Disconnect (connect, act, disconnect: never hold the vehicle's only connection slot)."""
        with contextlib.suppress(LocalProtocolError):
            self.session.close()
        with contextlib.suppress(Exception):
            await self.conn.disconnect()

    # ------------------------------------------------------------------ requests

    async def _await_answer(self, want: tuple[type[Event], ...], timeout: float, sent: bool) -> Event:
        try:
            ev = await self._next(want, timeout)
        except TimeoutError:
            if sent:
                raise OutcomeUnknown("the command was sent but no answer came in time: the vehicle may have "
                                     "acted; check with `key-client status` before trying again") from None
            raise TimedOut("no answer from the vehicle") from None
        except LinkLost as exc:
            if sent:
                raise OutcomeUnknown(f"{exc} after the command was sent: the vehicle may have acted; check with "
                                     "`key-client status` before trying again") from exc
            raise TimedOut(str(exc)) from exc
        self.unanswered = False
        return ev

    async def _send_request(self, queue: Callable[[], None]) -> bool:
        """Queue a request and write it; returns whether it may have reached the vehicle."""
        queue()
        return await self._flush()

    def _interrupted(self, what: str) -> OutcomeUnknown:
        return OutcomeUnknown(f"interrupted after the {what} was sent, before its answer came: the vehicle may "
                              "have acted; check with `key-client status` before trying again")

    async def command(self, cmd: Command, args: bytes = b"", *, timeout: float = ANSWER_TIMEOUT) -> CommandResult:
        """Run a fast-path command; retries once with a fresh challenge if the vehicle says it expired.

        Cancelled (Ctrl-C) once an acting command was written: OutcomeUnknown instead of CancelledError."""
        try:
            return await self._command(cmd, args, timeout)
        except asyncio.CancelledError:
            if self.unanswered and cmd in MAY_ACT:
                raise self._interrupted(f"{cmd.label} command") from None
            raise

    async def _command(self, cmd: Command, args: bytes, timeout: float) -> CommandResult:
        for attempt in range(2):
            await self.wait_challenge()
            sent = await self._send_request(lambda: self.session.send_command(cmd, args))
            try:
                ev = await self._await_answer((CommandResult,), timeout, sent)
            except RadioError as exc:
                raise OutcomeUnknown(f"the link dropped after the command was sent: {exc}") from exc
            result = _check(ev)
            if result.status is Status.CHALLENGE_INVALID and attempt == 0:
                # Signed proof that the vehicle did nothing: safe to retry; wait_challenge asks for a fresh one.
                continue
            if result.status is not Status.OK:
                raise VehicleRefused(result.status, authenticated=True, retry_after=_retry_after(result))
            return result
        raise AssertionError("unreachable")

    async def open_secure(self, *, timeout: float = ANSWER_TIMEOUT) -> None:
        """Open the confidential session (ephemeral ECDH) for owner commands."""
        await self.wait_challenge()
        sent = await self._send_request(self.session.open_session)
        ev = await self._await_answer((SessionReady, CommandResult), timeout, sent)
        if isinstance(ev, CommandResult):
            raise VehicleRefused(ev.status, authenticated=True)
        if isinstance(ev, VehicleError):
            raise VehicleRefused(ev.status, authenticated=False)
        self.session_open = True

    async def probe(self, share: bytes | None = None, *, timeout: float = ANSWER_TIMEOUT) -> None:
        """On a vehicle not recognised by its token: open_secure, or with `share` present it (share_answer);
        _WrongVehicle if the answer does not verify with the pinned key (another dkey vehicle)."""
        self._probe_from = self.session.ignored_forgeries
        try:
            if share is not None:
                self.share_answer = await self.present_share(share, timeout=timeout)
            else:
                await self.open_secure(timeout=timeout)
        finally:
            self._probe_from = None
        self.probed = True

    async def secure(self, cmd: Command, args: bytes = b"", *, timeout: float = ANSWER_TIMEOUT,
                     accept: frozenset[Status] = frozenset({Status.OK})) -> CommandResult:
        """Run a command inside the confidential session (cancelled once an acting one was written: OutcomeUnknown).

        A status outside `accept` raises VehicleRefused; one inside it is returned with its data.
        """
        try:
            sent = await self._send_request(lambda: self.session.send_secure(cmd, args))
            result = _check(await self._await_answer((CommandResult,), timeout, sent))
        except asyncio.CancelledError:
            if self.unanswered and cmd in MAY_ACT:
                raise self._interrupted(f"{cmd.label} command") from None
            raise
        if result.status not in accept:
            raise VehicleRefused(result.status, authenticated=True, retry_after=_retry_after(result))
        return result

    async def present_share(self, certificate: bytes, *, timeout: float = ANSWER_TIMEOUT) -> ShareAnswered:
        """SHARE_PRESENT after the challenge arrived and before any command (PROTOCOL.md §12.3); the signed answer.

        No command was sent, so a missing answer is TimedOut (nothing acted; the vehicle may have enrolled the key,
        which the next presentation learns as NO_CHANGE).
        """
        await self.wait_challenge()
        try:
            await self._send_request(lambda: self.session.present_share(certificate))
            ev = await self._next((ShareAnswered,), timeout)
        except (TimeoutError, LinkLost) as exc:
            raise TimedOut("the vehicle did not answer this device's share in time; nothing was sent after it: "
                           "try again") from exc
        except LocalProtocolError as exc:
            raise ProtocolViolation(f"the imported share cannot be presented: {exc}") from exc
        self.unanswered = False
        if isinstance(ev, VehicleError):
            raise VehicleRefused(ev.status, authenticated=False)
        assert isinstance(ev, ShareAnswered)
        return ev

    async def send_revocations(self, list_bytes: bytes, *,
                               timeout: float = ANSWER_TIMEOUT) -> RevocationsAnswered:
        """REVOCATIONS after an OK answer (or inside an open session): the vehicle's signed verdict."""
        try:
            await self._send_request(lambda: self.session.send_revocations(list_bytes))
            ev = await self._next((RevocationsAnswered,), timeout)
        except (TimeoutError, LinkLost) as exc:
            raise TimedOut("the vehicle did not answer the revocation list in time") from exc
        except LocalProtocolError as exc:
            raise ProtocolViolation(f"the revocation list cannot be sent: {exc}") from exc
        self.unanswered = False
        if isinstance(ev, VehicleError):
            raise VehicleRefused(ev.status, authenticated=False)
        assert isinstance(ev, RevocationsAnswered)
        return ev

    async def next_change(self, timeout: float | None = None) -> StatusReport:
        """The next WATCH push once `secure(Command.WATCH)` was answered OK; LinkLost when the link drops."""
        ev = await self._next((StateChanged,), timeout)
        if isinstance(ev, VehicleError):
            raise VehicleRefused(ev.status, authenticated=False)
        assert isinstance(ev, StateChanged)
        return ev.report

    async def pair(self, code: str, slot: int, *, timeout: float = ANSWER_TIMEOUT) -> Paired:
        """Run pairing with a one-time code; returns what to pin."""
        await self.wait_challenge()
        if self.session.challenge_vehicle_id is None:
            # A vehicle names itself in its challenges only while a pairing code is pending (PROTOCOL.md §3.11).
            raise VehicleRefused(Status.PAIRING_REFUSED, authenticated=False,
                                 message="this vehicle has no pairing code pending: the code is for another "
                                         "vehicle, or it expired")
        try:
            await self._send_request(lambda: self.session.start_pairing(code, slot))
            ev = await self._next((Paired,), timeout)
        except TimeoutError:
            # PAIR_CONFIRM may have reached the vehicle and enrolled the key: not a safe "nothing happened".
            raise OutcomeUnknown("pairing did not finish in time; the vehicle may have enrolled this key: check "
                                 "`key-server keys` (and revoke the half-paired key) before pairing again") from None
        except asyncio.CancelledError:
            if self.unanswered:
                raise OutcomeUnknown("interrupted during pairing: the vehicle may have enrolled this key: check "
                                     "`key-server keys` (and revoke the half-paired key) before pairing again"
                                     ) from None
            raise
        except ProtocolViolation as exc:
            raise VehicleRefused(Status.PAIRING_REFUSED, authenticated=False,
                                 message="pairing failed: wrong code, or this is not the vehicle that showed it"
                                 ) from exc
        self.unanswered = False
        if isinstance(ev, VehicleError):
            raise VehicleRefused(ev.status if ev.status is not Status.MALFORMED else Status.PAIRING_REFUSED,
                                 authenticated=False)
        assert isinstance(ev, Paired)
        return ev


def _retry_after(result: CommandResult) -> int | None:
    """The seconds a signed BUSY names (PROTOCOL.md §5.4), or None (another status, or a vehicle that does not say)."""
    if result.status is not Status.BUSY or not result.data:
        return None
    try:
        return RetryAfter.decode(result.data).seconds
    except DecodeError:
        return None


def _check(ev: Event) -> CommandResult:
    if isinstance(ev, VehicleError):
        raise VehicleRefused(ev.status, authenticated=False)
    assert isinstance(ev, CommandResult)
    return ev


class _WrongVehicle(ClientError):
    """The connected vehicle is not the one we hold a key for (`vehicle_id`: the id it named, if it named one)."""

    def __init__(self, vehicle_id: bytes | None) -> None:
        super().__init__(f"vehicle {vehicle_id.hex()} is not the one we want" if vehicle_id is not None
                         else "this vehicle's answer does not verify with the pinned key: not the one we want")
        self.vehicle_id = vehicle_id


async def open_link(central: Central, adv: Advertisement, device: KeyPair, target: Target,
                    connect_timeout: float, *, probe: bool = False) -> VehicleLink:
    """Connect to one advertiser, subscribe and wait for its challenge, all within `connect_timeout` s; raises
    _WrongVehicle if it is not the target. One attempt: retrying is connect_vehicle's job.

    With `probe` (an advertiser not recognised by its token), the confidential session is opened too, inside the
    same time limit: a vehicle whose SESSION_ACCEPT does not verify with the pinned key is not ours."""
    async with asyncio.timeout(connect_timeout):
        conn = await central.connect(adv, timeout=connect_timeout)
        session = DeviceSession(device, vehicle_public_key=target.vehicle_public_key,
                                chunk_size=max(20, min(conn.max_write_size, 514)))
        link = VehicleLink(conn, session, adv)
        try:
            await conn.subscribe(link._on_notify)
            ch = await link.wait_challenge(min(CHALLENGE_TIMEOUT, connect_timeout))
            _check_named(ch, target)
            if probe:
                await link.probe(target.share)
        except BaseException:
            await link.close()
            raise
    return link


async def find_vehicles(central: Central, scan_time: float, *, clock: Clock | None = None,
                        on_progress: Callable[[str], None] | None = None,
                        until: Callable[[Advertisement], bool] | None = None,
                        resolve_wait: float = RESOLVE_WAIT) -> list[Advertisement]:
    """Advertisers of the key service, strongest first, scanning for at most `scan_time` s in total.

    With `until` (our vehicle's token, Target.recognises), a scan stops at the first advertisement it accepts;
    one that sees only others keeps listening up to `resolve_wait` s and then returns them (the caller's fallback).
    A scan that cannot run (RadioError) is tried again within the same `scan_time`; VehicleNotFound when the
    time is up with nothing seen, RadioError if no scan could run at all (the radio is unavailable)."""
    clock = clock or LoopClock()
    say = on_progress or (lambda _msg: None)
    deadline = clock.now() + scan_time
    last_error: RadioError | None = None
    failures = 0
    scanned = False
    say(f"scanning for vehicles ({scan_time:g} s)")
    while True:
        # A scan for our token returns after `resolve_wait` s even when it heard nothing at all; the next one
        # continues the same search (said once: it is not a retry).
        window = max(0.0, deadline - clock.now())
        try:
            found = await (central.scan(min(window, resolve_wait), until=until) if until is not None
                           else central.scan(window))
        except RadioError as exc:
            # Not a fast spin: a scan that fails because bluetoothd is away has already waited for it.
            last_error = exc
            failures += 1
            log.info("scan failed: %s", exc)
            await clock.sleep(max(0.0, min(SCAN_RETRY_PAUSE * failures, deadline - clock.now())))
        else:
            scanned = True
            if found:
                return found
        if clock.now() >= deadline:
            break
    if not scanned and last_error is not None:
        # No scan could run: the radio is unavailable (exit code 1), and its own words (e.g. "bluetoothd is not
        # running: start it") say what to fix; "no vehicle found" would send the user looking for the vehicle.
        raise RadioError(f"no scan could run in {scan_time:g} s ({failures} tries): {last_error}") from last_error
    raise VehicleNotFound(f"no vehicle found in {scan_time:g} s: is key-server running and in range?")


async def connect_vehicle(
    central: Central,
    device: KeyPair,
    target: Target,
    *,
    scan_time: float = 10.0,
    attempts: int = CONNECT_ATTEMPTS,
    connect_window: float = CONNECT_WINDOW,
    prefer_address: str | None = None,
    candidates: list[Advertisement] | None = None,
    on_progress: Callable[[str], None] | None = None,
    clock: Clock | None = None,
) -> VehicleLink:
    """Find (find_vehicles, unless `candidates` are given) and connect to our vehicle, within the retry budget.

    At most `attempts` failed connection attempts, all within `connect_window` s of the first, with a short
    pause and a new scan between them; a vehicle that turns out to be another one (the id in its challenge) is
    dropped and does not count. The vehicle is recognised on air by its advertising token (Target.recognises,
    PROTOCOL.md §13) and proven by every signed answer (the pinned key), never by its address; `prefer_address`
    only orders the candidates. When no advertiser carries our token (the secret was rotated, or this keychain has
    none yet), the others are tried strongest first with SESSION_OPEN: one whose answer does not verify is not
    ours (dropped, not counted), and the link returned has its confidential session open (link.session_open)."""
    clock = clock or LoopClock()
    say = on_progress or (lambda _msg: None)
    until = target.recognises if target.ad_secret is not None else None
    found = list(candidates) if candidates is not None else await find_vehicles(
        central, scan_time, clock=clock, on_progress=say, until=until)
    found, probe = _ours_first(found, target)
    if prefer_address:
        found.sort(key=lambda a: a.address != prefer_address)
    deadline = clock.now() + connect_window
    allowed = {a.address for a in candidates} if candidates is not None else None
    wrong: set[str] = set()
    failed = 0
    last_error: Exception | None = None
    while found and failed < attempts and clock.now() < deadline:
        adv = found[0]
        say(f"connecting to {adv.name or adv.address} (RSSI {adv.rssi} dBm)"
            + (": not recognised by its token, trying it" if probe else ""))
        try:
            return await open_link(central, adv, device, target, min(ATTEMPT_TIMEOUT, deadline - clock.now()),
                                   probe=probe)
        except _WrongVehicle:
            wrong.add(adv.address)
            found = [a for a in found if a.address not in wrong]
            continue
        except (RadioError, TimedOut, TimeoutError) as exc:  # transient: the next attempt may get through
            failed += 1
            last_error = exc
            log.info("connect to %s failed: %s", adv.address, exc)
        if failed >= attempts:
            break
        await clock.sleep(max(0.0, min(RETRY_PAUSE * failed, deadline - clock.now())))
        if clock.now() >= deadline:
            break
        # Scan again before the next attempt: it refreshes the radio's view of the vehicle (a new BLE device
        # handle; after a bluetoothd restart the scan waits for it), within what is left of the window.
        window = max(0.0, min(scan_time, deadline - clock.now()))
        say(f"scanning for vehicles ({window:.3g} s), attempt {failed + 1} of {attempts}")
        try:
            fresh = await (central.scan(min(window, RESOLVE_WAIT), until=until) if until is not None
                           else central.scan(window))
        except RadioError as exc:
            last_error = exc
            continue  # keep the old candidates: the next attempt tells
        fresh = [a for a in fresh if a.address not in wrong and (allowed is None or a.address in allowed)]
        if fresh:
            fresh, probe = _ours_first(fresh, target)
            found = sorted(fresh, key=lambda a: a.address != prefer_address) if prefer_address else fresh
        if clock.now() >= deadline:
            break
    if not found:
        raise VehicleNotFound("vehicles were found, but none is the one this key belongs to")
    raise ConnectFailed(f"could not connect to the vehicle ({failed} attempts within {connect_window:g} s): "
                        f"{last_error or 'out of time'}")


def _check_named(ch: ChallengeReceived, target: Target) -> None:
    """_WrongVehicle if the challenge names a vehicle other than the target (PROTOCOL.md §3.11).

    A challenge names its vehicle only while a pairing code is pending: one that names another is not ours; one
    that names none is checked by the pinned key's signatures. Pairing by a QR code (no pinned key yet) needs the
    named id itself.
    """
    wanted = target.vehicle_id
    if wanted is not None and ch.vehicle_id != wanted and (
            ch.vehicle_id is not None or target.vehicle_public_key is None):
        raise _WrongVehicle(ch.vehicle_id)


def _ours_first(found: list[Advertisement], target: Target) -> tuple[list[Advertisement], bool]:
    """The advertisers carrying our token (strongest first) and False; if none does, all of them and True (probe).

    Only for a pinned vehicle: a device pairing has no secret yet and relies on the vehicle id it is shown.
    """
    if target.vehicle_public_key is None:
        return found, False
    ours = [a for a in found if target.recognises(a)]
    return (ours, False) if ours else (found, True)


__all__ = ["ATTEMPT_TIMEOUT", "CONNECT_ATTEMPTS", "CONNECT_WINDOW", "WINDOW_PER_ATTEMPT", "Clock", "LoopClock",
           "Target", "VehicleLink", "connect_vehicle", "find_vehicles", "open_link"]
