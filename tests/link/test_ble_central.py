"""The bleak central against fakes with bleak's shapes (fakes_ble): scanning, connecting, errors, notifications."""

from __future__ import annotations

import asyncio

import pytest
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak_retry_connector import BleakConnectionError, BleakNotFoundError

from dkey_link.contract import (
    RX_CHAR_UUID,
    SERVICE_UUID,
    TX_CHAR_UUID,
    Advertisement,
    AttError,
    AttErrorCode,
    LinkLost,
    NotFound,
    RadioError,
)
from key_client.radio.ble import RSSI_UNKNOWN, BleakCentral, BleakConnection, advertisement_from

from .fakes_ble import FakeClient, FakeConnector, FakeScanner, adv_data, ble_device, gatt
from .radio_helpers import wait_until

OTHER_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"


def central(connector: FakeConnector | None = None, **kwargs: object) -> BleakCentral:
    return BleakCentral(scanner_factory=FakeScanner, connector=connector or FakeConnector(), client_class=FakeClient,
                        **kwargs)  # type: ignore[arg-type]


async def connected(connector: FakeConnector | None = None, **kwargs: object) -> tuple[BleakConnection, FakeClient]:
    connector = connector or FakeConnector()
    c = central(connector, **kwargs)
    conn = await c.connect(advertisement_from(ble_device(), adv_data()), timeout=2.0)
    return conn, connector.clients[-1]


# ---------------------------------------------------------------- scanning


async def test_scan_returns_our_advertisers_strongest_first_and_filters_others() -> None:
    FakeScanner.reset([
        (0.01, ble_device("AA:00:00:00:00:01", "far"), adv_data("far", -80)),
        (0.02, ble_device("AA:00:00:00:00:02", "battery"), adv_data("battery", -30, uuids=(OTHER_SERVICE,))),
        (0.03, ble_device("AA:00:00:00:00:03", "near"), adv_data("near", -40)),
    ])
    ads = await central(scan_settle=0.1).scan(2.0)
    assert [(a.name, a.rssi) for a in ads] == [("near", -40), ("far", -80)]
    assert ads[0].service_uuids == (SERVICE_UUID,)
    assert ads[0].address == "AA:00:00:00:00:03" and ads[0].handle.address == "AA:00:00:00:00:03"
    [scanner] = FakeScanner.instances
    # unfiltered: BlueZ's UUID filter would drop a vehicle whose UUID is only its service data's key (PROTOCOL §13)
    assert scanner.service_uuids is None and scanner.bluez == {}  # no BlueZ option unless asked
    assert scanner.stopped


async def test_scan_returns_soon_after_the_first_match_not_at_the_timeout() -> None:
    FakeScanner.reset([(0.01, ble_device(), adv_data())])
    loop = asyncio.get_running_loop()
    start = loop.time()
    ads = await central(scan_settle=0.05).scan(5.0)
    assert len(ads) == 1 and loop.time() - start < 1.0


async def test_scan_fills_our_service_data_and_stops_at_once_on_the_advertisement_until_accepts() -> None:
    # A legacy advertisement has room for the token's service data but not for the 128-bit UUID list as well:
    # the UUID of the service data alone makes it ours (PROTOCOL.md §13.3).
    FakeScanner.reset([
        (0.01, ble_device("AA:00:00:00:00:01", None), adv_data(None, -40, uuids=(),
                                                              service_data={SERVICE_UUID: b"other-car!"})),
        (0.05, ble_device("AA:00:00:00:00:02", None), adv_data(None, -70, uuids=(),
                                                              service_data={SERVICE_UUID: b"our-token!"})),
    ])
    loop = asyncio.get_running_loop()
    start = loop.time()
    ads = await central(scan_settle=3.0).scan(5.0, until=lambda a: a.service_data == b"our-token!")
    assert loop.time() - start < 1.0  # no settling once ours is heard
    assert [(a.address, a.service_data) for a in ads] == [("AA:00:00:00:00:01", b"other-car!"),
                                                           ("AA:00:00:00:00:02", b"our-token!")]
    assert ads[1].service_uuids == (SERVICE_UUID,)


async def test_scan_until_nothing_accepted_returns_what_it_saw_at_the_timeout() -> None:
    FakeScanner.reset([(0.01, ble_device(), adv_data(service_data={SERVICE_UUID: b"other-car!"}))])
    loop = asyncio.get_running_loop()
    start = loop.time()
    ads = await central(scan_settle=0.05).scan(0.5, until=lambda a: False)
    assert loop.time() - start >= 0.45 and [a.service_data for a in ads] == [b"other-car!"]


async def test_scan_keeps_the_latest_advertisement_of_each_address() -> None:
    dev = ble_device()
    FakeScanner.reset([(0.01, dev, adv_data(rssi=-70)), (0.02, dev, adv_data(rssi=-60))])
    ads = await central(scan_settle=0.1).scan(2.0)
    assert [a.rssi for a in ads] == [-60]


