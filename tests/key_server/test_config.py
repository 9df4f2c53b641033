"""key_server.config: every option's rule, the bad value it stops at load time and the honest value it lets through."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import tomllib
from datetime import UTC
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from dkey_link.settings import MISSING, describe
from dkey_link.sim import NAME_RE as SIM_NAME_RE
from hardware import ActuatorConfig
from key_server import config as config_mod
from key_server.cli import main as cli_main
from key_server.config import (
    NAME_PATTERN,
    SAMPLE_CONFIG,
    TABLES,
    Config,
    ConfigError,
    PairingOptions,
    RateLimitOptions,
    ServerOptions,
    load_config,
    override,
    parse_config,
    validate,
)
from key_server.doctor import DoctorCheck, run_checks
from key_server.policy import parse_when
from protocol import DEFAULT_CHALLENGE_TTL

ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, tmp_path / "state")


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "config.toml"))
    return info.value


# ---------------------------------------------------------------------------------------------- the reported bugs


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[server]\nchallenge_ttl = "fast"', "server.challenge_ttl", 'server.challenge_ttl = "fast": not a number'),
    ('[pairing]\nattempts = "five"', "pairing.attempts", 'pairing.attempts = "five": not an integer'),
    ('[server]\nlog_level = "verbose"', "server.log_level", '"debug", "info", "warning", "error"'),
    ('[server]\ntimezone = "Mars/Olympus"', "server.timezone", "not a known time zone"),
    ('[server]\nname = "a b/c"', "server.name", "1 to 29 ASCII letters"),
    ("[pairing]\nattempts = 1000000", "pairing.attempts", "too large (allowed: an integer from 1 to 20)"),
    ('[pairing]\ncode_ttl = "100w"', "pairing.code_ttl", "too long"),
])
def test_the_values_that_used_to_slip_through_are_refused_at_load(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    err = refused(tmp_path, text)
    assert err.key == key and words in str(err)


def test_the_message_names_file_key_value_and_what_is_allowed(tmp_path: Path) -> None:
    err = refused(tmp_path, "[pairing]\nattempts = 0\n")
    assert str(err) == (f"{tmp_path / 'config.toml'}: pairing.attempts = 0: too small "
                        "(allowed: an integer from 1 to 20)")
    assert (err.file, err.key, err.value, err.allowed) == (str(tmp_path / "config.toml"), "pairing.attempts", 0,
                                                           "an integer from 1 to 20")


# ---------------------------------------------------------------------------------------------- every rule


@pytest.mark.parametrize(("text", "key"), [
    ("[server]\nchallenge_ttl = 0.4", "server.challenge_ttl"),
    ("[server]\nchallenge_ttl = 61", "server.challenge_ttl"),
    ("[server]\nchallenge_ttl = nan", "server.challenge_ttl"),
    ("[server]\nchallenge_ttl = true", "server.challenge_ttl"),
    ("[server]\nlink_idle_timeout = 4", "server.link_idle_timeout"),
    ("[server]\nlink_idle_timeout = 601", "server.link_idle_timeout"),
    ("[server]\nchallenge_ttl = 20\nlink_idle_timeout = 10", "server.link_idle_timeout"),  # shorter than a challenge
    ('[server]\nradio = "wifi"', "server.radio"),
    ('[server]\nadapter = "hci"', "server.adapter"),
    ('[server]\nadapter = "/dev/hci0"', "server.adapter"),
    ('[server]\nname = ""', "server.name"),
    ('[server]\nname = "-car"', "server.name"),  # would read as an option on a command line
    ('[server]\nname = "car\\u0000"', "server.name"),
    ('[server]\nname = "voiture-élégante"', "server.name"),  # non-ASCII: bytes, not characters, fill the packet
    (f'[server]\nname = "{"a" * 30}"', "server.name"),
    ('[server]\nsim_dir = "air"', "server.sim_dir"),  # relative: depends on the working directory
    (f'[server]\nsim_dir = "/{"a" * 70}"', "server.sim_dir"),
    ('[server]\ntimezone = "../../etc/passwd"', "server.timezone"),
    ('[server]\ntimezone = ""', "server.timezone"),
    ('[pairing]\ncode_ttl = "30s"', "pairing.code_ttl"),  # `pair` reads it as --code-ttl: minutes and up
    ('[pairing]\ncode_ttl = "2d"', "pairing.code_ttl"),
    ('[pairing]\ncode_ttl = "fast"', "pairing.code_ttl"),
    ("[pairing]\ncode_ttl = 600", "pairing.code_ttl"),
    ("[pairing]\nattempts = 5.0", "pairing.attempts"),
    ("[pairing]\nattempts = true", "pairing.attempts"),
    ("[rate_limit]\nlink_burst = 0.5", "rate_limit.link_burst"),
    ("[rate_limit]\nlink_rate = 0", "rate_limit.link_rate"),
    ("[rate_limit]\nlink_rate = -1", "rate_limit.link_rate"),
    ("[rate_limit]\nglobal_burst = 1e9", "rate_limit.global_burst"),
    ("[rate_limit]\nglobal_rate = inf", "rate_limit.global_rate"),
    ("[rate_limit]\nlink_queue = 0", "rate_limit.link_queue"),
    ("[rate_limit]\nlink_queue = 65", "rate_limit.link_queue"),
    ("[rate_limit]\nmax_links = 0", "rate_limit.max_links"),
    ("[rate_limit]\nmax_links = 2.5", "rate_limit.max_links"),
    ("[rate_limit]\nmax_link_lifetime = 59", "rate_limit.max_link_lifetime"),
    ("[rate_limit]\nmax_link_lifetime = 3601", "rate_limit.max_link_lifetime"),
    ("[audit]\nmax_entries = 99", "audit.max_entries"),  # a burst of honest entries would prune unread ones
    ("[audit]\nmax_entries = 10000001", "audit.max_entries"),
    ("[audit]\nmax_entries = 1e5", "audit.max_entries"),
    ('state_dir = "relative/dir"', "state_dir"),
    ("state_dir = 5", "state_dir"),
])
def test_out_of_rule_values_are_refused(tmp_path: Path, text: str, key: str) -> None:
    assert refused(tmp_path, text).key == key


def test_honest_values_at_the_edges_load(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
state_dir = "/var/lib/dkey-test"
[server]
name = "Maya.car_2-b"
radio = "sim"
adapter = "hci1"
sim_dir = "/run/dkey-sim"
challenge_ttl = 1
link_idle_timeout = 600
timezone = "Europe/Berlin"
log_level = "debug"
[pairing]
code_ttl = "1d"
attempts = 20
[rate_limit]
link_burst = 1
link_rate = 0.01
global_burst = 10000
global_rate = 1000
[audit]
max_entries = 100
[actuator]
kind = "two-line"
unlock_pin = 5
lock_pin = "GPIO6"
active_high = false
""")
    # tmp_path / "state" was passed on the command line: it wins over the file's state_dir
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.server == ServerOptions(name="Maya.car_2-b", radio="sim", adapter="hci1", sim_dir="/run/dkey-sim",
                                       challenge_ttl=1.0, link_idle_timeout=600.0, timezone="Europe/Berlin",
                                       log_level="debug")
    assert isinstance(cfg.server.challenge_ttl, float)
    assert cfg.pairing == PairingOptions(code_ttl="1d", attempts=20) and cfg.pairing.code_ttl_s == 86_400
    assert cfg.rate_limit == RateLimitOptions(1.0, 0.01, 10_000.0, 1000.0)
    assert cfg.audit.max_entries == 100
    assert cfg.actuator == ActuatorConfig(kind="two-line", unlock_pin=5, lock_pin="GPIO6", active_high=False)


