"""Shares from the device's side: request-share, share, import-share, offline revoke, and their connection flow."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.keychain import KEYS_DIR, Keychain
from key_client.radios import mock_air
from key_client.share_uri import parse_share, parse_share_request, share_uri
from key_client.sharebook import ShareBook
from protocol import (
    LIST_WITH_SHARES,
    Command,
    DoorState,
    KeyPair,
    LockState,
    Paired,
    RevocationList,
    Role,
    ShareCertificate,
    Status,
    StatusReport,
    Via,
)

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
    r = await run("request-share", "--name", "é" * 17)  # 34 bytes of UTF-8
    assert r.code == ExitCode.USAGE and "at most 32 bytes" in r.err


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
    kc.store_ad_secret(entry, vehicle.ad)  # pairing fetches it on the same connection (PROTOCOL.md §13)
    return kc, entry, device


async def test_a_plain_unlock_is_one_write_when_nothing_is_to_be_delivered(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("unlock")
    assert r.code == ExitCode.OK, r.err
    assert car.writes == 1 and car.seen == [("command", Command.UNLOCK)]  # the challenge came unasked


# ---------------------------------------------------------------------- share and import-share (offline)


async def request(run: Cli, watch: Path, name: str = "Maya's watch") -> str:
    r = await run("--json", "request-share", "--name", name, keychain=watch)
    assert r.code == ExitCode.OK, r.err
    return str(r.json()[0]["request"])


async def test_owner_shares_and_the_watch_imports_without_touching_the_vehicle(run: Cli, car: FakeVehicle,
                                                                               tmp_path: Path) -> None:
    _, entry, owner = owner_keychain(run.keychain, car)
    watch = tmp_path / "watch"
    req = await request(run, watch)
    r = await run("share", req, "--role", "guest", "--until", "3d", "--schedule", "Sat-Sun 08:00-20:00",
                  "--out", str(tmp_path / "share.txt"))
    assert r.code == ExitCode.OK, r.err
    uri = r.out.splitlines()[0]
    assert uri.startswith("dkey://share?v=1&c=") and "█" in r.out  # text, then its QR code
    assert (tmp_path / "share.txt").read_text() == uri + "\n"
    assert "Maya's watch\" (guest" in r.err
    text = parse_share(uri)
    cert = ShareCertificate.decode(text.certificate)
    cert.verify(owner.public_bytes)  # signed with the owner's device key for this vehicle
    assert (cert.vehicle_id, cert.issuer_id, cert.role, cert.name, cert.schedule) == (
        car.vehicle_id, entry.key_id, Role.GUEST, "Maya's watch", "Sat-Sun 08:00-20:00")
    assert cert.valid_until is not None and cert.valid_until - cert.valid_from == 3 * 86400
    assert text.vehicle_public_key == car.identity.public_bytes and text.vehicle_name == "test-car"
    assert text.revocation_list is None  # this owner has revoked nothing yet
    (issued,) = ShareBook(run.keychain).issued(car.vehicle_id)
    assert (issued.serial, issued.subject_key_id, issued.name, issued.role, issued.revoked) == (
        cert.serial, cert.subject_key_id, "Maya's watch", "guest", False)
    assert car.writes == 0  # nothing went over the air

    r = await run("--json", "import-share", f"@{tmp_path / 'share.txt'}", keychain=watch)
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["ok"] and obj["vehicle"] == "test-car" and obj["role"] == "guest" and obj["via"] == "share"
    assert obj["key_id"] == cert.subject_key_id.hex() and obj["enrolled"] is False
    (got,) = Keychain.open(watch).vehicles()
    assert got.vehicle_public_key == car.identity.public_bytes and got.key_id == cert.subject_key_id
    assert (got.valid_from, got.valid_until) == (cert.valid_from, cert.valid_until)
    book = ShareBook(watch)
    held = book.imported(car.vehicle_id)
    assert held is not None and held.certificate == text.certificate and not held.enrolled
    assert book.requests() == []  # the request's key now belongs to that vehicle
    again = await run("import-share", uri, keychain=watch)  # idempotent: same share, same key
    assert again.code == ExitCode.OK, again.err
    assert car.writes == 0


async def test_only_an_owner_key_signs_a_share(run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    owner_keychain(run.keychain, car, role=Role.DRIVER)
    r = await run("share", await request(run, tmp_path / "watch"), "--role", "guest")
    assert r.code == ExitCode.DENIED and "only an owner's key can sign a share" in r.err
    assert ShareBook(run.keychain).issued() == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--role", "owner"], "invalid choice"),
    (["--role", "guest", "--name", "x" * 33], "at most 32 bytes"),
    (["--role", "guest", "--until", "2001-01-01"], "in the past"),
    (["--role", "guest", "--from", "2d", "--until", "1d"], "later than --from"),
    (["--role", "guest", "--until", "soon"], "cannot read 'soon' as a time"),
    (["--role", "guest", "--schedule", "Mon-Fri 08:00-18:00; Sat 10:00-14:00; Sun 10:00-12:00; Mon 01:00-02:00"],
     "at most 64"),
    (["--role", "guest", "--schedule", "Funday 08:00-09:00"], "bad --schedule"),
])
async def test_bad_share_options_are_usage_errors(run: Cli, car: FakeVehicle, tmp_path: Path, argv: list[str],
                                                  message: str) -> None:
    owner_keychain(run.keychain, car)
    r = await run("share", await request(run, tmp_path / "watch"), *argv)
    assert r.code == ExitCode.USAGE and message in r.err, r.err
    assert ShareBook(run.keychain).issued() == []


async def test_share_refuses_a_text_that_is_not_a_request(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("share", "dkey://pair?code=12345678", "--role", "guest")
    assert r.code == ExitCode.USAGE and "not a share request" in r.err


async def test_import_refuses_a_share_for_a_key_this_device_does_not_hold(run: Cli, car: FakeVehicle,
                                                                         tmp_path: Path) -> None:
    owner_keychain(run.keychain, car)
    uri = (await run("share", await request(run, tmp_path / "watch"), "--role", "guest")).out.splitlines()[0]
    r = await run("import-share", uri, keychain=tmp_path / "laptop")
    assert r.code == ExitCode.KEYS and "which this device does not hold" in r.err
    assert Keychain.open(tmp_path / "laptop").vehicles() == []


async def test_import_refuses_a_share_whose_vehicle_key_is_swapped(run: Cli, car: FakeVehicle,
                                                                  tmp_path: Path) -> None:
    owner_keychain(run.keychain, car)
    watch = tmp_path / "watch"
    uri = (await run("share", await request(run, watch), "--role", "guest")).out.splitlines()[0]
    text = parse_share(uri)
    forged = share_uri(text.certificate, KeyPair.generate().public_bytes, "evil-car")  # an attacker's key to pin
    r = await run("import-share", forged, keychain=watch)
    assert r.code == ExitCode.USAGE and "does not match the vehicle its certificate names" in r.err
    assert Keychain.open(watch).vehicles() == []


async def test_import_refuses_an_expired_share_and_damaged_text(run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    _, entry, owner = owner_keychain(run.keychain, car)
    watch = tmp_path / "watch"
    subject, _ = parse_share_request(await request(run, watch))
    old = ShareCertificate.issue(owner, car.vehicle_id, subject, Role.GUEST, "old", 1_000, 2_000)
    r = await run("import-share", share_uri(old.encode(), car.identity.public_bytes, "car"), keychain=watch)
    assert r.code == ExitCode.DENIED and "expired" in r.err
    r = await run("import-share", "dkey://share?v=1&c=AAAA&k=" + "A" * 87, keychain=watch)
    assert r.code == ExitCode.USAGE and "not a share" in r.err
    r = await run("import-share", f"@{tmp_path / 'missing.txt'}", keychain=watch)
    assert r.code == ExitCode.USAGE and "cannot read the share file" in r.err
    assert Keychain.open(watch).vehicles() == []


# ---------------------------------------------------------------------- revoke (offline)


async def shared(run: Cli, car: FakeVehicle, tmp_path: Path, name: str = "watch") -> tuple[bytes, str]:
    """Share to a new device keychain; returns (the subject key id, the share text)."""
    req = await request(run, tmp_path / name, name)
    r = await run("--json", "share", req, "--role", "driver")
    assert r.code == ExitCode.OK, r.err
    obj = r.json()[0]
    return bytes.fromhex(obj["key_id"]), obj["share"]


async def test_offline_revoke_signs_a_new_list_version_and_the_next_share_carries_it(run: Cli, car: FakeVehicle,
                                                                                    tmp_path: Path) -> None:
    _, entry, owner = owner_keychain(run.keychain, car)
    watch_id, _ = await shared(run, car, tmp_path)
    r = await run("revoke", "watch", "--offline")
    assert r.code == ExitCode.OK, r.err
    assert f"{watch_id.hex()} (watch) is on this device's revocation list for test-car (version 1)" in r.out
    book = ShareBook(run.keychain)
    held = book.held(car.vehicle_id, entry.key_id)
    assert held is not None and held.version == 1 and held.undelivered
    lst = RevocationList.decode(held.raw)
    lst.verify(owner.public_bytes)
    assert (lst.vehicle_id, lst.issuer_id, lst.entries) == (car.vehicle_id, entry.key_id, ((watch_id, 0),))
    assert [s.revoked for s in book.issued(car.vehicle_id)] == [True]

    # Once more: nothing new to sign. With --with-shares: the entry's flag changes, so version 2.
    r = await run("--json", "revoke", watch_id.hex()[:4], "--offline")
    assert r.json()[0]["list_version"] == 1 and r.json()[0]["already_revoked"] is True
    r = await run("--json", "revoke", "watch", "--offline", "--with-shares")
    (obj,) = r.json()
    assert obj["list_version"] == 2 and obj["with_shares"] and not obj["reached"] and not obj["delivered"]
    assert RevocationList.decode(book.held(car.vehicle_id, entry.key_id).raw).entries == (  # type: ignore[union-attr]
        (watch_id, LIST_WITH_SHARES),)

    # A key id it only knows by number works too; the list stays sorted and grows by one.
    stranger = bytes.fromhex("00000001")
    r = await run("--json", "revoke", stranger.hex(), "--offline")
    assert r.json()[0]["list_version"] == 3
    assert [k for k, _ in RevocationList.decode(book.held(car.vehicle_id, entry.key_id).raw).entries] == [  # type: ignore[union-attr]
        stranger, watch_id]

    # The next share this owner issues carries the newest list, for a device that will carry it to the vehicle.
    _, text = await shared(run, car, tmp_path, "guest-phone")
    carried = parse_share(text).revocation_list
    assert carried is not None and RevocationList.decode(carried).version == 3
    r = await run("--json", "import-share", text, keychain=tmp_path / "guest-phone")
    assert r.json()[0]["revocation_list_version"] == 3
    kept = ShareBook(tmp_path / "guest-phone").held(car.vehicle_id, entry.key_id)
    assert kept is not None and kept.raw == carried and kept.undelivered
    assert car.writes == 0


async def test_offline_revoke_needs_an_owner_and_a_key_it_can_name(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    r = await run("revoke", "somebody", "--offline")
    assert r.code == ExitCode.USAGE and "--offline needs" in r.err
    kc, entry, _ = owner_keychain(run.keychain.with_name("driver"), car, role=Role.DRIVER)
    r = await run("revoke", "00000001", "--offline", keychain=kc.path)
    assert r.code == ExitCode.USAGE and "--offline needs an owner key" in r.err
    assert ShareBook(kc.path).lists(car.vehicle_id) == []


async def test_revoke_without_the_vehicle_in_reach_keeps_it_on_the_list(run: Cli, tmp_path: Path) -> None:
    air = MockAir()
    car = FakeVehicle(air)  # never started: not advertising
    owner_keychain(run.keychain, car)
    watch_id, _ = await shared(run, car, tmp_path)
    with mock_air(air):
        r = await run("--json", "revoke", "watch")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["reached"] is False and obj["list_version"] == 1 and obj["revoked"] is False
    assert "not in reach" in r.err and "waits on this device's revocation list" in r.err
    with mock_air(air):
        r = await run("revoke", "somebody-else")  # not nameable offline: the vehicle was needed
    assert r.code == ExitCode.NOT_FOUND


# ---------------------------------------------------------------------- the connection flow


async def watch_with_share(run: Cli, car: FakeVehicle, tmp_path: Path, **share: str) -> tuple[Path, bytes]:
    """An owner keychain at run.keychain and a watch keychain that imported the owner's share."""
    owner_keychain(run.keychain, car)
    watch = tmp_path / "watch"
    argv = [x for kv in share.items() for x in (f"--{kv[0]}", kv[1])] or ["--role", "driver"]
    r = await run("--json", "share", await request(run, watch), *argv)
    assert r.code == ExitCode.OK, r.err
    assert (await run("import-share", r.json()[0]["share"], keychain=watch)).code == ExitCode.OK
    return watch, bytes.fromhex(r.json()[0]["key_id"])