async def test_scan_with_nobody_in_range_returns_empty_at_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await central().scan(0.2) == []
    assert 0.15 <= loop.time() - start < 1.5
    assert FakeScanner.instances[0].stopped


async def test_scan_passes_the_adapter_as_a_bluez_option() -> None:
    await central(adapter="hci1").scan(0.01)
    assert FakeScanner.instances[0].bluez == {"adapter": "hci1"}


async def test_scan_failure_to_start_is_a_radio_error() -> None:
    FakeScanner.reset()
    FakeScanner.fail_start = BleakError("org.bluez.Error.NotReady")
    with pytest.raises(RadioError, match="cannot scan on hci1"):
        await central(adapter="hci1").scan(1.0)


async def test_cancelled_scan_stops_the_scanner() -> None:
    task = asyncio.create_task(central().scan(10.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert FakeScanner.instances[0].stopped


def test_rssi_not_available_never_looks_close() -> None:
    """HCI reports 127 for "RSSI not available" (btvirt does): as a proximity signal it must read as far."""
    adv = advertisement_from(ble_device(), adv_data(rssi=127))
    assert adv.rssi == RSSI_UNKNOWN


def test_advertisement_falls_back_to_the_device_name_and_lowercases_uuids() -> None:
    adv = advertisement_from(ble_device(name="dev-name"), adv_data(name=None, uuids=(SERVICE_UUID.upper(),)))
    assert adv.name == "dev-name" and adv.service_uuids == (SERVICE_UUID,)


async def test_watch_reports_every_advertisement_until_cancelled() -> None:
    dev = ble_device()
    FakeScanner.reset([(0.01, dev, adv_data(rssi=-70)), (0.02, ble_device("AA:00:00:00:00:09", "x"),
                                                          adv_data(uuids=(OTHER_SERVICE,))),
                       (0.03, dev, adv_data(rssi=-50))])
    seen: list[Advertisement] = []
    task = asyncio.create_task(central().watch(SERVICE_UUID, seen.append))
    await wait_until(lambda: len(seen) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [a.rssi for a in seen] == [-70, -50]
    assert FakeScanner.instances[0].stopped


async def test_watch_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    FakeScanner.reset([(0.01, ble_device(), adv_data()), (0.02, ble_device(), adv_data())])
    calls: list[int] = []

    def boom(_adv: Advertisement) -> None:
        calls.append(1)
        raise ValueError("bug")

    task = asyncio.create_task(central().watch(SERVICE_UUID, boom))
    await wait_until(lambda: len(calls) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "on_adv raised" in caplog.text


# ---------------------------------------------------------------- connecting


async def test_connect_uses_establish_connection_without_service_cache() -> None:
    connector = FakeConnector()
    conn, client = await connected(connector, adapter="hci1")
    [call] = connector.calls
    assert call["client_class"] is FakeClient and call["device"].address == "AA:BB:CC:DD:EE:01"
    assert call["name"] == "car" and call["max_attempts"] == 3 and call["use_services_cache"] is False
    assert call["kwargs"] == {"bluez": {"adapter": "hci1"}}
    assert client.bluez == {"adapter": "hci1"}
    assert conn.is_connected


async def test_connect_without_adapter_passes_no_bluez_option() -> None:
    connector = FakeConnector()
    await connected(connector)
    assert connector.calls[0]["kwargs"] == {}


async def test_connect_needs_a_device_handle_from_a_scan() -> None:
    with pytest.raises(NotFound):
        await central().connect(Advertisement("AA:BB", "car", (SERVICE_UUID,), -50), timeout=1.0)


@pytest.mark.parametrize(("error", "expected"), [
    (BleakNotFoundError("car - AA: Failed to connect after 3 attempt(s): not found"), NotFound),
    (BleakDeviceNotFoundError("AA:BB:CC:DD:EE:01"), NotFound),
    (BleakConnectionError("car - AA: Failed to connect after 3 attempt(s): le-connection-abort-by-local"),
     RadioError),
    (BleakError("failed to discover services, device disconnected"), RadioError),
    (EOFError(), RadioError),
])
async def test_connect_failures_map_to_radio_errors(error: Exception, expected: type[RadioError]) -> None:
    with pytest.raises(expected) as info:
        await connected(FakeConnector(error=error))
    assert type(info.value) is expected


async def test_connect_that_takes_too_long_is_not_found() -> None:
    c = central(FakeConnector(delay=5.0))
    with pytest.raises(NotFound, match="not connectable within 0.1 s"):
        await c.connect(advertisement_from(ble_device(), adv_data()), timeout=0.1)


async def test_a_device_without_our_service_is_refused_and_left() -> None:
    FakeClient.services_to_offer = gatt(with_service=False)
    connector = FakeConnector()
    with pytest.raises(RadioError, match="does not offer the key service"):
        await connected(connector)
    assert connector.clients[0].disconnect_calls == 1


async def test_a_disconnect_during_a_failed_attempt_does_not_mark_the_new_link_lost() -> None:
    conn, _ = await connected(FakeConnector(drop_during_connect=True))
    assert conn.is_connected


# ---------------------------------------------------------------- max_write_size


@pytest.mark.parametrize(("reported", "expected"), [(182, 182), (244, 244), (514, 512), (20, 20)])
async def test_max_write_size_comes_from_rx_max_write_without_response_size(reported: int, expected: int) -> None:
    FakeClient.services_to_offer = gatt(rx_size=reported)
    conn, _ = await connected(mtu_wait=0.05)
    assert conn.max_write_size == expected


async def test_max_write_size_waits_briefly_for_the_mtu_exchange() -> None:
    loop = asyncio.get_running_loop()
    ready = loop.time() + 0.1
    FakeClient.services_to_offer = gatt(rx_size=lambda: 244 if loop.time() >= ready else 20)
    conn, _ = await connected(mtu_wait=1.0)
    assert conn.max_write_size == 244


# ---------------------------------------------------------------- notifications and writes


async def test_notifications_reach_on_notify_as_bytes() -> None:
    conn, client = await connected()
    got: list[bytes] = []
    await conn.subscribe(got.append)
    assert client.notify_char.uuid == TX_CHAR_UUID
    client.notify(b"\x01challenge")
    assert got == [b"\x01challenge"] and type(got[0]) is bytes


async def test_a_failing_on_notify_is_logged_not_raised_into_bleak(caplog: pytest.LogCaptureFixture) -> None:
    conn, client = await connected()
    await conn.subscribe(lambda _b: (_ for _ in ()).throw(ValueError("bug")))
    client.notify(b"x")
    assert "on_notify raised" in caplog.text


async def test_write_goes_to_rx_with_the_requested_kind() -> None:
    conn, client = await connected()
    await conn.write(b"abc")
    await conn.write(b"def", response=False)
    assert [(ch.uuid, data, resp) for ch, data, resp in client.writes] == [
        (RX_CHAR_UUID, b"abc", True), (RX_CHAR_UUID, b"def", False)]


async def test_write_longer_than_the_link_carries_is_refused_locally() -> None:
    FakeClient.services_to_offer = gatt(rx_size=20)
    conn, client = await connected(mtu_wait=0.0)
    with pytest.raises(AttError) as err:
        await conn.write(bytes(21))
    assert err.value.code == AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH and client.writes == []


@pytest.mark.parametrize(("error", "code"), [
    (BleakGATTProtocolError(0x80), 0x80),
    (BleakGATTProtocolError(0x81), 0x81),
    (BleakGATTProtocolError(0x0D), 0x0D),
    (BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x81"]), 0x81),
])
async def test_att_error_answers_become_att_errors_with_their_code(error: Exception, code: int) -> None:
    conn, client = await connected()
    client.write_error = error
    with pytest.raises(AttError) as err:
        await conn.write(b"x")
    assert err.value.code == code
    assert conn.is_connected


@pytest.mark.parametrize("error", [
    BleakError("Not connected"),
    BleakDBusError("org.bluez.Error.Failed", ["Not connected"]),
    BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x00"]),
    EOFError(),
    BrokenPipeError(),
])
async def test_other_write_failures_are_link_lost(error: Exception) -> None:
    conn, client = await connected()
    client.write_error = error
    with pytest.raises(LinkLost):
        await conn.write(b"x")


async def test_subscribe_failures_map_like_writes() -> None:
    conn, client = await connected()
    client.notify_error = BleakGATTProtocolError(0x05)
    with pytest.raises(AttError) as err:
        await conn.subscribe(lambda _b: None)
    assert err.value.code == 0x05
    client.notify_error = BleakError("Not connected")
    with pytest.raises(LinkLost):
        await conn.subscribe(lambda _b: None)


async def test_link_dropped_by_the_vehicle_is_lost_for_later_writes() -> None:
    conn, client = await connected()
    client.drop()  # bleak calls disconnected_callback(client)
    assert not conn.is_connected
    with pytest.raises(LinkLost):
        await conn.write(b"x")
    with pytest.raises(LinkLost):
        await conn.subscribe(lambda _b: None)
    assert client.writes == []


async def test_disconnect_is_idempotent_and_aclose_leaves_every_link() -> None:
    connector = FakeConnector()
    c = central(connector)
    a = await c.connect(advertisement_from(ble_device(), adv_data()), timeout=1.0)
    b = await c.connect(advertisement_from(ble_device("AA:00:00:00:00:02"), adv_data()), timeout=1.0)
    await a.disconnect()
    await a.disconnect()
    assert not a.is_connected and b.is_connected
    await c.aclose()
    assert not b.is_connected
    assert [cl.disconnect_calls for cl in connector.clients] == [2, 1]
    with pytest.raises(RadioError, match="closed"):
        await c.scan(0.01)
    await c.aclose()


async def test_disconnect_swallows_backend_errors() -> None:
    conn, client = await connected()

    async def failing() -> None:
        raise BleakError("org.bluez.Error.NotConnected")

    client.disconnect = failing  # type: ignore[method-assign]
    await conn.disconnect()
    assert not conn.is_connected