def test_state_dir_from_the_file_when_not_given(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'state_dir = "{tmp_path / "elsewhere"}"\n')
    assert load_config(path).state_dir == tmp_path / "elsewhere"


def test_every_accepted_code_ttl_is_one_pair_can_read() -> None:
    for text in ("1m", "10m", "90m", "1h30m", "24h", "1d"):
        cfg = parse_config({"pairing": {"code_ttl": text}}, file="f")
        assert parse_when(cfg.pairing.code_ttl, 0, UTC) == cfg.pairing.code_ttl_s


def test_the_name_rule_fits_the_sim_radio_and_a_scan_response() -> None:
    for name in ("dkey", "a", "A" * 29, "car.1_x-y", "9lives"):
        assert re.fullmatch(NAME_PATTERN, name) and SIM_NAME_RE.fullmatch(name)
        assert len(name.encode()) + 2 <= 31  # Complete Local Name AD structure in a legacy scan response
    for name in ("a b", "a/b", "_car", "", "a" * 30, "ü"):
        assert not re.fullmatch(NAME_PATTERN, name)


# ---------------------------------------------------------------------------------------------- unknown names


def test_unknown_tables_and_keys_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    err = refused(tmp_path, "[sever]\nname = 'x'\n")
    assert err.key == "sever" and "unknown table; did you mean server?" in str(err)
    assert "(allowed: state_dir, server, ble, pairing, rate_limit, audit, clock, actuator)" in str(err)
    err = refused(tmp_path, "[server]\nradoi = 'sim'\n")
    assert err.key == "server.radoi" and "did you mean radio?" in str(err)
    err = refused(tmp_path, "statedir = '/x'\n")
    assert err.key == "statedir" and "unknown key; did you mean state_dir?" in str(err)
    err = refused(tmp_path, "server = 5\n")
    assert err.key == "server" and "not a table" in str(err)


