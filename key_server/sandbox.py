"""`key-server doctor --as-service`: the doctor's checks run inside a transient copy of the unit's sandbox.

A doctor run from a shell has that shell's user and none of the unit's restrictions, so it can pass where the
service fails (a DeviceAllow= that blocks the gpiochip, a read-only working directory) and fail where the service
passes (files owned by the service user, read by root). Here the unit's user, groups, directories, environment and
sandboxing properties are copied onto `systemd-run --wait --pipe --collect -p ...`, which runs the unit's own
ExecStart program with `doctor` instead of `run` and relays its output and exit status.

The properties come from the installed unit as systemd merged it (`systemctl show`: the unit file and every
drop-in), or, while no unit is installed, from the shipped unit text (`key-server print-file key-server.service`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dkey_link.exit_codes import ExitCode

from .deploy_files import deploy_file

__all__ = ["SANDBOX_ENV", "UNIT", "SandboxError", "UnitSource", "installed_unit", "run_doctor_in_unit",
           "shipped_unit", "systemd_booted", "systemd_run_argv", "unit_installed"]

UNIT: Final = "key-server.service"
# Set in the transient unit's environment: the doctor inside says where it runs (doctor.sandbox_check).
SANDBOX_ENV: Final = "DKEY_DOCTOR_SANDBOX"
# sd_booted(3): this directory exists exactly when systemd is the running init (PID 1).
SYSTEMD_RUNTIME_DIR: Final = Path("/run/systemd/system")

# What decides what the service can reach: its identity, directories, environment and every sandboxing option.
# Names as `systemctl show` prints them; each value it prints was checked to round-trip through `systemd-run -p`
# on systemd 257 (Debian 13) by the deploy tier; the exceptions are handled in _assignment.
SANDBOX_PROPERTIES: Final = (
    "User", "Group", "DynamicUser", "SupplementaryGroups", "WorkingDirectory", "RootDirectory", "Environment",
    "EnvironmentFiles", "UMask", "StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode",
    "ConfigurationDirectory", "ConfigurationDirectoryMode", "CacheDirectory", "CacheDirectoryMode", "LogsDirectory",
    "LogsDirectoryMode", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
    "PrivateNetwork", "PrivateUsers", "PrivateIPC", "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
    "RestrictSUIDSGID", "RestrictRealtime", "LockPersonality", "MemoryDenyWriteExecute", "RestrictNamespaces",
    "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber", "RestrictAddressFamilies",
    "RestrictFileSystems", "CapabilityBoundingSet", "AmbientCapabilities", "SecureBits", "KeyringMode",
    "DevicePolicy", "DeviceAllow", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths",
    "NoExecPaths", "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "IPAddressAllow", "IPAddressDeny",
    "NetworkNamespacePath",
)
# Unit-file spellings of the same settings (the shipped text is a unit file, not `systemctl show` output).
_UNIT_FILE_NAMES: Final = {"EnvironmentFile": "EnvironmentFiles", "ReadWriteDirectories": "ReadWritePaths",
                           "ReadOnlyDirectories": "ReadOnlyPaths", "InaccessibleDirectories": "InaccessiblePaths"}
# An empty value means "the default" for every property above except this one, where it means "no capabilities".
_EMPTY_MEANS_SOMETHING: Final = frozenset({"CapabilityBoundingSet"})
# SystemCallErrorNumber as `systemctl show` prints it when unset (systemd's internal "kill the process" marker).
_ERRNO_UNSET: Final = "2147483646"
SHOW_TIMEOUT_S: Final = 15.0
# The check itself: a bluez probe and a GPIO claim, slow under emulation; systemd-run is killed after this.
RUN_TIMEOUT_S: Final = 180.0

# systemd's own exit statuses (systemd.exec(5), "Process Exit Codes"): the sandbox could not be set up, so the
# doctor never ran. key-server never exits with 200 or more.
EXEC_STATUS: Final = {
    200: "CHDIR", 203: "EXEC", 204: "MEMORY", 208: "STDIN", 209: "STDOUT", 210: "CHROOT", 216: "GROUP",
    217: "USER", 218: "CAPABILITIES", 219: "CGROUP", 222: "STDERR", 225: "NETWORK", 226: "NAMESPACE",
    227: "NO_NEW_PRIVILEGES", 228: "SECCOMP", 230: "PERSONALITY", 231: "APPARMOR", 232: "ADDRESS_FAMILIES",
    233: "RUNTIME_DIRECTORY", 235: "CHOWN", 237: "KEYRING", 238: "STATE_DIRECTORY", 239: "CACHE_DIRECTORY",
    240: "LOGS_DIRECTORY", 241: "CONFIGURATION_DIRECTORY", 243: "CREDENTIALS", 245: "BPF",
}


class SandboxError(Exception):
    """The check cannot run inside the unit's sandbox; the message says why, in one line."""


