"""The vehicle's advertising token: fresh at every start, rotated on the monotonic clock and on a new secret (§13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocol import TOKEN_LEN, resolve_token

from .harness import Harness


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _settle(h: Harness, count: int) -> None:
    for _ in range(100):
        if len(h.peripheral.tokens) >= count:
            return
        await asyncio.sleep(0.01)


async def test_the_token_is_on_air_from_the_start_and_resolves_with_the_stores_secret(tmp_path: Path) -> None:
    h = await Harness(tmp_path).start()
    try:
        [adv] = await h.air.central().scan(1.0)
        assert adv.service_data is not None and len(adv.service_data) == TOKEN_LEN
        assert resolve_token(adv.service_data, {"car": h.store.ad_secret().secret}) == "car"
        assert resolve_token(adv.service_data, {"other": bytes(16)}) is None
    finally:
        await h.stop()


async def test_every_start_advertises_a_new_token(tmp_path: Path) -> None:
    tokens = []
    for _ in range(2):
        h = await Harness(tmp_path).start()
        tokens.append(h.peripheral.token)
        await h.stop()
    assert tokens[0] != tokens[1]  # a fresh prand at each boot: a passer-by cannot link them


async def test_the_token_rotates_after_token_rotation_seconds_of_the_monotonic_clock(tmp_path: Path) -> None:
    mono = Mono()
    h = await Harness(tmp_path, monotonic=mono, token_rotation=60).start()
    try:
        h.service.sweep()
        assert len(h.peripheral.tokens) == 1  # not yet due
        mono.t += 59.9
        h.service.sweep()
        await asyncio.sleep(0.02)
        assert len(h.peripheral.tokens) == 1
        mono.t += 0.1
        h.service.sweep()
        await _settle(h, 2)
        first, second = h.peripheral.tokens
        assert first != second
        secret = {"car": h.store.ad_secret().secret}
        assert resolve_token(first, secret) == resolve_token(second, secret) == "car"
    finally:
        await h.stop()


async def test_a_rotated_secret_leaves_the_air_at_once(tmp_path: Path) -> None:
    h = await Harness(tmp_path).start()
    try:
        old = h.store.ad_secret()
        new = h.store.rotate_ad_secret()  # what `key-server rotate-secret` does in another process
        assert new.generation == old.generation + 1 and new.secret != old.secret
        h.service.sweep()
        await _settle(h, 2)
        token = h.peripheral.token
        assert resolve_token(token, {"new": new.secret}) == "new"
        assert resolve_token(token, {"old": old.secret}) is None  # a former guest no longer recognises the car
    finally:
        await h.stop()


async def _raw_challenge(h: Harness) -> bytes:
    """The CHALLENGE a central gets on subscribing, as bytes on air (one notification at MTU 247)."""
    central = h.air.central()
    [adv] = await central.scan(1.0)
    conn = await central.connect(adv)
    got: list[bytes] = []
    await conn.subscribe(got.append)
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    await conn.disconnect()
    from protocol import Reassembler

    rx = Reassembler()
    out = [m for chunk in got if (m := rx.feed(chunk, 0.0)) is not None]
    return out[0]


async def test_the_challenge_names_the_vehicle_only_while_a_pairing_code_is_pending(tmp_path: Path) -> None:
    from protocol import decode
    from protocol._codec import Challenge

    h = await Harness(tmp_path).start()
    try:
        plain = decode(await _raw_challenge(h))
        assert isinstance(plain, Challenge) and plain.vehicle_id == b""
        assert len(plain.encode()) == 24 and h.identity.key_id not in await _raw_challenge(h)
        h.new_code()
        named = decode(await _raw_challenge(h))
        assert isinstance(named, Challenge) and named.vehicle_id == h.identity.key_id
    finally:
        await h.stop()


async def test_every_active_role_gets_the_secret_sealed_and_a_revoked_key_does_not(tmp_path: Path) -> None:
    from key_client.errors import VehicleRefused
    from protocol import AdSecret, Command, Role, Status

    h = await Harness(tmp_path, trusted_clock=True).start()
    try:
        want = h.store.ad_secret()
        for role in Role:
            link = await h.connect(h.enroll(role, f"{role}"))
            await link.open_secure()
            result = await link.secure(Command.AD_SECRET)
            assert AdSecret.decode(result.data) == want
            await link.close()
        revoked = h.enroll(Role.DRIVER, "gone")
        link = await h.connect(revoked)
        await link.open_secure()
        h.store.revoke_key(revoked.key_id, int(h.wall))
        with pytest.raises(VehicleRefused) as refused:
            await link.secure(Command.AD_SECRET)
        assert refused.value.status is Status.DENIED  # revocation is live: checked at every command
        await link.close()
        # Not on the fast path: the secret never travels in clear.
        link = await h.connect(h.enroll(Role.OWNER, "owner2"))
        with pytest.raises(VehicleRefused) as info:
            await link.command(Command.AD_SECRET)
        assert info.value.status is not Status.OK
        await link.close()
    finally:
        await h.stop()


async def test_a_radio_that_must_power_cycle_for_a_new_address_rotates_only_while_no_central_is_connected(
    tmp_path: Path,
) -> None:
    """Legacy advertising (BlessPeripheral.rotation_waits_for_idle): the new token needs a new address, which needs
    a power cycle that would cut a connected central; a token changed under the old address would be linked to the
    one before, so the rotation waits for the link to end, then happens at the next sweep."""
    mono = Mono()
    h = await Harness(tmp_path, monotonic=mono, token_rotation=60).start()
    h.peripheral.rotation_waits_for_idle = True  # type: ignore[attr-defined]
    try:
        central = h.air.central()
        [adv] = await central.scan(1.0)
        conn = await central.connect(adv)
        for _ in range(100):
            if h.service.links:
                break
            await asyncio.sleep(0.01)
        assert h.service.links
        mono.t += 61
        h.service.sweep()
        await asyncio.sleep(0.05)
        assert len(h.peripheral.tokens) == 1  # due, but a central is connected
        await conn.disconnect()
        for _ in range(100):
            if not h.service.links:
                break
            await asyncio.sleep(0.01)
        h.service.sweep()
        await _settle(h, 2)
        assert len(h.peripheral.tokens) == 2
        h.peripheral.rotation_waits_for_idle = False  # type: ignore[attr-defined]
        conn = await central.connect((await central.scan(1.0))[0])
        mono.t += 61
        h.service.sweep()  # extended advertising: a new set is a new address, connected or not
        await _settle(h, 3)
        assert len(h.peripheral.tokens) == 3
        await conn.disconnect()
    finally:
        await h.stop()
