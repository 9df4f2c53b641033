"""Simulated radio over Unix stream sockets: GATT semantics between separate processes, no Bluetooth needed.

A "sim air" is a directory (DKEY_SIM_DIR, else /tmp/dkey-sim-<uid>, mode 0700). Each peripheral listens on
`<dir>/<name>.sock`; a scan opens every socket and asks for its advertisement; a connection is one socket
carrying length-prefixed frames. docs/SIM_RADIO.md specifies the directory convention and every frame byte by
byte, so another tool can speak it.

Kept from GATT: the ATT MTU exchange (both sides use min of the two, clamped to 23..517); writes above MTU-3
refused with INVALID_ATTRIBUTE_VALUE_LENGTH; write with response answered with an ATT error code or 0, one
request outstanding per link; notifications only to subscribed links and truncated to MTU-3 like BlueZ does;
an RSSI in every advertisement that the peripheral process can change at run time (set_rssi).
A peer that breaks the framing loses its own link (with a log line); the peripheral and other links go on.
POSIX only (AF_UNIX stream sockets and flock).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import itertools
import logging
import os
import re
import socket
import stat
import struct
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

__all__ = [
    "MAX_ATT_MTU",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "FrameError",
    "Op",
    "SimCentral",
    "SimConnection",
    "SimPeripheral",
    "default_air_dir",
    "encode_frame",
    "parse_header",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 1024  # no frame carries more; bounds what a peer can make us buffer
HEADER = struct.Struct(">BH")  # opcode, payload length
SOCKET_SUFFIX = ".sock"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # the name is part of a file name: keep it tame
MAX_CENTRAL_NAME = 32
MAX_UUIDS = 8
MAX_SERVICE_DATA = 64  # service data bytes an ADV_RSP may carry (ours: the 10-byte token, PROTOCOL.md §13)

HANDSHAKE_TIMEOUT = 5.0  # a socket that sends no first frame in this time is closed; also bounds a connect
PROBE_TIMEOUT = 1.0  # a live peripheral answers ADV_REQ in milliseconds; a hung one must not stall every scan
ATT_TIMEOUT = 30.0  # ATT transaction timeout (Core Vol 3 Part F §3.3.3): after it the bearer is dead
POLL_INTERVAL = 0.05  # how often scan/connect look again while nothing answers
MAX_BUFFERED = 64 * 1024  # a central that stops reading this much is dropped, like a supervision timeout
MAX_SOCKETS = 32  # open sockets one peripheral serves at once; more are closed at once (flood guard)

# sun_path holds 108 bytes on Linux and 104 on the BSDs/macOS, including the terminating NUL.
_MAX_SUN_PATH = 107 if sys.platform.startswith("linux") else 103

ADV_FLAG_CONNECTABLE = 0x01
ADV_FLAG_SERVICE_DATA = 0x02  # the UUIDs are followed by the first UUID's service data: length (u8) + bytes
CONNECT_OK = 0x00
CONNECT_BUSY = 0x01  # not advertising (connected with advertise_while_connected=False, or full): retry later


class Op(enum.IntEnum):
    """Frame opcodes; C->P is central to peripheral, P->C the reverse."""

    ADV_REQ = 0x01  # C->P  version
    ADV_RSP = 0x02  # P->C  version, flags, rssi, n, n * uuid(16), [service data length + bytes], name
    CONNECT_REQ = 0x03  # C->P  version, mtu(2), central name
    CONNECT_RSP = 0x04  # P->C  version, status, mtu(2)
    WRITE_REQ = 0x10  # C->P  value (write with response)
    WRITE_RSP = 0x11  # P->C  ATT error code, 0 = success
    WRITE_CMD = 0x12  # C->P  value (write without response)
    SUBSCRIBE_REQ = 0x20  # C->P  (empty) enable notifications on TX
    SUBSCRIBE_RSP = 0x21  # P->C  ATT error code, 0 = success
    NOTIFY = 0x30  # P->C  value
    DISCONNECT = 0x40  # both  (empty) then the sender closes the socket


# Payload length bounds per opcode, checked on the header before a single payload byte is read.
_LENGTHS: dict[Op, tuple[int, int]] = {
    Op.ADV_REQ: (1, 1),
    Op.ADV_RSP: (4, 4 + 16 * MAX_UUIDS + 1 + MAX_SERVICE_DATA + 64),
    Op.CONNECT_REQ: (3, 3 + MAX_CENTRAL_NAME),
    Op.CONNECT_RSP: (4, 4),
    Op.WRITE_REQ: (0, MAX_PAYLOAD),  # over MTU-3 is well-framed but refused with an ATT error
    Op.WRITE_RSP: (1, 1),
    Op.WRITE_CMD: (0, MAX_PAYLOAD),
    Op.SUBSCRIBE_REQ: (0, 0),
    Op.SUBSCRIBE_RSP: (1, 1),
    Op.NOTIFY: (0, MAX_ATT_MTU - 3),
    Op.DISCONNECT: (0, 0),
}


class FrameError(RadioError):
    """A peer sent bytes that break the sim framing; the link carrying them is closed."""


def encode_frame(op: Op, payload: bytes = b"") -> bytes:
    """One frame: opcode, 2-byte big-endian payload length, payload (within the opcode's bounds)."""
    low, high = _LENGTHS[op]
    if not low <= len(payload) <= high:
        raise ValueError(f"{op.name} payload of {len(payload)} bytes is outside {low}..{high}")
    return HEADER.pack(op, len(payload)) + payload


def parse_header(header: bytes) -> tuple[Op, int]:
    """Opcode and payload length of a 3-byte header; FrameError if either is not allowed."""
    if len(header) != HEADER.size:
        raise FrameError(f"header of {len(header)} bytes")
    code, length = HEADER.unpack(header)
    try:
        op = Op(code)
    except ValueError:
        raise FrameError(f"unknown opcode 0x{code:02x}") from None
    low, high = _LENGTHS[op]
    if not low <= length <= high:
        raise FrameError(f"{op.name} with a {length}-byte payload (allowed {low}..{high})")
    return op, length


async def _read_frame(reader: asyncio.StreamReader, expect: Op | None = None) -> tuple[Op, bytes]:
    """The next frame (FrameError if it is not `expect`, when given); IncompleteReadError at EOF."""
    op, length = parse_header(await reader.readexactly(HEADER.size))
    if expect is not None and op is not expect:
        raise FrameError(f"{op.name} where {expect.name} was due")
    return op, (await reader.readexactly(length) if length else b"")


def _encode_adv(name: str, rssi: int, uuids: tuple[str, ...], connectable: bool,
                service_data: bytes | None = None) -> bytes:
    """An ADV_RSP payload; `service_data` (if any) belongs to the first UUID."""
    flags = ADV_FLAG_CONNECTABLE if connectable else 0
    data = b""
    if service_data is not None:
        if not uuids or len(service_data) > MAX_SERVICE_DATA:
            raise ValueError(f"service data needs a UUID and at most {MAX_SERVICE_DATA} bytes")
        flags |= ADV_FLAG_SERVICE_DATA
        data = bytes((len(service_data),)) + service_data
    head = struct.pack(">BBbB", PROTOCOL_VERSION, flags, rssi, len(uuids))
    return head + b"".join(uuid.UUID(u).bytes for u in uuids) + data + name.encode()


def _decode_adv(payload: bytes) -> tuple[str, int, tuple[str, ...], bool, bytes | None]:
    """(name, rssi, service uuids, connectable, service data of the first uuid) of an ADV_RSP payload."""
    version, flags, rssi, count = struct.unpack_from(">BBbB", payload)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"advertisement of protocol version {version}")
    if flags & ~(ADV_FLAG_CONNECTABLE | ADV_FLAG_SERVICE_DATA):
        raise FrameError(f"advertisement with unknown flags 0x{flags:02x}")
    if count > MAX_UUIDS or len(payload) < 4 + 16 * count:
        raise FrameError("advertisement with a bad uuid count")
    uuids = tuple(str(uuid.UUID(bytes=payload[4 + 16 * i : 20 + 16 * i])) for i in range(count))
    at = 4 + 16 * count
    service_data: bytes | None = None
    if flags & ADV_FLAG_SERVICE_DATA:
        if count == 0 or len(payload) <= at or payload[at] > MAX_SERVICE_DATA or len(payload) < at + 1 + payload[at]:
            raise FrameError("advertisement with bad service data")
        service_data = payload[at + 1 : at + 1 + payload[at]]
        at += 1 + payload[at]
    try:
        name = payload[at:].decode()
    except UnicodeDecodeError:
        raise FrameError("advertised name is not UTF-8") from None
    if not NAME_RE.fullmatch(name):
        raise FrameError("advertised name is not a valid peripheral name")
    return name, rssi, uuids, bool(flags & ADV_FLAG_CONNECTABLE), service_data


