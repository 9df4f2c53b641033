"""Finding the car by its advertising token, and the fallback when no token resolves (PROTOCOL.md §13)."""

from __future__ import annotations

import os
import stat

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.mock import MockAir
from key_client.keychain import AD_SECRETS_DIR, Keychain
from key_client.radios import mock_air
from key_client.share_uri import parse_share, share_uri
from protocol import AdSecret, KeyPair, make_token

from ..key_server.harness import Harness
from . import Cli


@pytest.fixture
async def cars(tmp_path):
    air = MockAir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Harness(tmp_path / "a", air=air), Harness(tmp_path / "b", air=air)
    await a.start()
    await b.start()
    a.peripheral.set_rssi(-40)  # a (not ours in these tests) is the closer one
    b.peripheral.set_rssi(-70)
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
def run(cars, tmp_path, capsys):
    with mock_air(cars[0].air):
        yield Cli(tmp_path / "kc", capsys)


def qr(h: Harness) -> str:
    return f"dkey://pair?code={h.new_code()}&vehicle={h.identity.key_id.hex()}&name=test-car"


def events(h: Harness) -> list[str]:
    return [str(e.event) for e in h.audit.read()]


async def test_pairing_fetches_the_secret_and_the_token_picks_the_car_without_touching_the_other(
        run: Cli, cars) -> None:
    a, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK
    kc = Keychain.open(run.keychain)
    assert kc.ad_secret(kc.default()) == b.store.ad_secret()
    links_before = b.service.stats.connects, a.service.stats.connects
    r = await run("-v", "unlock")
    assert r.code == ExitCode.OK, r.err
    assert "not recognised by its token" not in r.err  # the plain fast path, no session
    # b's token resolved: a (stronger, a dkey car too) was never connected to.
    assert a.service.stats.connects == links_before[1] and b.service.stats.connects == links_before[0] + 1
    assert events(b).count("unlock") == 1


async def test_after_a_rotation_the_fallback_finds_the_car_learns_the_secret_and_skips_the_other(
        run: Cli, cars) -> None:
    a, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK
    b.store.rotate_ad_secret()  # `key-server rotate-secret` at b: the device's secret is stale
    b.service.sweep()
    for _ in range(50):
        if len(b.peripheral.tokens) >= 2:
            break
        import asyncio

        await asyncio.sleep(0.01)
    kc = Keychain.open(run.keychain)
    kc.remember_address(kc.default(), a.peripheral.address)  # a stale hint (private addresses change): a first
    a_connects = a.service.stats.connects
    r = await run("-v", "unlock")
    assert r.code == ExitCode.OK, r.err
    assert "not recognised by its token" in r.err
    # a was tried first and dropped: its answer to SESSION_OPEN did not verify with b's pinned key.
    assert a.service.stats.connects == a_connects + 1 and events(a).count("unlock") == 0
    assert events(b).count("unlock") == 1  # the unlock ran sealed in the session that proved it was b
    kc = Keychain.open(run.keychain)
    assert kc.ad_secret(kc.default()) == b.store.ad_secret()  # learned in that session
    a_connects = a.service.stats.connects
    r = await run("unlock")
    assert r.code == ExitCode.OK and a.service.stats.connects == a_connects  # recognised again: no fallback


async def test_a_revoked_guest_holding_the_old_secret_no_longer_recognises_the_car(run: Cli, cars) -> None:
    _, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK
    kc = Keychain.open(run.keychain)
    old = kc.ad_secret(kc.default())
    assert old is not None
    [adv] = [x for x in await b.air.central().scan(1.0) if x.address == b.peripheral.address]
    from protocol import resolve_token

    assert resolve_token(adv.service_data, {"b": old.secret}) == "b"
    b.store.rotate_ad_secret()
    b.service.sweep()
    import asyncio

    for _ in range(50):
        if len(b.peripheral.tokens) >= 2:
            break
        await asyncio.sleep(0.01)
    [adv] = [x for x in await b.air.central().scan(1.0) if x.address == b.peripheral.address]
    assert resolve_token(adv.service_data, {"b": old.secret}) is None


