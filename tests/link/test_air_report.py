"""The deploy tier's privacy verdicts (tests/deploy_vm/guest/air_report.py) on captures built here byte by byte:
an honest air passes, and each way a passer-by could follow the car is caught."""

from __future__ import annotations

import importlib.util
import struct
import sys
import uuid
from pathlib import Path
from types import ModuleType

from tests.link.test_hci_snoop import T0_US, _capture, _record

_GUEST = Path(__file__).resolve().parents[1] / "deploy_vm" / "guest"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, _GUEST / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


_load("hci_snoop")
air = _load("air_report")

UUID = "7d4f0001-5e2a-4c1b-9f3a-6b1c2d3e4f50"
KEY = uuid.UUID(UUID).bytes[::-1]
VEHICLE_ID = bytes.fromhex("c8195918aabbccdd")
PUBLIC = bytes([0, 0, 0, 0x01, 0xAA, 0x00])  # 00:AA:01:00:00:00, btvirt's first controller


def _rpa(n: int) -> bytes:
    return bytes([n, 2, 3, 4, 5, 0x40 | n])  # top bits 01: resolvable private


def _ad(token: bytes, *extra: bytes) -> bytes:
    body = KEY + token
    return bytes([2, 0x01, 0x06, len(body) + 1, 0x21]) + body + b"".join(extra)


def _cmd(opcode: int, params: bytes, t: int) -> bytes:
    return _record(0, 2, struct.pack("<HB", opcode, len(params)) + params, T0_US + t * 1_000_000)


def _period(address: bytes, token: bytes, t: int, *extra: bytes) -> list[bytes]:
    """What the kernel sends to set up one extended advertising set: parameters, the set's address, its data."""
    params = struct.pack("<BH", 1, 0x13) + (244).to_bytes(3, "little") * 2 + bytes([7, 1]) + bytes(12)
    ad = _ad(token, *extra)
    return [_cmd(0x2039, b"\x00", t), _cmd(0x2036, params, t), _cmd(0x2035, b"\x01" + address, t),
            _cmd(0x2037, bytes([1, 3, 1, len(ad)]) + ad, t), _cmd(0x2039, b"\x01\x01\x01" + bytes(3), t)]


def _report(index: int, address: bytes, data: bytes, t: int) -> bytes:
    body = bytes([1, 0x00, 0x01]) + address + bytes([len(data)]) + data + bytes([0xC4])
    return _record(index, 3, bytes([0x3E, 1 + len(body), 0x02]) + body, T0_US + t * 1_000_000)


def _notify(payload: bytes, t: int, handle: int = 0x40) -> bytes:
    att = bytes([0x1B, 0x10, 0x00]) + payload
    return _record(0, 4, struct.pack("<HHHH", handle | 0x2000, len(att) + 4, len(att), 4) + att,
                   T0_US + t * 1_000_000)


UUID_LIST = bytes([17, 0x07]) + KEY  # BlueZ >= 5.80's scan response: our ScanResponseServiceUUIDs


def _honest(tokens: list[bytes]) -> list[bytes]:
    recs: list[bytes] = []
    for i, token in enumerate(tokens):
        recs += _period(_rpa(i + 1), token, 10 * i)
        recs.append(_cmd(0x2038, bytes([1, 3, 1, len(UUID_LIST)]) + UUID_LIST, 10 * i))
        recs.append(_report(1, _rpa(i + 1), _ad(token), 10 * i + 1))
        recs.append(_notify(b"challenge nonce" + bytes([i]), 10 * i + 2))
    return recs


def _verdicts(tmp_path: Path, recs: list[bytes], public: bytes = PUBLIC) -> list[str]:
    path = _capture(tmp_path, *recs)
    report = air.analyse(path, UUID, secrets=[VEHICLE_ID, b"dkey-vm-car"], since=0.0,
                         public_address=":".join(f"{b:02X}" for b in reversed(public)))
    return list(air.verdicts(report, privacy=True))


TOKENS = [bytes([i]) * 10 for i in (1, 2, 3)]


def test_an_honest_air_passes_and_addresses_land_in_their_own_period(tmp_path: Path) -> None:
    path = _capture(tmp_path, *_honest(TOKENS))
    report = air.analyse(path, UUID, secrets=[VEHICLE_ID], since=0.0, public_address="00:AA:01:00:00:00")
    # the set's address comes before its data: it belongs to the new period, not the one before
    assert [p["addresses"] for p in report["periods"]] == [["41:05:04:03:02:01"], ["42:05:04:03:02:02"],
                                                          ["43:05:04:03:02:03"]]
    assert [p["token"] for p in report["periods"]] == [t.hex() for t in TOKENS]
    assert report["witness_reports"] == 3 and report["pre_auth_pdus_checked"] == 3
    assert air.verdicts(report, privacy=True) == []
    assert air.advertised_tokens(path, UUID) == TOKENS


def test_one_address_across_two_tokens_is_caught(tmp_path: Path) -> None:
    # a legacy controller: the kernel keeps one RPA across re-registrations, so a scanner links two tokens
    recs = _period(_rpa(1), TOKENS[0], 0) + _period(_rpa(1), TOKENS[1], 10) + _period(_rpa(3), TOKENS[2], 20)
    recs.append(_report(1, _rpa(1), _ad(TOKENS[1]), 11))
    [verdict] = _verdicts(tmp_path, recs)
    assert "an address carried two tokens" in verdict and "41:05:04:03:02:01" in verdict


