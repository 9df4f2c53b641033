"""In-memory radio for tests: a MockAir joins MockPeripherals and MockCentrals with GATT semantics and faults.

GATT semantics kept (so code that works here has a chance on bless/bleak):
- the ATT MTU of a link is min(central mtu, peripheral mtu, 517); the peripheral learns it in on_connect;
  a write above MTU-3 is refused on the central side with INVALID_ATTRIBUTE_VALUE_LENGTH; a notification above
  MTU-3 is silently truncated, as BlueZ does for bless's update_value;
- a write with response awaits the handler's on_write and carries an AttError it raises back to the central;
  a write without response swallows it;
- everything on one link travels in order in each direction (ATT runs on one L2CAP channel), whatever the
  latency and jitter; notifications reach only subscribed links;
- a disconnect from either side, or the air dropping the link, tears the link down at once on both sides:
  on_disconnect runs, in-flight messages are lost, waiting writes and later writes raise LinkLost.

Fault injection, all public attributes of MockAir that tests may change at any time:
- latency_up / latency_down: seconds each message takes central->peripheral / peripheral->central;
- jitter: up to this many extra seconds per message (uniform, from the seeded rng; never reorders a link);
- notify_loss / write_loss: probability that a notification / a write WITHOUT response is lost
  (writes with response and subscriptions are acknowledged in GATT, so they are never dropped);
- rng: the random.Random(seed) behind jitter and loss, so a failing run replays exactly;
- disconnect_after_writes(n) / disconnect_after_notifications(n): drop the link mid-exchange;
- drop(link): the radio link is lost now (out of range);
- MockPeripheral.set_rssi(v) / set_rssi_trace([...]): what scans report, for proximity tests.

Scanning returns as soon as a matching peripheral advertises (no need to wait out the timeout in memory).
Nothing here touches a socket or a thread; every callback runs in the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterable

from .contract import (
    DEFAULT_ATT_MTU,
    MAX_ATT_MTU,
    SERVICE_UUID,
    Advertisement,
    AttError,
    AttErrorCode,
    LinkLost,
    NotFound,
    PeripheralHandler,
    RadioError,
    call_handler,
)

__all__ = ["MAX_ATT_MTU", "MockAir", "MockCentral", "MockConnection", "MockPeripheral"]

log = logging.getLogger(__name__)



def _answer(fut: asyncio.Future[int], code: int) -> None:
    if not fut.done():  # the link may have dropped, or the writer given up, meanwhile
        fut.set_result(code)


class _Pipe:
    """One direction of one link: runs delivery callbacks in order, each after the air's delay."""

    def __init__(self, delay: Callable[[], float]) -> None:
        self._delay = delay
        self._queue: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def send(self, deliver: Callable[[], None]) -> None:
        """Queue `deliver` to run after the delay, never before anything queued earlier."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self._delay()
        if self._queue:
            due = max(due, self._queue[-1][0])  # jitter must not let a later message overtake
        self._queue.append((due, deliver))
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        while self._queue and not self._closed and self._queue[0][0] <= loop.time():
            _, deliver = self._queue.popleft()
            deliver()  # may close this pipe (a fault, a disconnect): the loop condition re-checks
        if self._queue and not self._closed:
            self._timer = loop.call_at(self._queue[0][0], self._fire)

    def close(self) -> None:
        """Lose everything in flight; later sends vanish."""
        self._closed = True
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Link:
    """One central<->peripheral connection as the air sees it."""

    def __init__(self, air: MockAir, link_id: str, peripheral: MockPeripheral, mtu: int) -> None:
        self.id = link_id
        self.peripheral = peripheral
        self.mtu = mtu
        self.alive = True
        self.subscribed = False
        self.on_notify: Callable[[bytes], None] | None = None
        self.pending: set[asyncio.Future[int]] = set()
        self.up = _Pipe(lambda: air._delay(air.latency_up))
        self.down = _Pipe(lambda: air._delay(air.latency_down))


class MockAir:
    """The shared medium: where mock peripherals advertise, centrals scan, and faults are injected."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency_up: float = 0.0,
        latency_down: float = 0.0,
        jitter: float = 0.0,
        notify_loss: float = 0.0,
        write_loss: float = 0.0,
    ) -> None:
        self.latency_up = latency_up
        self.latency_down = latency_down
        self.jitter = jitter
        self.notify_loss = notify_loss
        self.write_loss = write_loss
        self.rng = random.Random(seed)  # noqa: S311 - fault injection, not security
        self._peripherals: list[MockPeripheral] = []
        self._links: dict[str, _Link] = {}
        self._link_ids = itertools.count(1)
        self._waiters: set[asyncio.Future[None]] = set()
        # [remaining count, deliver the write before dropping?, only this link or any]
        self._write_fault: tuple[int, bool, str | None] | None = None
        self._notify_fault: tuple[int, str | None] | None = None

    def peripheral(
        self,
        name: str,
        *,
        rssi: int = -50,
        broadcast_notify: bool = False,
        advertise_while_connected: bool = True,
        mtu: int = MAX_ATT_MTU,
        rssi_trace: Iterable[int] | None = None,
    ) -> MockPeripheral:
        """A peripheral on this air (advertising once started)."""
        p = MockPeripheral(
            self,
            name,
            rssi=rssi,
            broadcast_notify=broadcast_notify,
            advertise_while_connected=advertise_while_connected,
            mtu=mtu,
        )
        if rssi_trace is not None:
            p.set_rssi_trace(rssi_trace)
        self._peripherals.append(p)
        return p

    def central(self, *, mtu: int = 247, name: str = "central") -> MockCentral:
        """A central on this air that asks for ATT MTU `mtu` when it connects."""
        return MockCentral(self, mtu=mtu, name=name)

    # ------------------------------------------------------------ fault injection

    def disconnect_after_writes(self, n: int, *, deliver: bool = True, link: str | None = None) -> None:
        """Drop the link carrying the n-th write from now (on `link`, or on any link).

        deliver=True: the peripheral handles that write, then the link drops before the response reaches the
        central (the "may have succeeded" case). deliver=False: the write is lost in flight.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        self._write_fault = (n, deliver, link)

    def disconnect_after_notifications(self, n: int, *, link: str | None = None) -> None:
        """Drop the link right after the n-th notification from now reaches its central."""
        if n < 1:
            raise ValueError("n must be >= 1")
        self._notify_fault = (n, link)

    def drop(self, link: str) -> None:
        """The radio link is lost now: both sides see a disconnect; unknown links are ignored."""
        found = self._links.get(link)
        if found is not None:
            log.debug("mock air: dropping link %s", link)
            self._teardown(found)

    @property
    def links(self) -> tuple[str, ...]:
        """Ids of the links up right now."""
        return tuple(self._links)

    # ------------------------------------------------------------ internals shared by both sides

    def _delay(self, base: float) -> float:
        return base + (self.rng.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0)

    def _lose(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    def _changed(self) -> None:
        """Advertising state changed: wake scanners and connectors waiting for it."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait up to `timeout` s for `predicate` (re-checked on each advertising change)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                self._waiters.discard(waiter)
                waiter.cancel()
        return True

    def _connect(self, central: MockCentral, peripheral: MockPeripheral) -> _Link:
        mtu = max(DEFAULT_ATT_MTU, min(central.mtu, peripheral.mtu, MAX_ATT_MTU))
        link = _Link(self, f"{central.name}#{next(self._link_ids)}", peripheral, mtu)
        self._links[link.id] = link
        peripheral._links[link.id] = link
        peripheral._call("on_connect", link.id, mtu)
        self._changed()
        return link

    def _teardown(self, link: _Link) -> None:
        if not link.alive:
            return
        link.alive = False
        link.up.close()
        link.down.close()
        for fut in link.pending:
            if not fut.done():
                fut.set_exception(LinkLost(f"link {link.id} dropped"))
        link.pending.clear()
        self._links.pop(link.id, None)
        link.peripheral._links.pop(link.id, None)
        link.peripheral._call("on_disconnect", link.id)
        self._changed()  # a peripheral that stops advertising while connected advertises again

    def _write_arrived(self, link: _Link) -> bool | None:
        """Count a write reaching the peripheral; None = no fault, else deliver-before-drop."""
        if self._write_fault is None:
            return None
        n, deliver, only = self._write_fault
        if only is not None and only != link.id:
            return None
        if n > 1:
            self._write_fault = (n - 1, deliver, only)
            return None
        self._write_fault = None
        return deliver

    def _notification_arrived(self, link: _Link) -> bool:
        if self._notify_fault is None:
            return False
        n, only = self._notify_fault
        if only is not None and only != link.id:
            return False
        if n > 1:
            self._notify_fault = (n - 1, only)
            return False
        self._notify_fault = None
        return True