def _expect_op(op: Op, wanted: Op) -> None:
    if op is not wanted:
        raise FrameError(f"{op.name} where {wanted.name} was due")


def _decode_connect_rsp(payload: bytes) -> tuple[int, int]:
    """(status, peripheral MTU) of a CONNECT_RSP payload."""
    version, status, mtu = struct.unpack(">BBH", payload)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"peripheral speaks protocol version {version}")
    return status, mtu


def _effective_mtu(ours: int, theirs: int) -> int:
    """ATT MTU exchange: both sides use the smaller of the two, never below 23 (Core Vol 3 Part F §3.4.2)."""
    return max(DEFAULT_ATT_MTU, min(ours, theirs, MAX_ATT_MTU))


def default_air_dir() -> Path:
    """$DKEY_SIM_DIR, else /tmp/dkey-sim-<uid>."""
    env = os.environ.get("DKEY_SIM_DIR")
    # A fixed per-user path (not a fresh temp dir) is the point: separate processes must meet there.
    # _ensure_air_dir refuses a directory someone else planted.
    return Path(env) if env else Path(f"/tmp/dkey-sim-{os.getuid()}")  # noqa: S108


def _ensure_air_dir(path: Path) -> Path:
    """Create the air directory 0700 if needed; refuse one owned by someone else or writable by others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RadioError(f"sim air {path} is not a directory")
    if st.st_uid != os.getuid():
        raise RadioError(f"sim air {path} belongs to uid {st.st_uid}, not to us; set DKEY_SIM_DIR")
    if st.st_mode & 0o022:
        raise RadioError(f"sim air {path} is writable by others (mode {st.st_mode & 0o777:o}); chmod 700 it")
    return path


def _socket_answers(path: Path) -> bool:
    """True if a live process accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            # A full backlog (EAGAIN) still means someone is there; be safe and say it answers.
            log.debug("probing %s: %s", path, exc)
            return True
        return True


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# ---------------------------------------------------------------- vehicle (peripheral) side


