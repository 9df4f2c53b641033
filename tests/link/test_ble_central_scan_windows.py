"""BleakCentral behaviour found by the real-stack tier (tests/ble_vm): scans restart in fresh windows (BlueZ can stay
blind for a whole discovery session); a vehicle connected through another adapter is busy, not shared."""

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


async def test_a_vehicle_connected_through_another_adapter_is_busy_not_shared(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """bleak-retry-connector would swap in hci1's link for a central on hci2: the central reports busy instead."""
    import bleak_retry_connector

    from dkey_link.contract import NotFound
    from key_client.radio import ble
    from key_client.radio.ble import advertisement_from

    from .fakes_ble import FakeConnector

    fake = FakeConnector()
    monkeypatch.setattr(bleak_retry_connector, "establish_connection", fake)
    monkeypatch.setattr(bleak_retry_connector, "BleakClientWithServiceCache", FakeClient)

    async def elsewhere(device, adapter):  # type: ignore[no-untyped-def]
        return ["/org/bluez/hci1/dev_AA_BB_CC_DD_EE_01"] if adapter == "hci2" else []

    monkeypatch.setattr(ble, "_connections_elsewhere", elsewhere)
    adv = advertisement_from(ble_device(), adv_data())
    with pytest.raises(NotFound, match="busy: already connected through /org/bluez/hci1/"):
        await BleakCentral(adapter="hci2").connect(adv, timeout=2.0)
    assert fake.clients == []
    conn = await BleakCentral(adapter="hci1").connect(adv, timeout=2.0)  # its own adapter's link: fine
    await conn.disconnect()


async def test_other_connect_failures_are_not_retried_here() -> None:
    from bleak_retry_connector import BleakConnectionError

    from dkey_link.contract import RadioError
    from key_client.radio.ble import advertisement_from

    from .fakes_ble import FakeConnector

    connector = FakeConnector(error=BleakConnectionError("car - AA: le-connection-abort-by-local"))
    c = BleakCentral(scanner_factory=FakeScanner, connector=connector, client_class=FakeClient)
    with pytest.raises(RadioError):
        await c.connect(advertisement_from(ble_device(), adv_data()), timeout=2.0)
    assert len(connector.calls) == 1