@dataclass(frozen=True)
class UnitSource:
    """The sandbox to copy: `Name=value` assignments in order, the unit's ExecStart argv, and where they came from."""

    assignments: tuple[str, ...]
    exec_start: tuple[str, ...]
    origin: str

    def user(self) -> str:
        """The user the unit runs as (the last User= assignment; root when none)."""
        users = [a.partition("=")[2] for a in self.assignments if a.startswith("User=")]
        return users[-1] if users and users[-1] else "root"


def systemd_booted() -> bool:
    """True when systemd is the running init (sd_booted)."""
    return SYSTEMD_RUNTIME_DIR.is_dir()


def _systemctl_show(unit: str, props: list[str]) -> str:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise SandboxError("systemctl not found: the unit's sandbox needs systemd")
    try:
        p = subprocess.run([systemctl, "show", unit, *(f"--property={name}" for name in props)],  # noqa: S603
                           capture_output=True, text=True, timeout=SHOW_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"systemctl show {unit} failed: {exc}") from None
    if p.returncode != 0:
        raise SandboxError(f"systemctl show {unit} failed: {(p.stderr or p.stdout).strip() or p.returncode}")
    return p.stdout


def _show_pairs(text: str) -> list[tuple[str, str]]:
    """`systemctl show` output as (name, value) pairs, in order; a property printed twice gives two pairs."""
    pairs = []
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            pairs.append((name, value))
    return pairs


def unit_installed(unit: str = UNIT) -> bool:
    """True when systemd has loaded a unit file for `unit` (False when it cannot tell)."""
    try:
        return dict(_show_pairs(_systemctl_show(unit, ["LoadState"]))).get("LoadState") == "loaded"
    except SandboxError:
        return False


def _exec_start_argv(value: str) -> tuple[str, ...]:
    """argv of `systemctl show`'s ExecStart={ path=... ; argv[]=A B C ; ... } (the first command)."""
    _, found, rest = value.partition("argv[]=")
    if not found:
        return ()
    return tuple(shlex.split(rest.split(" ;", 1)[0]))


def installed_unit(unit: str = UNIT) -> UnitSource | None:
    """The sandbox of the installed unit as systemd runs it (unit file plus drop-ins); None when not installed."""
    pairs = _show_pairs(_systemctl_show(unit, ["LoadState", "FragmentPath", "DropInPaths", "ExecStart",
                                               *SANDBOX_PROPERTIES]))
    info = dict(pairs)
    if info.get("LoadState") != "loaded":
        return None
    assignments = tuple(a for name, value in pairs if name in SANDBOX_PROPERTIES
                        for a in [_assignment(name, value)] if a is not None)
    drop_ins = info.get("DropInPaths", "").split()
    origin = f"the installed unit {info.get('FragmentPath') or unit}" + (
        f" with drop-ins {', '.join(drop_ins)}" if drop_ins else "")
    return UnitSource(assignments, _exec_start_argv(info.get("ExecStart", "")), origin)


def _assignment(name: str, value: str) -> str | None:
    """A `systemd-run -p` assignment for one property as `systemctl show` printed it, or None to leave it out."""
    if value == "" and name not in _EMPTY_MEANS_SOMETHING:
        return None  # empty is the default, and some properties refuse an empty -p (BindPaths=)
    if name == "SystemCallErrorNumber" and value == _ERRNO_UNSET:
        return None
    if name == "EnvironmentFiles":  # shown as "PATH (ignore_errors=yes)", set as EnvironmentFile=-PATH
        path, _, flags = value.partition(" (")
        return f"EnvironmentFile={'-' if 'ignore_errors=yes' in flags else ''}{path}"
    return f"{name}={value}"


def shipped_unit(unit: str = UNIT) -> UnitSource:
    """The sandbox of the unit shipped in the package (what `key-server print-file key-server.service` prints)."""
    assignments: list[str] = []
    exec_start: tuple[str, ...] = ()
    section = ""
    for raw in deploy_file(unit).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        name, sep, value = (part.strip() for part in line.partition("="))
        if section != "[Service]" or not sep:
            continue
        if name == "ExecStart":
            exec_start = tuple(shlex.split(value.lstrip("-@:+!")))
        elif _UNIT_FILE_NAMES.get(name, name) in SANDBOX_PROPERTIES:
            assignments.append(f"{name}={value}")
    return UnitSource(tuple(assignments), exec_start,
                      f"the shipped unit (`key-server print-file {unit}`; {unit} is not installed)")


def doctor_argv(exec_start: tuple[str, ...], *, json_output: bool) -> list[str]:
    """The unit's ExecStart with `doctor` in place of `run` and whatever followed it."""
    if "run" not in exec_start[1:]:
        raise SandboxError(f"the unit's ExecStart ({shlex.join(exec_start) or 'none'}) does not run `key-server "
                           "... run`: --as-service copies only a unit that runs key-server directly")
    before_run = list(exec_start[:exec_start.index("run", 1)])
    return [*before_run, "doctor", *(["--json"] if json_output else [])]


