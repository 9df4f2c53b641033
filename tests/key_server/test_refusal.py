"""Issue 10, "hold under attack", on the real server: hostile arguments, secure-only commands in clear, revoked keys.

Each attack sits next to the honest case it must let through; every link must stay up after a refusal.
"""

from __future__ import annotations

import pytest

from key_client.errors import VehicleRefused
from key_server.store import KeyRecord
from protocol import (
    Command,
    LockState,
    Role,
    decode_audit_page,
    decode_key_page,
    list_keys_args,
    read_audit_args,
    revoke_args,
)
from protocol import Status as S

from .harness import Harness


@pytest.fixture
async def h(tmp_path):
    harness = await Harness(tmp_path).start()
    yield harness
    await harness.stop()


U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1

# Argument bytes an owner's device can put in a sealed request: every numeric field at and past what the
# store (SQLite's signed 64-bit integers) accepts, and every length but the right one.
HOSTILE_ARGS = [
    (Command.READ_AUDIT, U64_MAX.to_bytes(8, "big") + b"\x14", "after_seq 2^64-1"),
    (Command.READ_AUDIT, (I64_MAX + 1).to_bytes(8, "big") + b"\x14", "after_seq 2^63"),
    (Command.READ_AUDIT, bytes(8), "8 bytes"),
    (Command.READ_AUDIT, bytes(10), "10 bytes"),
    (Command.LIST_KEYS, b"\xff\xff", "2 bytes"),
    (Command.LIST_KEYS, b"\xff\xff\xff\xff", "4 bytes"),
    (Command.REVOKE_KEY, b"", "no args"),
    (Command.REVOKE_KEY, b"\xff\xff\xff\xff\x04", "flag bit 2"),
    (Command.REVOKE_KEY, b"\xff\xff\xff\xff\xff", "force 255"),
    (Command.REVOKE_KEY, b"\xff\xff\xff\xff", "4 bytes"),
    (Command.REVOKE_KEY, b"\xde\xad\xbe\xef\x00", "unknown key"),
]


@pytest.mark.parametrize(("cmd", "args"), [(c, a) for c, a, _ in HOSTILE_ARGS], ids=[i for _, _, i in HOSTILE_ARGS])
async def test_rejects_hostile_admin_arguments_with_bad_request_and_keeps_the_link(
        h: Harness, cmd: Command, args: bytes) -> None:
    """Malformed or out-of-range arguments answer BAD_REQUEST; the same session then serves an honest request."""
    owner = h.enroll(Role.OWNER)
    link = await h.connect(owner)
    await link.open_secure()
    with pytest.raises(VehicleRefused) as info:
        await link.secure(cmd, args)
    assert info.value.status is S.BAD_REQUEST and info.value.authenticated
    assert link.conn.is_connected and h.service.stats.protocol_errors == 0
    total, keys = decode_key_page((await link.secure(Command.LIST_KEYS, list_keys_args())).data)
    assert total == 1 and keys[0].key_id == owner.key_id
    await link.close()


async def test_largest_arguments_the_store_holds_are_answered(h: Harness) -> None:
    """The honest edge: after_seq 2^63-1, offset 65535, limits 0 and 255 all get OK (empty or short pages)."""
    owner = h.enroll(Role.OWNER)
    link = await h.connect(owner)
    await link.open_secure()
    head, records = decode_audit_page((await link.secure(Command.READ_AUDIT, read_audit_args(I64_MAX, 255))).data)
    assert records == [] and head.seq >= 1
    _, records = decode_audit_page((await link.secure(Command.READ_AUDIT, read_audit_args(0, 255))).data)
    assert records and records[0].seq == 1
    assert decode_key_page((await link.secure(Command.LIST_KEYS, list_keys_args(0xFFFF, 255))).data) == (1, [])
    assert decode_key_page((await link.secure(Command.LIST_KEYS, list_keys_args(0, 0))).data) == (1, [])
    other = h.enroll(Role.DRIVER, "spare")
    assert (await link.secure(Command.REVOKE_KEY, revoke_args(other.key_id))).status is S.OK
    await link.close()


