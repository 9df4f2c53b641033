"""The contract every radio backend keeps (base.py), run against the mock and the sim backends alike."""

from __future__ import annotations

import asyncio

import pytest

from dkey_link.contract import (
    SERVICE_UUID,
    AttError,
    AttErrorCode,
    Central,
    Connection,
    LinkLost,
    NotFound,
    Peripheral,
)
from dkey_link.mock import MockCentral, MockConnection, MockPeripheral
from dkey_link.sim import SimCentral, SimConnection, SimPeripheral

from .radio_helpers import RadioKit, wait_until

# ---------------------------------------------------------------- scanning


async def test_scan_finds_the_advertiser_with_its_name_and_rssi(kit: RadioKit) -> None:
    await kit.peripheral("car", rssi=-61)
    ads = await kit.central().scan(2.0)
    assert [(a.name, a.rssi) for a in ads] == [("car", -61)]
    assert ads[0].service_uuids == (SERVICE_UUID,)


async def test_scan_sees_two_peripherals_strongest_first(kit: RadioKit) -> None:
    await kit.peripheral("car-a", rssi=-80)
    await kit.peripheral("car-b", rssi=-40)
    ads = await kit.central().scan(2.0)
    assert [a.name for a in ads] == ["car-b", "car-a"]
    assert ads[0].address != ads[1].address


async def test_scan_returns_empty_after_the_timeout_when_nobody_advertises(kit: RadioKit) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await kit.central().scan(0.2) == []
    assert 0.15 <= loop.time() - start < 1.5


async def test_scan_ignores_other_services(kit: RadioKit) -> None:
    await kit.peripheral("car")
    assert await kit.central().scan(0.1, service_uuid="0000180f-0000-1000-8000-00805f9b34fb") == []


async def test_scan_does_not_see_a_stopped_peripheral(kit: RadioKit) -> None:
    p, _ = await kit.peripheral("car")
    await p.stop()
    assert await kit.central().scan(0.1) == []


async def test_connect_to_a_stopped_peripheral_raises_not_found(kit: RadioKit) -> None:
    p, _ = await kit.peripheral("car")
    central = kit.central()
    adv = await kit.find(central)
    await p.stop()
    with pytest.raises(NotFound):
        await central.connect(adv, timeout=0.2)


# ---------------------------------------------------------------- the exchange