def systemd_run_argv(source: UnitSource, *, json_output: bool, unit: str = UNIT) -> list[str]:
    """The systemd-run command that runs the doctor inside `source`'s sandbox, its output on ours."""
    systemd_run = shutil.which("systemd-run")
    if systemd_run is None:
        raise SandboxError("systemd-run not found: install systemd (it comes with it) or run the checks as the "
                           "service user without the sandbox: sudo -u USER key-server doctor")
    name = f"{unit.removesuffix('.service')}-doctor-{os.getpid()}"
    argv = [systemd_run, "--wait", "--pipe", "--collect", "--quiet", f"--unit={name}",
            f"--description=key-server doctor in the sandbox of {unit}"]
    argv += [f"--property={a}" for a in source.assignments]
    # The running service shares this runtime directory (lgpio's pipes are in it): when the copy stops, systemd
    # must not remove it, which it does by default (RuntimeDirectoryPreserve=no).
    argv += ["--property=RuntimeDirectoryPreserve=yes",
             f"--setenv={SANDBOX_ENV}={unit}'s sandbox, copied from {source.origin}"]
    return [*argv, "--", *doctor_argv(source.exec_start, json_output=json_output)]


def _journal_reason(transient: str) -> str:
    """systemd's own line on why the transient unit could not start (its journal), or ''."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return ""
    try:
        out = subprocess.run([journalctl, "-q", "-o", "cat", "--no-pager", "-u", transient],  # noqa: S603
                             capture_output=True, text=True, timeout=SHOW_TIMEOUT_S, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # e.g. "NAME.service: Changing to the requested working directory failed: No such file or directory"; not
    # the summary lines after it ("Main process exited ...", "Failed with result 'exit-code'").
    for line in out.splitlines():
        text = line.strip().removeprefix(f"{transient}.service: ")
        if "failed" in text.lower() and not text.startswith(("Failed with result", "Main process exited")):
            return text
    return ""


def run_doctor_in_unit(*, json_output: bool, unit: str = UNIT) -> int:
    """Run the doctor inside `unit`'s sandbox and return its exit status; SandboxError when it cannot run there."""
    if os.geteuid() != 0:
        raise SandboxError(f"checking inside {unit}'s sandbox starts a transient systemd unit, which needs root: "
                           "sudo key-server doctor --as-service")
    if not systemd_booted():
        raise SandboxError(f"systemd is not running as init (PID 1) here, so there is no {unit} sandbox to check "
                           "in: run the checks as the service user instead (sudo -u USER key-server doctor)")
    source = installed_unit(unit) or shipped_unit(unit)
    argv = systemd_run_argv(source, json_output=json_output, unit=unit)
    transient = next(a.removeprefix("--unit=") for a in argv if a.startswith("--unit="))
    sys.stdout.flush()
    try:
        code = subprocess.run(argv, timeout=RUN_TIMEOUT_S, check=False).returncode  # noqa: S603
    except subprocess.TimeoutExpired:
        # systemd-run is gone, its unit is not: stop it (it may hold the pins).
        subprocess.run([shutil.which("systemctl") or "systemctl", "stop", transient],  # noqa: S603
                       capture_output=True, timeout=SHOW_TIMEOUT_S, check=False)
        raise SandboxError(f"the check inside {unit}'s sandbox did not finish within {RUN_TIMEOUT_S:.0f} s") from None
    if code in EXEC_STATUS:
        reason = _journal_reason(transient)
        _print_failure(f"systemd could not start the check in {unit}'s sandbox as user {source.user()}: exit status "
                       f"{code}/{EXEC_STATUS[code]}" + (f" ({reason})" if reason else
                                                        f"; `journalctl -u {transient}` says why")
                       + f"; the service would fail to start the same way (sandbox from {source.origin})",
                       json_output=json_output)
        return ExitCode.CHECK_FAILED
    if code not in {int(c) for c in ExitCode}:
        # Not a status of key-server's: a signal ended it (a SystemCallFilter= kill is SIGSYS), and --quiet kept
        # systemd-run from saying so.
        _print_failure(f"the check inside {unit}'s sandbox ended without a status of key-server's (systemd-run exit "
                       f"{code}): killed by a signal, such as a system call filter's SIGSYS? `journalctl -u "
                       f"{transient}` says (sandbox from {source.origin})", json_output=json_output)
        return ExitCode.CHECK_FAILED
    return code  # the doctor's own status; any error line it printed went out through --pipe


def _print_failure(detail: str, *, json_output: bool) -> None:
    if json_output:
        import json

        print(json.dumps([{"level": "fail", "check": "service sandbox", "detail": detail}]))
    else:
        print(f"[FAIL] service sandbox: {detail}")
