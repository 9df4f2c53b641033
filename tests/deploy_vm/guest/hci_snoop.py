"""A small reader for `btmon -w` captures (btsnoop, datalink 2001 "Linux monitor"): what each controller was told
to put on air, what each scanner received, and the ATT values sent over the links. Written for the privacy test
(issue 13 item 4) so that the proof does not rest on btmon's text decoder; it decodes only what that test needs.

btsnoop: a 16-byte header ("btsnoop\\0", version 1, datalink 2001), then records of orig_len, incl_len, flags,
drops (4 bytes each, big-endian), a timestamp (8 bytes, microseconds since year 0) and the packet. In the monitor
datalink, flags = controller index << 16 | opcode (2 = HCI command, 3 = HCI event, 4/5 = ACL sent/received).
HCI field layouts: Bluetooth Core 5.3 Vol 4 Part E §7.8 (LE commands and events).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

OP_COMMAND, OP_EVENT, OP_ACL_TX, OP_ACL_RX = 2, 3, 4, 5
_EPOCH_DELTA_US = 0x00DCDDB30F2F8000  # btsnoop timestamps count from year 0; this is 1970-01-01

# LE commands (OGF 0x08) that set what goes on air
LE_SET_RANDOM_ADDRESS = 0x2005
LE_SET_ADV_PARAMS = 0x2006
LE_SET_ADV_DATA = 0x2008
LE_SET_SCAN_RSP_DATA = 0x2009
LE_SET_ADV_ENABLE = 0x200A
LE_SET_ADV_SET_RANDOM_ADDRESS = 0x2035
LE_SET_EXT_ADV_PARAMS = 0x2036
LE_SET_EXT_ADV_DATA = 0x2037
LE_SET_EXT_SCAN_RSP_DATA = 0x2038
LE_SET_EXT_ADV_ENABLE = 0x2039
LE_REMOVE_ADV_SET = 0x203C
LE_CLEAR_ADV_SETS = 0x203D


@dataclass(frozen=True)
class Record:
    ts: float  # seconds since 1970 (the guest's clock)
    index: int  # controller index: hciN -> N
    opcode: int
    data: bytes


@dataclass
class AdvState:
    """What one advertising controller was told, in order: (ts, kind, value) with kind one of
    'random_address' (str), 'adv_data' (bytes), 'scan_rsp' (bytes), 'params' (dict), 'enable' (bool)."""

    events: list[tuple[float, str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """One advertising report a scanner received (legacy or extended)."""

    ts: float
    index: int
    address: str
    address_type: int  # 0 public, 1 random (2/3: resolved identity addresses)
    event_type: int
    data: bytes


def records(path: Path) -> Iterator[Record]:
    """Every record of a btmon capture; a truncated last record (btmon killed mid-write) is skipped."""
    raw = path.read_bytes()
    if raw[:8] != b"btsnoop\0":
        raise ValueError(f"{path}: not a btsnoop file")
    _version, datalink = struct.unpack(">II", raw[8:16])
    if datalink != 2001:
        raise ValueError(f"{path}: datalink {datalink}, expected 2001 (btmon monitor)")
    pos = 16
    while pos + 24 <= len(raw):
        _orig, incl, flags, _drops, ts = struct.unpack(">IIIIq", raw[pos:pos + 24])
        pos += 24
        if pos + incl > len(raw):
            return
        yield Record((ts - _EPOCH_DELTA_US) / 1e6, flags >> 16, flags & 0xFFFF, raw[pos:pos + incl])
        pos += incl


def address(raw: bytes) -> str:
    """A little-endian 6-byte BD_ADDR as AA:BB:CC:DD:EE:FF."""
    return ":".join(f"{b:02X}" for b in reversed(raw))


def is_rpa(addr: str) -> bool:
    """A resolvable private address: random, the two top bits 0b01."""
    return int(addr[:2], 16) >> 6 == 0b01


def ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    """The (AD type, value) pairs of advertising or scan response data; stops at a zero length (padding)."""
    found, pos = [], 0
    while pos < len(data):
        length = data[pos]
        if length == 0 or pos + 1 + length > len(data):
            break
        found.append((data[pos + 1], bytes(data[pos + 2:pos + 1 + length])))
        pos += 1 + length
    return found


def advertising(path: Path) -> dict[int, AdvState]:
    """Per controller index: every advertising command the host sent it, in capture order."""
    states: dict[int, AdvState] = {}
    for rec in records(path):
        if rec.opcode != OP_COMMAND or len(rec.data) < 3:
            continue
        opcode, plen = struct.unpack("<HB", rec.data[:3])
        p = rec.data[3:3 + plen]
        state = states.setdefault(rec.index, AdvState())
        if opcode == LE_SET_RANDOM_ADDRESS and len(p) >= 6:
            state.events.append((rec.ts, "random_address", address(p[:6])))
        elif opcode == LE_SET_ADV_SET_RANDOM_ADDRESS and len(p) >= 7:
            state.events.append((rec.ts, "random_address", address(p[1:7])))
        elif opcode == LE_SET_ADV_DATA and len(p) >= 1:
            state.events.append((rec.ts, "adv_data", bytes(p[1:1 + p[0]])))
        elif opcode == LE_SET_SCAN_RSP_DATA and len(p) >= 1:
            state.events.append((rec.ts, "scan_rsp", bytes(p[1:1 + p[0]])))
        elif opcode == LE_SET_EXT_ADV_DATA and len(p) >= 4:
            state.events.append((rec.ts, "adv_data", bytes(p[4:4 + p[3]])))
        elif opcode == LE_SET_EXT_SCAN_RSP_DATA and len(p) >= 4:
            state.events.append((rec.ts, "scan_rsp", bytes(p[4:4 + p[3]])))
        elif opcode in (LE_SET_ADV_ENABLE, LE_SET_EXT_ADV_ENABLE) and len(p) >= 1:
            state.events.append((rec.ts, "enable", p[0] == 1))
        elif opcode in (LE_REMOVE_ADV_SET, LE_CLEAR_ADV_SETS):  # how the kernel ends an extended advertisement
            state.events.append((rec.ts, "enable", False))
        elif opcode == LE_SET_ADV_PARAMS and len(p) >= 6:
            lo, hi, kind, own = struct.unpack("<HHBB", p[:6])
            state.events.append((rec.ts, "params", {"min_units": lo, "max_units": hi, "type": kind,
                                                    "own_address_type": own}))
        elif opcode == LE_SET_EXT_ADV_PARAMS and len(p) >= 11:
            lo = int.from_bytes(p[3:6], "little")
            hi = int.from_bytes(p[6:9], "little")
            state.events.append((rec.ts, "params", {"min_units": lo, "max_units": hi,
                                                    "properties": int.from_bytes(p[1:3], "little"),
                                                    "own_address_type": p[10]}))
    return states


def reports(path: Path) -> list[Report]:
    """Every LE (extended) advertising report any controller delivered to its host."""
    found: list[Report] = []
    for rec in records(path):
        if rec.opcode != OP_EVENT or len(rec.data) < 4 or rec.data[0] != 0x3E:
            continue
        sub, body = rec.data[2], rec.data[3:]
        if sub == 0x02:  # LE Advertising Report
            num, pos = body[0], 1
            for _ in range(num):
                if pos + 9 > len(body):
                    break
                etype, atype = body[pos], body[pos + 1]
                addr = address(body[pos + 2:pos + 8])
                dlen = body[pos + 8]
                data = bytes(body[pos + 9:pos + 9 + dlen])
                found.append(Report(rec.ts, rec.index, addr, atype, etype, data))
                pos += 9 + dlen + 1  # + RSSI
        elif sub == 0x0D:  # LE Extended Advertising Report
            num, pos = body[0], 1
            for _ in range(num):
                if pos + 24 > len(body):
                    break
                etype = int.from_bytes(body[pos:pos + 2], "little")
                atype = body[pos + 2]
                addr = address(body[pos + 3:pos + 9])
                dlen = body[pos + 23]
                data = bytes(body[pos + 24:pos + 24 + dlen])
                found.append(Report(rec.ts, rec.index, addr, atype, etype, data))
                pos += 24 + dlen
    return found


@dataclass(frozen=True)
class AttPdu:
    ts: float
    sent: bool  # True: the host of this controller sent it; False: it came from the peer
    handle: int  # ACL connection handle
    opcode: int  # ATT opcode (0x12 write request, 0x1b notification, 0x0b read response, ...)
    payload: bytes  # the ATT PDU after its opcode


def att_pdus(path: Path, index: int) -> list[AttPdu]:
    """The ATT PDUs over controller `index`'s links, both ways: first fragments on the fixed ATT channel 0x0004
    (whole PDUs up to the ACL buffer size, enough for the pre-authentication traffic of a few dozen bytes)."""
    found = []
    for rec in records(path):
        if rec.index != index or rec.opcode not in (OP_ACL_TX, OP_ACL_RX) or len(rec.data) < 9:
            continue
        handle_flags, _acl_len, _l2_len, cid = struct.unpack("<HHHH", rec.data[:8])
        if cid != 0x0004 or (handle_flags >> 12) & 0x3 == 0x1:  # not ATT, or a continuation fragment
            continue
        found.append(AttPdu(rec.ts, rec.opcode == OP_ACL_TX, handle_flags & 0x0FFF, rec.data[8],
                            bytes(rec.data[9:])))
    return found
