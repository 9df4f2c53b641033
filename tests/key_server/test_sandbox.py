"""`key-server doctor --as-service`: the unit's sandbox copied onto systemd-run, its output and exit status relayed,
plain errors where it cannot run, and plain `doctor` as root on a machine with the unit installed.

systemctl, systemd-run and journalctl are fakes on PATH that log their arguments; the deploy tier
(tests/deploy_vm) runs the real ones under systemd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import importlib.util
import json
import os
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_server import config as config_module
from key_server import doctor, sandbox
from key_server.cli import main
from key_server.config import Config
from key_server.deploy_files import deploy_file

# `systemctl show key-server.service -p ...` for the shipped unit installed as is, printed by systemd 257
# (Debian 13) in the deploy tier's VM, trimmed to the properties doctor --as-service asks for.
SHOW_SHIPPED = """\
LoadState=loaded
FragmentPath=/etc/systemd/system/key-server.service
DropInPaths=
ExecStart={ path=/opt/dkey/venv/bin/key-server ; argv[]=/opt/dkey/venv/bin/key-server --state-dir /var/lib/dkey \
--config /etc/dkey/config.toml run ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; \
status=0/0 }
DevicePolicy=closed
DeviceAllow=char-rtc r
DeviceAllow=char-gpiochip rw
IPAddressAllow=
IPAddressDeny=
Environment=LG_WD=/run/dkey GPIOZERO_PIN_FACTORY=lgpio
UMask=0077
WorkingDirectory=/run/dkey
RootDirectory=
SecureBits=0
CapabilityBoundingSet=
AmbientCapabilities=
User=dkey
Group=dkey
DynamicUser=no
SupplementaryGroups=bluetooth gpio
ReadWritePaths=
PrivateTmp=yes
PrivateDevices=no
ProtectClock=yes
ProtectHome=yes
ProtectSystem=strict
NoNewPrivileges=yes
SystemCallFilter=~
SystemCallArchitectures=native
SystemCallErrorNumber=2147483646
RestrictAddressFamilies=AF_BLUETOOTH AF_UNIX
RuntimeDirectoryMode=0700
RuntimeDirectory=dkey
StateDirectoryMode=0700
StateDirectory=dkey
ConfigurationDirectory=dkey
MemoryDenyWriteExecute=yes
RestrictNamespaces=yes
BindPaths=
SetCredential=[unprintable]
LoadCredential=[unprintable]
"""

# What systemd-run gets for SHOW_SHIPPED: every non-empty value as printed, CapabilityBoundingSet= (empty: no
# capabilities, not the default "all"), without the unset errno marker and the unprintable credentials.
EXPECTED_PROPERTIES = [
    "DevicePolicy=closed", "DeviceAllow=char-rtc r", "DeviceAllow=char-gpiochip rw",
    "Environment=LG_WD=/run/dkey GPIOZERO_PIN_FACTORY=lgpio", "UMask=0077", "WorkingDirectory=/run/dkey",
    "SecureBits=0", "CapabilityBoundingSet=", "User=dkey", "Group=dkey", "DynamicUser=no",
    "SupplementaryGroups=bluetooth gpio", "PrivateTmp=yes", "PrivateDevices=no", "ProtectClock=yes",
    "ProtectHome=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=~",
    "SystemCallArchitectures=native", "RestrictAddressFamilies=AF_BLUETOOTH AF_UNIX", "RuntimeDirectoryMode=0700",
    "RuntimeDirectory=dkey", "StateDirectoryMode=0700", "StateDirectory=dkey", "ConfigurationDirectory=dkey",
    "MemoryDenyWriteExecute=yes", "RestrictNamespaces=yes",
    # added for the copy: the running service shares /run/dkey, which systemd would remove when the copy stops
    "RuntimeDirectoryPreserve=yes",
]
DOCTOR_ARGV = ["/opt/dkey/venv/bin/key-server", "--state-dir", "/var/lib/dkey", "--config", "/etc/dkey/config.toml",
               "doctor"]


class Fakes:
    """systemctl / systemd-run / journalctl stand-ins in a bin directory that is the whole PATH."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "log"
        self.log.mkdir()
        self.show = tmp_path / "show.txt"
        self.show.write_text(SHOW_SHIPPED)
        self.booted = tmp_path / "run-systemd-system"
        self.booted.mkdir()
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("PATH", str(self.bin))
        monkeypatch.setenv("FAKE_LOG", str(self.log))
        monkeypatch.setenv("FAKE_SHOW", str(self.show))
        monkeypatch.delenv(sandbox.SANDBOX_ENV, raising=False)
        monkeypatch.delenv("DKEY_STATE_DIR", raising=False)
        monkeypatch.setattr(sandbox, "SYSTEMD_RUNTIME_DIR", self.booted)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        self.script("systemctl", 'echo "$@" >> "$FAKE_LOG/systemctl.args"\n/bin/cat "$FAKE_SHOW"')
        self.script("systemd-run", 'for a in "$@"; do printf "%s\\n" "$a"; done > "$FAKE_LOG/systemd-run.args"\n'
                    'echo "[OK] relayed: output of the doctor inside"\nexit "${FAKE_RUN_RC:-0}"')
        self.script("journalctl", 'echo "$@" > "$FAKE_LOG/journalctl.args"\nprintf "%s\\n" "$FAKE_JOURNAL"')

    def script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def run_argv(self) -> list[str] | None:
        """The argv systemd-run got (without its own path), or None if it did not run."""
        path = self.log / "systemd-run.args"
        return path.read_text().splitlines() if path.exists() else None

    def properties(self) -> list[str]:
        argv = self.run_argv()
        assert argv is not None, "systemd-run did not run"
        return [a.removeprefix("--property=") for a in argv if a.startswith("--property=")]

    def command(self) -> list[str]:
        argv = self.run_argv()
        assert argv is not None
        return argv[argv.index("--") + 1:]

    def setenv(self) -> str:
        argv = self.run_argv()
        assert argv is not None
        (value,) = [a for a in argv if a.startswith(f"--setenv={sandbox.SANDBOX_ENV}=")]
        return value


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------------- the property list


