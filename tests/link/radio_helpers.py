"""Helpers shared by the radio tests: a recording handler, polling, and a kit that builds either backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dkey_link.contract import Advertisement, Central, Connection, Peripheral
from dkey_link.mock import MockAir
from dkey_link.sim import SimCentral, SimPeripheral


class Recorder:
    """A PeripheralHandler that records every event; set `fail` to make on_write raise it."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.mtus: dict[str, int] = {}
        self.fail: Exception | None = None
        self.on_subscribe_hook: Callable[[str | None], None] | None = None

    def on_connect(self, link: str, mtu: int) -> None:
        self.events.append(("connect", link, mtu))
        self.mtus[link] = mtu

    def on_mtu(self, link: str, mtu: int) -> None:
        self.events.append(("mtu", link, mtu))
        self.mtus[link] = mtu

    def on_subscribe(self, link: str | None) -> None:
        self.events.append(("subscribe", link))
        if self.on_subscribe_hook is not None:
            self.on_subscribe_hook(link)

    def on_write(self, link: str, data: bytes) -> None:
        self.events.append(("write", link, data))
        if self.fail is not None:
            raise self.fail

    def on_disconnect(self, link: str) -> None:
        self.events.append(("disconnect", link))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        """The recorded events of one kind, in order."""
        return [e for e in self.events if e[0] == kind]

    def writes(self, link: str | None = None) -> list[bytes]:
        return [e[2] for e in self.of("write") if link is None or e[1] == link]

    @property
    def links(self) -> list[str]:
        return [e[1] for e in self.of("connect")]


async def wait_until(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class RadioKit:
    """Builds peripherals and centrals of one backend and tears them all down after the test."""

    def __init__(self, backend: str, air_dir: Path) -> None:
        self.backend = backend
        self.air = MockAir()
        self.air_dir = air_dir
        self._peripherals: list[Peripheral] = []
        self._centrals: list[Central] = []

    async def peripheral(
        self, name: str = "car", *, rssi: int = -50, mtu: int = 517, start: bool = True
    ) -> tuple[Peripheral, Recorder]:
        """A peripheral with a Recorder handler, started unless start=False."""
        p: Peripheral
        if self.backend == "mock":
            p = self.air.peripheral(name, rssi=rssi, mtu=mtu)
        else:
            p = SimPeripheral(name, air_dir=self.air_dir, rssi=rssi, mtu=mtu)
        self._peripherals.append(p)
        rec = Recorder()
        if start:
            await p.start(rec)
        return p, rec

    def central(self, *, mtu: int = 247, name: str = "central") -> Central:
        c: Central
        if self.backend == "mock":
            c = self.air.central(mtu=mtu, name=name)
        else:
            c = SimCentral(air_dir=self.air_dir, mtu=mtu, name=name)
        self._centrals.append(c)
        return c

    async def connect(self, central: Central, name: str = "car") -> Connection:
        """Scan for `name` and connect to it."""
        return await central.connect(await self.find(central, name), timeout=3.0)

    async def find(self, central: Central, name: str = "car") -> Advertisement:
        ads = await central.scan(3.0)
        return next(a for a in ads if a.name == name)

    async def close(self) -> None:
        for c in self._centrals:
            await c.aclose()
        for p in self._peripherals:
            await p.stop()
