"""The session driver: runs a DeviceSession over a radio Connection and turns its events into results.

It owns the timing decisions the sans-IO core leaves open: how long to wait for a challenge, which
failures are safe to retry (anything before the command's first byte is written, and a refusal that
proves the vehicle did nothing), and which are not (a command written but unanswered: OutcomeUnknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dkey_link.contract import Advertisement, AttError, AttErrorCode, Central, Connection, LinkLost, RadioError
from protocol import (
    ChallengeReceived,
    Command,
    CommandResult,
    DeviceSession,
    DState,
    Event,
    FramingError,
    KeyPair,
    KeyProtocolError,
    LocalProtocolError,
    Paired,
    SessionReady,
    Status,
    VehicleError,
)

from .errors import ClientError, ConnectFailed, OutcomeUnknown, ProtocolViolation, Refused, TimedOut, VehicleNotFound

log = logging.getLogger("key_client.driver")
T = TypeVar("T")

# Why these numbers: the vehicle answers a subscription with a challenge in ~50 ms on BlueZ (ble-vm
# measurements), so 3 s means "it is not going to"; a command's answer includes the actuator's pulse
# (up to ~1 s for a strike), so 8 s leaves margin without making a person wait forever.
CHALLENGE_TIMEOUT = 3.0
ANSWER_TIMEOUT = 8.0
CONNECT_ATTEMPTS = 3  # whole scan+connect+subscribe cycles on transient BlueZ errors
BUSY_RETRY_DELAY = 1.0
LINK_CHECK_INTERVAL = 0.2  # how often a wait for an answer checks that the link is still up


@dataclass(frozen=True, slots=True)
class Target:
    """The vehicle we want: its pinned public key (None while pairing) and optional vehicle id to find."""

    vehicle_public_key: bytes | None
    vehicle_id: bytes | None = None


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
            try:
                await self.conn.write(chunk, response=True)
            except AttError as exc:
                if exc.code == AttErrorCode.APP_BUSY:
                    raise Refused(Status.BUSY, authenticated=False) from exc
                raise TimedOut(f"the vehicle rejected our write (ATT error 0x{exc.code:02x})") from exc
            except RadioError as exc:
                if last:
                    raise OutcomeUnknown(f"the link failed while the command was being delivered: {exc}; the "
                                         "vehicle may have acted: check with `key-client status`") from exc
                raise TimedOut(f"the link failed before the command was delivered: {exc}") from exc
            self.stats["writes"] += 1
            self.stats["bytes_up"] += len(chunk)
        return bool(chunks)

    async def _next(self, want: tuple[type[Event], ...], timeout: float) -> Event:
        """The next event of one of the wanted types; other events are skipped; raises on a violation."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    # Wake up now and then to notice a dropped link instead of waiting out the whole timeout.
                    item = await asyncio.wait_for(self._events.get(), LINK_CHECK_INTERVAL)
                except TimeoutError:
                    if not self.conn.is_connected:
                        raise LinkLost("the link dropped while waiting for the vehicle's answer") from None
                    continue
                if isinstance(item, RadioError):
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
        if self._used_challenge and self.session.state is DState.WAIT_CHALLENGE:
            asked = True
            self.session.request_challenge()
            await self._flush()
        while True:
            if self.session.state is DState.READY and self.session.challenge is not None:
                self._used_challenge = True
                vid = self.session.challenge_vehicle_id or b""
                return ChallengeReceived(vehicle_id=vid, ours=True)
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
            return await self._next(want, timeout)
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

    async def _send_request(self, queue: Callable[[], None]) -> bool:
        """Queue a request and write it; returns whether it may have reached the vehicle."""
        queue()
        return await self._flush()

    async def command(self, cmd: Command, args: bytes = b"", *, timeout: float = ANSWER_TIMEOUT) -> CommandResult:
        """Run a fast-path command; retries once with a fresh challenge if the vehicle says it expired."""
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
                raise Refused(result.status, authenticated=True)
            return result
        raise AssertionError("unreachable")

    async def open_secure(self, *, timeout: float = ANSWER_TIMEOUT) -> None:
        """Open the confidential session (ephemeral ECDH) for owner commands."""
        await self.wait_challenge()
        sent = await self._send_request(self.session.open_session)
        ev = await self._await_answer((SessionReady, CommandResult), timeout, sent)
        if isinstance(ev, CommandResult):
            raise Refused(ev.status, authenticated=True)
        if isinstance(ev, VehicleError):
            raise Refused(ev.status, authenticated=False)

    async def secure(self, cmd: Command, args: bytes = b"", *, timeout: float = ANSWER_TIMEOUT) -> CommandResult:
        """Run a command inside the confidential session."""
        sent = await self._send_request(lambda: self.session.send_secure(cmd, args))
        result = _check(await self._await_answer((CommandResult,), timeout, sent))
        if result.status is not Status.OK:
            raise Refused(result.status, authenticated=True)
        return result

    async def pair(self, code: str, slot: int, *, timeout: float = ANSWER_TIMEOUT) -> Paired:
        """Run pairing with a one-time code; returns what to pin."""
        await self.wait_challenge()
        await self._send_request(lambda: self.session.start_pairing(code, slot))
        try:
            ev = await self._next((Paired,), timeout)
        except TimeoutError:
            # PAIR_CONFIRM may have reached the vehicle and enrolled the key: not a safe "nothing happened".
            raise OutcomeUnknown("pairing did not finish in time; the vehicle may have enrolled this key: check "
                                 "`key-server keys` (and revoke the half-paired key) before pairing again") from None
        except ProtocolViolation as exc:
            raise Refused(Status.PAIRING_REFUSED, authenticated=False,
                          message="pairing failed: wrong code, or this is not the vehicle that showed it") from exc
        if isinstance(ev, VehicleError):
            raise Refused(ev.status if ev.status is not Status.MALFORMED else Status.PAIRING_REFUSED,
                          authenticated=False)
        assert isinstance(ev, Paired)
        return ev


