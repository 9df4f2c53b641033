"""What a passer-by could read of the vehicle in a `btmon -w` capture, and the verdicts of issue 13 item 4 on it.

`analyse` cuts the vehicle controller's advertising into periods (one per token) with the addresses and
parameters in force, collects what the other controllers (generic scanners, the client's own scans) received,
and what the vehicle sent each central before its signed command. `verdicts` lists every way that breaks
"nothing static on air": a token, address or advertising data seen in two periods, an address that is not a
resolvable private one (or is the controller's public one), a name, anything but our service data in the
advertisement and our service UUID in the scan response, or an identifier sent before authentication.
Standard library only (it runs in the deploy tier's guest, under the system python); checked on the host by
tests/link/test_air_report.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import hci_snoop

AD_FLAGS, AD_SERVICE_DATA_128 = 0x01, 0x21
AD_NAMES = {0x08, 0x09}  # shortened / complete local name
AD_UUID128_LISTS = {0x06, 0x07}  # incomplete / complete list of 128-bit service UUIDs
ATT_WRITES = (0x12, 0x52)  # write request, write command


def service_data_key(service_uuid: str) -> bytes:
    """The UUID as it travels in a 128-bit service data AD structure (little-endian)."""
    return uuid.UUID(service_uuid).bytes[::-1]


def token_in(data: bytes, key: bytes) -> bytes | None:
    """Our service data's value (the advertising token) in advertising data, or None."""
    for ad_type, value in hci_snoop.ad_structures(data):
        if ad_type == AD_SERVICE_DATA_128 and value[:16] == key:
            return value[16:]
    return None


def advertised_tokens(capture: Path, service_uuid: str, index: int = 0) -> list[bytes]:
    """The distinct tokens controller `index` was told to advertise so far, in order."""
    key, seen = service_data_key(service_uuid), []
    for _ts, kind, value in hci_snoop.advertising(capture).get(index, hci_snoop.AdvState()).events:
        token = token_in(value, key) if kind == "adv_data" and isinstance(value, bytes) else None
        if token is not None and token not in seen:
            seen.append(token)
    return seen


def _periods(capture: Path, key: bytes, index: int) -> list[dict[str, Any]]:
    """One period per token, in order, each with what was on air with it. What goes on air is what is in force when
    advertising is enabled, or what changes while it is: the kernel's order of commands differs (extended: params,
    address, data, enable; legacy: data, address, params, enable), so nothing is tied to the command before it."""
    periods: list[dict[str, Any]] = []
    address: str | None = None
    token: bytes | None = None
    data = b""
    scan_rsp = b""
    own_type: int | None = None
    units: int | None = None
    enabled = False

    def on_air(ts: float) -> None:
        if token is None:
            return
        if not periods or periods[-1]["token"] != token.hex():
            periods.append({"from": ts, "token": token.hex(), "adv_data": data.hex(),
                            "ad_types": [t for t, _ in hci_snoop.ad_structures(data)], "scan_rsp": "",
                            "scan_rsp_uuid_only": True, "addresses": set(), "own_address_types": set(),
                            "interval_units": set()})
        period = periods[-1]
        if address is not None:
            period["addresses"].add(address)
        if own_type is not None:
            period["own_address_types"].add(own_type)
        if units is not None:
            period["interval_units"].add(units)
        if scan_rsp:
            period["scan_rsp"] = scan_rsp.hex()
            # BlueZ >= 5.80 puts our ScanResponseServiceUUIDs there: the product's UUID, the same on every car
            period["scan_rsp_uuid_only"] = all(t in AD_UUID128_LISTS and v == key
                                               for t, v in hci_snoop.ad_structures(scan_rsp))

    for ts, kind, value in hci_snoop.advertising(capture).get(index, hci_snoop.AdvState()).events:
        if kind == "random_address":
            address = str(value)
        elif kind == "params" and isinstance(value, dict):
            own_type, units = int(value["own_address_type"]), int(value["min_units"])
        elif kind == "scan_rsp" and isinstance(value, bytes):
            scan_rsp = value
        elif kind == "adv_data" and isinstance(value, bytes):
            found = token_in(value, key)
            if found is None:
                continue
            token, data = found, value
        elif kind == "enable":
            enabled = bool(value)
            if enabled:
                on_air(ts)
            continue
        else:
            continue
        if enabled:
            on_air(ts)  # changed while on air
    return periods