def test_the_installed_units_sandbox_is_copied_property_by_property(fakes: Fakes) -> None:
    assert main(["doctor", "--as-service"]) == ExitCode.OK
    assert fakes.properties() == EXPECTED_PROPERTIES
    assert fakes.command() == DOCTOR_ARGV  # the unit's own program and paths, `doctor` for `run`
    argv = fakes.run_argv()
    assert argv is not None
    assert {"--wait", "--pipe", "--collect", "--quiet"} <= set(argv)
    assert "the installed unit /etc/systemd/system/key-server.service" in fakes.setenv()


def test_a_drop_in_that_blocks_the_gpiochip_reaches_the_copy(fakes: Fakes) -> None:
    # systemctl show prints the merged result: the drop-in's "DeviceAllow=" reset and its own entry.
    fakes.show.write_text(SHOW_SHIPPED.replace("DeviceAllow=char-gpiochip rw", "DeviceAllow=/dev/null rw").replace(
        "DropInPaths=", "DropInPaths=/etc/systemd/system/key-server.service.d/test.conf"))
    main(["doctor", "--as-service"])
    assert "DeviceAllow=/dev/null rw" in fakes.properties()
    assert "DeviceAllow=char-gpiochip rw" not in fakes.properties()
    assert "drop-ins /etc/systemd/system/key-server.service.d/test.conf" in fakes.setenv()