def _check(ev: Event) -> CommandResult:
    if isinstance(ev, VehicleError):
        raise Refused(ev.status, authenticated=False)
    assert isinstance(ev, CommandResult)
    return ev


class _WrongVehicle(ClientError):
    """The connected vehicle is not the one we hold a key for."""

    def __init__(self, vehicle_id: bytes) -> None:
        super().__init__(f"vehicle {vehicle_id.hex()} is not the one we want")
        self.vehicle_id = vehicle_id


async def open_link(central: Central, adv: Advertisement, device: KeyPair, target: Target,
                    connect_timeout: float) -> VehicleLink:
    """Connect to one advertiser, subscribe and wait for its challenge; raises if it is not the target."""
    conn = await central.connect(adv, timeout=connect_timeout)
    session = DeviceSession(device, vehicle_public_key=target.vehicle_public_key,
                            chunk_size=max(20, min(conn.max_write_size, 514)))
    link = VehicleLink(conn, session, adv)
    try:
        await conn.subscribe(link._on_notify)
        ch = await link.wait_challenge()
    except BaseException:
        await link.close()
        raise
    if target.vehicle_id is not None and ch.vehicle_id != target.vehicle_id:
        await link.close()
        raise _WrongVehicle(ch.vehicle_id)
    return link


async def connect_vehicle(
    central: Central,
    device: KeyPair,
    target: Target,
    *,
    scan_time: float = 10.0,
    connect_timeout: float = 10.0,
    attempts: int = CONNECT_ATTEMPTS,
    prefer_address: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> VehicleLink:
    """Scan, connect and subscribe until our vehicle's challenge arrives; retries whole cycles on radio faults.

    The vehicle is recognised by the id in its challenge (checked against the pinned key by every signed
    answer), never by its address; `prefer_address` only orders the candidates. RadioError if no scan could run.
    """
    say = on_progress or (lambda _msg: None)
    last_error: Exception | None = None
    seen_any = False
    scanned = False
    for attempt in range(1, attempts + 1):
        say(f"scanning for vehicles ({scan_time:.0f} s)" + (f", attempt {attempt}" if attempt > 1 else ""))
        try:
            found = await central.scan(scan_time)
        except RadioError as exc:
            # Not a fast spin: a scan that fails because bluetoothd is away has already waited for it.
            last_error = exc
            log.info("scan failed: %s", exc)
            await asyncio.sleep(0.5 * attempt)
            continue
        scanned = True
        if prefer_address:
            found.sort(key=lambda a: a.address != prefer_address)
        seen_any |= bool(found)
        for adv in found:
            say(f"connecting to {adv.name or adv.address} (RSSI {adv.rssi} dBm)")
            try:
                return await open_link(central, adv, device, target, connect_timeout)
            except _WrongVehicle:
                continue
            except (RadioError, TimedOut, TimeoutError) as exc:  # transient: the next cycle retries all of it
                last_error = exc
                log.info("connect to %s failed: %s", adv.address, exc)
        if found and attempt < attempts:
            await asyncio.sleep(0.3 * attempt)  # the vehicle may be busy with another central
    if not scanned and last_error is not None:
        # No scan could run: the radio is unavailable (exit code 1, like `key-client scan`), and its own words
        # (e.g. "bluetoothd is not running: start it") say what to fix; "no vehicle found" would send the user
        # looking for the vehicle instead.
        raise RadioError(f"no scan could run ({attempts} attempts): {last_error}") from last_error
    if not seen_any:
        raise VehicleNotFound(
            f"no vehicle found in {scan_time:g} s: is key-server running and in range?")
    if last_error is None:
        raise VehicleNotFound("vehicles were found, but none is the one this key belongs to")
    raise ConnectFailed(f"could not connect to the vehicle after {attempts} attempts: {last_error}")


async def with_vehicle(central: Central, device: KeyPair, target: Target,
                       action: Callable[[VehicleLink], Awaitable[T]], **kwargs: object) -> T:
    """Connect, run `action`, always disconnect."""
    link = await connect_vehicle(central, device, target, **kwargs)  # type: ignore[arg-type]
    try:
        return await action(link)
    finally:
        await link.close()


__all__ = ["ClientError", "Target", "VehicleLink", "connect_vehicle", "open_link", "with_vehicle"]
