"""The protocol's share and revocation-list vectors (tests/vectors/share.json, revocations.json) run through the
vehicle's own checks (key_server/shares.py): each case's state built in a real key store, its expected answer met.

The vectors use the published test keys (PROTOCOL.md §10.1), which the vehicle never enrolls; here, and only here,
that refusal is switched off so the spec's cases can be replayed byte for byte (test_shares_e2e.py runs the same
cases with fresh keys and the refusal on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import key_server.shares as shares_mod
import key_server.store as store_mod
from key_server.audit import AuditLog
from key_server.clock import GuardedClock, Source
from key_server.shares import Shares
from key_server.store import KeyStore
from protocol import RevocationList, ShareCertificate, key_id

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SHARE = json.loads((VECTORS / "share.json").read_text())
LISTS = json.loads((VECTORS / "revocations.json").read_text())


def _public_keys(inputs: dict[str, Any]) -> dict[str, bytes]:
    """Every public key the vectors name, by key id hex."""
    keys = [bytes.fromhex(v) for k, v in inputs.items() if k.endswith("public_key")]
    return {key_id(pub).hex(): pub for pub in keys}


def _store(tmp_path: Path, inputs: dict[str, Any], state: dict[str, Any],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Shares]:
    monkeypatch.setattr(shares_mod, "is_published_test_key", lambda _pub: False)
    monkeypatch.setattr(store_mod, "is_published_test_key", lambda _pub: False)
    now = int(state.get("now", 1_800_000_000))  # inputs["now"] is the sessions' monotonic time, not wall time
    publics = _public_keys(inputs)
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        with store.transaction():
            for kid, rec in state["keys"].items():
                store._execute("INSERT INTO keys (key_id, public_key, name, role, created_at, revoked_at) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (bytes.fromhex(kid), publics[kid], kid, rec["role"],
                                                            now - 1, now - 1 if rec["revoked"] else None))
        for kid in state.get("revoked_key_ids", []):
            store.remember_revoked_id(bytes.fromhex(kid), None, None, now - 1)
        for n, serial in enumerate(state.get("revoked_serials", [])):
            # A revoked serial is one that enrolled a key since revoked (the store keeps the serial on the key).
            with store.transaction():
                store._execute(
                    "INSERT INTO keys (key_id, public_key, name, role, created_at, revoked_at, via, share_serial) "
                    "VALUES (?, ?, 'spent', 'guest', ?, ?, 'share', ?)",
                    (bytes([0xEE, 0, 0, n]), b"\x04" + bytes([n]) * 64, now - 1, now - 1, bytes.fromhex(serial)))
        for kid, version in state.get("held_versions", {}).items():
            store.put_revocation_list(bytes.fromhex(kid), version, now - 1, now - 1, b"held")
        clock = GuardedClock(store, source=lambda: now)
        if state.get("clock_trusted", True):
            assert clock.confirm(now, Source.RTC)
        vehicle_id = key_id(bytes.fromhex(inputs["vehicle_public_key"]))
        yield Shares(store, AuditLog(store), clock, vehicle_id)
        clock.close()


@pytest.mark.parametrize("case", SHARE["cases"], ids=[c["name"] for c in SHARE["cases"]])
def test_share_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]) -> None:
    for shares in _store(tmp_path, SHARE["inputs"], case["state"], monkeypatch):
        result = shares.enroll(ShareCertificate.decode(bytes.fromhex(case["certificate"])))
        assert result.status.name == case["expect"], f"{case['why']}: {result.reason}"


@pytest.mark.parametrize("case", LISTS["cases"], ids=[c["name"] for c in LISTS["cases"]])
def test_revocations_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]) -> None:
    for shares in _store(tmp_path, LISTS["inputs"], case["state"], monkeypatch):
        raw = bytes.fromhex(LISTS["lists"][case["list"]]["bytes"])
        rlist = RevocationList.decode(raw)
        result = shares.apply(rlist, raw)
        assert (result.status.name, result.version) == (case["expect"], case["expect_version"]), case["why"]
        named = {kid for kid, _flags in rlist.entries}
        for kid in named:  # applied: every named id is revoked (enrolled or not); refused: none of them is
            assert shares.store.key_id_revoked(kid) is (case["expect"] == "OK")
