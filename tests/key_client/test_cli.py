"""Every key-client command against a real key server on the mock radio: happy paths and refusals."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

from dkey_link.exit_codes import MEANING, ExitCode, help_table
from dkey_link.mock import MockAir
from hardware import LockChanged, LockState
from key_client import cli
from key_client.keychain import KEYS_DIR, Keychain
from key_client.radios import mock_air, register_mock
from protocol import KeyPair, Role

from ..key_server.harness import Harness
from . import Cli


@pytest.fixture
def run(h: Harness, tmp_path, capsys):
    with mock_air(h.air):
        yield Cli(tmp_path / "kc", capsys)


def events(h: Harness) -> list[str]:
    return [str(e.event) for e in h.audit.read()]


async def pair(run: Cli, h: Harness, role: Role = Role.OWNER, *extra: str) -> None:
    r = await run("pair", h.new_code(role=role, name="laptop"), *extra)
    assert r.code == ExitCode.OK, r.err


# ---------------------------------------------------------------------- pair


async def test_pair_with_a_code_stores_the_vehicle(run: Cli, h: Harness) -> None:
    r = await run("pair", h.new_code(role=Role.DRIVER, name="Maya's laptop"))
    assert r.code == ExitCode.OK, r.err
    assert "paired with test-car" in r.out and "as driver" in r.out
    (entry,) = Keychain.open(run.keychain).vehicles()
    assert entry.name == "test-car" and entry.role == "driver"
    assert entry.vehicle_public_key == h.identity.public_bytes and entry.vehicle_id == h.identity.key_id
    assert entry.address_hint == h.peripheral.address
    assert h.store.get_key(entry.key_id).name == "Maya's laptop"
    assert stat.S_IMODE(os.stat(run.keychain).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run.keychain / KEYS_DIR / entry.key_file).st_mode) == 0o600


async def test_pair_accepts_the_qr_uri_and_a_nickname(run: Cli, h: Harness) -> None:
    code = h.new_code()
    uri = f"dkey://pair?code={code}&vehicle={h.identity.key_id.hex()}&name=test-car"
    r = await run("--json", "pair", uri, "--name", "garage")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["ok"] and obj["vehicle"] == "garage" and obj["role"] == "owner"
    assert obj["vehicle_id"] == h.identity.key_id.hex()


async def test_qr_uri_for_another_vehicle_finds_nothing(run: Cli, h: Harness) -> None:
    uri = f"dkey://pair?code={h.new_code()}&vehicle={KeyPair.generate().key_id.hex()}"
    r = await run("pair", uri)
    assert r.code == ExitCode.NOT_FOUND
    assert "none is the one" in r.err
    assert not list((run.keychain / KEYS_DIR).iterdir())


async def test_wrong_code_is_denied_and_leaves_no_key_behind(run: Cli, h: Harness) -> None:
    code = h.new_code()
    wrong = code[:2] + f"{(int(code[2:]) + 1) % 10**6:06d}"
    r = await run("pair", wrong)
    assert r.code == ExitCode.DENIED
    assert "pairing" in r.err and "code" in r.err
    assert Keychain.open(run.keychain).vehicles() == []
    assert not list((run.keychain / KEYS_DIR).iterdir())


async def test_malformed_code_is_a_usage_error(run: Cli) -> None:
    r = await run("pair", "12-34")
    assert r.code == ExitCode.USAGE and "8 digits" in r.err


async def test_pairing_again_with_a_known_vehicle_keeps_the_code_unspent(run: Cli, h: Harness, tmp_path) -> None:
    await pair(run, h)
    code = h.new_code()
    r = await run("pair", code)
    assert r.code == ExitCode.KEYS and "forget test-car" in r.err
    other = await run("pair", code, keychain=tmp_path / "watch")  # the code still works for another device
    assert other.code == ExitCode.OK, other.err


async def test_passphrase_protected_key(run: Cli, h: Harness, monkeypatch) -> None:
    monkeypatch.setenv("DKEY_PASSPHRASE", "open sesame")
    await pair(run, h, Role.OWNER, "--passphrase")
    (entry,) = Keychain.open(run.keychain).vehicles()
    assert entry.encrypted
    assert (await run("unlock")).code == ExitCode.OK
    monkeypatch.setenv("DKEY_PASSPHRASE", "wrong")
    r = await run("unlock")
    assert r.code == ExitCode.KEYS and "wrong passphrase" in r.err
    monkeypatch.delenv("DKEY_PASSPHRASE")
    r = await run("unlock")  # no terminal under pytest to ask on
    assert r.code == ExitCode.KEYS and "DKEY_PASSPHRASE" in r.err


# ---------------------------------------------------------------------- fast path


async def test_unlock_lock_status_start(run: Cli, h: Harness) -> None:
    h.trust_clock()  # not about the clock: the vehicle asks no one for the time
    await pair(run, h)
    r = await run("unlock")
    assert r.code == ExitCode.OK, r.err
    assert r.out == "unlocked test-car\n"  # no door or start state: a fast-path answer carries none (§5.3)
    r = await run("lock")
    assert r.code == ExitCode.OK and r.out.startswith("locked test-car")
    r = await run("status")
    assert r.code == ExitCode.OK and "lock locked" in r.out
    r = await run("start")
    assert r.code == ExitCode.OK and r.out == "start enabled on test-car\n"
    assert events(h)[-7:] == ["actuate", "unlock", "actuate", "lock", "status", "actuate", "start"]


async def test_json_output_is_one_object_per_result(run: Cli, h: Harness) -> None:
    await pair(run, h)
    r = await run("unlock", "--json", "--vehicle", "test-car")  # options also after the command
    assert r.code == ExitCode.OK
    assert r.json() == [{"ok": True, "vehicle": "test-car", "vehicle_id": h.identity.key_id.hex(),
                         "command": "unlock", "lock": "unlocked"}]
    r = await run("status", "--json")  # the whole report, read inside a confidential session
    assert r.code == ExitCode.OK
    assert r.json() == [{"ok": True, "vehicle": "test-car", "vehicle_id": h.identity.key_id.hex(),
                         "command": "status", "lock": "unlocked", "door": "closed", "start_enabled": False}]


async def test_revoked_key_is_denied(run: Cli, h: Harness) -> None:
    await pair(run, h, Role.DRIVER)
    (entry,) = Keychain.open(run.keychain).vehicles()
    h.store.revoke_key(entry.key_id, int(h.wall))
    r = await run("--json", "unlock")
    assert r.code == ExitCode.DENIED
    assert "refused this key" in r.err
    (obj,) = r.json()
    assert obj["exit"] == "denied" and obj["may_have_succeeded"] is False


async def test_unlock_without_a_keychain_entry(run: Cli) -> None:
    r = await run("unlock")
    assert r.code == ExitCode.KEYS and "pair with" in r.err


async def test_unknown_vehicle_name(run: Cli, h: Harness) -> None:
    await pair(run, h)
    r = await run("--vehicle", "boat", "unlock")
    assert r.code == ExitCode.KEYS and "no vehicle called 'boat'" in r.err


async def test_no_vehicle_in_range(run: Cli, h: Harness) -> None:
    await pair(run, h)
    with mock_air(MockAir()):  # an empty air: nobody advertises
        r = await run("unlock")
    assert r.code == ExitCode.NOT_FOUND
    assert "no vehicle found in 1 s: is key-server running and in range?" in r.err


async def test_unlock_with_unknown_outcome_is_never_resent(run: Cli, h: Harness) -> None:
    await pair(run, h)
    connects = h.service.stats.connects
    h.air.disconnect_after_writes(1, deliver=True)  # the command arrives, the link drops before the answer
    r = await run("--json", "unlock")
    assert r.code == ExitCode.OUTCOME_UNKNOWN
    assert "never resends" in r.err
    assert r.json()[0]["may_have_succeeded"] is True
    await asyncio.sleep(0.05)
    # One connection, and no second unlock attempt on a new one (this server drops the half-delivered one).
    assert h.service.stats.connects == connects + 1
    assert not [e for e in h.lock.history if isinstance(e, LockChanged) and e.lock is LockState.UNLOCKED]


# ---------------------------------------------------------------------- owner commands


async def test_keys_lists_the_vehicles_keys(run: Cli, h: Harness) -> None:
    h.enroll(Role.DRIVER, "watch")
    await pair(run, h)
    r = await run("keys")
    assert r.code == ExitCode.OK, r.err
    assert "2 keys on test-car" in r.out and "watch" in r.out and "(this device)" in r.out
    rows = (await run("--json", "keys")).json()
    assert sorted((k["name"], k["role"], k["this_device"]) for k in rows) == [
        ("laptop", "owner", True), ("watch", "driver", False)]


async def test_revoke_by_name_and_by_id_prefix(run: Cli, h: Harness) -> None:
    watch = h.enroll(Role.DRIVER, "watch")
    phone = h.enroll(Role.DRIVER, "phone")
    await pair(run, h)
    r = await run("revoke", "watch")
    assert r.code == ExitCode.OK, r.err
    assert h.store.get_key(watch.key_id).revoked
    r = await run("--json", "revoke", phone.key_id.hex()[:6])
    assert r.code == ExitCode.OK and r.json()[0]["revoked"] is True
    assert h.store.get_key(phone.key_id).revoked
    assert (await run("revoke", "watch")).out.endswith("was already revoked on test-car\n")


async def test_revoke_refusals(run: Cli, h: Harness) -> None:
    await pair(run, h)
    h.enroll(Role.DRIVER, "twin")
    h.enroll(Role.DRIVER, "twin")
    r = await run("revoke", "twin")
    assert r.code == ExitCode.USAGE and "several keys" in r.err
    r = await run("revoke", "nobody")
    assert r.code == ExitCode.USAGE and "no key called" in r.err
    r = await run("revoke", "laptop")  # the last owner: would lock every owner out
    assert r.code == ExitCode.DENIED and "last owner" in r.err
    assert "key-server revoke --force" in r.err  # over the air never: at the vehicle only (PROTOCOL.md §5.3)
    assert (await run("revoke", "laptop", "--force")).code == ExitCode.USAGE
    assert (await run("unlock")).code == ExitCode.OK  # nothing was revoked


async def test_owner_commands_refused_for_a_driver_key(run: Cli, h: Harness) -> None:
    await pair(run, h, Role.DRIVER)
    for command in (["keys"], ["revoke", "x"], ["audit"]):
        r = await run(*command)
        assert r.code == ExitCode.DENIED, command
        assert "only owner keys" in r.err


async def test_audit_shows_the_newest_entries(run: Cli, h: Harness) -> None:
    h.trust_clock()  # not about the clock: no time statements among the rows
    await pair(run, h)
    for _ in range(3):
        await run("status")
    r = await run("--json", "audit", "--limit", "4")
    assert r.code == ExitCode.OK, r.err
    *rows, head = r.json()
    assert len(rows) == 4 and [row["event"] for row in rows][-3:] == ["status"] * 3
    assert rows == sorted(rows, key=lambda row: row["seq"])
    assert head["head"] == f"{rows[-1]['seq']}:{rows[-1]['hash']}"  # the head to pin, after the entries
    *everything, _ = (await run("--json", "audit", "--after", "0", "--limit", "500")).json()
    assert [row["seq"] for row in everything] == list(range(1, len(everything) + 1))
    assert "pair" in [row["event"] for row in everything]
    assert (await run("audit", "--limit", "0")).code == ExitCode.USAGE


# ---------------------------------------------------------------------- keychain commands, scan


async def test_vehicles_and_forget(run: Cli, h: Harness) -> None:
    await pair(run, h)
    r = await run("vehicles")
    assert r.code == ExitCode.OK and r.out.startswith("test-car") and "owner" in r.out
    (obj,) = (await run("--json", "vehicles")).json()
    assert obj["vehicle"] == "test-car" and "vehicle_public_key" not in obj
    r = await run("forget", "test-car")
    assert r.code == ExitCode.OK and f"key-server revoke {obj['key_id']}" in r.out
    assert (await run("--json", "vehicles")).json() == []
    assert not list((run.keychain / KEYS_DIR).iterdir())
    assert (await run("forget", "test-car")).code == ExitCode.KEYS


async def test_scan_lists_vehicles_and_identify_matches_the_keychain(run: Cli, h: Harness) -> None:
    h.peripheral.set_rssi(-47)
    r = await run("--json", "scan")
    assert r.code == ExitCode.OK
    assert r.json() == [{"name": "test-car", "address": h.peripheral.address, "rssi": -47, "recognised_as": None,
                         "last_seen_as": None}]
    await pair(run, h)  # fetches the advertising secret: the token now says which car this is, unconnected
    r = await run("scan")
    assert "-47 dBm" in r.out and "= test-car (by its advertising token)" in r.out
    (obj,) = (await run("--json", "scan")).json()
    assert obj["recognised_as"] == "test-car"
    (obj,) = (await run("--json", "scan", "--identify")).json()
    assert obj["vehicle_id"] is None and obj["recognised_as"] == "test-car"  # no code pending: it names nobody
    h.new_code()  # while a pairing code is pending, the challenge carries the vehicle id (PROTOCOL.md §3.11)
    (obj,) = (await run("--json", "scan", "--identify")).json()
    assert obj["vehicle_id"] == h.identity.key_id.hex() and obj["keychain"] == "test-car"
    assert not h.air.links  # identifying disconnects again


async def test_scan_with_nothing_in_range(run: Cli) -> None:
    with mock_air(MockAir()):
        r = await run("scan")
    assert r.code == ExitCode.NOT_FOUND and "no vehicle found" in r.err


async def test_list_commands_print_one_json_array(run: Cli, h: Harness) -> None:
    # Like key-server's lists: one JSON document, so `[]` is an empty list and not an empty output.
    await pair(run, h)
    for argv in (["scan"], ["scan", "--identify"], ["keys"], ["audit"], ["vehicles"]):
        r = await run("--json", *argv)
        assert r.code == ExitCode.OK, r.err
        (line,) = r.out.splitlines()
        rows = json.loads(line)
        assert isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows), (argv, r.out)
    r = await run("--json", "audit", "--after", str(2**62))
    # No entries: the array holds only the vehicle's signed head, its last object (docs/CLIENT.md).
    (head,) = json.loads(r.out)
    assert r.code == ExitCode.OK and set(head) >= {"head", "seq", "hash"} and "no audit entries" in r.err


async def test_an_empty_keychain_lists_as_an_empty_json_array(run: Cli) -> None:
    r = await run("--json", "vehicles")
    assert (r.code, r.out) == (ExitCode.OK, "[]\n")
    assert "no vehicles in" in r.err  # the remark stays on stderr


async def test_a_failed_list_command_prints_only_its_error_object(run: Cli) -> None:
    with mock_air(MockAir()):
        r = await run("--json", "scan")
    assert r.code == ExitCode.NOT_FOUND
    (obj,) = [json.loads(line) for line in r.out.splitlines()]
    assert obj["ok"] is False and obj["exit"] == "not_found"


def test_every_command_is_either_a_list_or_prints_objects() -> None:
    # A new command must choose: one array (a list) or one object per result (docs/CLIENT.md, --json).
    assert cli.LIST_COMMANDS == {"scan", "keys", "audit", "vehicles"}
    assert set(cli._COMMANDS) - cli.LIST_COMMANDS == {"pair", "unlock", "lock", "status", "start", "revoke",
                                                      "forget", "auto", "set-time", "request-share",
                                                      "share", "import-share", "issue-code", "edit", "watch"}


# ---------------------------------------------------------------------- options and plumbing


async def test_version_prints_the_installed_distribution(capsys) -> None:
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    assert await cli.amain(["--version"]) == ExitCode.OK
    out, err = capsys.readouterr()
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert out == f"key-client {version('wearable-dkey')}\n" == f"key-client {pyproject['project']['version']}\n"
    assert err == ""


async def test_help_documents_the_exit_codes(capsys) -> None:
    assert await cli.amain(["--help"]) == 0
    out = capsys.readouterr().out
    assert help_table(cli.CLIENT_CODES) in out  # the one shared table, for the codes key-client returns
    for code in (ExitCode.DENIED, ExitCode.NOT_FOUND, ExitCode.TIMED_OUT, ExitCode.OUTCOME_UNKNOWN, ExitCode.BUSY,
                 ExitCode.KEYS, ExitCode.CONFIG, ExitCode.INTERRUPTED):
        assert f"\n  {int(code):<3d} {MEANING[code]}" in out
    assert "already initialised" not in out  # server-only codes stay out
    assert "mock" not in out  # the test radio stays hidden


async def test_bad_usage_returns_the_usage_code(capsys) -> None:
    assert await cli.amain(["--radio", "carrier-pigeon", "unlock"]) == ExitCode.USAGE
    assert await cli.amain([]) == ExitCode.USAGE
    capsys.readouterr()


async def test_mock_radio_needs_the_test_hook(tmp_path, capsys) -> None:
    register_mock(None)
    code = await cli.amain(["--keychain", str(tmp_path), "--radio", "mock", "scan"])
    assert code == ExitCode.ERROR and "test suite" in capsys.readouterr().err


async def test_radio_from_environment(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DKEY_RADIO", "mock")  # only the command-line flag may pick the hidden test radio
    assert await cli.amain(["--keychain", str(tmp_path), "scan"]) == ExitCode.USAGE
    monkeypatch.setenv("DKEY_RADIO", "sim")
    monkeypatch.setenv("DKEY_SIM_DIR", str(tmp_path / "air"))
    code = await cli.amain(["--keychain", str(tmp_path / "kc"), "--scan-time", "0.2", "scan"])
    assert code == ExitCode.NOT_FOUND
    capsys.readouterr()


def test_main_runs_its_own_loop(tmp_path, capsys) -> None:
    assert cli.main(["--keychain", str(tmp_path / "kc"), "vehicles"]) == ExitCode.OK
    assert "no vehicles" in capsys.readouterr().err


async def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(run: Cli, h: Harness,
                                                                              monkeypatch) -> None:
    from key_client.app import DeviceApp

    await pair(run, h)

    async def broken(self, cmd, vehicle=None):  # a bug, or a backend library's own exception
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(DeviceApp, "command", broken)
    r = await run("unlock")
    assert r.code == ExitCode.ERROR
    assert r.err == "key-client: unexpected error: ZeroDivisionError: division by zero (run with --debug for details)\n"
    r = await run("--debug", "unlock")
    assert r.code == ExitCode.ERROR and "Traceback" in r.err and r.err.endswith("(traceback above)\n")


# ---------------------------------------------------------------------- the vehicle's clock


async def test_a_guest_refused_while_the_clock_is_untrusted_is_told_an_owner_fixes_it(run: Cli, h: Harness) -> None:
    await pair(run, h, Role.GUEST)
    r = await run("unlock")
    assert r.code == ExitCode.DENIED
    assert "the vehicle's clock is not yet trusted; an owner's device fixes this by connecting" in r.err


async def test_set_time_states_this_devices_clock(run: Cli, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    await pair(run, h)
    monkeypatch.setattr(time, "time", lambda: h.wall + 5)  # this device's clock agrees with the vehicle's
    r = await run("--json", "set-time")
    assert r.code == ExitCode.OK, r.err
    (obj,) = r.json()
    assert obj["ok"] and obj["trusted"] and obj["vehicle_time"] == int(h.wall) + 5 and h.clock.trusted
    monkeypatch.setattr(time, "time", lambda: h.wall + 86_400)  # a day fast: the trusted vehicle refuses it
    r = await run("set-time")
    assert r.code == ExitCode.DENIED and "refused this device's time" in r.out and "behind this device's" in r.out
