"""key-server CLI in-process: init, pair, keys, revoke, audit, config errors, and their exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from dkey_link.exit_codes import MEANING, ExitCode, help_table
from key_server.cli import SERVER_EXIT_CODES, _apply_overrides, build_parser, main
from key_server.config import Config
from key_server.store import KeyRecord, KeyStore
from protocol import KeyPair, Role


@pytest.fixture
def state(tmp_path):
    d = tmp_path / "state"
    assert main(["--state-dir", str(d), "init"]) == ExitCode.OK
    return d


def run(state, *args: str) -> int:
    return main(["--state-dir", str(state), *args])


def enroll(state, role: Role = Role.OWNER, name: str = "phone") -> KeyPair:
    kp = KeyPair.generate()
    with KeyStore.open(state / "keys.db", create=True) as store:
        store.add_key(KeyRecord(kp.key_id, kp.public_bytes, name, role, None, None, None, int(time.time())))
    return kp


def test_init_creates_private_files_and_refuses_to_overwrite(state) -> None:
    assert oct(os.stat(state / "vehicle_key.pem").st_mode & 0o777) == "0o600"
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    before = (state / "vehicle_key.pem").read_bytes()
    assert run(state, "init") == ExitCode.ALREADY_EXISTS
    assert (state / "vehicle_key.pem").read_bytes() == before


def test_world_readable_vehicle_key_is_refused(state, capsys) -> None:
    os.chmod(state / "vehicle_key.pem", 0o644)
    assert run(state, "pair", "--json") == ExitCode.KEYS
    assert "chmod 600" in capsys.readouterr().err
    os.chmod(state / "vehicle_key.pem", 0o600)
    assert run(state, "pair", "--json") == ExitCode.OK


def test_commands_before_init_say_what_to_do(tmp_path, capsys) -> None:
    assert main(["--state-dir", str(tmp_path / "none"), "keys"]) == ExitCode.NOT_INITIALISED
    assert "init` first" in capsys.readouterr().err


def test_pair_prints_a_code_with_its_slot(state, capsys) -> None:
    assert run(state, "pair", "--role", "guest", "--name", "Tom", "--expires", "3d", "--json") == ExitCode.OK
    out = json.loads(capsys.readouterr().out)
    assert len(out["code"]) == 8 and out["code"].isdigit() and int(out["code"][:2]) == out["slot"]
    assert out["uri"].startswith("dkey://pair?code=")
    with KeyStore.open(state / "keys.db", create=True) as store:
        [p] = store.list_pairings(int(time.time()))
        assert p.role is Role.GUEST and p.key_valid_until is not None and p.prs != out["code"].encode()


def test_pair_rejects_a_bad_schedule(state, capsys) -> None:
    assert run(state, "pair", "--schedule", "Caturday 25:00-26:00") == ExitCode.USAGE


def test_keys_and_revoke_by_name(state, capsys) -> None:
    enroll(state, Role.OWNER, "laptop")
    phone = enroll(state, Role.DRIVER, "phone")
    assert run(state, "revoke", "phone") == ExitCode.OK
    capsys.readouterr()
    assert run(state, "keys", "--json", "--all") == ExitCode.OK
    keys = {k["name"]: k for k in json.loads(capsys.readouterr().out)}
    assert keys["phone"]["revoked_at"] is not None and keys["phone"]["key_id"] == phone.key_id.hex()
    assert run(state, "keys", "--json") == ExitCode.OK
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["laptop"]


def test_revoking_the_last_owner_needs_force(state) -> None:
    owner = enroll(state, Role.OWNER, "laptop")
    assert run(state, "revoke", owner.key_id.hex()[:6]) == ExitCode.DENIED
    assert run(state, "revoke", "laptop", "--force") == ExitCode.OK


def test_revoke_unknown_key(state) -> None:
    assert run(state, "revoke", "nobody") == ExitCode.NOT_FOUND


def test_audit_verify_detects_an_edited_entry(state, capsys) -> None:
    enroll(state)
    assert run(state, "revoke", "phone", "--force") == ExitCode.OK
    assert run(state, "audit", "--verify") == ExitCode.OK
    db = sqlite3.connect(state / "keys.db")
    db.execute("UPDATE audit SET event = 'admin' WHERE event = 'revoke'")
    db.commit()
    db.close()
    assert run(state, "audit", "--verify") == ExitCode.AUDIT_TAMPERED
    assert "TAMPERED" in capsys.readouterr().out


def test_bad_config_is_a_config_error(state, capsys) -> None:
    (state / "config.toml").write_text("[server]\nradoi = 'sim'\n")
    assert run(state, "keys") == ExitCode.CONFIG
    assert "radoi" in capsys.readouterr().err


def test_sample_config_loads(state, capsys, tmp_path) -> None:
    assert run(state, "config") == ExitCode.OK
    sample = tmp_path / "c.toml"
    sample.write_text(capsys.readouterr().out)
    assert main(["--state-dir", str(state), "--config", str(sample), "keys"]) == ExitCode.OK


def test_actuate_test_pulses_the_simulated_lock(state, capsys) -> None:
    assert run(state, "actuate", "--test", "--hold", "0.01") == ExitCode.OK
    assert "done: lock locked" in capsys.readouterr().out


def test_doctor_reports_and_fails_without_bluetooth(state, capsys) -> None:
    code = run(state, "doctor", "--json")
    checks = json.loads(capsys.readouterr().out)
    names = {c["check"]: c["level"] for c in checks}
    assert names["vehicle key"] == "ok" and names["audit log"] == "ok"
    assert code in (ExitCode.OK, ExitCode.CHECK_FAILED)


def test_help_lists_the_exit_codes_and_the_environment(capsys) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert help_table(SERVER_EXIT_CODES) in out
    for code in (ExitCode.TIMED_OUT, ExitCode.OUTCOME_UNKNOWN, ExitCode.BUSY):  # client-only meanings
        assert MEANING[code] not in out
    for var in ("DKEY_STATE_DIR", "DKEY_RADIO", "DKEY_SIM_DIR"):
        assert f"  {var}  " in out


@pytest.mark.parametrize(("flag", "env", "config", "want"), [
    (None, None, "ble", "ble"), (None, None, "sim", "sim"), (None, "sim", "ble", "sim"),
    ("ble", "sim", "sim", "ble"), ("sim", "ble", "ble", "sim"),
])
def test_radio_is_flag_then_environment_then_config(monkeypatch, tmp_path, flag, env, config, want) -> None:
    if env is None:
        monkeypatch.delenv("DKEY_RADIO", raising=False)
    else:
        monkeypatch.setenv("DKEY_RADIO", env)
    monkeypatch.setenv("DKEY_SIM_DIR", "/tmp/env-air")  # short: a socket path under it must fit AF_UNIX
    cfg = Config(state_dir=tmp_path)
    cfg.server.radio, cfg.server.sim_dir = config, "/tmp/config-air"
    args = build_parser().parse_args(["run"] + (["--radio", flag] if flag else []))
    _apply_overrides(cfg, args)
    assert cfg.server.radio == want
    assert cfg.server.sim_dir == "/tmp/env-air"  # the same order for the sim air directory
    _apply_overrides(cfg, build_parser().parse_args(["run", "--sim-dir", "/flag-air"]))
    assert cfg.server.sim_dir == "/flag-air"


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(state, capsys, monkeypatch) -> None:
    def boom(store):
        raise RuntimeError("wires crossed")

    monkeypatch.setattr("key_server.cli._admin", boom)
    assert run(state, "keys") == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.splitlines() == ["key-server: unexpected error: RuntimeError('wires crossed') "
                                "(run with --debug for the traceback)"]
    assert main(["--debug", "--state-dir", str(state), "keys"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "wires crossed" in err.splitlines()[-1]


def test_ctrl_c_in_a_command_is_interrupted(state, capsys, monkeypatch) -> None:
    def interrupted(store):
        raise KeyboardInterrupt

    monkeypatch.setattr("key_server.cli._admin", interrupted)
    assert run(state, "revoke", "x") == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == "key-server: interrupted\n"


async def test_run_applies_the_configured_audit_retention(state, monkeypatch: pytest.MonkeyPatch) -> None:
    """[audit] max_entries reaches the audit log the running server appends to (the CLI's own appends never prune)."""
    from key_server import runner
    from key_server.config import load_config

    (state / "config.toml").write_text((state / "config.toml").read_text().replace(
        "max_entries = 100000", "max_entries = 250"))
    seen: list[int | None] = []

    class Stop(Exception):
        pass

    class FakeService:
        def __init__(self, **kw: object) -> None:
            seen.append(kw["audit"].max_entries)  # type: ignore[attr-defined]

        async def start(self) -> None:
            raise Stop

        async def stop(self) -> None:
            pass

        def actuator_changed(self, event: object) -> None:
            pass

    monkeypatch.setattr(runner, "KeyService", FakeService)
    cfg = load_config(None, state)
    cfg.server.radio = "sim"
    cfg.server.sim_dir = str(state.parent / "air")
    with pytest.raises(Stop):
        await runner.serve(cfg)
    assert seen == [250]


async def test_run_wires_the_locks_changes_to_the_service(state, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lock reports reaches KeyService.actuator_changed (WATCH pushes) as well as the log."""
    from hardware import LockChanged
    from key_server import runner
    from key_server.config import load_config
    from protocol import LockState

    heard: list[object] = []

    class Stop(Exception):
        pass

    class FakeService:
        def __init__(self, **kw: object) -> None:
            self.lock = kw["lock"]

        async def start(self) -> None:
            await self.lock.unlock()  # type: ignore[attr-defined]
            raise Stop

        async def stop(self) -> None:
            pass

        def actuator_changed(self, event: object) -> None:
            heard.append(event)

    monkeypatch.setattr(runner, "KeyService", FakeService)
    cfg = load_config(None, state)
    cfg.server.radio = "sim"
    cfg.server.sim_dir = str(state.parent / "air")
    with pytest.raises(Stop):
        await runner.serve(cfg)
    assert any(isinstance(e, LockChanged) and e.lock is LockState.UNLOCKED for e in heard)


def test_doctor_checks_the_adapter_run_uses_not_any_adapter_that_is_up(monkeypatch) -> None:
    """No [server] adapter means hci0 to bless: hci1 up and hci0 missing is a failure, not a pass."""
    import asyncio

    from key_server import doctor
    from key_server.config import Config
    from key_server.radio import ble

    async def probe(timeout: float = 3.0) -> dict[str, object]:
        return {"bluez": True, "error": None, "adapters": [
            {"name": "hci1", "address": "00:AA:01:01:00:01", "powered": True, "gatt_server": True,
             "advertising": True, "supported_advertisements": 4}]}

    monkeypatch.setattr(ble, "probe_bluez", probe)
    monkeypatch.setattr(doctor, "_system_bus_present", lambda: True)
    cfg = Config()
    cfg.server.radio = "ble"
    [check] = asyncio.run(doctor._bluez_over_dbus(cfg))
    assert check.level == "fail" and "hci0" in check.detail
    cfg.server.adapter = "hci1"  # the honest case: the adapter that is up is the one configured
    [check] = asyncio.run(doctor._bluez_over_dbus(cfg))
    assert check.level == "ok" and "hci1" in check.name


def _secret(state):
    with KeyStore.open(state / "keys.db") as store:
        return store.ad_secret()


def test_init_makes_an_advertising_secret_and_rotate_secret_replaces_it_audited(state, capsys) -> None:
    first = _secret(state)
    assert first.generation == 1
    capsys.readouterr()
    assert run(state, "rotate-secret") == ExitCode.OK
    out = capsys.readouterr().out
    second = _secret(state)
    assert second.generation == 2 and second.secret != first.secret and "generation 2" in out
    assert first.secret.hex() not in out and second.secret.hex() not in out  # never printed
    assert run(state, "audit", "--json") == ExitCode.OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    flat = rows[0] if rows and isinstance(rows[0], list) else rows
    assert any(r.get("detail", {}).get("action") == "rotate_secret" for r in flat)
    assert second.secret.hex() not in json.dumps(flat)


def test_revoke_with_rotate_secret_rotates_and_a_plain_revoke_does_not(state) -> None:
    enroll(state, Role.OWNER, "laptop")
    enroll(state, Role.GUEST, "guest")
    enroll(state, Role.GUEST, "guest2")
    before = _secret(state)
    assert run(state, "revoke", "guest") == ExitCode.OK
    assert _secret(state) == before
    assert run(state, "revoke", "guest2", "--rotate-secret") == ExitCode.OK
    assert _secret(state).generation == before.generation + 1


def test_doctor_says_what_the_advertising_address_reveals(monkeypatch, tmp_path) -> None:
    """Privacy off: the public address (warn); on with extended advertising: ok; on with legacy: ok while key-server
    power-cycles for a new address, warn without (the address outlives the token); no line where the adapter's
    advertising mode is unknown."""
    import asyncio

    from key_server import doctor
    from key_server.config import Config
    from key_server.radio import ble

    extended: list[bool | None] = [True]

    async def probe(timeout: float = 3.0) -> dict[str, object]:
        return {"bluez": True, "error": None, "adapters": [
            {"name": "hci0", "address": "00:AA:01:00:00:00", "powered": True, "gatt_server": True,
             "advertising": True, "supported_advertisements": 4, "extended_advertising": extended[0]}]}

    main_conf = tmp_path / "main.conf"
    monkeypatch.setattr(ble, "probe_bluez", probe)
    monkeypatch.setattr(doctor, "_system_bus_present", lambda: True)
    monkeypatch.setattr(doctor, "BLUEZ_MAIN_CONF", main_conf)
    cfg = Config()
    cfg.server.radio = "ble"

    def privacy_line() -> tuple[str, str] | None:
        lines = [c for c in asyncio.run(doctor._bluez_over_dbus(cfg)) if c.name == "address privacy"]
        return (lines[0].level, lines[0].detail) if lines else None

    # no main.conf: bluetoothd's default, Privacy off
    level, detail = privacy_line()  # type: ignore[misc]
    assert level == "warn" and "fixed public address" in detail
    main_conf.write_text("[General]\n#Privacy = device\nName = x\n[LE]\nPrivacy = device\n")  # commented, wrong section
    assert privacy_line()[0] == "warn"  # type: ignore[index]
    main_conf.write_text("[General]\nPrivacy = device   # DEPLOY §5\n[LE]\nMinAdvertisementInterval = 244\n")
    assert privacy_line() == ("ok", "Privacy = device, extended advertising: a new resolvable private address "
                                    "with every advertising token")
    extended[0] = False  # legacy advertising: key-server's power cycles renew the address (the default)
    level, detail = privacy_line()  # type: ignore[misc]
    assert level == "ok" and "powers the adapter off and on with every new token" in detail
    cfg.ble.renew_legacy_address = False
    level, detail = privacy_line()  # type: ignore[misc]
    assert level == "warn" and "legacy way" in detail and "out of step with the token" in detail
    extended[0] = None
    assert privacy_line() is None
