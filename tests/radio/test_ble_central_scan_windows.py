"""BleakCentral.scan restarts its scan in fresh windows (BlueZ can stay blind for a whole discovery session)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from key_client.radio.ble import BleakCentral

from .fakes_ble import FakeClient, FakeConnector, FakeScanner, adv_data, ble_device


@pytest.fixture(autouse=True)
def _reset_fakes() -> Iterator[None]:
    FakeScanner.reset()
    yield
    FakeScanner.reset()


def central(**kwargs: object) -> BleakCentral:
    return BleakCentral(scanner_factory=FakeScanner, connector=FakeConnector(), client_class=FakeClient,
                        **kwargs)  # type: ignore[arg-type]


class BlindFirstScanner(FakeScanner):
    """The first scanner never reports anything (a blind discovery session); later ones replay the script."""

    def _emit(self, device, adv) -> None:  # type: ignore[no-untyped-def]
        if FakeScanner.instances[0] is not self:
            super()._emit(device, adv)


async def test_a_blind_scan_window_is_followed_by_a_fresh_scan_that_finds_the_vehicle() -> None:
    FakeScanner.reset([(0.02, ble_device(), adv_data())])
    c = BleakCentral(scanner_factory=BlindFirstScanner, connector=FakeConnector(), client_class=FakeClient,
                     scan_window=0.2, scan_settle=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    ads = await c.scan(5.0)
    assert len(ads) == 1
    assert len(FakeScanner.instances) == 2 and all(s.stopped for s in FakeScanner.instances)
    assert loop.time() - start < 1.5


async def test_windows_end_at_the_timeout_and_every_scanner_is_stopped() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await central(scan_window=0.1).scan(0.35) == []
    assert 0.3 <= loop.time() - start < 1.5
    assert 3 <= len(FakeScanner.instances) <= 5
    assert all(s.started and s.stopped for s in FakeScanner.instances)


async def test_one_window_when_the_vehicle_answers_at_once() -> None:
    FakeScanner.reset([(0.01, ble_device(), adv_data())])
    assert len(await central(scan_window=0.2, scan_settle=0.3).scan(5.0)) == 1
    assert len(FakeScanner.instances) == 1