def test_without_an_installed_unit_the_shipped_unit_is_the_sandbox(fakes: Fakes) -> None:
    fakes.show.write_text("LoadState=not-found\nFragmentPath=\nExecStart=\n")
    assert main(["doctor", "--as-service", "--json"]) == ExitCode.OK
    shipped = [line.strip() for line in deploy_file("key-server.service").splitlines()]
    props = fakes.properties()
    for expected in ("User=dkey", "SupplementaryGroups=bluetooth gpio", "DevicePolicy=closed",
                     "DeviceAllow=char-gpiochip rw", "Environment=LG_WD=/run/dkey",
                     "Environment=GPIOZERO_PIN_FACTORY=lgpio", "WorkingDirectory=/run/dkey", "ProtectSystem=strict",
                     "CapabilityBoundingSet=", "RuntimeDirectory=dkey", "RuntimeDirectoryPreserve=yes"):
        assert expected in props
    assert all(p in shipped for p in props if p != "RuntimeDirectoryPreserve=yes"), "only the unit's own lines"
    for not_sandbox in ("Type=notify", "WatchdogSec=15", "Restart=on-failure", "KillSignal=SIGTERM"):
        assert not_sandbox in shipped and not_sandbox not in props
    assert fakes.command() == [*DOCTOR_ARGV, "--json"]
    assert "the shipped unit" in fakes.setenv()


def test_every_sandbox_line_of_the_shipped_unit_is_copied(fakes: Fakes) -> None:
    """A sandbox option added to the unit but not to SANDBOX_PROPERTIES would be left out of the check."""
    not_sandbox = {"Type", "WatchdogSec", "WatchdogSignal", "TimeoutStartSec", "ExecStart", "KillSignal",
                   "TimeoutStopSec", "Restart", "RestartSec", "RestartPreventExitStatus"}
    fakes.show.write_text("LoadState=not-found\n")
    main(["doctor", "--as-service"])
    props = fakes.properties()
    section = ""
    for raw in deploy_file("key-server.service").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            assert line.partition("=")[0] in not_sandbox or line in props, f"{line!r} is not copied"


