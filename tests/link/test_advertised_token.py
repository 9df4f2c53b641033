"""The advertising token on both radios: advertise_token puts it in the service data of every scan (§13)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from dkey_link.contract import SERVICE_UUID
from dkey_link.sim import ADV_FLAG_SERVICE_DATA, FrameError, Op, SimCentral, SimPeripheral, _decode_adv, encode_frame

from .radio_helpers import RadioKit, Recorder

TOKEN_A = bytes(range(10))
TOKEN_B = bytes(range(10, 20))


async def test_a_token_given_before_start_is_in_the_first_advertisement(kit: RadioKit) -> None:
    p, _ = await kit.peripheral(start=False)
    await p.advertise_token(TOKEN_A)
    await p.start(Recorder())
    [adv] = await kit.central().scan(1.0)
    assert adv.service_data == TOKEN_A


async def test_a_new_token_replaces_the_old_one_at_once(kit: RadioKit) -> None:
    p, _ = await kit.peripheral()
    await p.advertise_token(TOKEN_A)
    central = kit.central()
    assert [a.service_data for a in await central.scan(1.0)] == [TOKEN_A]
    await p.advertise_token(TOKEN_B)
    assert [a.service_data for a in await central.scan(1.0)] == [TOKEN_B]


async def test_without_a_token_there_is_no_service_data(kit: RadioKit) -> None:
    await kit.peripheral()
    [adv] = await kit.central().scan(1.0)
    assert adv.service_data is None


async def test_the_sim_adv_rsp_bytes_are_those_of_sim_radio_md(air_dir: Path) -> None:
    # docs/SIM_RADIO.md §3 "Scan": flags 0x03 (connectable, service data), 1 uuid, 10 bytes of data, the name.
    p = SimPeripheral("car", air_dir=air_dir)
    await p.advertise_token(bytes.fromhex("a1b2c3d4e5f60718293a"))
    await p.start(_Null())
    try:
        reader, writer = await asyncio.open_unix_connection(str(air_dir / "car.sock"))
        writer.write(bytes.fromhex("01000101"))
        raw = await reader.read(1024)
        writer.close()
    finally:
        await p.stop()
    assert raw.hex() == ("020022" "010 3c9 01".replace(" ", "") + "7d4f00015e2a4c1b9f3a6b1c2d3e4f50"
                         + "0a" + "a1b2c3d4e5f60718293a" + "636172")


def test_sim_service_data_is_checked_before_use() -> None:
    uuid_bytes = bytes.fromhex(SERVICE_UUID.replace("-", ""))
    head = struct.pack(">BBbB", 1, 1 | ADV_FLAG_SERVICE_DATA, -55, 1) + uuid_bytes
    assert _decode_adv(head + b"\x02ab" + b"car")[4] == b"ab"
    for bad in (head + b"\x09ab", head, head + b"\x41" + bytes(65) + b"car"):  # runs past the end, missing, too long
        with pytest.raises(FrameError):
            _decode_adv(bad)
    with pytest.raises(FrameError):  # service data needs a UUID to belong to
        _decode_adv(struct.pack(">BBbB", 1, 3, -55, 0) + b"\x01a" + b"car")
    with pytest.raises(FrameError):  # unknown flag bits
        _decode_adv(struct.pack(">BBbB", 1, 1 | 0x04, -55, 1) + uuid_bytes + b"car")
    assert encode_frame(Op.ADV_RSP, head + b"\x0a" + bytes(10) + b"car")[:3] == bytes.fromhex("020022")


async def test_a_sim_scan_ignores_service_data_of_another_uuid(air_dir: Path) -> None:
    p = SimPeripheral("other", air_dir=air_dir)
    p.service_uuids = ("0000180f-0000-1000-8000-00805f9b34fb", SERVICE_UUID)
    await p.advertise_token(TOKEN_A)
    await p.start(_Null())
    try:
        [adv] = await SimCentral(air_dir=air_dir).scan(1.0)
    finally:
        await p.stop()
    assert adv.service_data is None  # the data belonged to the first UUID, not to ours


class _Null:
    def on_connect(self, link: str, mtu: int) -> None: ...
    def on_mtu(self, link: str, mtu: int) -> None: ...
    def on_subscribe(self, link: str | None) -> None: ...
    def on_write(self, link: str, data: bytes) -> None: ...
    def on_disconnect(self, link: str) -> None: ...