def test_actuator_errors_take_the_same_form(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    err = refused(tmp_path, "[actuator]\nunlock_pn = 17\n")
    assert str(err).startswith(f"{path}: actuator.unlock_pn = 17: unknown actuator option; did you mean unlock_pin?")
    err = refused(tmp_path, "[actuator]\nkind = 'pulse'\n")
    assert err.key == "actuator.unlock_pin" and err.value is MISSING
    assert str(err).startswith(f"{path}: actuator.unlock_pin (missing): a pulse relay needs unlock_pin (allowed: ")
    err = refused(tmp_path, "[actuator]\npulse_ms = '500'\n")
    assert str(err) == f'{path}: actuator.pulse_ms = "500": not a finite number (allowed: a number from 1 to 3600000)'
    err = refused(tmp_path, "actuator = 'pulse'\n")
    assert err.key == "actuator" and "not a table" in str(err)


# ---------------------------------------------------------------------------------------------- the file itself


def test_file_level_problems_are_one_line_config_errors(tmp_path: Path) -> None:
    err = refused(tmp_path, "[server\nname = 'x'\n")
    assert "not valid TOML" in str(err) and "line 1" in str(err)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "config.toml").write_bytes(b"[server]\nname = '\xff'\n")  # not UTF-8
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.toml")
    assert "cannot read the config file" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(path)


def test_no_file_means_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    cfg = load_config(None, tmp_path)
    assert cfg.source is None and cfg.server == ServerOptions()
    assert cfg.server.challenge_ttl == DEFAULT_CHALLENGE_TTL


# ---------------------------------------------------------------------------------------------- overrides, validate


def test_command_line_overrides_pass_the_same_checks() -> None:
    cfg = Config()
    override(cfg, "server", {"radio": "sim", "name": "bbcar", "adapter": None})
    assert (cfg.server.radio, cfg.server.name, cfg.server.adapter) == ("sim", "bbcar", None)
    with pytest.raises(ConfigError) as info:
        override(cfg, "server", {"challenge_ttl": 1000.0})
    assert str(info.value).startswith("command line: server.challenge_ttl = 1000.0: too large")
    with pytest.raises(ConfigError, match="actuator.unlock_pin"):
        override(cfg, "actuator", {"kind": "pulse"})
    before = dataclasses.replace(cfg.server)
    with pytest.raises(ConfigError, match="shorter than server.challenge_ttl"):
        override(cfg, "server", {"challenge_ttl": 50.0})  # valid alone, not with link_idle_timeout = 30
    assert cfg.server == before  # all or nothing
    override(cfg, "actuator", {"kind": "sim"})
    with pytest.raises(ValueError, match="no config table"):
        override(cfg, "nope", {})


def test_validate_catches_what_code_set_behind_the_checks() -> None:
    cfg = Config()
    validate(cfg)
    cfg.server.name = "a b/c"  # what cli._apply_overrides can do with setattr
    with pytest.raises(ConfigError, match="server.name"):
        validate(cfg)