async def test_the_first_connection_presents_the_share_once_then_unlocks(run: Cli, car: FakeVehicle,
                                                                          tmp_path: Path) -> None:
    watch, watch_id = await watch_with_share(run, car, tmp_path)
    r = await run("unlock", keychain=watch)
    assert r.code == ExitCode.OK, r.err
    assert [kind for kind, _ in car.seen] == ["share", "command"]  # SHARE_PRESENT before the COMMAND
    assert car.writes == 2  # the certificate, then the command on the same challenge: no challenge request
    assert car.keys.get(watch_id) is not None and car.infos[watch_id].via is Via.SHARE
    assert "enrolled this device's key with the share" in r.err
    assert ShareBook(watch).imported(car.vehicle_id).enrolled  # type: ignore[union-attr]
    car.seen.clear()
    writes = car.writes
    r = await run("unlock", keychain=watch)
    assert r.code == ExitCode.OK and car.seen == [("command", Command.UNLOCK)] and car.writes == writes + 1


async def test_an_already_enrolled_share_counts_as_enrolled(run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    watch, watch_id = await watch_with_share(run, car, tmp_path)
    kc = Keychain.open(watch)
    car.enrol(kc.load_key(kc.vehicles()[0]), Role.DRIVER)  # enrolled already (another of its connections)
    r = await run("--json", "status", keychain=watch)  # inside a session this time
    assert r.code == ExitCode.OK, r.err
    assert [kind for kind, _ in car.seen][:1] == ["share"] and "enrolled" not in r.err  # NO_CHANGE: said nothing
    assert ShareBook(watch).imported(car.vehicle_id).enrolled  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "words"), [
    (Status.DENIED, "its signer is not an active owner of this vehicle, or the share or this key was revoked"),
    (Status.KEY_EXPIRED, "has expired"),
    (Status.CLOCK_UNTRUSTED, "the vehicle's clock is not yet trusted, so it cannot check the share"),
])
async def test_a_refused_share_is_denied_in_words_naming_it_and_nothing_is_sent(
        run: Cli, car: FakeVehicle, tmp_path: Path, status: Status, words: str) -> None:
    watch, _ = await watch_with_share(run, car, tmp_path)
    car.share_status = status
    r = await run("--json", "unlock", keychain=watch)
    assert r.code == ExitCode.DENIED
    assert words in r.err and "the share for \"Maya's watch\" (serial " in r.err
    (obj,) = r.json()
    assert obj["may_have_succeeded"] is False and obj["temporary"] is (status is Status.CLOCK_UNTRUSTED)
    assert [kind for kind, _ in car.seen] == ["share"]  # no command after a refused share
    assert not ShareBook(watch).imported(car.vehicle_id).enrolled  # type: ignore[union-attr]
    car.share_status = Status.OK
    assert (await run("unlock", keychain=watch)).code == ExitCode.OK  # presented again next time


