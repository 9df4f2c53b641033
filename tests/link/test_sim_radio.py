"""Sim radio specifics: the frame codec, hostile bytes on the socket, stale sockets, the air directory, processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import stat
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkey_link import sim
from dkey_link.contract import SERVICE_UUID, Advertisement, AttError, AttErrorCode, LinkLost, NotFound, RadioError
from dkey_link.sim import (
    HEADER,
    PROTOCOL_VERSION,
    FrameError,
    Op,
    SimCentral,
    SimPeripheral,
    default_air_dir,
    encode_frame,
    parse_header,
)

from .radio_helpers import Recorder, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def car(air_dir: Path) -> AsyncIterator[tuple[SimPeripheral, Recorder]]:
    """A started sim peripheral named "car" with a recording handler."""
    p = SimPeripheral("car", air_dir=air_dir)
    rec = Recorder()
    await p.start(rec)
    try:
        yield p, rec
    finally:
        await p.stop()


@pytest.fixture
async def central(air_dir: Path) -> AsyncIterator[SimCentral]:
    c = SimCentral(air_dir=air_dir)
    try:
        yield c
    finally:
        await c.aclose()


async def honest_round_trip(central: SimCentral, name: str = "car") -> None:
    """Scan, connect, write with response, disconnect: the peripheral still serves honest clients."""
    adv = next(a for a in await central.scan(2.0) if a.name == name)
    conn = await central.connect(adv, timeout=2.0)
    await conn.write(b"honest")
    await conn.disconnect()


@contextlib.asynccontextmanager
async def raw_socket(path: Path) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A bare connection to a peripheral's socket, for sending it whatever bytes we like."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer sends until it closes the socket (fails the test if it never does)."""
    return await asyncio.wait_for(reader.read(), 3.0)


def connect_req(mtu: int = 247, name: bytes = b"raw") -> bytes:
    return encode_frame(Op.CONNECT_REQ, struct.pack(">BH", PROTOCOL_VERSION, mtu) + name)


# ---------------------------------------------------------------- the frame codec


