"""Remote key management from an owner's device: issue-code, edit, keys with state/window/schedule/via, revoke."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.keychain import Keychain
from key_client.radios import mock_air
from protocol import KeyPair, KeyState, Role, Via, parse_code

from . import Cli
from .fake_vehicle import T0, FakeVehicle
from .test_shares import owner_keychain


@pytest.fixture
def run(tmp_path, capsys):
    return Cli(tmp_path / "kc", capsys)


@pytest.fixture
async def car():
    air = MockAir()
    vehicle = await FakeVehicle(air).start()
    with mock_air(air):
        yield vehicle
    await vehicle.stop()


async def test_issue_code_shows_the_code_like_key_server_pair(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("issue-code", "--role", "guest", "--name", "Ana's phone", "--expires", "2h", "--attempts", "3",
                  "--valid-until", "3d", "--schedule", "Sat-Sun 08:00-20:00")
    assert r.code == ExitCode.OK, r.err
    lines = r.out.splitlines()
    assert lines[:3] == ["one-time pairing code for \"Ana's phone\" (guest) on test-car: 4212 3456",
                         lines[1], "    key-client pair 42123456"]
    assert lines[1].startswith("valid until ") and lines[1].endswith(", 3 tries; on the device run:")
    assert "█" in lines[3]  # the QR code
    (terms,) = car.issued_codes
    assert (terms.role, terms.name, terms.code_ttl, terms.attempts, terms.schedule) == (
        Role.GUEST, "Ana's phone", 7200, 3, "Sat-Sun 08:00-20:00")
    assert terms.valid_from is None and terms.valid_until is not None
    r = await run("--json", "issue-code", "--role", "driver", "--name", "x")
    (obj,) = r.json()
    assert obj["code"] == "42123456" and obj["slot"] == 42 and obj["expires_at"] == T0 + 600
    assert parse_code(obj["uri"]) == ("42123456", car.vehicle_id)  # the QR text `pair` takes
    assert car.issued_codes[-1].attempts == 5


@pytest.mark.parametrize(("argv", "message"), [
    (["--expires", "8d"], "within 7 days"),
    (["--attempts", "21"], "out of range"),
    (["--valid-from", "3d", "--valid-until", "1d"], "later than --valid-from"),
    (["--schedule", "whenever"], "bad --schedule"),
    (["--valid-until", "tomorrowish"], "--valid-until: cannot read"),
])
async def test_issue_code_refuses_bad_terms_before_connecting(run: Cli, car: FakeVehicle, argv: list[str],
                                                             message: str) -> None:
    owner_keychain(run.keychain, car)
    r = await run("issue-code", "--role", "guest", "--name", "x", *argv)
    assert r.code == ExitCode.USAGE and message in r.err, r.err
    assert car.writes == 0


async def test_a_driver_cannot_issue_codes_or_edit(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car, role=Role.DRIVER)
    r = await run("issue-code", "--role", "guest", "--name", "x")
    assert r.code == ExitCode.DENIED and "only owner keys can issue pairing codes" in r.err
    r = await run("edit", "key", "--name", "y")
    assert r.code == ExitCode.DENIED and "only owner keys can change keys" in r.err
    assert car.issued_codes == []


async def test_keys_shows_state_window_schedule_and_how_each_key_came(run: Cli, car: FakeVehicle) -> None:
    _, entry, _ = owner_keychain(run.keychain, car)
    guest = car.enrol(KeyPair.generate(), Role.GUEST, "guest", valid_until=T0 - 10, state=KeyState.EXPIRED,
                      schedule="Sat-Sun 08:00-20:00", via=Via.SHARE, enrolled_by=entry.key_id)
    r = await run("keys")
    assert r.code == ExitCode.OK, r.err
    row = next(line for line in r.out.splitlines() if guest.hex() in line)
    assert "expired" in row and "Sat-Sun 08:00-20:00" in row and f"share by {entry.key_id.hex()}" in row
    assert "until " in row
    rows = {k["name"]: k for k in (await run("--json", "keys")).json()}
    assert rows["guest"]["state"] == "expired" and rows["guest"]["via"] == "share"
    assert rows["guest"]["enrolled_by"] == entry.key_id.hex() and rows["guest"]["schedule"] == "Sat-Sun 08:00-20:00"
    assert rows["key"]["state"] == "active" and rows["key"]["this_device"] is True


async def test_edit_changes_a_key_and_prints_it_as_the_vehicle_holds_it(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    kid = car.enrol(KeyPair.generate(), Role.GUEST, "nanny", schedule="Mon-Fri 08:00-18:00")
    r = await run("--json", "edit", "nanny", "--name", "Nanny", "--role", "driver", "--valid-until", "1w",
                  "--no-schedule")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["key_id"] == kid.hex() and obj["name"] == "Nanny" and obj["role"] == "driver"
    assert obj["schedule"] is None and obj["valid_until"] is not None
    assert car.infos[kid].name == "Nanny" and car.infos[kid].schedule is None
    r = await run("edit", "Nanny", "--no-expiry")
    assert r.code == ExitCode.OK and "no expiry" in r.out and car.infos[kid].valid_until is None


async def test_edit_refusals(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("edit", "key")
    assert r.code == ExitCode.USAGE and "nothing to change" in r.err
    r = await run("edit", "key", "--valid-until", "1d", "--no-expiry")
    assert r.code == ExitCode.USAGE
    r = await run("edit", "key", "--role", "driver")  # the last owner demoting itself
    assert r.code == ExitCode.DENIED and "last owner key" in r.err
    assert car.infos[next(iter(car.infos))].role == Role.OWNER


async def test_revoke_over_the_air_never_forces_and_says_no_change(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    other = car.enrol(KeyPair.generate(), Role.DRIVER, "watch")
    r = await run("--json", "revoke", "watch", "--with-shares")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["revoked"] is True and obj["with_shares"] is True and obj["list_version"] is None
    assert car.infos[other].revoked_at is not None
    assert car.revoke_requests == [(other, False, True)]  # bit 1 set, bit 0 (force) never over the air
    r = await run("revoke", "key")  # this device, the last owner
    assert r.code == ExitCode.DENIED and "last owner key" in r.err


async def test_keys_teaches_the_keychain_a_role_an_owner_changed(run: Cli, car: FakeVehicle) -> None:
    _, entry, _ = owner_keychain(run.keychain, car, role=Role.DRIVER)
    car.roles[entry.key_id] = Role.OWNER  # another owner promoted this key (EDIT_KEY)
    car.infos[entry.key_id] = replace(car.infos[entry.key_id], role=Role.OWNER)
    assert (await run("share", "dkey://share-request?key=AA", "--role", "guest")).code == ExitCode.DENIED
    r = await run("keys")
    assert r.code == ExitCode.OK and "is now owner" in r.err
    assert Keychain.open(run.keychain).vehicles()[0].role == "owner"