class MockPeripheral:
    """A vehicle-side radio on a MockAir; implements base.Peripheral."""

    def __init__(
        self,
        air: MockAir,
        name: str,
        *,
        rssi: int = -50,
        broadcast_notify: bool = False,
        advertise_while_connected: bool = True,
        mtu: int = MAX_ATT_MTU,
    ) -> None:
        if not DEFAULT_ATT_MTU <= mtu <= MAX_ATT_MTU:
            raise ValueError(f"mtu must be in {DEFAULT_ATT_MTU}..{MAX_ATT_MTU}")
        self._air = air
        self.name = name
        self.mtu = mtu
        self.broadcast_notify = broadcast_notify
        # bless notifies every subscriber and cannot target one central
        self.notify_targets_one_link = not broadcast_notify
        self.advertise_while_connected = advertise_while_connected
        self.service_uuids: tuple[str, ...] = (SERVICE_UUID,)
        self.address = f"mock:{len(air._peripherals) + 1}:{name}"
        self._rssi = rssi
        self._rssi_trace: collections.deque[int] = collections.deque()
        self._handler: PeripheralHandler | None = None
        self._links: dict[str, _Link] = {}
        self.token: bytes | None = None  # the service data advertised under SERVICE_UUID (advertise_token)
        self.tokens: list[bytes] = []  # every token advertised, in order (tests check the rotations)

    @property
    def advertising(self) -> bool:
        """True while scans can see it and centrals can connect."""
        return self._handler is not None and (self.advertise_while_connected or not self._links)

    @property
    def links(self) -> tuple[str, ...]:
        """Ids of the centrals connected right now."""
        return tuple(self._links)

    @property
    def rssi(self) -> int:
        """The RSSI the next scan would report if no trace is pending."""
        return self._rssi

    def set_rssi(self, value: int) -> None:
        """Report `value` from now on (drops any pending trace)."""
        self._rssi_trace.clear()
        self._rssi = value

    def set_rssi_trace(self, values: Iterable[int]) -> None:
        """Each scan that sees this peripheral consumes the next value; the last one then sticks."""
        self._rssi_trace = collections.deque(values)

    def _peek(self) -> Advertisement:
        """What a scan would see now, without taking a value from the RSSI trace."""
        return Advertisement(address=self.address, name=self.name, service_uuids=self.service_uuids, rssi=self._rssi,
                             service_data=self.token, handle=self)

    def _observe(self) -> Advertisement:
        if self._rssi_trace:
            self._rssi = self._rssi_trace.popleft()
        return Advertisement(
            address=self.address,
            name=self.name,
            service_uuids=self.service_uuids,
            rssi=self._rssi,
            service_data=self.token,
            handle=self,
        )

    def _call(self, method: str, *args: object) -> None:
        """Run a handler callback; a handler bug must not take the radio down with it."""
        call_handler(log, f"mock peripheral {self.name}", self._handler, method, *args)

    async def start(self, handler: PeripheralHandler) -> None:
        """Start advertising and deliver events to `handler`."""
        if self._handler is not None:
            raise RadioError(f"mock peripheral {self.name} already started")
        self._handler = handler
        self._air._changed()

    async def advertise_token(self, token: bytes) -> None:
        """Advertise `token` as our service data from now on (scans see it at once)."""
        self.token = bytes(token)
        self.tokens.append(self.token)
        self._air._changed()

    async def notify(self, data: bytes, link: str | None = None) -> None:
        """Notify `link` (or, if None or broadcast_notify, every subscriber); unknown or gone links are ignored."""
        if link is None or self.broadcast_notify:
            targets = list(self._links.values())
        else:
            one = self._links.get(link)
            targets = [one] if one is not None else []
        data = bytes(data)
        for target in targets:
            if not target.subscribed:
                continue
            if self._air._lose(self._air.notify_loss):
                log.debug("mock air: lost a notification to %s", target.id)
                continue
            target.down.send(self._notification(target, data[: target.mtu - 3]))

    def _notification(self, link: _Link, chunk: bytes) -> Callable[[], None]:
        def deliver() -> None:
            if link.on_notify is not None:
                try:
                    link.on_notify(chunk)
                except Exception:
                    log.exception("mock central: on_notify raised on %s", link.id)
            if self._air._notification_arrived(link):
                self._air._teardown(link)

        return deliver

    async def disconnect(self, link: str) -> None:
        """Drop one link; unknown links are ignored."""
        found = self._links.get(link)
        if found is not None:
            self._air._teardown(found)

    async def stop(self) -> None:
        """Stop advertising and drop every link; idempotent."""
        for link in list(self._links.values()):
            self._air._teardown(link)
        self._handler = None
        self._air._changed()

    # ------------------------------------------------------------ what the central side triggers

    def _deliver_write(self, link: _Link, data: bytes, answer: asyncio.Future[int] | None) -> None:
        """A write reached the peripheral: run on_write and, for a write request, send the answer back."""
        fault = self._air._write_arrived(link)
        if fault is False:
            log.debug("mock air: write lost on %s, dropping the link", link.id)
            self._air._teardown(link)
            return
        code = 0
        handler = self._handler
        if handler is not None:
            try:
                handler.on_write(link.id, data)
            except AttError as exc:
                code = exc.code
            except Exception:
                log.exception("mock peripheral %s: handler.on_write raised", self.name)
                code = AttErrorCode.UNLIKELY_ERROR
        if fault is True:
            log.debug("mock air: write delivered on %s, dropping the link before the answer", link.id)
            self._air._teardown(link)
            return
        if answer is None:
            if code:
                log.debug("mock peripheral %s: write without response refused with 0x%02x", self.name, code)
            return
        link.down.send(functools.partial(_answer, answer, code))

    def _deliver_subscribe(self, link: _Link, answer: asyncio.Future[int]) -> None:
        # Record the subscription before on_subscribe so a notification sent in reaction reaches this
        # central, as BlueZ does (it stores the CCC value right after calling StartNotify).
        link.subscribed = True
        self._call("on_subscribe", None if self.broadcast_notify else link.id)
        link.down.send(functools.partial(_answer, answer, 0))