def test_the_keychain_keeps_the_secret_private_and_never_goes_back_a_generation(tmp_path) -> None:
    from protocol import Paired, Role

    kc = Keychain.open(tmp_path / "kc")
    device = kc.new_device_key()
    car = KeyPair.generate()
    entry = kc.add(device, Paired(vehicle_public_key=car.public_bytes, vehicle_id=car.key_id, key_id=device.key_id,
                                  role=Role.OWNER, valid_from=None, valid_until=None))
    new, old = AdSecret(2, bytes(range(16))), AdSecret(1, bytes(16))
    assert kc.store_ad_secret(entry, new) and not kc.store_ad_secret(entry, old)  # a stale share cannot undo it
    assert kc.ad_secret(entry) == new and kc.ad_secrets() == {entry.name: new.secret}
    path = tmp_path / "kc" / AD_SECRETS_DIR / car.key_id.hex()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert new.secret.hex() not in (tmp_path / "kc" / "keychain.json").read_text()  # the index holds no secret
    os.chmod(path, 0o644)  # others could read it: not trusted (the car is still found by the fallback)
    assert kc.ad_secret(entry) is None
    kc.forget(entry.name)
    assert not path.exists()


def test_a_share_carries_the_secret_and_a_damaged_one_is_refused() -> None:
    ad = AdSecret(7, bytes(range(16)))
    car = KeyPair.generate()
    uri = share_uri(b"\x01" * 40, car.public_bytes, "car", None, ad)
    assert "&a=" in uri and parse_share(uri).ad_secret == ad
    assert parse_share(share_uri(b"\x01" * 40, car.public_bytes, "car")).ad_secret is None
    with pytest.raises(ValueError, match="advertising secret is damaged"):
        parse_share(uri[:-3])


def test_a_token_of_the_held_secret_is_recognised_and_one_of_another_is_not() -> None:
    from dkey_link.contract import SERVICE_UUID, Advertisement
    from key_client.driver import Target

    secret = bytes(range(16))
    target = Target(b"\x04" + bytes(64), ad_secret=secret)
    ours = Advertisement("x", None, (SERVICE_UUID,), -50, service_data=make_token(secret))
    other = Advertisement("y", None, (SERVICE_UUID,), -40, service_data=make_token(bytes(16)))
    bare = Advertisement("z", None, (SERVICE_UUID,), -30)
    assert target.recognises(ours) and not target.recognises(other) and not target.recognises(bare)
    assert not Target(b"\x04" + bytes(64)).recognises(ours)  # no secret held: nothing is recognised


async def test_an_owner_revokes_a_guest_with_rotate_secret_over_the_air(run: Cli, cars) -> None:
    import asyncio

    from protocol import Role, resolve_token

    _, b = cars
    assert (await run("pair", qr(b))).code == ExitCode.OK
    old = b.store.ad_secret()
    b.enroll(Role.GUEST, "tom")
    r = await run("--json", "--vehicle", "test-car", "revoke", "tom", "--rotate-secret")
    assert r.code == ExitCode.OK, r.err
    assert r.json()[0]["rotated_generation"] == old.generation + 1
    new = b.store.ad_secret()
    assert new.generation == old.generation + 1 and new.secret != old.secret
    kc = Keychain.open(run.keychain)
    assert kc.ad_secret(kc.default()) == new  # the owner's device keeps recognising the car
    owner_id = kc.default().key_id.hex()
    rows = [e for e in b.audit.read() if str(e.event) == "admin" and e.detail.get("action") == "rotate_secret"]
    assert len(rows) == 1 and rows[0].detail["by"] == owner_id and new.secret.hex() not in str(rows[0].detail)
    for _ in range(100):  # the running server notices at its next store poll and changes its token
        if resolve_token(b.peripheral.token, {"new": new.secret}):
            break
        await asyncio.sleep(0.01)
    assert resolve_token(b.peripheral.token, {"new": new.secret}) == "new"
    assert resolve_token(b.peripheral.token, {"old": old.secret}) is None  # tom's device no longer spots it
    r = await run("revoke", "tom", "--offline", "--rotate-secret")
    assert r.code == ExitCode.USAGE and "needs the vehicle in reach" in r.err
