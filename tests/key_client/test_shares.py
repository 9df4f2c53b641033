"""Shares from the device's side: request-share, share, import-share, offline revoke, and their connection flow."""

from __future__ import annotations

import os
import stat

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.keychain import KEYS_DIR, Keychain
from key_client.radios import mock_air
from key_client.share_uri import parse_share_request
from key_client.sharebook import ShareBook
from protocol import Command, Paired, Role

from . import Cli
from .fake_vehicle import FakeVehicle


@pytest.fixture
def run(tmp_path, capsys):
    return Cli(tmp_path / "kc", capsys)


# ---------------------------------------------------------------------- request-share


async def test_request_share_prints_the_request_and_its_qr_and_keeps_the_key_private(run: Cli) -> None:
    r = await run("request-share", "--name", "Maya's watch")
    assert r.code == ExitCode.OK, r.err
    uri, *qr = r.out.splitlines()
    key, name = parse_share_request(uri)
    assert name == "Maya's watch"
    assert len(qr) > 10 and "█" in qr[0]  # the QR code, drawn like `key-server pair` draws it
    (request,) = ShareBook(run.keychain).requests()
    assert request.name == "Maya's watch"
    kc = Keychain.open(run.keychain)
    assert kc.load_request_key(request.key_id).public_bytes == key
    assert stat.S_IMODE(os.stat(run.keychain / KEYS_DIR / f"{request.key_id.hex()}.pem").st_mode) == 0o600
    assert kc.vehicles() == []  # no vehicle yet: the key waits for a share
    assert f"share request for this device's key {request.key_id.hex()}" in r.err


async def test_request_share_again_shows_the_same_key_until_a_vehicle_uses_it(run: Cli) -> None:
    first = (await run("--json", "request-share", "--name", "watch")).json()[0]
    again = await run("--json", "request-share")
    (obj,) = again.json()
    assert obj == first and set(obj) == {"request", "key_id"}
    assert "the same key as the earlier request" in again.err
    renamed = (await run("--json", "request-share", "--name", "left wrist")).json()[0]
    assert renamed["key_id"] == first["key_id"] and parse_share_request(renamed["request"])[1] == "left wrist"
    assert len(list((run.keychain / KEYS_DIR).iterdir())) == 1


async def test_request_share_makes_a_new_key_when_the_old_ones_file_is_gone(run: Cli) -> None:
    first = (await run("--json", "request-share")).json()[0]
    (run.keychain / KEYS_DIR / f"{first['key_id']}.pem").unlink()
    second = (await run("--json", "request-share")).json()[0]
    assert second["key_id"] != first["key_id"]
    assert [r.key_id.hex() for r in ShareBook(run.keychain).requests()] == [second["key_id"]]


async def test_request_share_without_qr_and_a_bad_name(run: Cli) -> None:
    r = await run("request-share", "--no-qr")
    assert r.code == ExitCode.OK and len(r.out.splitlines()) == 1
    r = await run("request-share", "--name", "x" * 65)
    assert r.code == ExitCode.USAGE and "at most 64 characters" in r.err


# ---------------------------------------------------------------------- against a vehicle


@pytest.fixture
async def car():
    air = MockAir()
    vehicle = await FakeVehicle(air).start()
    with mock_air(air):
        yield vehicle
    await vehicle.stop()


def owner_keychain(path, vehicle: FakeVehicle, role: Role = Role.OWNER, name: str = "test-car"):
    """A keychain holding a key `vehicle` enrolled with `role` (as pairing would leave it)."""
    kc = Keychain.open(path)
    device = kc.new_device_key()
    vehicle.enrol(device, role)
    entry = kc.add(device, Paired(vehicle_public_key=vehicle.identity.public_bytes, vehicle_id=vehicle.vehicle_id,
                                  key_id=device.key_id, role=role, valid_from=None, valid_until=None),
                   advertised_name=name, address=vehicle.peripheral.address)
    return kc, entry, device


async def test_a_plain_unlock_is_one_write_when_nothing_is_to_be_delivered(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("unlock")
    assert r.code == ExitCode.OK, r.err
    assert car.writes == 1 and car.seen == [("command", Command.UNLOCK)]  # the challenge came unasked