def test_the_public_address_a_repeated_token_and_too_few_periods_are_caught(tmp_path: Path) -> None:
    recs = _period(PUBLIC, TOKENS[0], 0) + _period(_rpa(2), TOKENS[0] + b"", 10)
    recs.append(_report(2, PUBLIC, _ad(TOKENS[0]), 1))
    found = " | ".join(_verdicts(tmp_path, recs))
    assert "1 advertising periods seen" in found  # the same token twice is one period
    assert "not a resolvable private address" in found
    assert "public address 00:AA:01:00:00:00 was on air" in found


def test_a_name_extra_ad_data_a_scan_response_and_an_id_before_auth_are_caught(tmp_path: Path) -> None:
    name = bytes([6, 0x09]) + b"dkey!"
    recs = _honest(TOKENS)
    recs += _period(_rpa(9), bytes([9]) * 10, 40, name)
    recs.append(_cmd(0x2038, bytes([1, 3, 1, len(name)]) + name, 40))
    recs.append(_report(1, _rpa(9), _ad(bytes([9]) * 10, name), 41))
    recs.append(_notify(b"\x81" + VEHICLE_ID, 42, handle=0x41))
    found = " | ".join(_verdicts(tmp_path, recs))
    assert "AD types [1, 33, 9]" in found
    assert "a scan response with more than our service UUID" in found
    assert "names on air" in found and "dkey!" in found
    assert "identifiers sent before authentication" in found and VEHICLE_ID.hex() in found


def test_after_the_second_write_the_session_may_carry_anything(tmp_path: Path) -> None:
    write = bytes([0x12, 0x12, 0x00]) + b"request!"
    recs = _honest(TOKENS)
    for t in (31, 32):
        recs.append(_record(0, 5, struct.pack("<HHHH", 0x42 | 0x2000, len(write) + 4, len(write), 4) + write,
                            T0_US + t * 1_000_000))
    recs.append(_notify(b"\x83" + VEHICLE_ID, 33, handle=0x42))  # a signed answer may name the vehicle
    assert _verdicts(tmp_path, recs) == []


def test_flags_after_the_service_data_are_fine(tmp_path: Path) -> None:
    """Extended advertising on BlueZ 5.82 puts the flags after our service data (the deploy tier saw [0x21, 0x01])."""
    recs: list[bytes] = []
    for i, token in enumerate(TOKENS):
        body = KEY + token
        ad = bytes([len(body) + 1, 0x21]) + body + bytes([2, 0x01, 0x06])
        params = struct.pack("<BH", 1, 0x13) + (244).to_bytes(3, "little") * 2 + bytes([7, 1]) + bytes(12)
        recs += [_cmd(0x203C, b"\x01", 10 * i),  # the kernel removes the old set (no "enable 0")
                 _cmd(0x2036, params, 10 * i), _cmd(0x2035, b"\x01" + _rpa(i + 1), 10 * i),
                 _cmd(0x2037, bytes([1, 3, 1, len(ad)]) + ad, 10 * i), _cmd(0x2039, b"\x01\x01\x01" + bytes(3), 10 * i),
                 _report(1, _rpa(i + 1), ad, 10 * i + 1)]
    assert _verdicts(tmp_path, recs) == []


def _legacy_period(address: bytes, token: bytes, t: int) -> list[bytes]:
    """The kernel's order for a legacy advertiser after a power cycle: data, then the address, params, enable."""
    ad = _ad(token)
    params = struct.pack("<HHBB", 244, 244, 0, 1) + bytes(9)
    return [_cmd(0x200A, b"\x00", t), _cmd(0x2008, bytes([len(ad)]) + ad + bytes(31 - len(ad)), t),
            _cmd(0x2005, address, t), _cmd(0x2006, params, t), _cmd(0x200A, b"\x01", t)]


def test_legacy_order_puts_each_address_with_the_data_it_went_on_air_with(tmp_path: Path) -> None:
    """Data before the address (the legacy order): an address set after a period's data is that period's, not the
    next one's (the first version of air_report got this wrong and called an honest air linked)."""
    recs: list[bytes] = []
    for i, token in enumerate(TOKENS):
        recs += _legacy_period(_rpa(i + 1), token, 10 * i)
        recs.append(_report(1, _rpa(i + 1), _ad(token), 10 * i + 1))
    path = _capture(tmp_path, *recs)
    report = air.analyse(path, UUID, secrets=[VEHICLE_ID], since=0.0, public_address="00:AA:01:00:00:00")
    assert [p["addresses"] for p in report["periods"]] == [["41:05:04:03:02:01"], ["42:05:04:03:02:02"],
                                                          ["43:05:04:03:02:03"]]
    assert [p["own_address_types"] for p in report["periods"]] == [[1], [1], [1]]
    assert air.verdicts(report, privacy=True) == []
    # the same order without a new address for the second token (legacy without the power cycle): caught
    recs = _legacy_period(_rpa(1), TOKENS[0], 0) + _legacy_period(_rpa(1), TOKENS[1], 10) \
        + _legacy_period(_rpa(3), TOKENS[2], 20)
    assert any("an address carried two tokens" in v for v in _verdicts(tmp_path, recs))