class MockConnection:
    """A central's link to a MockPeripheral; implements base.Connection."""

    def __init__(self, air: MockAir, central: MockCentral, link: _Link) -> None:
        self._air = air
        self._central = central
        self._link = link
        self.link = link.id  # the id the peripheral's handler sees, for air.drop() and assertions
        self.mtu = link.mtu
        self.max_write_size = link.mtu - 3

    @property
    def is_connected(self) -> bool:
        """False once the link dropped, from either side."""
        return self._link.alive

    def _alive(self) -> _Link:
        if not self._link.alive:
            raise LinkLost(f"link {self.link} is down")
        return self._link

    async def _request(self, send: Callable[[_Link, asyncio.Future[int]], None]) -> int:
        """Send one acknowledged request up the link and wait for its answer code."""
        link = self._alive()
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        link.pending.add(answer)
        try:
            send(link, answer)
            return await answer
        finally:
            link.pending.discard(answer)

    async def subscribe(self, on_notify: Callable[[bytes], None]) -> None:
        """Enable notifications; `on_notify` is installed before the peripheral learns of it."""
        link = self._alive()
        link.on_notify = on_notify
        peripheral = link.peripheral
        await self._request(lambda ln, fut: ln.up.send(lambda: peripheral._deliver_subscribe(ln, fut)))

    async def write(self, data: bytes, *, response: bool = True) -> None:
        """Write one chunk to RX; raises AttError or LinkLost."""
        link = self._alive()
        if len(data) > self.max_write_size:
            raise AttError(
                AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH,
                f"write of {len(data)} bytes exceeds the link's {self.max_write_size}",
            )
        data = bytes(data)
        peripheral = link.peripheral
        if not response:
            if self._air._lose(self._air.write_loss):
                log.debug("mock air: lost a write without response on %s", link.id)
                return
            link.up.send(lambda: peripheral._deliver_write(link, data, None))
            return
        code = await self._request(lambda ln, fut: ln.up.send(lambda: peripheral._deliver_write(ln, data, fut)))
        if code:
            raise AttError(code)

    async def disconnect(self) -> None:
        """Leave; idempotent."""
        self._air._teardown(self._link)
        self._central._connections.discard(self)