def analyse(capture: Path, service_uuid: str, *, secrets: list[bytes], since: float, index: int = 0,
            public_address: str | None = None) -> dict[str, Any]:
    """The report: periods of controller `index`'s advertising, what the other controllers received of it, and
    the pre-authentication ATT traffic since `since` (seconds since 1970) searched for each of `secrets` (the
    vehicle id, names: bytes that must not reach a central before its signed command)."""
    key = service_data_key(service_uuid)
    periods = _periods(capture, key, index)
    all_reports = hci_snoop.reports(capture)
    witness = [r for r in all_reports if r.index != index and token_in(r.data, key) is not None]
    address_tokens: dict[str, set[str]] = {}
    for p in periods:
        for a in p["addresses"]:
            address_tokens.setdefault(a, set()).add(p["token"])
    for r in witness:
        address_tokens.setdefault(r.address, set()).add(token_in(r.data, key).hex())  # type: ignore[union-attr]
    names = [(r.index, r.address, v.decode(errors="replace")) for r in all_reports if r.index != index
             and r.address in address_tokens for t, v in hci_snoop.ad_structures(r.data) if t in AD_NAMES]
    # Pre-authentication: what the vehicle sent on each link before the central's second write to RX (the first
    # is a CHALLENGE_REQUEST, SESSION_OPEN or pairing message; the signed command comes after the challenge).
    # Writes of 2-byte values are CCC descriptors (subscriptions), not messages.
    pre_auth: list[dict[str, Any]] = []
    writes: dict[int, int] = {}
    checked = 0
    for pdu in hci_snoop.att_pdus(capture, index):
        if pdu.ts < since:
            continue
        if not pdu.sent and pdu.opcode in ATT_WRITES and len(pdu.payload) > 4:
            writes[pdu.handle] = writes.get(pdu.handle, 0) + 1
        elif pdu.sent and writes.get(pdu.handle, 0) < 2:
            checked += 1
            hits = [s.hex() for s in secrets if s and s in pdu.payload]
            if hits:
                pre_auth.append({"ts": pdu.ts, "handle": pdu.handle, "opcode": pdu.opcode, "found": hits,
                                 "payload": pdu.payload.hex()})
    return {
        "periods": [{**p, "addresses": sorted(p["addresses"]), "own_address_types": sorted(p["own_address_types"]),
                     "interval_units": sorted(p["interval_units"])} for p in periods],
        "address_tokens": {a: sorted(t) for a, t in address_tokens.items()},
        "public_address": public_address,
        "witness_reports": len(witness),
        "witness_by_adapter": {f"hci{i}": n for i in sorted({r.index for r in witness})
                               if (n := sum(1 for r in witness if r.index == i))},
        "names_seen": names,
        "identifiers_before_auth": pre_auth,
        "pre_auth_pdus_checked": checked,
    }


def verdicts(report: dict[str, Any], *, privacy: bool, min_periods: int = 3) -> list[str]:
    """Every way the report breaks "nothing static on air" (empty: it holds). `privacy`: the controller runs with
    BlueZ `Privacy = device`, so every address must be a resolvable private one."""
    found: list[str] = []
    periods = report["periods"]
    if len(periods) < min_periods:
        found.append(f"{len(periods)} advertising periods seen, expected at least {min_periods}")
    tokens = [p["token"] for p in periods]
    if len(set(tokens)) != len(tokens):
        found.append(f"a token was advertised in two periods: {tokens}")
    if len({p["adv_data"] for p in periods}) != len(periods):
        found.append("the advertising data repeated across periods")
    for p in periods:
        if sorted(p["ad_types"]) not in ([AD_SERVICE_DATA_128], [AD_FLAGS, AD_SERVICE_DATA_128]):  # any order
            found.append(f"period {p['token']}: AD types {p['ad_types']}, expected our service data (and flags) only")
        if p["scan_rsp"] and not p["scan_rsp_uuid_only"]:
            found.append(f"period {p['token']}: a scan response with more than our service UUID: {p['scan_rsp']}")
    if privacy:
        for p in periods:
            if not p["addresses"]:
                found.append(f"period {p['token']}: no random address was set")
            elif not all(hci_snoop.is_rpa(a) for a in p["addresses"]):
                found.append(f"period {p['token']}: not a resolvable private address: {p['addresses']}")
            if not p["own_address_types"] or not set(p["own_address_types"]) <= {1, 3}:
                found.append(f"period {p['token']}: own address type {p['own_address_types']}, not random")
        witnessed = [a for a in report["address_tokens"] if not hci_snoop.is_rpa(a)]
        if witnessed:
            found.append(f"addresses on air that are not resolvable private ones: {witnessed}")
    public = report.get("public_address")
    if public and public in report["address_tokens"]:
        found.append(f"the controller's public address {public} was on air")
    shared = {a: t for a, t in report["address_tokens"].items() if len(t) > 1}
    if shared:
        found.append(f"an address carried two tokens (it links them): {shared}")
    if report["witness_reports"] == 0:
        found.append("no other controller ever received the vehicle's advertising")
    if report["names_seen"]:
        found.append(f"names on air: {report['names_seen']}")
    if report["identifiers_before_auth"]:
        found.append(f"identifiers sent before authentication: {report['identifiers_before_auth']}")
    return found
