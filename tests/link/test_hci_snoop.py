"""The VM tier's btsnoop reader (tests/deploy_vm/guest/hci_snoop.py) on a capture built here byte by byte, so the
privacy proof's decoder is itself checked on the host (the guest only has real captures)."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parents[1] / "deploy_vm" / "guest" / "hci_snoop.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hci_snoop", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hci_snoop", module)
    spec.loader.exec_module(module)
    return module


snoop = _load()
T0_US = 0x00DCDDB30F2F8000 + 1_700_000_000 * 1_000_000  # 2023-11-14 in btsnoop's year-0 microseconds


def _record(index: int, opcode: int, data: bytes, ts_us: int = T0_US) -> bytes:
    return struct.pack(">IIIIq", len(data), len(data), index << 16 | opcode, 0, ts_us) + data


def _capture(tmp_path: Path, *records: bytes, truncate: int = 0) -> Path:
    raw = b"btsnoop\0" + struct.pack(">II", 1, 2001) + b"".join(records)
    path = tmp_path / "c.snoop"
    path.write_bytes(raw[:len(raw) - truncate] if truncate else raw)
    return path


ADDR = bytes([0x11, 0x22, 0x33, 0x44, 0x55, 0x66])  # little-endian: 66:55:44:33:22:11 (top bits 01: an RPA)
AD = bytes([2, 0x01, 0x06, 5, 0x21]) + b"abcd"


def test_advertising_commands_reports_and_att_are_decoded(tmp_path: Path) -> None:
    ext_params = struct.pack("<BH", 1, 0x13) + (244).to_bytes(3, "little") + (244).to_bytes(3, "little") \
        + bytes([7, 1]) + bytes(12)
    cmds = [
        _record(0, 2, struct.pack("<HB", 0x2036, len(ext_params)) + ext_params),
        _record(0, 2, struct.pack("<HB", 0x2035, 7) + b"\x01" + ADDR),
        _record(0, 2, struct.pack("<HB", 0x2037, 4 + len(AD)) + bytes([1, 3, 1, len(AD)]) + AD),
        _record(0, 2, struct.pack("<HB", 0x2008, 32) + bytes([len(AD)]) + AD + bytes(31 - len(AD))),
    ]
    legacy_report = bytes([1, 0x00, 0x01]) + ADDR + bytes([len(AD)]) + AD + bytes([0xC4])
    event = bytes([0x3E, 1 + len(legacy_report), 0x02]) + legacy_report
    ext_report = (struct.pack("<H", 0x13) + bytes([1]) + ADDR + bytes([1, 0, 0xFF, 0x7F, 0xC4]) + bytes(2)
                  + bytes([0]) + bytes(6) + bytes([len(AD)]) + AD)
    ext_event = bytes([0x3E, 2 + len(ext_report), 0x0D, 1]) + ext_report
    notify = struct.pack("<HHHH", 0x0040 | 0x2000, 9, 5, 4) + bytes([0x1B, 0x10, 0x00]) + b"hi"
    write = struct.pack("<HHHH", 0x0040 | 0x2000, 11, 7, 4) + bytes([0x12, 0x12, 0x00]) + b"abcd"
    path = _capture(tmp_path, *cmds, _record(2, 3, event), _record(1, 3, ext_event), _record(0, 4, notify),
                    _record(0, 5, write))

    [(_, k1, params), (_, k2, addr), (_, k3, data), (_, k4, legacy)] = snoop.advertising(path)[0].events
    assert (k1, k2, k3, k4) == ("params", "random_address", "adv_data", "adv_data")
    assert params == {"min_units": 244, "max_units": 244, "properties": 0x13, "own_address_type": 1}
    assert addr == "66:55:44:33:22:11" and snoop.is_rpa(addr) and not snoop.is_rpa("C6:55:44:33:22:11")
    assert data == AD and legacy == AD
    assert snoop.ad_structures(AD + bytes(5)) == [(0x01, b"\x06"), (0x21, b"abcd")]  # zero padding ends it

    r2, r1 = snoop.reports(path)
    assert (r2.index, r2.address, r2.address_type, r2.data) == (2, "66:55:44:33:22:11", 1, AD)
    assert (r1.index, r1.address, r1.data) == (1, "66:55:44:33:22:11", AD)
    assert r2.ts == pytest.approx(1_700_000_000.0)

    sent, received = snoop.att_pdus(path, 0)
    assert (sent.sent, sent.handle, sent.opcode, sent.payload) == (True, 0x40, 0x1B, b"\x10\x00hi")
    assert (received.sent, received.opcode, received.payload) == (False, 0x12, b"\x12\x00abcd")


def test_a_truncated_last_record_is_skipped_and_other_files_are_refused(tmp_path: Path) -> None:
    path = _capture(tmp_path, _record(0, 2, struct.pack("<HB", 0x2005, 6) + ADDR),
                    _record(0, 2, struct.pack("<HB", 0x2005, 6) + ADDR), truncate=3)
    assert [e[2] for e in snoop.advertising(path)[0].events] == ["66:55:44:33:22:11"]
    bad = tmp_path / "bad"
    bad.write_bytes(b"notsnoop" + bytes(8))
    with pytest.raises(ValueError, match="not a btsnoop"):
        list(snoop.records(bad))