@pytest.mark.parametrize("cmd", [Command.LIST_KEYS, Command.READ_AUDIT, Command.REVOKE_KEY])
async def test_rejects_admin_command_on_the_fast_path(h: Harness, cmd: Command) -> None:
    """An owner's signed admin command in clear is NOT_SUPPORTED and does nothing; inside a session it works."""
    owner, spare = h.enroll(Role.OWNER), h.enroll(Role.DRIVER, "spare")
    args = {Command.LIST_KEYS: list_keys_args(), Command.READ_AUDIT: read_audit_args(),
            Command.REVOKE_KEY: revoke_args(spare.key_id)}[cmd]
    link = await h.connect(owner)
    with pytest.raises(VehicleRefused) as info:
        await link.command(cmd, args)
    assert info.value.status is S.NOT_SUPPORTED and info.value.authenticated
    assert h.service.stats.commands == 0 and not h.store.get_key(spare.key_id).revoked
    await link.open_secure()
    assert (await link.secure(cmd, args)).status is S.OK  # the honest path
    await link.close()


async def test_rejects_a_revoked_key_even_if_policy_would_let_it_through(h: Harness,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The vehicle's key lookup stops a revoked key on its own: with policy switched off it is still DENIED."""
    import key_server.commands

    monkeypatch.setattr(key_server.commands, "authorize", lambda *_a, **_k: None)  # policy allows everything
    stolen, kept = h.enroll(Role.DRIVER, "stolen"), h.enroll(Role.DRIVER, "kept")
    h.store.revoke_key(stolen.key_id, int(h.wall))
    link = await h.connect(stolen)
    with pytest.raises(VehicleRefused) as info:
        await link.command(Command.UNLOCK)
    assert info.value.status is S.DENIED and info.value.authenticated
    with pytest.raises(VehicleRefused):
        await link.open_secure()
    await link.close()
    assert h.service.stats.commands == 0  # never handed to the application: the lookup said "unknown"
    assert not any(out == "unlock" for _, out, _ in h.lock.output_history())
    h.service.refusals.flush()
    rows = [e for e in h.audit.read() if e.event == "refusals"]
    assert [(e.detail["count"], e.detail["reasons"]) for e in rows] == [(2, "unknown or revoked key=2")]
    link = await h.connect(kept)  # the honest case: an unrevoked key still unlocks
    assert (await link.command(Command.UNLOCK)).status is S.OK and h.lock.status().lock is LockState.UNLOCKED
    await link.close()


# ------------------------------------------------------------------ the published test keys (PROTOCOL.md §10.1)


def _published(scalar: int):
    from tests.protocol.helpers import fixed_key

    return fixed_key(scalar)


@pytest.mark.parametrize("which", ["DEVICE_SCALAR", "OTHER_SCALAR", "VEHICLE_SCALAR"])
async def test_rejects_pairing_a_published_test_key(h: Harness, which: str) -> None:
    """A device holding a published test key pairs with a valid code and is refused; a fresh key then pairs."""
    from protocol import KeyPair
    from tests.protocol import helpers

    test_key = _published(getattr(helpers, which))
    code = h.new_code(role=Role.OWNER, name="from the docs", attempts=2)
    link = await h.connect(test_key, pinned=False)
    with pytest.raises(VehicleRefused) as info:
        await link.pair(code, int(code[:2]))
    await link.close()
    assert info.value.status is S.PAIRING_REFUSED
    assert h.store.get_key(test_key.key_id) is None and h.store.list_keys() == []
    [failed] = [e for e in h.audit.read() if e.event == "pair_failed"]
    assert "published test key" in failed.detail["reason"]
    honest = KeyPair.generate()  # the honest case: the same code (one attempt left) enrolls a real key
    link = await h.connect(honest, pinned=False)
    await link.pair(code, int(code[:2]))
    await link.close()
    assert h.store.get_key(honest.key_id) is not None


def test_rejects_enrolling_a_published_test_key_in_the_store(store) -> None:
    """The store refuses the published keys whatever path enrolls them; a fresh key goes in."""
    from key_server.store import KeyRecord, PublishedTestKey
    from protocol import PUBLISHED_TEST_KEYS, KeyPair, key_id

    for public in PUBLISHED_TEST_KEYS:
        with pytest.raises(PublishedTestKey):
            store.add_key(KeyRecord(key_id(public), public, "docs", Role.OWNER, None, None, None, 1))
    assert store.list_keys() == []
    fresh = KeyPair.generate()
    store.add_key(KeyRecord(fresh.key_id, fresh.public_bytes, "phone", Role.OWNER, None, None, None, 1))
    assert [k.key_id for k in store.list_keys()] == [fresh.key_id]


def test_published_test_keys_are_the_documented_ones() -> None:
    """The refusal list is exactly the keys derived from the §10.1 seeds, recognised in either SEC1 form."""
    from cryptography.hazmat.primitives import serialization

    from protocol import PUBLISHED_TEST_KEYS, KeyPair, is_published_test_key
    from tests.protocol.helpers import DEVICE_SCALAR, DRIVER_SCALAR, OTHER_SCALAR, VEHICLE_SCALAR

    keys = [_published(s) for s in (VEHICLE_SCALAR, DEVICE_SCALAR, OTHER_SCALAR, DRIVER_SCALAR)]
    assert {k.public_bytes for k in keys} == PUBLISHED_TEST_KEYS
    for k in keys:
        compressed = k.private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                             serialization.PublicFormat.CompressedPoint)
        assert is_published_test_key(compressed) and is_published_test_key(k.private_key.public_key())
    assert not is_published_test_key(KeyPair.generate().public_bytes) and not is_published_test_key(b"\x04")