class _PeerLink:
    """One connected central as the peripheral sees it."""

    def __init__(self, link_id: str, writer: asyncio.StreamWriter, mtu: int, task: asyncio.Task[Any]) -> None:
        self.id = link_id
        self.writer = writer
        self.mtu = mtu
        self.task = task  # the _serve task reading this link
        self.subscribed = False
        self.closed = False

    def send(self, op: Op, payload: bytes = b"") -> None:
        """Queue one frame; never blocks (a central that stops reading is dropped instead)."""
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(encode_frame(op, payload))


class SimPeripheral:
    """A vehicle-side radio listening on `<air_dir>/<name>.sock`; implements base.Peripheral."""

    notify_targets_one_link = True

    def __init__(
        self,
        name: str,
        *,
        air_dir: Path | None = None,
        rssi: int = -55,
        mtu: int = 247,
        advertise_while_connected: bool = True,
    ) -> None:
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"sim peripheral name {name!r} must match {NAME_RE.pattern}")
        if not DEFAULT_ATT_MTU <= mtu <= MAX_ATT_MTU:
            raise ValueError(f"mtu must be in {DEFAULT_ATT_MTU}..{MAX_ATT_MTU}")
        self.name = name
        self.air_dir = air_dir if air_dir is not None else default_air_dir()
        self.path = self.air_dir / f"{name}{SOCKET_SUFFIX}"
        if len(os.fsencode(self.path)) > _MAX_SUN_PATH:
            raise RadioError(f"socket path {self.path} is too long for AF_UNIX; set a shorter DKEY_SIM_DIR")
        self.mtu = mtu
        self.advertise_while_connected = advertise_while_connected
        self.service_uuids: tuple[str, ...] = (SERVICE_UUID,)
        self.token: bytes | None = None  # service data of SERVICE_UUID in every ADV_RSP (advertise_token)
        self.set_rssi(rssi)
        self._handler: PeripheralHandler | None = None
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._links: dict[str, _PeerLink] = {}
        self._sockets: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  # every accepted socket, by its task
        self._link_ids = itertools.count(1)

    @property
    def rssi(self) -> int:
        """The RSSI the next scan reports."""
        return self._rssi

    def set_rssi(self, value: int) -> None:
        """Report `value` dBm in advertisements from now on (e.g. to walk a device away)."""
        if not -128 <= value <= 127:
            raise ValueError("rssi must fit a signed byte")
        self._rssi = value

    async def advertise_token(self, token: bytes) -> None:
        """Send `token` as the service data of SERVICE_UUID in every ADV_RSP from now on."""
        if len(token) > MAX_SERVICE_DATA:
            raise ValueError(f"service data is at most {MAX_SERVICE_DATA} bytes")
        self.token = bytes(token)

    @property
    def advertising(self) -> bool:
        """True while scans can see it and centrals can connect."""
        return self._server is not None and (self.advertise_while_connected or not self._links)

    @property
    def links(self) -> tuple[str, ...]:
        """Ids of the centrals connected right now."""
        return tuple(self._links)

    async def start(self, handler: PeripheralHandler) -> None:
        """Listen on the socket (claiming a stale one) and deliver events to `handler`."""
        if self._server is not None:
            raise RadioError(f"sim peripheral {self.name} already started")
        _ensure_air_dir(self.air_dir)
        sock = self._claim_socket()
        self._handler = handler
        try:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            self._release_socket()
            raise
        log.info("sim peripheral %s advertising on %s", self.name, self.path)

    def _claim_socket(self) -> socket.socket:
        """Bind `<name>.sock`, removing a stale file only if nobody answers on it."""
        # The directory lock makes probe-unlink-bind atomic between processes starting at once.
        dir_fd = os.open(self.air_dir, os.O_RDONLY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            if os.path.lexists(self.path):
                if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    raise RadioError(f"{self.path} exists and is not a socket; not touching it")
                if _socket_answers(self.path):
                    raise RadioError(f"a sim peripheral named {self.name!r} is already running ({self.path})")
                log.info("removing stale sim socket %s", self.path)
                self.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self.path))
                os.chmod(self.path, 0o600)
                sock.listen(MAX_SOCKETS)
                sock.setblocking(False)
                st = os.stat(self.path)
            except BaseException:
                sock.close()
                raise
            self._inode = (st.st_dev, st.st_ino)
            return sock
        finally:
            os.close(dir_fd)  # also releases the flock

    def _release_socket(self) -> None:
        """Remove our socket file, unless another peripheral has replaced it since."""
        inode, self._inode = self._inode, None
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if inode == (st.st_dev, st.st_ino):
                self.path.unlink()

    async def notify(self, data: bytes, link: str | None = None) -> None:
        """Notify `link`, or every subscriber if None; truncated to each link's MTU-3; gone links ignored."""
        if link is None:
            targets = list(self._links.values())
        else:
            targets = [self._links[link]] if link in self._links else []
        for target in targets:
            if target.subscribed:
                self._send(target, Op.NOTIFY, bytes(data[: target.mtu - 3]))

    def _send(self, link: _PeerLink, op: Op, payload: bytes = b"") -> None:
        link.send(op, payload)
        transport = link.writer.transport
        if not link.closed and transport.get_write_buffer_size() > MAX_BUFFERED:
            log.warning("sim peripheral %s: %s stopped reading, dropping it", self.name, link.id)
            self._close_link(link, abort=True)

    async def disconnect(self, link: str) -> None:
        """Drop one link (on_disconnect runs before this returns); unknown links are ignored."""
        found = self._links.get(link)
        if found is None:
            return
        self._close_link(found)
        if found.task is not asyncio.current_task():
            await asyncio.gather(found.task, return_exceptions=True)

    async def stop(self) -> None:
        """Stop advertising, drop every link and remove the socket file; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for _ in range(3):
            await asyncio.sleep(0)  # let accepts already in flight reach _serve, which now refuses them
        for link in list(self._links.values()):
            self._close_link(link)
        # Closing a socket ends its _serve task at its next read; cancelling would make asyncio's
        # client_connected_cb bookkeeping log a spurious error on Python 3.11.
        for writer in self._sockets.values():
            writer.close()
        tasks = [t for t in self._sockets if t is not asyncio.current_task()]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=1.0)
            for task in stuck:  # a peer that does not read keeps close() flushing: cut it off
                self._sockets[task].transport.abort()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._release_socket()
        self._handler = None
        log.info("sim peripheral %s stopped", self.name)

    def _close_link(self, link: _PeerLink, *, abort: bool = False) -> None:
        """Tear a link down from our side: tell the central, close, and report on_disconnect once."""
        if link.closed:
            return
        if abort:
            link.writer.transport.abort()  # a central that stopped reading gets no goodbye frame
        else:
            link.send(Op.DISCONNECT)
            link.writer.close()
        link.closed = True
        self._links.pop(link.id, None)
        call_handler(log, self.name, self._handler, "on_disconnect", link.id)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One accepted socket: an advertisement probe or a connection, until either side leaves."""
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - asyncio runs client_connected_cb coroutines as tasks
        self._sockets[task] = writer
        link: _PeerLink | None = None
        try:
            if self._server is None:
                return  # accepted just before stop(): hang up
            if len(self._sockets) > MAX_SOCKETS:
                log.warning("sim peripheral %s: %d sockets open, refusing one more", self.name, MAX_SOCKETS)
                return
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                op, payload = await _read_frame(reader)
            if op is Op.ADV_REQ:
                self._check_version(payload[0])
                adv = _encode_adv(self.name, self._rssi, self.service_uuids, self.advertising, self.token)
                writer.write(encode_frame(Op.ADV_RSP, adv))
                with contextlib.suppress(OSError):
                    await writer.drain()
                return
            _expect_op(op, Op.CONNECT_REQ)
            link = self._accept(writer, payload, task)
            if link is not None:
                await self._run_link(reader, link)
        except FrameError as exc:
            where = link.id if link is not None else "a socket before CONNECT_REQ"
            log.warning("sim peripheral %s: closing %s: malformed frame: %s", self.name, where, exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the central left (a scan probe, a disconnect, or a crash): that is a disconnect
        except TimeoutError:
            log.info("sim peripheral %s: a socket sent nothing for %s s, closed", self.name, HANDSHAKE_TIMEOUT)
        except OSError as exc:
            log.info("sim peripheral %s: socket error: %s", self.name, exc)
        finally:
            if link is not None:
                self._close_link(link)
            self._sockets.pop(task, None)
            await _close_writer(writer)

    @staticmethod
    def _check_version(version: int) -> None:
        if version != PROTOCOL_VERSION:
            raise FrameError(f"protocol version {version}, we speak {PROTOCOL_VERSION}")

    def _accept(self, writer: asyncio.StreamWriter, payload: bytes, task: asyncio.Task[Any]) -> _PeerLink | None:
        """Answer a CONNECT_REQ; the new link, or None if we are busy."""
        self._check_version(payload[0])
        (their_mtu,) = struct.unpack_from(">H", payload, 1)
        if not self.advertising:
            writer.write(encode_frame(Op.CONNECT_RSP, struct.pack(">BBH", PROTOCOL_VERSION, CONNECT_BUSY, self.mtu)))
            return None
        # The peer's name only decorates the link id: keep it printable and file-name tame for logs.
        peer = re.sub(r"[^A-Za-z0-9._-]", "_", payload[3:].decode(errors="replace")) or "central"
        link = _PeerLink(f"{peer}#{next(self._link_ids)}", writer, _effective_mtu(self.mtu, their_mtu), task)
        self._links[link.id] = link
        link.send(Op.CONNECT_RSP, struct.pack(">BBH", PROTOCOL_VERSION, CONNECT_OK, self.mtu))
        log.debug("sim peripheral %s: %s connected, mtu %d", self.name, link.id, link.mtu)
        call_handler(log, self.name, self._handler, "on_connect", link.id, link.mtu)
        return link

    async def _run_link(self, reader: asyncio.StreamReader, link: _PeerLink) -> None:
        """Serve one connected central's frames in order until it leaves or misbehaves."""
        while not link.closed:
            op, payload = await _read_frame(reader)
            if op is Op.WRITE_REQ:
                self._send(link, Op.WRITE_RSP, bytes([self._deliver_write(link, payload)]))
            elif op is Op.WRITE_CMD:
                code = self._deliver_write(link, payload)
                if code:
                    log.debug("sim peripheral %s: write command on %s refused 0x%02x", self.name, link.id, code)
            elif op is Op.SUBSCRIBE_REQ:
                # Record the subscription before on_subscribe so a notification sent in reaction reaches
                # this central, as BlueZ does (it stores the CCC value right after calling StartNotify).
                link.subscribed = True
                call_handler(log, self.name, self._handler, "on_subscribe", link.id)
                self._send(link, Op.SUBSCRIBE_RSP, b"\x00")
            elif op is Op.DISCONNECT:
                return
            else:
                raise FrameError(f"{op.name} from a central")

    def _deliver_write(self, link: _PeerLink, data: bytes) -> int:
        """Hand one write to the handler; the ATT error code to answer with (0 = success)."""
        if len(data) > link.mtu - 3:
            return AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH
        if self._handler is None:
            return AttErrorCode.UNLIKELY_ERROR
        try:
            self._handler.on_write(link.id, data)
        except AttError as exc:
            return exc.code if 0 < exc.code <= 0xFF else AttErrorCode.UNLIKELY_ERROR
        except Exception:
            log.exception("sim peripheral %s: handler.on_write raised", self.name)
            return AttErrorCode.UNLIKELY_ERROR
        return 0


# ---------------------------------------------------------------- device (central) side


class SimConnection:
    """A central's link to a SimPeripheral; implements base.Connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mtu: int, label: str) -> None:
        self.mtu = mtu
        self.max_write_size = mtu - 3
        self.label = label
        self._reader = reader
        self._writer = writer
        self._connected = True
        self._on_notify: Callable[[bytes], None] | None = None
        self._pending: tuple[Op, asyncio.Future[int]] | None = None
        self._request_lock = asyncio.Lock()  # ATT allows one outstanding request per bearer
        self._task = asyncio.create_task(self._read_loop(), name=f"sim-link {label}")
        self.on_close: Callable[[SimConnection], None] | None = None

    @property
    def is_connected(self) -> bool:
        """False once the link dropped, from either side."""
        return self._connected

    async def _read_loop(self) -> None:
        try:
            while self._on_frame(*await _read_frame(self._reader)):
                pass
        except FrameError as exc:
            log.warning("sim central: closing %s: malformed frame: %s", self.label, exc)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the peripheral left or crashed: that is a disconnect
        finally:
            self._lost()

    def _on_frame(self, op: Op, payload: bytes) -> bool:
        """Handle one frame from the peripheral; False once it said goodbye."""
        if op is Op.NOTIFY:
            if len(payload) > self.max_write_size:
                raise FrameError(f"notification of {len(payload)} bytes above MTU-3")
            if self._on_notify is not None:
                try:
                    self._on_notify(payload)
                except Exception:
                    log.exception("sim central: on_notify raised on %s", self.label)
        elif op in (Op.WRITE_RSP, Op.SUBSCRIBE_RSP):
            # Only one request is ever outstanding, so an answer is either the one awaited or a lie.
            if self._pending is None or self._pending[0] is not op or self._pending[1].done():
                raise FrameError(f"unsolicited {op.name}")
            self._pending[1].set_result(payload[0])
        elif op is Op.DISCONNECT:
            return False
        else:
            raise FrameError(f"{op.name} from a peripheral")
        return True

    def _lost(self) -> None:
        """The link is down: fail the waiting request and close the socket."""
        if not self._connected:
            return
        self._connected = False
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(LinkLost(f"link {self.label} dropped"))
        self._writer.close()
        if self.on_close is not None:
            self.on_close(self)

    async def _send(self, op: Op, payload: bytes = b"") -> None:
        if not self._connected:
            raise LinkLost(f"link {self.label} is down")
        try:
            self._writer.write(encode_frame(op, payload))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._lost()
            raise LinkLost(f"link {self.label} dropped") from exc

    async def _request(self, op: Op, answer_op: Op, payload: bytes = b"") -> int:
        async with self._request_lock:
            answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending = (answer_op, answer)
            try:
                await self._send(op, payload)
                try:
                    async with asyncio.timeout(ATT_TIMEOUT):
                        return await answer
                except TimeoutError:
                    self._lost()
                    raise LinkLost(f"no answer on {self.label} within {ATT_TIMEOUT} s") from None
            finally:
                self._pending = None

    async def subscribe(self, on_notify: Callable[[bytes], None]) -> None:
        """Enable notifications; `on_notify` is installed before the peripheral learns of it."""
        if not self._connected:
            raise LinkLost(f"link {self.label} is down")
        self._on_notify = on_notify
        code = await self._request(Op.SUBSCRIBE_REQ, Op.SUBSCRIBE_RSP)
        if code:
            raise AttError(code)

    async def write(self, data: bytes, *, response: bool = True) -> None:
        """Write one chunk to RX; raises AttError or LinkLost."""
        if not self._connected:
            raise LinkLost(f"link {self.label} is down")
        if len(data) > self.max_write_size:
            raise AttError(
                AttErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH,
                f"write of {len(data)} bytes exceeds the link's {self.max_write_size}",
            )
        if not response:
            await self._send(Op.WRITE_CMD, bytes(data))
            return
        code = await self._request(Op.WRITE_REQ, Op.WRITE_RSP, bytes(data))
        if code:
            raise AttError(code)

    async def disconnect(self) -> None:
        """Leave; idempotent."""
        if self._connected:
            with contextlib.suppress(OSError):
                self._writer.write(encode_frame(Op.DISCONNECT))
            self._lost()
        await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class SimCentral:
    """A device-side radio on a sim air directory; implements base.Central."""

    def __init__(self, *, air_dir: Path | None = None, mtu: int = 247, name: str = "central") -> None:
        if mtu < DEFAULT_ATT_MTU:
            raise ValueError(f"mtu must be >= {DEFAULT_ATT_MTU}")
        self.air_dir = air_dir if air_dir is not None else default_air_dir()
        self.mtu = mtu
        self.name = name
        self._connections: set[SimConnection] = set()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RadioError("sim central is closed")

    async def scan(self, timeout: float, service_uuid: str = SERVICE_UUID, *,
                   until: Callable[[Advertisement], bool] | None = None) -> list[Advertisement]:
        """Connectable advertisers of `service_uuid`, strongest first; returns once any is seen (with `until`: one
        it accepts), else at timeout."""
        self._check_open()
        wanted = str(uuid.UUID(service_uuid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            try:
                paths = sorted(p for p in self.air_dir.glob(f"*{SOCKET_SUFFIX}"))
            except OSError:
                paths = []  # no air directory yet: nobody advertises
            probe_time = max(0.01, min(PROBE_TIMEOUT, deadline - loop.time()))
            seen = await asyncio.gather(*(self._probe(p, probe_time) for p in paths))
            found = [adv for adv in seen if adv is not None and wanted in adv.service_uuids]
            remaining = deadline - loop.time()
            if (any(until(a) for a in found) if until is not None else found) or remaining <= 0:
                return sorted(found, key=lambda adv: adv.rssi, reverse=True)
            await asyncio.sleep(min(POLL_INTERVAL, remaining))

    async def _probe(self, path: Path, timeout: float) -> Advertisement | None:
        """Ask the socket at `path` for its advertisement; None if stale, silent, garbled or not connectable."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(encode_frame(Op.ADV_REQ, bytes([PROTOCOL_VERSION])))
                    _, payload = await _read_frame(reader, expect=Op.ADV_RSP)
                finally:
                    await _close_writer(writer)
            name, rssi, uuids, connectable, service_data = _decode_adv(payload)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            log.debug("sim scan: skipping %s: %s", path, exc)
            return None
        if not connectable:
            return None
        if service_data is not None and uuids[0] != str(uuid.UUID(SERVICE_UUID)):
            service_data = None  # Advertisement.service_data is our service's only
        return Advertisement(address=str(path), name=name, service_uuids=uuids, rssi=rssi,
                             service_data=service_data, handle=path)

    async def connect(self, adv: Advertisement, timeout: float = 10.0) -> SimConnection:
        """Connect and exchange MTUs, retrying while the peripheral is busy; NotFound after `timeout`."""
        self._check_open()
        path = adv.handle if isinstance(adv.handle, Path) else Path(adv.address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotFound(f"{adv.name or path} not connectable within {timeout} s")
            conn = await self._try_connect(path, remaining)
            if conn is not None:
                self._connections.add(conn)
                conn.on_close = self._connections.discard
                return conn
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))

    async def _try_connect(self, path: Path, timeout: float) -> SimConnection | None:
        """One connection attempt: a connection, None if nobody answers or it is busy; FrameError if garbled."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(path))
        except (OSError, TimeoutError) as exc:
            log.debug("sim connect to %s: %s", path, exc)
            return None
        try:
            name = self.name.encode()[:MAX_CENTRAL_NAME]
            writer.write(encode_frame(Op.CONNECT_REQ, struct.pack(">BH", PROTOCOL_VERSION, self.mtu) + name))
            async with asyncio.timeout(min(timeout, HANDSHAKE_TIMEOUT)):
                _, payload = await _read_frame(reader, expect=Op.CONNECT_RSP)
            status, their_mtu = _decode_connect_rsp(payload)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await _close_writer(writer)
            log.debug("sim connect to %s: %s", path, exc)
            return None
        except BaseException:
            await _close_writer(writer)
            raise
        if status != CONNECT_OK:
            await _close_writer(writer)
            return None
        return SimConnection(reader, writer, _effective_mtu(self.mtu, their_mtu), f"{path.stem}")

    async def aclose(self) -> None:
        """Disconnect every connection of this central; idempotent."""
        self._closed = True
        for conn in list(self._connections):
            await conn.disconnect()
