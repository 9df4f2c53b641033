"""Issue 10, actuations: one key may not toggle the relay as fast as the link allows; an honest pace passes."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import ActuatorConfig, SimulatedLock
from key_client.errors import VehicleRefused
from key_server.audit import AuditLog
from key_server.clock import GuardedClock, Source
from key_server.commands import KeyCommands
from key_server.config import ConfigError, parse_config
from key_server.keyadmin import KeyAdmin
from key_server.ratelimit import ACTUATION_BURST, ACTUATION_PER_MINUTE, ActuationLimiter
from key_server.store import KeyRecord, KeyStore
from protocol import Command, KeyPair, Role, Status

from .harness import Harness

T0 = 1_800_000_000


async def test_a_guest_toggling_the_relay_is_refused_busy_after_the_burst_and_audited_once(tmp_path: Path) -> None:
    # One actuation a minute after a burst of 3: nothing refills while the test runs.
    h = await Harness(tmp_path, actuations=ActuationLimiter(burst=3, per_minute=1), trusted_clock=True).start()
    try:
        guest, owner = h.enroll(Role.GUEST, "guest"), h.enroll(Role.OWNER, "owner")
        link = await h.connect(guest)
        statuses = []
        for n in range(10):
            try:
                statuses.append((await link.command(Command.UNLOCK if n % 2 else Command.LOCK)).status)
            except VehicleRefused as exc:
                assert exc.authenticated and exc.temporary  # a signed BUSY: "busy, retry shortly"
                statuses.append(exc.status)
        await link.close()
        assert statuses == [Status.OK] * 3 + [Status.BUSY] * 7
        assert h.lock.status().lock is not None
        rows = [e for e in h.audit.read(limit=1000) if e.key_id == guest.key_id]
        # An intent and an outcome per actuation; one row for the seven refusals, not one each.
        assert [e.event for e in rows] == ["actuate", "lock", "actuate", "unlock", "actuate", "lock",
                                           "rate_limited"]
        assert dict(rows[-1].detail) == {"what": "actuation", "refused": 1}
        assert h.store.get_key(guest.key_id).last_used_at == h.wall  # type: ignore[union-attr]
        other = await h.connect(owner)  # the limit is per key: the owner is not locked out by the guest
        assert (await other.command(Command.UNLOCK)).status is Status.OK
        await other.close()
    finally:
        await h.stop()
    with KeyStore.open(tmp_path / "keys.db") as store:  # the rest of the spell is counted at shutdown
        last = [e for e in AuditLog(store).read(limit=1000) if e.event == "rate_limited"][-1]
        assert dict(last.detail) == {"what": "actuation", "refused": 6}


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[KeyCommands, KeyAdmin, bytes, Mono]]:
    mono = Mono()
    with KeyStore.open(tmp_path / "keys.db", create=True) as store:
        clock = GuardedClock(store, source=lambda: T0)
        clock.confirm(T0, Source.RTC)  # a guest's key is limited in time: the clock must be trusted for it to act
        admin = KeyAdmin(store, AuditLog(store), clock)
        kp = KeyPair.generate()
        store.add_key(KeyRecord(kp.key_id, kp.public_bytes, "guest", Role.GUEST, None, None, None, T0))
        lock = SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=1))
        yield KeyCommands(admin, lock, actuations=ActuationLimiter(), monotonic=mono), admin, kp.key_id, mono


def act(commands: KeyCommands, key_id: bytes, command: Command = Command.UNLOCK) -> Status:
    outcome = asyncio.run(commands.run(key_id, command, b""))
    commands.record(outcome)
    return outcome.status


def test_an_honest_pace_is_never_limited(setup: tuple[KeyCommands, KeyAdmin, bytes, Mono]) -> None:
    commands, admin, kid, mono = setup
    # A fumbling user: the whole default burst at once, then an actuation every 5 s for ten minutes.
    assert [act(commands, kid) for _ in range(ACTUATION_BURST)] == [Status.OK] * ACTUATION_BURST
    for _ in range(120):
        mono.t += 60 / ACTUATION_PER_MINUTE
        assert act(commands, kid, Command.LOCK) is Status.OK
    assert "rate_limited" not in {e.event for e in admin.audit.read(limit=1000)}


def test_a_flood_is_audited_as_counts_not_rows(setup: tuple[KeyCommands, KeyAdmin, bytes, Mono]) -> None:
    commands, admin, kid, mono = setup
    statuses = [act(commands, kid) for _ in range(ACTUATION_BURST + 100)]
    assert statuses.count(Status.BUSY) == 100 and statuses[:ACTUATION_BURST] == [Status.OK] * ACTUATION_BURST
    mono.t += 60  # still flooding a minute later: one more row, with the count
    assert act(commands, kid) is Status.OK  # 12 tokens came back meanwhile: the spell ended, its count is written
    limited = [dict(e.detail)["refused"] for e in admin.audit.read(limit=1000) if e.event == "rate_limited"]
    assert limited == [1, 99]  # the first refusal at once, the rest in one row: 100 refusals, two rows
    assert commands.lock.status() is not None


def test_status_reads_do_not_spend_actuations(setup: tuple[KeyCommands, KeyAdmin, bytes, Mono]) -> None:
    commands, _, kid, _ = setup
    assert {act(commands, kid, Command.STATUS) for _ in range(50)} == {Status.OK}
    assert act(commands, kid) is Status.OK


@pytest.mark.parametrize(("text", "message"), [
    ("actuation_burst = 0", "rate_limit.actuation_burst = 0: too small (allowed: an integer from 1 to 60)"),
    ("actuation_burst = 61", "rate_limit.actuation_burst = 61: too large (allowed: an integer from 1 to 60)"),
    ("actuation_burst = 2.5", "rate_limit.actuation_burst = 2.5: not an integer"),
    ("actuation_burst = true", "rate_limit.actuation_burst"),
    ("actuation_per_minute = 0",
     "rate_limit.actuation_per_minute = 0.0: too small (allowed: a number from 0.5 to 120)"),
    ("actuation_per_minute = 121", "rate_limit.actuation_per_minute = 121.0: too large"),
    ('actuation_per_minute = "fast"', 'rate_limit.actuation_per_minute = "fast": not a number'),
    ("actuation_per_minute = nan", "rate_limit.actuation_per_minute"),
])
def test_actuation_limit_config_is_bounded(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"rate_limit": tomllib.loads(text)}, file="config.toml")
    assert info.value.key in ("rate_limit.actuation_burst", "rate_limit.actuation_per_minute")
    assert str(info.value).startswith(f"config.toml: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_actuation_limit_config_defaults_and_values() -> None:
    defaults = parse_config({}, file="x").rate_limit
    assert (defaults.actuation_burst, defaults.actuation_per_minute) == (ACTUATION_BURST, ACTUATION_PER_MINUTE)
    assert (ACTUATION_BURST, ACTUATION_PER_MINUTE) == (6, 12)  # the numbers docs/THREAT_MODEL.md states
    cfg = parse_config({"rate_limit": {"actuation_burst": 2, "actuation_per_minute": 0.5}}, file="x")
    assert (cfg.rate_limit.actuation_burst, cfg.rate_limit.actuation_per_minute) == (2, 0.5)