async def test_a_list_rides_after_an_ok_unlock_and_a_plain_unlock_stays_one_write(run: Cli, car: FakeVehicle,
                                                                                 tmp_path: Path) -> None:
    watch, watch_id = await watch_with_share(run, car, tmp_path)
    assert (await run("unlock", keychain=watch)).code == ExitCode.OK  # the watch is enrolled
    assert (await run("revoke", "Maya's watch", "--offline")).code == ExitCode.OK
    car.seen.clear()
    before = car.writes
    r = await run("unlock")  # the owner's phone, next to the car
    assert r.code == ExitCode.OK, r.err
    assert [kind for kind, _ in car.seen] == ["command", "revocations"]  # after the RESULT, never before
    assert car.writes == before + 2  # the command, then the list: one write each at this MTU
    assert "delivered the revocation list of owner key" in r.err and "(version 1)" in r.err
    assert watch_id not in car.keys
    kc = Keychain.open(run.keychain)
    assert not ShareBook(run.keychain).undelivered(car.vehicle_id)
    assert ShareBook(run.keychain).held(car.vehicle_id, kc.vehicles()[0].key_id).acknowledged == 1  # type: ignore[union-attr]
    car.seen.clear()
    before = car.writes
    assert (await run("unlock")).code == ExitCode.OK
    assert car.seen == [("command", Command.UNLOCK)] and car.writes == before + 1  # nothing more to deliver
    r = await run("unlock", keychain=watch)
    assert r.code == ExitCode.DENIED  # the watch is refused