# ---------------------------------------------------------------------------------------------- sample and deploy


def test_the_sample_config_is_the_defaults() -> None:
    cfg = parse_config(tomllib.loads(SAMPLE_CONFIG), file="sample")
    default = Config(state_dir=cfg.state_dir)
    assert cfg == default


def test_the_sample_lists_every_option_of_the_schema() -> None:
    for name, schema in {"": config_mod.TopLevel, **TABLES}.items():
        section = SAMPLE_CONFIG if not name else SAMPLE_CONFIG.split(f"\n[{name}]\n")[1].split("\n[")[0]
        for key, allowed, _default, help_text in describe(schema):
            line = rf"^(# )?{key} = "
            assert re.search(line, section, re.MULTILINE), f"{name}.{key} missing from SAMPLE_CONFIG"
            assert help_text in section and allowed in section


def test_the_sample_actuator_keys_are_actuator_options() -> None:
    table = SAMPLE_CONFIG.split("\n[actuator]\n")[1]
    keys = re.findall(r"^(?:# )?([a-z_]+) = ", table, re.MULTILINE)
    fields = {f.name for f in dataclasses.fields(ActuatorConfig)}
    assert keys and set(keys) <= fields
    # uncommented, every example must load too
    uncommented = "\n".join(re.sub(r"^# ([a-z_]+ = )", r"\1", line) for line in table.splitlines())
    parse_config({"actuator": {**tomllib.loads(uncommented), "kind": "two-line"}}, file="sample")


def test_what_the_test_rig_and_init_rely_on_is_in_the_sample() -> None:
    # key_server.cli init replaces the name line; tests/ble_vm/guest/dkey_rig.py uncomments these two.
    for line in ('\nname = "dkey"\n', "\n# start_pin = 4\n", "\n# start_on_s = 120\n"):
        assert line in SAMPLE_CONFIG


def test_the_deployed_sample_loads() -> None:
    cfg = load_config(ROOT / "key_server" / "deploy" / "config.toml", Path("/var/lib/dkey"))
    assert cfg.actuator.kind == "pulse" and cfg.server.radio == "ble"


def test_the_deployed_sample_is_the_generated_one_above_actuator() -> None:
    deployed = (ROOT / "key_server" / "deploy" / "config.toml").read_text()
    body = deployed[deployed.index("\n", deployed.index("\n") + 1) + 1 : deployed.index("\n[actuator]\n")]
    sample = SAMPLE_CONFIG[SAMPLE_CONFIG.index("\n") + 1 : SAMPLE_CONFIG.index("\n[actuator]\n")]
    assert body == sample, "regenerate the top of key_server/deploy/config.toml from `key-server config`"
    keys = re.findall(r"^(?:# )?([a-z_]+) = ", deployed[deployed.index("\n[actuator]\n"):], re.MULTILINE)
    assert set(keys) <= {f.name for f in dataclasses.fields(ActuatorConfig)}


# ---------------------------------------------------------------------------------------------- doctor


def test_doctor_reports_a_bad_config_as_a_failing_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[pairing]\nattempts = "five"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, tmp_path)
    # The CLI's doctor loads the config itself, so a bad one is a failing check (exit 12), not an early exit.
    assert cli_main(["--config", str(path), "--state-dir", str(tmp_path), "doctor", "--json"]) == ExitCode.CHECK_FAILED
    checks = json.loads(capsys.readouterr().out)
    assert checks[0] == {"level": "fail", "check": "config", "detail": str(info.value)}


def test_doctor_reports_an_in_memory_config_gone_bad(tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path)
    cfg.server.challenge_ttl = 0.0
    checks = asyncio.run(run_checks(cfg))
    assert checks[0].level == "fail" and "server.challenge_ttl = 0.0" in checks[0].detail
    assert all(c.level != "ok" for c in checks)


def test_doctor_says_a_good_config_is_good(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nradio = "sim"\n')
    checks = asyncio.run(run_checks(load_config(path, tmp_path)))
    assert checks[0] == DoctorCheck("ok", "config", f"{path}: every option is valid")
    level, name, detail = checks[0]  # still a tuple for the CLI's unpacking
    assert (level, name) == ("ok", "config")