class MockCentral:
    """A device-side radio on a MockAir; implements base.Central."""

    def __init__(self, air: MockAir, *, mtu: int = 247, name: str = "central") -> None:
        if mtu < DEFAULT_ATT_MTU:
            raise ValueError(f"mtu must be >= {DEFAULT_ATT_MTU}")
        self._air = air
        self.mtu = mtu
        self.name = name
        self._connections: set[MockConnection] = set()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RadioError(f"mock central {self.name} is closed")

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: Callable[[Advertisement], bool] | None = None) -> list[Advertisement]:
        """Advertisers of `service_uuid`, strongest first; returns as soon as one advertises (with `until`: one
        it accepts), else at timeout."""
        self._check_open()
        wanted = service_uuid.lower()

        def matching() -> list[MockPeripheral]:
            return [
                p for p in self._air._peripherals if p.advertising and wanted in (u.lower() for u in p.service_uuids)
            ]

        def done() -> bool:
            return any(until(p._peek()) for p in matching()) if until is not None else bool(matching())

        await self._air._wait_until(done, timeout)
        found = [p._observe() for p in matching()]
        return sorted(found, key=lambda adv: adv.rssi, reverse=True)

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> MockConnection:
        """Connect once the peripheral is connectable; NotFound if it is not within `timeout`."""
        self._check_open()
        peripheral = adv.handle
        if not isinstance(peripheral, MockPeripheral) or peripheral._air is not self._air:
            raise NotFound(f"{adv.address} is not on this mock air")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not await self._air._wait_until(lambda: peripheral.advertising, deadline - loop.time()):
                raise NotFound(f"{adv.name or adv.address} not connectable within {timeout} s")
            # A connection costs one radio round trip; the peripheral may stop advertising meanwhile.
            rtt = self._air._delay(self._air.latency_up) + self._air._delay(self._air.latency_down)
            if rtt > 0:
                await asyncio.sleep(rtt)
            self._check_open()
            if peripheral.advertising:
                break
        conn = MockConnection(self._air, self, self._air._connect(self, peripheral))
        self._connections.add(conn)
        return conn

    async def aclose(self) -> None:
        """Disconnect every connection of this central; idempotent."""
        self._closed = True
        for conn in list(self._connections):
            await conn.disconnect()
