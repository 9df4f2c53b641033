"""One keychain, two vehicles on the same air: pairing picks the right one, --vehicle unlocks the right one."""

from __future__ import annotations

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.keychain import Keychain
from key_client.radios import mock_air

from ..key_server.harness import Harness
from . import Cli


@pytest.fixture
async def cars(tmp_path):
    air = MockAir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Harness(tmp_path / "a", air=air), Harness(tmp_path / "b", air=air)  # both advertise as "test-car"
    await a.start()
    await b.start()
    a.peripheral.set_rssi(-40)  # a is the closer one
    b.peripheral.set_rssi(-70)
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
def run(cars, tmp_path, capsys):
    with mock_air(cars[0].air):
        yield Cli(tmp_path / "kc", capsys)


def unlocks(h: Harness) -> int:
    return [str(e.event) for e in h.audit.read()].count("unlock")


def qr(h: Harness) -> str:
    return f"dkey://pair?code={h.new_code()}&vehicle={h.identity.key_id.hex()}&name=test-car"


async def test_bare_code_pairs_with_the_strongest_and_says_so(run: Cli, cars) -> None:
    a, _ = cars
    r = await run("pair", a.new_code())
    assert r.code == ExitCode.OK, r.err
    assert "2 vehicles in range; pairing with the strongest signal: test-car (-40 dBm)" in r.err
    (entry,) = Keychain.open(run.keychain).vehicles()
    assert entry.vehicle_id == a.identity.key_id


async def test_bare_code_for_the_weaker_vehicle_fails_and_points_to_the_qr_code(run: Cli, cars) -> None:
    _, b = cars
    r = await run("pair", b.new_code())
    assert r.code == ExitCode.DENIED  # the code belongs to b, the PAKE with a fails
    assert "scan the QR code" in r.err
    assert Keychain.open(run.keychain).vehicles() == []


async def test_two_vehicles_in_one_keychain(run: Cli, cars) -> None:
    a, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK  # the QR names b: a is never tried
    assert (await run("pair", qr(a))).code == ExitCode.OK
    names = {e.name: e.vehicle_id for e in Keychain.open(run.keychain).vehicles()}
    assert names == {"test-car": b.identity.key_id, "test-car-2": a.identity.key_id}

    r = await run("unlock")
    assert r.code == ExitCode.KEYS and "several vehicles: pick one with --vehicle" in r.err

    r = await run("--vehicle", "test-car", "unlock")  # b, although a is stronger
    assert r.code == ExitCode.OK, r.err
    assert (unlocks(a), unlocks(b)) == (0, 1)
    r = await run("--vehicle", a.identity.key_id.hex()[:8], "unlock")
    assert r.code == ExitCode.OK, r.err
    assert (unlocks(a), unlocks(b)) == (1, 1)

    rows = (await run("--json", "vehicles")).json()
    assert [(row["vehicle"], row["vehicle_id"]) for row in rows] == [
        ("test-car", b.identity.key_id.hex()), ("test-car-2", a.identity.key_id.hex())]
    # Each car's token resolves with the secret pairing fetched: told apart without connecting (PROTOCOL.md §13).
    (seen_a, seen_b) = (await run("--json", "scan")).json()
    assert (seen_a["recognised_as"], seen_b["recognised_as"]) == ("test-car-2", "test-car")
    # Connecting learns nothing more: with no pairing code pending, neither names itself in its challenge.
    (ident_a, ident_b) = (await run("--json", "scan", "--identify")).json()
    assert (ident_a["vehicle_id"], ident_b["vehicle_id"]) == (None, None)

    assert (await run("forget", "test-car")).code == ExitCode.OK
    r = await run("unlock")  # one left: no --vehicle needed any more
    assert r.code == ExitCode.OK and (unlocks(a), unlocks(b)) == (2, 1)


async def test_address_hint_never_overrides_the_vehicle_id(run: Cli, cars) -> None:
    a, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK
    kc = Keychain.open(run.keychain)
    kc.remember_address(kc.default(), a.peripheral.address)  # a stale or spoofed hint pointing at a
    r = await run("unlock")
    assert r.code == ExitCode.OK, r.err
    assert (unlocks(a), unlocks(b)) == (0, 1)
    assert Keychain.open(run.keychain).default().address_hint == b.peripheral.address