async def test_rejects_a_published_test_key_enrolled_before_the_store_refused_them(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store from an older version may hold one: the vehicle's lookup treats it as unknown (DENIED)."""
    import key_server.store
    from tests.protocol.helpers import DEVICE_SCALAR

    test_key = _published(DEVICE_SCALAR)
    with monkeypatch.context() as older_version:  # a key-server from before add_key refused them
        older_version.setattr(key_server.store, "is_published_test_key", lambda _key: False)
        h.store.add_key(KeyRecord(test_key.key_id, test_key.public_bytes, "old", Role.OWNER, None, None, None,
                                  int(h.wall)))
    assert h.store.get_key(test_key.key_id) is not None
    link = await h.connect(test_key)
    with pytest.raises(VehicleRefused) as info:
        await link.command(Command.UNLOCK)
    await link.close()
    assert info.value.status is S.DENIED and h.service.stats.commands == 0
    honest = h.enroll(Role.OWNER)  # the honest case: a real key still unlocks
    link = await h.connect(honest)
    assert (await link.command(Command.UNLOCK)).status is S.OK and h.lock.status().lock is LockState.UNLOCKED
    await link.close()


@pytest.mark.parametrize("cmd", [Command.UNLOCK, Command.LOCK, Command.START])
async def test_rejects_arguments_on_a_command_that_takes_none_with_bad_request(h: Harness, cmd: Command) -> None:
    """Signed ARGS on UNLOCK/LOCK/START are malformed (PROTOCOL.md §5.4): BAD_REQUEST, nothing moves."""
    owner = h.enroll(Role.OWNER)
    link = await h.connect(owner)
    with pytest.raises(VehicleRefused) as info:
        await link.command(cmd, b"\x01")
    await link.close()
    assert info.value.status is S.BAD_REQUEST and info.value.authenticated and not info.value.may_have_succeeded
    assert h.lock.output_history() == []
    link = await h.connect(owner)  # the honest case: the same command without arguments runs
    assert (await link.command(cmd)).status is S.OK
    await link.close()


async def test_a_failing_handler_answers_internal_error_and_keeps_the_link(h: Harness,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while handling a command answers INTERNAL_ERROR (the device is not left waiting); the link serves on."""
    owner = h.enroll(Role.OWNER)
    link = await h.connect(owner)
    await link.open_secure()
    real_run = h.service.commands.run

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the command layer")

    monkeypatch.setattr(h.service.commands, "run", broken)
    with pytest.raises(VehicleRefused) as info:
        await link.secure(Command.STATUS)
    assert info.value.status is S.INTERNAL_ERROR and info.value.may_have_succeeded  # it cannot prove inaction
    assert h.service.stats.internal_errors == 1
    monkeypatch.setattr(h.service.commands, "run", real_run)
    assert (await link.secure(Command.STATUS)).status is S.OK  # the same session: the link was not dropped
    await link.close()
    assert any(e.detail.get("status") == "INTERNAL_ERROR" for e in h.audit.read() if e.event == "refused")