def test_a_unit_that_does_not_run_key_server_run_is_refused(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.show.write_text(SHOW_SHIPPED.replace(" run ; ignore_errors", " serve ; ignore_errors"))
    assert main(["doctor", "--as-service"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not run `key-server ... run`" in err
    assert fakes.run_argv() is None


# ---------------------------------------------------------------------------------------------- relaying


@pytest.mark.parametrize("status", [0, 12, 13])
def test_the_doctors_exit_status_and_output_are_relayed(fakes: Fakes, capfd: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setenv("FAKE_RUN_RC", str(status))
    assert main(["doctor", "--as-service"]) == status
    assert "[OK] relayed: output of the doctor inside" in capfd.readouterr().out


def test_a_sandbox_systemd_cannot_set_up_is_one_failing_check(fakes: Fakes, capfd: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RUN_RC", "200")
    monkeypatch.setenv("FAKE_JOURNAL", "key-server-doctor-1.service: Changing to the requested working directory "
                       "failed: No such file or directory\n"
                       "key-server-doctor-1.service: Failed with result 'exit-code'.")
    assert main(["doctor", "--as-service"]) == ExitCode.CHECK_FAILED
    out = capfd.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("[FAIL]")]
    assert "200/CHDIR" in line and "working directory failed: No such file or directory" in line
    assert "as user dkey" in line


def test_a_sandbox_failure_in_json_is_a_json_check(fakes: Fakes, capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RUN_RC", "217")
    assert main(["doctor", "--as-service", "--json"]) == ExitCode.CHECK_FAILED
    lines = capfd.readouterr().out.splitlines()
    [check] = json.loads(lines[-1])
    assert check["level"] == "fail" and "217/USER" in check["detail"]


def test_a_check_killed_by_a_signal_is_one_failing_check(fakes: Fakes, capfd: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RUN_RC", "255")  # not a status key-server exits with
    assert main(["doctor", "--as-service"]) == ExitCode.CHECK_FAILED
    [line] = [x for x in capfd.readouterr().out.splitlines() if x.startswith("[FAIL]")]
    assert "systemd-run exit 255" in line and "SIGSYS" in line


def test_systemds_statuses_never_collide_with_key_servers() -> None:
    assert max(ExitCode) < min(sandbox.EXEC_STATUS)


# ---------------------------------------------------------------------------------------------- where it cannot run


def test_not_root_is_one_plain_line(fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["doctor", "--as-service"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs root" in err and "sudo key-server doctor --as-service" in err
    assert fakes.run_argv() is None


def test_without_systemd_as_init_is_one_plain_line(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.booted.rmdir()
    assert main(["doctor", "--as-service"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "systemd is not running as init (PID 1)" in err


def test_without_systemd_run_is_one_plain_line(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    (fakes.bin / "systemd-run").unlink()
    assert main(["doctor", "--as-service"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "systemd-run not found" in err


def test_as_service_with_paths_of_its_own_is_a_usage_error(fakes: Fakes, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert main(["--state-dir", str(tmp_path), "doctor", "--as-service"]) == ExitCode.USAGE
    assert "the unit's own --state-dir and --config" in capsys.readouterr().err
    assert fakes.run_argv() is None


# ---------------------------------------------------------------------------------------------- plain doctor


def test_root_with_the_unit_installed_checks_inside_the_unit(fakes: Fakes) -> None:
    assert main(["doctor"]) == ExitCode.OK
    assert fakes.command() == DOCTOR_ARGV


def test_root_here_says_its_checks_ran_with_roots_permissions(fakes: Fakes, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    main(["--state-dir", str(tmp_path / "state"), "doctor", "--here"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[WARN] service sandbox: these checks ran as root, with root's permissions")
    assert "sudo key-server doctor --as-service" in first
    assert fakes.run_argv() is None


def test_root_with_a_state_dir_of_its_own_checks_here_and_says_so(fakes: Fakes, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    main(["--state-dir", str(tmp_path / "state"), "doctor", "--json"])
    checks = json.loads(capsys.readouterr().out)
    assert checks[0]["check"] == "service sandbox" and checks[0]["level"] == "warn"
    assert fakes.run_argv() is None


def test_root_without_the_unit_checks_here_without_the_warning(fakes: Fakes, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    fakes.show.write_text("LoadState=not-found\n")
    main(["--state-dir", str(tmp_path / "state"), "doctor"])
    assert "service sandbox" not in capsys.readouterr().out
    assert fakes.run_argv() is None


def test_a_user_other_than_root_checks_here(fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("DKEY_STATE_DIR", str(tmp_path / "state"))
    main(["doctor"])
    assert "service sandbox" not in capsys.readouterr().out
    assert fakes.run_argv() is None


def test_the_doctor_inside_the_unit_says_where_it_runs_and_does_not_start_another(
        fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Inside the transient unit the doctor is root-like in every other way (a unit without User=): it must check
    # there, not start a copy of itself.
    # No paths of its own either (those alone keep the checks here): only the environment mark does.
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "key-server.service's sandbox, copied from the installed unit X")
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "etc-config.toml")
    main(["doctor"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[OK  ] service sandbox: these checks ran inside key-server.service's sandbox, copied "
                            "from the installed unit X, as user ")
    assert fakes.run_argv() is None


# ---------------------------------------------------------------------------------------------- gpio devices


def _gpio_cfg() -> Config:
    cfg = Config()
    cfg.actuator = dataclasses.replace(cfg.actuator, kind="pulse", unlock_pin=17)
    return cfg


def test_a_gpiochip_blocked_by_the_device_policy_is_a_plain_failure(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gpiochip0").write_text("")
    monkeypatch.setattr(doctor, "GPIO_DEVICES", tmp_path)
    real_open = os.open

    def device_cgroup(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if Path(path).name.startswith("gpiochip"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))  # what a cgroup device policy answers
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", device_cgroup)
    hardware_checked = []

    async def no_hardware(*args: object, **kwargs: object) -> list[object]:
        hardware_checked.append(True)
        return []

    monkeypatch.setattr(doctor, "check_hardware", no_hardware)
    result = doctor.check_gpio_devices(_gpio_cfg())
    assert result is not None and result.none_open
    assert result.check.level == "fail"
    assert f"{tmp_path}/gpiochip0: Operation not permitted" in result.check.detail
    assert "DeviceAllow=char-gpiochip rw" in result.check.detail
    checks = asyncio.run(doctor.run_checks(_gpio_cfg()))
    assert ("warn", "gpio", "backend and pins not checked: fix the line above first") in checks
    assert not hardware_checked  # lgpio's own error would name no cause


def test_a_gpiochip_that_opens_passes_and_the_pins_are_checked(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gpiochip0").write_text("")
    monkeypatch.setattr(doctor, "GPIO_DEVICES", tmp_path)
    hardware_checked = []

    async def no_hardware(*args: object, **kwargs: object) -> list[object]:
        hardware_checked.append(True)
        return []

    monkeypatch.setattr(doctor, "check_hardware", no_hardware)
    result = doctor.check_gpio_devices(_gpio_cfg())
    assert result is not None and not result.none_open and result.check.level == "ok"
    asyncio.run(doctor.run_checks(_gpio_cfg()))
    assert hardware_checked


def test_the_simulated_lock_needs_no_gpio_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "GPIO_DEVICES", tmp_path)
    assert doctor.check_gpio_devices(Config()) is None


@pytest.fixture
def lgpio_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """lgpio installed and gpiozero free to pick it (it is not installed on this host)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "lgpio" else real(name, *a))
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)


@pytest.mark.usefixtures("lgpio_present")
def test_a_working_directory_lgpio_cannot_write_is_a_plain_failure(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`sudo -u dkey key-server ...` from a home directory dkey cannot write: lgpio's pipe has nowhere to go."""
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.setattr(doctor, "GPIO_DEVICES", tmp_path)  # no chips: only the working directory matters here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root passes every access() check
    hardware_checked = []

    async def no_hardware(*args: object, **kwargs: object) -> list[object]:
        hardware_checked.append(True)
        return []

    monkeypatch.setattr(doctor, "check_hardware", no_hardware)
    check = doctor.check_lgpio_workdir(_gpio_cfg())
    assert check is not None and check.level == "fail"
    assert f"{tmp_path} (the working directory) is not writable" in check.detail and "LG_WD" in check.detail
    asyncio.run(doctor.run_checks(_gpio_cfg()))
    assert not hardware_checked


@pytest.mark.usefixtures("lgpio_present")
def test_lg_wd_names_where_lgpio_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_WD", str(tmp_path))
    check = doctor.check_lgpio_workdir(_gpio_cfg())
    assert check is not None and check.level == "ok" and f"{tmp_path} ($LG_WD)" in check.detail
    assert doctor.check_lgpio_workdir(Config()) is None  # the simulated lock loads no lgpio


@pytest.mark.usefixtures("lgpio_present")
def test_no_workdir_check_where_gpiozero_will_not_import_lgpio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert doctor.check_lgpio_workdir(_gpio_cfg()) is not None
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # a laptop's mock pins: lgpio never loads
    assert doctor.check_lgpio_workdir(_gpio_cfg()) is None
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # lgpio not installed
    assert doctor.check_lgpio_workdir(_gpio_cfg()) is None


@pytest.mark.usefixtures("lgpio_present")
def test_actuate_test_says_why_lgpio_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[actuator]\nkind = "pulse"\nunlock_pin = 17\n')
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["--state-dir", str(tmp_path), "--config", str(config), "actuate", "--test"]) == \
        ExitCode.HARDWARE_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not writable by this user" in err and "LG_WD" in err


def test_the_shipped_unit_lets_trust_ntp_ask_the_kernel() -> None:
    """ProtectClock=yes filters adjtimex(2) even read-only: trust_ntp could never confirm the time in the service.

    Found by doctor --as-service in the deploy tier ("clock source ntp: cannot ask the kernel (adjtimex: [Errno 1]
    adjtimex failed)"), which a doctor run in a shell cannot see. Setting the clock stays impossible: no capabilities.
    """
    service = [line.strip() for line in deploy_file("key-server.service").splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert not any(line.startswith("ProtectClock=") for line in service)
    assert not any(line.startswith("SystemCallFilter=") and "@clock" in line for line in service)
    assert "CapabilityBoundingSet=" in service  # empty: no CAP_SYS_TIME
