"""Mock radio specifics: bless-like broadcast notifications, fault injection, scripted RSSI, busy peripherals."""

from __future__ import annotations

import asyncio

import pytest

from dkey_link.contract import AttError, LinkLost, NotFound, RadioError
from dkey_link.mock import MockAir, MockConnection, MockPeripheral

from .radio_helpers import Recorder, wait_until


async def started(air: MockAir, name: str = "car", **kwargs: object) -> tuple[MockPeripheral, Recorder]:
    p = air.peripheral(name, **kwargs)  # type: ignore[arg-type]
    rec = Recorder()
    await p.start(rec)
    return p, rec


async def connected(air: MockAir, *, name: str = "central", mtu: int = 247) -> MockConnection:
    central = air.central(name=name, mtu=mtu)
    [adv] = await central.scan(1.0)
    return await central.connect(adv, timeout=1.0)


# ---------------------------------------------------------------- bless-like broadcast


async def test_broadcast_notify_reaches_every_subscriber_like_bless() -> None:
    air = MockAir()
    p, rec = await started(air, broadcast_notify=True)
    assert not p.notify_targets_one_link
    phone, watch = await connected(air, name="phone"), await connected(air, name="watch")
    phone_got: list[bytes] = []
    watch_got: list[bytes] = []
    await phone.subscribe(phone_got.append)
    await watch.subscribe(watch_got.append)
    assert rec.of("subscribe") == [("subscribe", None), ("subscribe", None)]  # bless cannot tell who
    await p.notify(b"meant for the phone", phone.link)
    await wait_until(lambda: phone_got == watch_got == [b"meant for the phone"])


async def test_broadcast_truncates_per_link_mtu() -> None:
    air = MockAir()
    p, _ = await started(air, broadcast_notify=True)
    small, large = await connected(air, mtu=23), await connected(air, mtu=247)
    small_got: list[bytes] = []
    large_got: list[bytes] = []
    await small.subscribe(small_got.append)
    await large.subscribe(large_got.append)
    await p.notify(bytes(100))
    await wait_until(lambda: small_got == [bytes(20)] and large_got == [bytes(100)])


# ---------------------------------------------------------------- latency and order


async def test_latency_delays_each_direction() -> None:
    air = MockAir(latency_up=0.05, latency_down=0.03)
    p, rec = await started(air)
    conn = await connected(air)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await conn.write(b"x")
    assert loop.time() - start >= 0.075  # a request and its answer
    got: list[bytes] = []
    await conn.subscribe(got.append)
    await p.notify(b"n", conn.link)
    assert got == []
    await asyncio.sleep(0.02)
    assert got == []
    await wait_until(lambda: got == [b"n"])


async def test_jitter_never_reorders_a_link() -> None:
    air = MockAir(latency_down=0.001, latency_up=0.001, jitter=0.01, seed=7)
    p, rec = await started(air)
    conn = await connected(air)
    got: list[bytes] = []
    await conn.subscribe(got.append)
    sent = [bytes([i]) for i in range(40)]
    for chunk in sent:
        await p.notify(chunk, conn.link)
        await conn.write(chunk, response=False)
    await wait_until(lambda: got == sent and rec.writes() == sent)


async def test_a_write_in_flight_fails_with_link_lost_when_the_link_drops() -> None:
    air = MockAir(latency_up=0.1)
    _, rec = await started(air)
    conn = await connected(air)
    write = asyncio.create_task(conn.write(b"x"))
    await asyncio.sleep(0.02)
    air.drop(conn.link)
    with pytest.raises(LinkLost):
        await write
    await asyncio.sleep(0.12)
    assert rec.writes() == []  # lost in flight
    assert rec.of("disconnect") == [("disconnect", conn.link)]


# ---------------------------------------------------------------- loss


async def _received_under_loss(seed: int) -> list[bytes]:
    air = MockAir(seed=seed, notify_loss=0.5)
    p, _ = await started(air)
    conn = await connected(air)
    got: list[bytes] = []
    await conn.subscribe(got.append)
    for i in range(100):
        await p.notify(bytes([i]), conn.link)
    await asyncio.sleep(0.01)
    return got


async def test_notification_loss_is_seeded_and_repeatable() -> None:
    first, again = await _received_under_loss(3), await _received_under_loss(3)
    assert first == again
    assert 20 < len(first) < 80
    assert first == sorted(first)  # loss drops, it never reorders


async def test_write_loss_spares_writes_with_response() -> None:
    air = MockAir(write_loss=1.0)
    _, rec = await started(air)
    conn = await connected(air)
    for _ in range(10):
        await conn.write(b"lost", response=False)
    await conn.write(b"acknowledged")
    assert rec.writes() == [b"acknowledged"]


# ---------------------------------------------------------------- dropping the link mid-exchange


async def test_disconnect_after_writes_delivered_then_answer_lost() -> None:
    """The "may have succeeded" case: the vehicle acted, the device only sees the link drop."""
    air = MockAir()
    _, rec = await started(air)
    conn = await connected(air)
    air.disconnect_after_writes(2)
    await conn.write(b"first")
    with pytest.raises(LinkLost):
        await conn.write(b"unlock")
    assert rec.writes() == [b"first", b"unlock"]
    assert rec.of("disconnect") == [("disconnect", conn.link)]
    assert not conn.is_connected


async def test_disconnect_after_writes_lost_in_flight() -> None:
    air = MockAir()
    _, rec = await started(air)
    conn = await connected(air)
    air.disconnect_after_writes(1, deliver=False)
    with pytest.raises(LinkLost):
        await conn.write(b"unlock")
    assert rec.writes() == []
    with pytest.raises(LinkLost):
        await conn.write(b"again")