def test_frame_layout_is_opcode_then_big_endian_length() -> None:
    assert encode_frame(Op.WRITE_REQ, b"abc") == b"\x10\x00\x03abc"
    assert encode_frame(Op.SUBSCRIBE_REQ) == b"\x20\x00\x00"
    assert parse_header(b"\x10\x00\x03") == (Op.WRITE_REQ, 3)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\xff\x00\x00", "unknown opcode"),
        (b"\x00\x00\x00", "unknown opcode"),
        (HEADER.pack(Op.NOTIFY, 515), "NOTIFY"),
        (HEADER.pack(Op.WRITE_REQ, 0xFFFF), "WRITE_REQ"),
        (HEADER.pack(Op.WRITE_RSP, 2), "WRITE_RSP"),
        (HEADER.pack(Op.SUBSCRIBE_REQ, 1), "SUBSCRIBE_REQ"),
        (b"\x10\x00", "header of 2 bytes"),
    ],
)
def test_parse_header_rejects_what_no_frame_may_carry(header: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        parse_header(header)


def test_encode_refuses_a_payload_outside_the_opcode_bounds() -> None:
    with pytest.raises(ValueError, match="NOTIFY"):
        encode_frame(Op.NOTIFY, bytes(515))


@given(st.binary(min_size=3, max_size=3))
def test_parse_header_either_bounds_the_length_or_raises_frame_error(header: bytes) -> None:
    try:
        op, length = parse_header(header)
    except FrameError:
        return
    assert length <= sim.MAX_PAYLOAD
    assert encode_frame(op, bytes(length))[:3] == header


# ---------------------------------------------------------------- hostile bytes on the socket


GARBAGE = [
    pytest.param(b"\xff\xff\xff garbage", id="unknown-opcode"),
    pytest.param(HEADER.pack(Op.WRITE_REQ, 0xFFFF), id="oversize-length"),
    pytest.param(encode_frame(Op.WRITE_REQ, b"x"), id="write-before-connect"),
    pytest.param(encode_frame(Op.ADV_REQ, b"\x63"), id="wrong-version"),
    pytest.param(HEADER.pack(Op.WRITE_CMD, 10) + b"abc", id="truncated-then-eof"),
    pytest.param(random.Random(1).randbytes(4096), id="random-bytes"),
    pytest.param(connect_req() + b"\x99\x00\x00", id="garbage-after-connect"),
    pytest.param(connect_req() + encode_frame(Op.NOTIFY, b"x"), id="wrong-direction-after-connect"),
    pytest.param(connect_req() + encode_frame(Op.CONNECT_REQ, b"\x01\x00\x17"), id="second-connect"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_closes_only_its_own_link(
    car: tuple[SimPeripheral, Recorder], central: SimCentral, garbage: bytes
) -> None:
    p, rec = car
    bystander = await central.connect((await central.scan(2.0))[0], timeout=2.0)
    async with raw_socket(p.path) as (reader, writer):
        writer.write(garbage)
        writer.write_eof()  # the truncated frame must end somewhere
        await read_until_closed(reader)
    await wait_until(lambda: len(p.links) == 1)
    assert len(rec.of("disconnect")) == len(rec.of("connect")) - 1  # the raw link, if it got that far
    await bystander.write(b"still fine")
    assert bystander.is_connected
    await honest_round_trip(central)


async def test_garbage_without_eof_is_closed_by_the_peripheral(car: tuple[SimPeripheral, Recorder]) -> None:
    p, _ = car
    async with raw_socket(p.path) as (reader, writer):
        writer.write(b"\x77\x00\x00")
        await read_until_closed(reader)  # no write_eof: the peripheral hung up by itself


async def test_oversize_write_from_a_raw_central_is_answered_with_invalid_length(
    car: tuple[SimPeripheral, Recorder],
) -> None:
    p, rec = car
    async with raw_socket(p.path) as (reader, writer):
        writer.write(connect_req(mtu=23))
        assert (await reader.readexactly(7))[0] == Op.CONNECT_RSP
        writer.write(encode_frame(Op.WRITE_REQ, bytes(21)))
        assert await reader.readexactly(4) == encode_frame(Op.WRITE_RSP, b"\x0d")
    assert rec.writes() == []


async def test_a_silent_socket_is_closed_after_the_handshake_timeout(
    car: tuple[SimPeripheral, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _ = car
    monkeypatch.setattr(sim, "HANDSHAKE_TIMEOUT", 0.1)
    async with raw_socket(p.path) as (reader, _writer):
        assert await read_until_closed(reader) == b""


async def test_a_central_that_stops_reading_is_dropped(car: tuple[SimPeripheral, Recorder]) -> None:
    p, rec = car
    async with raw_socket(p.path) as (reader, writer):
        writer.write(connect_req() + encode_frame(Op.SUBSCRIBE_REQ))
        await wait_until(lambda: rec.of("subscribe"))
        link = p.links[0]
        for _ in range(20_000):  # ~5 MB that nobody reads
            await p.notify(bytes(244), link)
            if not p.links:
                break
        assert rec.of("disconnect") == [("disconnect", link)]


async def test_a_lying_peripheral_loses_its_link_not_the_central(air_dir: Path, central: SimCentral) -> None:
    """An unsolicited WRITE_RSP from a fake peripheral closes that link; the central object lives on."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3 + 3 + len(b"central"))
        writer.write(encode_frame(Op.CONNECT_RSP, struct.pack(">BBH", PROTOCOL_VERSION, 0, 247)))
        writer.write(encode_frame(Op.WRITE_RSP, b"\x00"))
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(liar, path=str(air_dir / "liar.sock"))
    try:
        adv = Advertisement(address=str(air_dir / "liar.sock"), name="liar", service_uuids=(), rssi=0)
        conn = await central.connect(adv, timeout=2.0)
        await wait_until(lambda: not conn.is_connected)
        with pytest.raises(LinkLost):
            await conn.write(b"x")
    finally:
        server.close()
        await server.wait_closed()


async def test_scan_skips_stale_garbled_and_non_socket_entries(
    car: tuple[SimPeripheral, Recorder], air_dir: Path, central: SimCentral
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(air_dir / "stale.sock"))
    stale.close()  # leaves the file behind, like a crashed peripheral
    (air_dir / "notes.sock").write_text("not a socket")

    async def garbler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x02\x00\x04\xff\xff\xff\xff")  # an ADV_RSP of an unknown version
        writer.close()

    server = await asyncio.start_unix_server(garbler, path=str(air_dir / "garbler.sock"))
    try:
        assert [a.name for a in await central.scan(1.0)] == ["car"]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_hung_socket_does_not_stall_the_scan(
    car: tuple[SimPeripheral, Recorder], air_dir: Path, central: SimCentral, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim, "PROBE_TIMEOUT", 0.2)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(air_dir / "hung.sock"))
    hung.listen(4)  # accepts into the backlog, never answers: a SIGSTOPped peripheral
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert [a.name for a in await central.scan(5.0)] == ["car"]
        assert loop.time() - start < 1.0
    finally:
        hung.close()


# ---------------------------------------------------------------- names and socket files


async def test_a_stale_socket_file_is_replaced(air_dir: Path, central: SimCentral) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(air_dir / "car.sock"))
    stale.close()
    p = SimPeripheral("car", air_dir=air_dir)
    await p.start(Recorder())
    try:
        await honest_round_trip(central)
    finally:
        await p.stop()
    assert not (air_dir / "car.sock").exists()  # stop removes its own socket


async def test_a_live_peripheral_keeps_its_name(
    car: tuple[SimPeripheral, Recorder], air_dir: Path, central: SimCentral
) -> None:
    twin = SimPeripheral("car", air_dir=air_dir)
    with pytest.raises(RadioError, match="already running"):
        await twin.start(Recorder())
    await twin.stop()  # never started: a no-op
    await honest_round_trip(central)


async def test_a_file_that_is_not_a_socket_is_left_alone(air_dir: Path) -> None:
    (air_dir / "car.sock").write_text("precious")
    with pytest.raises(RadioError, match="not a socket"):
        await SimPeripheral("car", air_dir=air_dir).start(Recorder())
    assert (air_dir / "car.sock").read_text() == "precious"


async def test_stop_leaves_a_socket_that_another_peripheral_took_over(air_dir: Path) -> None:
    p = SimPeripheral("car", air_dir=air_dir)
    await p.start(Recorder())
    p.path.unlink()  # someone cleaned up by hand and a new peripheral took the name
    q = SimPeripheral("car", air_dir=air_dir)
    await q.start(Recorder())
    try:
        await p.stop()
        assert q.path.exists()
    finally:
        await q.stop()


async def test_two_peripherals_with_different_names_are_both_seen(air_dir: Path, central: SimCentral) -> None:
    a, b = SimPeripheral("car-a", air_dir=air_dir, rssi=-70), SimPeripheral("car-b", air_dir=air_dir, rssi=-50)
    await a.start(Recorder())
    await b.start(Recorder())
    try:
        ads = await central.scan(1.0)
        assert [(x.name, x.rssi, x.address) for x in ads] == [
            ("car-b", -50, str(air_dir / "car-b.sock")),
            ("car-a", -70, str(air_dir / "car-a.sock")),
        ]
        assert all(x.service_uuids == (SERVICE_UUID,) for x in ads)
        await honest_round_trip(central, "car-a")
        await honest_round_trip(central, "car-b")
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("name", ["", "../car", "a/b", ".hidden", "x" * 65, "car.sock\n"])
def test_names_that_do_not_make_a_tame_file_name_are_refused(name: str, air_dir: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        SimPeripheral(name, air_dir=air_dir)


def test_a_socket_path_too_long_for_af_unix_is_refused(air_dir: Path) -> None:
    with pytest.raises(RadioError, match="too long"):
        SimPeripheral("c" * 64, air_dir=air_dir / ("d" * 60))


# ---------------------------------------------------------------- the air directory


def test_default_air_dir_is_per_user_unless_dkey_sim_dir_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DKEY_SIM_DIR", raising=False)
    assert default_air_dir() == Path(f"/tmp/dkey-sim-{os.getuid()}")
    monkeypatch.setenv("DKEY_SIM_DIR", "/somewhere/else")
    assert default_air_dir() == Path("/somewhere/else")
    assert SimCentral().air_dir == Path("/somewhere/else")


async def test_the_air_dir_is_created_private(air_dir: Path) -> None:
    p = SimPeripheral("car", air_dir=air_dir / "air")
    await p.start(Recorder())
    try:
        assert stat.S_IMODE(os.stat(air_dir / "air").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(p.path).st_mode) == 0o600
    finally:
        await p.stop()


async def test_an_air_dir_writable_by_others_is_refused(air_dir: Path) -> None:
    shared = air_dir / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    with pytest.raises(RadioError, match="writable by others"):
        await SimPeripheral("car", air_dir=shared).start(Recorder())


async def test_scanning_a_missing_air_dir_finds_nothing(air_dir: Path) -> None:
    assert await SimCentral(air_dir=air_dir / "nowhere").scan(0.05) == []


# ---------------------------------------------------------------- run-time knobs


async def test_set_rssi_is_seen_by_the_next_scan(car: tuple[SimPeripheral, Recorder], central: SimCentral) -> None:
    p, _ = car
    p.set_rssi(-88)
    assert [a.rssi for a in await central.scan(1.0)] == [-88]
    p.set_rssi(-33)
    assert [a.rssi for a in await central.scan(1.0)] == [-33]
    with pytest.raises(ValueError, match="rssi"):
        p.set_rssi(-129)


async def test_a_busy_peripheral_is_invisible_until_the_first_central_leaves(
    air_dir: Path, central: SimCentral
) -> None:
    p = SimPeripheral("car", air_dir=air_dir, advertise_while_connected=False)
    await p.start(Recorder())
    second = SimCentral(air_dir=air_dir, name="second")
    try:
        [adv] = await central.scan(1.0)
        first = await central.connect(adv)
        assert not p.advertising
        assert await second.scan(0.1) == []
        with pytest.raises(NotFound):
            await second.connect(adv, timeout=0.1)
        waiting = asyncio.create_task(second.connect(adv, timeout=3.0))
        await asyncio.sleep(0.05)
        await first.disconnect()
        conn = await asyncio.wait_for(waiting, 3.0)
        await conn.write(b"my turn")
    finally:
        await second.aclose()
        await p.stop()


# ---------------------------------------------------------------- separate processes


CHILD = r"""
import asyncio, sys
from pathlib import Path
from dkey_link.contract import AttError, AttErrorCode
from dkey_link.sim import SimPeripheral

class Echo:
    def __init__(self, p):
        self.p, self.tasks = p, set()
    def on_connect(self, link, mtu): pass
    def on_subscribe(self, link): pass
    def on_disconnect(self, link): pass
    def on_write(self, link, data):
        if data == b"refuse":
            raise AttError(AttErrorCode.APP_REJECTED)
        task = asyncio.get_running_loop().create_task(self.p.notify(b"echo:" + data, link))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

async def main():
    p = SimPeripheral("proc-car", air_dir=Path(sys.argv[1]), rssi=-42)
    await p.start(Echo(p))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await p.stop()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def child_peripheral(air_dir: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A sim peripheral in its own Python process; it stops when its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(air_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20.0) == b"ready\n"
        yield proc
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await proc.stdout.read()


async def test_peripheral_and_central_in_separate_processes(air_dir: Path, central: SimCentral) -> None:
    async with child_peripheral(air_dir) as proc:
        [adv] = await central.scan(5.0)
        assert (adv.name, adv.rssi) == ("proc-car", -42)
        conn = await central.connect(adv)
        got: list[bytes] = []
        await conn.subscribe(got.append)
        await conn.write(b"hello")
        await wait_until(lambda: got == [b"echo:hello"])
        with pytest.raises(AttError) as caught:
            await conn.write(b"refuse")
        assert caught.value.code == AttErrorCode.APP_REJECTED
        assert proc.stdin is not None
        proc.stdin.close()  # graceful stop: the central sees the disconnect
        await wait_until(lambda: not conn.is_connected, timeout=10.0)
        assert await proc.wait() == 0
    assert not (air_dir / "proc-car.sock").exists()


async def test_a_crashed_peripheral_process_drops_the_link_and_its_name_can_be_reused(
    air_dir: Path, central: SimCentral
) -> None:
    async with child_peripheral(air_dir) as proc:
        conn = await central.connect((await central.scan(5.0))[0])
        proc.kill()
        await proc.wait()
        await wait_until(lambda: not conn.is_connected, timeout=10.0)
        with pytest.raises(LinkLost):
            await conn.write(b"x")
    assert (air_dir / "proc-car.sock").exists()  # a SIGKILL leaves the socket file behind...
    assert await central.scan(0.1) == []  # ...which scans skip...
    async with child_peripheral(air_dir):  # ...and the next peripheral of that name replaces
        assert [a.name for a in await central.scan(5.0)] == ["proc-car"]