async def test_round_trip_subscribe_write_with_response_notify(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    [link] = rec.links
    got: list[bytes] = []
    await conn.subscribe(got.append)
    assert rec.of("subscribe") == [("subscribe", link)]
    await conn.write(b"unlock please")
    assert rec.writes(link) == [b"unlock please"]  # a write with response returns after on_write ran
    await p.notify(b"done", link)
    await wait_until(lambda: got == [b"done"])


async def test_notification_sent_on_subscribe_reaches_the_new_subscriber(kit: RadioKit) -> None:
    """The fast path: the vehicle pushes a challenge as soon as a central subscribes (PROTOCOL.md §5.5)."""
    p, rec = await kit.peripheral()
    tasks: list[asyncio.Task[None]] = []
    rec.on_subscribe_hook = lambda link: tasks.append(asyncio.create_task(p.notify(b"challenge", link)))
    conn = await kit.connect(kit.central())
    got: list[bytes] = []
    await conn.subscribe(got.append)
    await wait_until(lambda: got == [b"challenge"])
    await asyncio.gather(*tasks)


async def test_att_error_from_the_handler_reaches_the_central_with_its_code(kit: RadioKit) -> None:
    _, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    rec.fail = AttError(AttErrorCode.APP_BUSY)
    with pytest.raises(AttError) as caught:
        await conn.write(b"x")
    assert caught.value.code == AttErrorCode.APP_BUSY
    rec.fail = None
    await conn.write(b"y")  # an ATT error leaves the link up
    assert rec.writes() == [b"x", b"y"]


async def test_write_without_response_swallows_the_att_error(kit: RadioKit) -> None:
    _, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    rec.fail = AttError(AttErrorCode.APP_REJECTED)
    await conn.write(b"x", response=False)
    await wait_until(lambda: rec.writes() == [b"x"])
    assert conn.is_connected


async def test_a_handler_bug_answers_unlikely_error_and_spares_the_radio(kit: RadioKit) -> None:
    _, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    rec.fail = ZeroDivisionError("handler bug")
    with pytest.raises(AttError) as caught:
        await conn.write(b"x")
    assert caught.value.code == AttErrorCode.UNLIKELY_ERROR
    rec.fail = None
    await conn.write(b"y")


@pytest.mark.parametrize("response", [True, False])
async def test_oversize_write_is_refused_with_invalid_length(kit: RadioKit, response: bool) -> None:
    _, rec = await kit.peripheral()
    conn = await kit.connect(kit.central(mtu=23))
    assert conn.max_write_size == 20
    with pytest.raises(AttError) as caught:
        await conn.write(bytes(21), response=response)
    assert caught.value.code == AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH
    await conn.write(bytes(20))  # exactly MTU-3 fits
    assert rec.writes() == [bytes(20)]


@pytest.mark.parametrize(
    ("central_mtu", "peripheral_mtu", "expected"), [(23, 517, 23), (600, 517, 517), (247, 100, 100)]
)
async def test_mtu_is_the_smaller_of_both_sides(
    kit: RadioKit, central_mtu: int, peripheral_mtu: int, expected: int
) -> None:
    _, rec = await kit.peripheral(mtu=peripheral_mtu)
    conn = await kit.connect(kit.central(mtu=central_mtu))
    assert list(rec.mtus.values()) == [expected]
    assert conn.max_write_size == expected - 3


async def test_notifications_are_truncated_to_mtu_minus_3(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    conn = await kit.connect(kit.central(mtu=23))
    got: list[bytes] = []
    await conn.subscribe(got.append)
    payload = bytes(range(100))
    await p.notify(payload, rec.links[0])
    await wait_until(lambda: got == [payload[:20]])


async def test_notifications_and_writes_keep_their_order(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    got: list[bytes] = []
    await conn.subscribe(got.append)
    sent = [i.to_bytes(2, "big") for i in range(60)]
    for chunk in sent:
        await p.notify(chunk, rec.links[0])
        await conn.write(chunk, response=False)
    await wait_until(lambda: got == sent and rec.writes() == sent)


async def test_notifications_reach_only_subscribed_links(kit: RadioKit) -> None:
    p, _ = await kit.peripheral()
    listening = await kit.connect(kit.central(name="phone"))
    silent = await kit.connect(kit.central(name="watch"))
    heard: list[bytes] = []
    await listening.subscribe(heard.append)
    await p.notify(b"to all")
    await wait_until(lambda: heard == [b"to all"])
    await asyncio.sleep(0.05)
    assert silent.is_connected  # it simply got nothing


async def test_two_centrals_at_once_targeted_notify_reaches_only_its_link(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    assert p.notify_targets_one_link
    phone = await kit.connect(kit.central(name="phone"))
    watch = await kit.connect(kit.central(name="watch"))
    phone_got: list[bytes] = []
    watch_got: list[bytes] = []
    await phone.subscribe(phone_got.append)
    await watch.subscribe(watch_got.append)
    phone_link, watch_link = rec.links
    assert phone_link != watch_link
    await phone.write(b"from phone")
    await watch.write(b"from watch")
    assert rec.writes(phone_link) == [b"from phone"]
    assert rec.writes(watch_link) == [b"from watch"]
    await p.notify(b"for the watch", watch_link)
    await p.notify(b"for everyone")
    await wait_until(lambda: watch_got == [b"for the watch", b"for everyone"] and phone_got == [b"for everyone"])


async def test_notify_to_an_unknown_link_is_ignored(kit: RadioKit) -> None:
    p, _ = await kit.peripheral()
    await p.notify(b"nobody", "no-such-link")


# ---------------------------------------------------------------- disconnects


async def test_central_disconnect_is_seen_by_the_peripheral(kit: RadioKit) -> None:
    _, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    await conn.disconnect()
    assert not conn.is_connected
    await wait_until(lambda: rec.of("disconnect") == [("disconnect", rec.links[0])])
    with pytest.raises(LinkLost):
        await conn.write(b"x")
    with pytest.raises(LinkLost):
        await conn.subscribe(lambda _: None)
    await conn.disconnect()  # idempotent


async def test_peripheral_disconnect_is_seen_by_the_central(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    other = await kit.connect(kit.central(name="other"))
    await p.disconnect(rec.links[0])
    assert rec.of("disconnect") == [("disconnect", rec.links[0])]
    await wait_until(lambda: not conn.is_connected)
    with pytest.raises(LinkLost):
        await conn.write(b"x")
    with pytest.raises(LinkLost):
        await conn.write(b"x", response=False)
    await other.write(b"still here")  # the other link is untouched
    await p.disconnect(rec.links[0])  # gone already: a no-op


async def test_a_central_that_never_writes_is_reported_at_connect_and_can_be_dropped(kit: RadioKit) -> None:
    """The contract bless now keeps too (test_ble_peripheral_links.py): a link is reported when it connects, not at
    its first write, so the service can idle-drop a silent central."""
    p, rec = await kit.peripheral()
    conn = await kit.connect(kit.central())
    await wait_until(lambda: len(rec.of("connect")) == 1)
    assert rec.of("write") == [] and rec.of("subscribe") == []
    await p.disconnect(rec.links[0])
    await wait_until(lambda: not conn.is_connected)
    assert rec.of("disconnect") == [("disconnect", rec.links[0])]


async def test_stop_disconnects_everyone_and_is_idempotent(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    conns = [await kit.connect(kit.central(name=f"c{i}")) for i in range(3)]
    await p.stop()
    assert sorted(e[1] for e in rec.of("disconnect")) == sorted(rec.links)
    await wait_until(lambda: not any(c.is_connected for c in conns))
    for c in conns:
        with pytest.raises(LinkLost):
            await c.write(b"x")
    await p.stop()
    assert await kit.central().scan(0.05) == []


async def test_a_stopped_peripheral_can_start_again(kit: RadioKit) -> None:
    p, rec = await kit.peripheral()
    await p.stop()
    await p.start(rec)
    conn = await kit.connect(kit.central())
    await conn.write(b"again")
    assert rec.writes() == [b"again"]


async def test_aclose_disconnects_the_centrals_links_and_is_idempotent(kit: RadioKit) -> None:
    _, rec = await kit.peripheral()
    central = kit.central()
    conn = await kit.connect(central)
    await central.aclose()
    assert not conn.is_connected
    await wait_until(lambda: len(rec.of("disconnect")) == 1)
    await central.aclose()


def _conforms(
    mp: MockPeripheral, mc: MockCentral, mconn: MockConnection, sp: SimPeripheral, sc: SimCentral, sconn: SimConnection
) -> None:
    """Never called: mypy checks here that both backends satisfy the base.py protocols."""
    peripherals: list[Peripheral] = [mp, sp]
    centrals: list[Central] = [mc, sc]
    connections: list[Connection] = [mconn, sconn]
    del peripherals, centrals, connections
