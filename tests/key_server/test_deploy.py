"""What a deployment rests on: the shipped unit says what docs/DEPLOY.md promises, the files print from the package,
a configuration never silently changes the lock, doctor fails a real radio with a simulated lock, and the kernel
warning names only the affected builds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_server import config as config_module
from key_server.cli import main
from key_server.config import SYSTEM_CONFIG, SYSTEM_STATE_DIR, ConfigError, load_config
from key_server.deploy_files import DEPLOY_FILES, deploy_file
from key_server.doctor import kernel_warning, run_checks
from key_server.sdnotify import PING_FRACTION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = ROOT / "key_server" / "deploy"
DEPLOY_MD = (ROOT / "docs" / "DEPLOY.md").read_text()


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a systemd unit, in order (keys may repeat)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


UNIT = unit_entries(deploy_file("key-server.service"))


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in UNIT if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    (value,) = values(key, section)
    return value


# ---------------------------------------------------------------------------------------------- the unit


def test_the_service_is_notify_with_a_watchdog_the_loop_can_feed() -> None:
    assert one("Type") == "notify"
    watchdog_s = float(one("WatchdogSec"))
    assert 5 <= watchdog_s <= 60
    assert watchdog_s * PING_FRACTION <= watchdog_s / 2  # pings at most half the interval apart
    assert one("WatchdogSignal") == "SIGTERM"  # the signal the relay fail-safe handles (hardware/_failsafe.py)
    assert one("Restart") == "on-failure"  # includes a watchdog timeout


def test_exits_a_restart_cannot_cure_stop_the_service() -> None:
    prevented = {int(code) for code in one("RestartPreventExitStatus").split()}
    assert {ExitCode.KEYS, ExitCode.NOT_INITIALISED, ExitCode.CONFIG, ExitCode.STORE_UNUSABLE,
            ExitCode.HARDWARE_UNAVAILABLE} <= prevented
    # A crash, a radio problem or a busy pin (ERROR) must still restart.
    assert ExitCode.ERROR not in prevented


def test_runs_as_the_service_user_with_only_the_gpio_devices() -> None:
    assert one("User") == "dkey" and one("Group") == "dkey"
    assert set(one("SupplementaryGroups").split()) == {"bluetooth", "gpio"}
    assert one("DevicePolicy") == "closed"
    assert values("DeviceAllow") == ["char-gpiochip rw"]  # every gpiochip, no fixed paths
    assert one("CapabilityBoundingSet") == "" and one("NoNewPrivileges") == "yes"
    env = dict(v.split("=", 1) for v in values("Environment"))
    assert env["GPIOZERO_PIN_FACTORY"] == "lgpio"  # no fallback to factories needing /dev/gpiomem


def test_lgpio_can_write_its_notification_files() -> None:
    # ProtectSystem=strict makes / read-only: lgpio's working directory (or $LG_WD) must be one systemd makes
    # writable for the service, and not the state directory, whose contents key-server checks.
    assert one("ProtectSystem") == "strict"
    runtime = "/run/" + one("RuntimeDirectory")
    env = dict(v.split("=", 1) for v in values("Environment"))
    assert one("WorkingDirectory") == runtime and env["LG_WD"] == runtime
    assert one("RuntimeDirectoryMode") == "0700"


def test_exec_start_uses_the_documented_install_and_files() -> None:
    argv = one("ExecStart").split()
    assert argv[0] == "/opt/dkey/venv/bin/key-server"
    assert "python3 -m venv --system-site-packages /opt/dkey/venv" in DEPLOY_MD
    assert argv[argv.index("--state-dir") + 1] == str(SYSTEM_STATE_DIR) == "/var/lib/" + one("StateDirectory")
    assert argv[argv.index("--config") + 1] == str(SYSTEM_CONFIG)
    assert argv[-1] == "run"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "key-server.service"
    # verify checks that ExecStart exists: point it at a binary this machine has.
    unit.write_text(deploy_file("key-server.service").replace("/opt/dkey/venv/bin/key-server", "/bin/true"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "key-server.service" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------- shipped files


def test_every_deploy_file_is_shipped_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(p.name for p in DEPLOY_DIR.iterdir() if p.is_file()) == sorted(DEPLOY_FILES)
    for name in DEPLOY_FILES:
        assert main(["print-file", name]) == ExitCode.OK
        assert capsys.readouterr().out == (DEPLOY_DIR / name).read_text()


def test_deploy_md_installs_each_file_where_the_table_says() -> None:
    for name, path in DEPLOY_FILES.items():
        assert re.search(rf"key-server print-file {re.escape(name)} >\s*{re.escape(path)}", DEPLOY_MD), name


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitCode.OK
    assert re.fullmatch(r"key-server \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------- the config


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", path)
    return path


def test_two_config_files_are_an_error_not_a_silent_pick(tmp_path: Path, system_config: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    system_config.write_text('[actuator]\nkind = "pulse"\nunlock_pin = 5\n')
    (state / "config.toml").write_text('[actuator]\nkind = "sim"\n')
    with pytest.raises(ConfigError, match="two config files") as info:
        load_config(None, state)
    assert str(system_config) in str(info.value) and "--config" in str(info.value)
    # The honest cases: one file, or --config naming one of the two.
    assert load_config(system_config, state).actuator.kind == "pulse"
    (state / "config.toml").unlink()
    assert load_config(None, state).actuator.kind == "pulse"


def test_init_writes_no_config_that_would_shadow_etc(tmp_path: Path, system_config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    system_config.write_text('[actuator]\nkind = "pulse"\nunlock_pin = 5\n')
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == ExitCode.OK
    assert not (state / "config.toml").exists()
    assert f"configuration: {system_config}" in capsys.readouterr().out
    assert load_config(None, state).actuator.kind == "pulse"


def test_init_writes_a_config_where_there_is_none(tmp_path: Path, system_config: Path) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == ExitCode.OK
    assert (state / "config.toml").exists()


def test_the_service_user_finds_the_system_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DKEY_STATE_DIR", raising=False)
    mine = tmp_path / "var-lib-dkey"
    mine.mkdir()
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", mine)
    assert config_module.default_state_dir() == mine  # owned by this user, as /var/lib/dkey by `dkey`
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", tmp_path / "absent")
    if os.geteuid() != 0:
        assert config_module.default_state_dir() != tmp_path / "absent"


# ---------------------------------------------------------------------------------------------- doctor


async def test_doctor_fails_the_real_radio_with_the_simulated_lock(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nradio = "ble"\n[actuator]\nkind = "sim"\n')
    checks = await run_checks(load_config(path, tmp_path))
    (bad,) = [c for c in checks if c.name == "actuator"]
    assert bad.level == "fail" and "simulated lock" in bad.detail and str(path) in bad.detail
    # The sim radio with the sim lock is a test set-up, not a mistake.
    path.write_text('[server]\nradio = "sim"\n[actuator]\nkind = "sim"\n')
    checks = await run_checks(load_config(path, tmp_path))
    assert not [c for c in checks if c.name == "actuator"]


def test_doctor_cli_exits_non_zero_for_the_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nradio = "ble"\n')  # default actuator: sim
    assert main(["--state-dir", str(tmp_path / "s"), "--config", str(path), "doctor", "--json"]) == \
        ExitCode.CHECK_FAILED
    assert any(c["check"] == "actuator" and c["level"] == "fail" for c in json.loads(capsys.readouterr().out))


@pytest.mark.parametrize(("release", "warned"), [
    ("6.12.93+rpt-rpi-v8", True),
    ("6.12.93+rpt-rpi-2712", True),
    ("6.18.34+rpt-rpi-2712", True),
    ("6.12.87+rpt-rpi-v8", False),  # the build before the regression
    ("6.12.62+rpt-rpi-v8", False),
    ("6.18.37-v8+", False),
    ("6.12.93-amd64", False),  # not a Raspberry Pi build
    ("6.1.0-28-arm64", False),
])
def test_kernel_warning_names_only_the_affected_builds(release: str, warned: bool) -> None:
    warning = kernel_warning(release)
    assert (warning is not None) == warned
    if warning:
        assert release in warning and "raspberrypi/linux#7473" in warning


def test_doctor_fails_in_plain_words_when_no_gpio_backend_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    monkeypatch.setattr(Device, "pin_factory", None)
    path = tmp_path / "config.toml"
    path.write_text('[server]\nradio = "sim"\n[actuator]\nkind = "pulse"\nunlock_pin = 17\nactive_high = true\n')
    code = main(["--state-dir", str(tmp_path / "s"), "--config", str(path), "doctor", "--json"])
    assert code == ExitCode.CHECK_FAILED
    (backend,) = [c for c in json.loads(capsys.readouterr().out) if c["check"] == "gpio: gpio backend"]
    assert backend["level"] == "fail" and "python3-lgpio" in backend["detail"]