async def test_a_list_the_vehicle_already_holds_is_acknowledged_and_a_refused_one_is_dropped(
        run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    _, entry, _ = owner_keychain(run.keychain, car)
    await shared(run, car, tmp_path)
    assert (await run("revoke", "watch", "--offline")).code == ExitCode.OK
    car.held_versions[entry.key_id] = 5  # another of this owner's copies got further: NO_CHANGE with 5
    r = await run("unlock")
    assert r.code == ExitCode.OK and "delivered" not in r.err
    assert ShareBook(run.keychain).held(car.vehicle_id, entry.key_id).acknowledged == 5  # type: ignore[union-attr]
    # The next list numbers above what the vehicle holds, or the vehicle would call it old (NO_CHANGE).
    r = await run("--json", "revoke", "00000009", "--offline")
    assert r.json()[0]["list_version"] == 6
    car.revocation_status = Status.DENIED
    r = await run("unlock")
    assert r.code == ExitCode.OK and "refused the revocation list" in r.err and "version 6" in r.err
    assert not ShareBook(run.keychain).undelivered(car.vehicle_id)


async def test_a_driver_device_carries_the_owners_list_it_got_with_its_share(run: Cli, car: FakeVehicle,
                                                                            tmp_path: Path) -> None:
    _, entry, _ = owner_keychain(run.keychain, car)
    guest_id, _ = await shared(run, car, tmp_path, "guest")
    assert (await run("revoke", "guest", "--offline")).code == ExitCode.OK
    watch = tmp_path / "watch"
    r = await run("--json", "share", await request(run, watch), "--role", "driver")
    assert (await run("import-share", r.json()[0]["share"], keychain=watch)).code == ExitCode.OK
    r = await run("unlock", keychain=watch)  # the watch: its share, the command, then the owner's list
    assert r.code == ExitCode.OK, r.err
    assert [kind for kind, _ in car.seen] == ["share", "command", "revocations"]
    assert car.held_versions[entry.key_id] == 1 and guest_id not in car.keys


async def test_online_revoke_of_a_share_not_yet_enrolled_delivers_the_list_in_the_same_session(
        run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    _, entry, _ = owner_keychain(run.keychain, car)
    guest_id, _ = await shared(run, car, tmp_path, "guest")
    r = await run("--json", "revoke", "guest")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["reached"] and obj["delivered"] and obj["revoked"] is False and obj["list_version"] == 1
    assert car.held_versions[entry.key_id] == 1 and car.revoke_requests == []  # the vehicle does not list it yet
    r = await run("revoke", "guest")
    assert r.code == ExitCode.OK and "reached the vehicle" in r.out


# ---------------------------------------------------------------------- watch


async def until(predicate, timeout: float = 5.0) -> None:
    """Wait (polling the loop) until predicate() holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the fake vehicle has no event for "a link subscribed"
            await asyncio.sleep(0.01)


async def test_watch_prints_the_state_then_each_change_and_ctrl_c_exits_0(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car, role=Role.DRIVER)
    task = asyncio.create_task(run("--json", "watch"))
    await until(lambda: any(lk.watching for lk in car.links.values()))
    assert car.push(StatusReport(LockState.UNLOCKED, DoorState.CLOSED, False)) == 1
    await asyncio.sleep(0.05)
    assert car.push(StatusReport(LockState.UNLOCKED, DoorState.OPEN, False)) == 1
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    r = await asyncio.wait_for(task, 5)
    assert r.code == ExitCode.OK, r.err
    rows = r.json()
    assert [(o["initial"], o["lock"], o["door"]) for o in rows] == [
        (True, "locked", "closed"), (False, "unlocked", "closed"), (False, "unlocked", "open")]
    assert all(o["vehicle"] == "test-car" and isinstance(o["at"], int) for o in rows)
    assert "stopped watching after 2 changes" in r.err
    assert [kind for kind, _ in car.seen] == ["session", "command"] and car.seen[1][1] is Command.WATCH
    assert not car.links  # disconnected


async def test_watch_ends_with_an_error_when_the_link_drops(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car)
    task = asyncio.create_task(run("watch"))
    await until(lambda: any(lk.watching for lk in car.links.values()))
    car.push(StatusReport(LockState.UNLOCKED, DoorState.CLOSED, False))
    await asyncio.sleep(0.05)
    for link in list(car.links):
        car.air.drop(link)
    r = await asyncio.wait_for(task, 5)
    assert r.code == ExitCode.ERROR
    assert "test-car: lock locked, door closed, start disabled  (now)" in r.out
    assert "test-car: lock unlocked, door closed, start disabled" in r.out
    assert "the link to test-car dropped after 1 change (" in r.err


async def test_a_guest_cannot_watch(run: Cli, car: FakeVehicle) -> None:
    owner_keychain(run.keychain, car, role=Role.GUEST)
    r = await run("watch")
    assert r.code == ExitCode.DENIED and "only owner and driver keys can watch" in r.err


async def test_ctrl_c_before_the_watch_is_up_is_an_interruption(run: Cli, tmp_path: Path) -> None:
    air = MockAir()
    car = FakeVehicle(air)  # not advertising: watch is still looking for it
    owner_keychain(run.keychain, car)
    run.scan_time = 5.0
    with mock_air(air):
        task = asyncio.create_task(run("watch"))
        await asyncio.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        r = await asyncio.wait_for(task, 5)
    assert r.code == ExitCode.INTERRUPTED and r.out == ""


async def test_forget_drops_the_imported_share_and_the_lists_carried_for_that_vehicle(run: Cli, car: FakeVehicle,
                                                                                     tmp_path: Path) -> None:
    watch, _ = await watch_with_share(run, car, tmp_path)
    book = ShareBook(watch)
    book.store_list(car.vehicle_id, b"\x01\x02\x03\x04", 1, b"list")
    r = await run("vehicles", keychain=watch)
    assert "(share)" in r.out
    assert (await run("forget", "test-car", keychain=watch)).code == ExitCode.OK
    assert book.imported(car.vehicle_id) is None and book.lists(car.vehicle_id) == []
    assert Keychain.open(watch).vehicles() == []


async def test_a_share_carries_the_advertising_secret_and_without_it_the_share_itself_finds_the_car(
        run: Cli, car: FakeVehicle, tmp_path: Path) -> None:
    import re

    owner_keychain(run.keychain, car)
    with_secret, without = tmp_path / "w1", tmp_path / "w2"
    r = await run("--json", "share", await request(run, with_secret), "--role", "driver")
    text = r.json()[0]["share"]
    assert "&a=" in text
    assert (await run("import-share", text, keychain=with_secret)).code == ExitCode.OK
    kc = Keychain.open(with_secret)
    assert kc.ad_secret(kc.default()) == car.ad  # recognised on air from the first unlock

    r = await run("--json", "share", await request(run, without), "--role", "driver")
    old_text = re.sub(r"&a=[A-Za-z0-9_-]+", "", r.json()[0]["share"])  # as a share from before issue 13
    assert (await run("import-share", old_text, keychain=without)).code == ExitCode.OK
    car.seen.clear()
    r = await run("-v", "unlock", keychain=without)
    assert r.code == ExitCode.OK, r.err
    assert "not recognised by its token" in r.err
    # The fallback presented the share (its signed answer proved the car), then a session fetched the secret and
    # carried the unlock sealed.
    assert [kind for kind, _ in car.seen] == ["share", "session", "command"] and car.ad_secret_reads == 1
    kc = Keychain.open(without)
    assert kc.ad_secret(kc.default()) == car.ad