async def test_disconnect_after_writes_can_target_one_link() -> None:
    air = MockAir()
    _, rec = await started(air)
    phone, watch = await connected(air, name="phone"), await connected(air, name="watch")
    air.disconnect_after_writes(1, link=watch.link)
    await phone.write(b"phone ok")
    with pytest.raises(LinkLost):
        await watch.write(b"watch")
    assert phone.is_connected
    await phone.write(b"phone still ok")


async def test_disconnect_after_writes_without_response_drops_the_next_write() -> None:
    air = MockAir()
    _, rec = await started(air)
    conn = await connected(air)
    air.disconnect_after_writes(1)
    await conn.write(b"cmd", response=False)
    await wait_until(lambda: not conn.is_connected)
    assert rec.writes() == [b"cmd"]
    with pytest.raises(LinkLost):
        await conn.write(b"next", response=False)


async def test_disconnect_after_notifications() -> None:
    air = MockAir()
    p, rec = await started(air)
    conn = await connected(air)
    got: list[bytes] = []
    await conn.subscribe(got.append)
    air.disconnect_after_notifications(2)
    for i in range(5):
        await p.notify(bytes([i]), conn.link)
    await wait_until(lambda: not conn.is_connected)
    assert got == [b"\x00", b"\x01"]
    assert rec.of("disconnect") == [("disconnect", conn.link)]


async def test_drop_is_seen_by_both_sides_and_unknown_links_are_ignored() -> None:
    air = MockAir()
    p, rec = await started(air)
    conn = await connected(air)
    assert air.links == (conn.link,) and p.links == (conn.link,)
    air.drop(conn.link)
    air.drop(conn.link)
    air.drop("nobody")
    assert not conn.is_connected
    assert rec.of("disconnect") == [("disconnect", conn.link)]
    assert not air.links and not p.links


def test_fault_counts_must_be_positive() -> None:
    air = MockAir()
    with pytest.raises(ValueError, match="n must be"):
        air.disconnect_after_writes(0)
    with pytest.raises(ValueError, match="n must be"):
        air.disconnect_after_notifications(0)


# ---------------------------------------------------------------- RSSI for proximity


async def test_set_rssi_changes_what_the_next_scan_reports() -> None:
    air = MockAir()
    p, _ = await started(air, rssi=-90)
    central = air.central()
    assert [a.rssi for a in await central.scan(1.0)] == [-90]
    p.set_rssi(-45)
    assert [a.rssi for a in await central.scan(1.0)] == [-45]


async def test_rssi_trace_is_consumed_one_scan_at_a_time_and_the_last_value_sticks() -> None:
    air = MockAir()
    await started(air, rssi_trace=[-90, -70, -50])
    central = air.central()
    seen = [(await central.scan(1.0))[0].rssi for _ in range(5)]
    assert seen == [-90, -70, -50, -50, -50]


# ---------------------------------------------------------------- advertising and scanning


async def test_scan_returns_at_once_when_someone_advertises() -> None:
    air = MockAir()
    await started(air)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert len(await air.central().scan(5.0)) == 1
    assert loop.time() - start < 0.5


async def test_scan_wakes_up_when_a_peripheral_starts() -> None:
    air = MockAir()
    p = air.peripheral("late")
    scan = asyncio.create_task(air.central().scan(5.0))
    await asyncio.sleep(0.02)
    assert not scan.done()
    await p.start(Recorder())
    assert [a.name for a in await asyncio.wait_for(scan, 1.0)] == ["late"]


async def test_a_connected_peripheral_can_stop_advertising_like_bluez() -> None:
    """Measured with bless on BlueZ: a second central cannot find the vehicle until the first leaves."""
    air = MockAir()
    p, _ = await started(air, advertise_while_connected=False)
    second = air.central(name="second")
    [adv] = await second.scan(1.0)
    first = await connected(air, name="first")
    assert not p.advertising
    assert await second.scan(0.05) == []
    with pytest.raises(NotFound):
        await second.connect(adv, timeout=0.05)
    waiting = asyncio.create_task(second.connect(adv, timeout=2.0))
    await asyncio.sleep(0.02)
    await first.disconnect()
    assert p.advertising
    conn = await asyncio.wait_for(waiting, 1.0)
    assert conn.is_connected
    assert not p.advertising


async def test_connect_refuses_an_advertisement_from_another_air() -> None:
    air, other = MockAir(), MockAir()
    await started(other)
    [adv] = await other.central().scan(1.0)
    with pytest.raises(NotFound):
        await air.central().connect(adv, timeout=0.05)


async def test_a_closed_central_cannot_scan_or_connect() -> None:
    air = MockAir()
    await started(air)
    central = air.central()
    [adv] = await central.scan(1.0)
    await central.aclose()
    with pytest.raises(RadioError):
        await central.scan(0.1)
    with pytest.raises(RadioError):
        await central.connect(adv)


async def test_starting_twice_is_refused() -> None:
    air = MockAir()
    p, rec = await started(air)
    with pytest.raises(RadioError):
        await p.start(rec)


def test_mtu_bounds_are_checked() -> None:
    air = MockAir()
    with pytest.raises(ValueError, match="mtu"):
        air.peripheral("car", mtu=22)
    with pytest.raises(ValueError, match="mtu"):
        air.peripheral("car", mtu=518)
    with pytest.raises(ValueError, match="mtu"):
        air.central(mtu=10)


async def test_central_mtu_above_517_is_capped() -> None:
    air = MockAir()
    await started(air)
    conn = await connected(air, mtu=1000)
    assert conn.max_write_size == 514
    with pytest.raises(AttError):
        await conn.write(bytes(515))
