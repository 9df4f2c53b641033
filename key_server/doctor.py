"""`key-server doctor`: plain-word checks of everything a Pi set-up gets wrong, each with what to do."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Final, Literal, NamedTuple

from hardware import CheckLevel, check_hardware
from protocol import Role

from .audit import AuditLog
from .clock import GuardedClock
from .config import Config, ConfigError, validate
from .identity import load_identity
from .radio import DEFAULT_ADAPTER
from .sandbox import SANDBOX_ENV, UNIT
from .store import KeyStore, StoreError

Level = Literal["ok", "warn", "fail"]


class DoctorCheck(NamedTuple):
    """One line of the report; a tuple (level, name, detail), so callers may unpack it.

    Not hardware.Check: that one is the GPIO side's (name, CheckLevel, detail) and run_checks converts it.
    """

    level: Level
    name: str
    detail: str


def check_config(cfg: Config) -> DoctorCheck:
    """The config passes every rule key-server applies at start (again: the command line may have changed it)."""
    try:
        validate(cfg)
    except ConfigError as exc:
        return config_failure(exc)
    return DoctorCheck("ok", "config", f"{cfg.source or 'no config file: defaults'}: every option is valid")


def config_failure(exc: ConfigError) -> DoctorCheck:
    """The failing check for a config that did not load: the same one-line message key-server exits with."""
    return DoctorCheck("fail", "config", str(exc))


def _files(cfg: Config) -> list[DoctorCheck]:
    out: list[DoctorCheck] = []
    if not cfg.state_dir.exists():
        return [DoctorCheck("fail", "state dir", f"{cfg.state_dir} missing: run `key-server init`")]
    mode = stat.S_IMODE(cfg.state_dir.stat().st_mode)
    # Others able to write it is a failure (every command refuses it: they could swap keys.db or the vehicle
    # key); only readable by others is a warning (the files in it are 0600 and checked one by one).
    level: Level = "fail" if mode & 0o022 else "warn" if mode & 0o077 else "ok"
    out.append(DoctorCheck(level, "state dir",
                f"{cfg.state_dir} mode {mode:o}" + ("" if level == "ok" else f": chmod 700 {cfg.state_dir}")))
    try:
        ident = load_identity(cfg.identity_path)
        out.append(DoctorCheck("ok", "vehicle key", f"{cfg.identity_path} (0600), vehicle id {ident.key_id.hex()}"))
    except FileNotFoundError:
        out.append(DoctorCheck("fail", "vehicle key", f"{cfg.identity_path} missing: run `key-server init`"))
    except (PermissionError, ValueError) as exc:
        out.append(DoctorCheck("fail", "vehicle key", str(exc)))
    if cfg.store_path.exists():
        try:
            store = KeyStore.open(cfg.store_path)
        except StoreError as exc:  # empty, truncated, not a key store, open to others: what run would refuse
            out.append(DoctorCheck("fail", "key store", str(exc)))
            return out
        with store:
            problems = store.integrity_check()
            keys = store.list_keys()
            owners = [k for k in keys if k.role is Role.OWNER and not k.revoked]
            out.append(DoctorCheck("ok" if not problems else "fail", "key store",
                        f"schema {store.schema_version()}, {len(keys)} keys, {len(owners)} active owners"
                        + (f"; integrity: {problems}" if problems else "")))
            if not owners:
                out.append(DoctorCheck("warn", "owner key",
                                       "no active owner: `key-server pair --role owner --name 'my phone'`"))
            verdict = AuditLog(store).verify()
            out.append(DoctorCheck("ok" if verdict.ok else "fail", "audit log",
                        f"{verdict.entries} entries, chain intact" if verdict.ok else verdict.reason))
            clock = GuardedClock(store, probes=cfg.clock.probes())
            behind = clock.source_behind_by()
            out.append(DoctorCheck("ok" if behind < 60 else "warn", "clock",
                        "system time is current" if behind < 60 else
                        f"system time is {behind} s behind the last time seen: no RTC/NTP yet? expiry uses the later"))
            out += _clock_trust(clock, cfg)
            clock.close()
    else:
        out.append(DoctorCheck("fail", "key store", f"{cfg.store_path} missing: " + (
            "restore it from a backup (`key-server restore BACKUP`)" if cfg.identity_path.exists()
            else "run `key-server init`")))
    return out


def _clock_trust(clock: GuardedClock, cfg: Config) -> list[DoctorCheck]:
    """Which sources may confirm the clock after a start (docs/PROTOCOL.md §5.7), and what each says now."""
    out: list[DoctorCheck] = []
    vouching = False
    for source, said in clock.describe():
        vouching = vouching or said.time is not None
        out.append(DoctorCheck("ok" if said.time is not None else "warn", f"clock source {source}", said.detail))
    devices = [role for role, on in (("owner", cfg.clock.trust_owner), ("driver", cfg.clock.trust_driver)) if on]
    if devices:
        out.append(DoctorCheck("ok", "clock source devices",
                               f"an {' or '.join(devices)} device confirms the time when it connects (SET_TIME)"))
    if not vouching and devices:
        out.append(DoctorCheck("warn", "clock trust",
                               "nothing on this machine confirms the time now: after each start, guests and keys with "
                               f"a validity window or schedule are refused until an {' or '.join(devices)} device "
                               "connects; an RTC avoids that (docs/HARDWARE.md)"))
    elif not vouching:
        out.append(DoctorCheck("warn", "clock trust",
                               "no source can confirm the time: guests and keys with a validity window or schedule "
                               "are always refused; turn on a [clock] trust_* option (docs/DEPLOY.md)"))
    return out


def _bluetooth(cfg: Config) -> list[DoctorCheck]:
    if cfg.server.radio == "sim":
        return [DoctorCheck("ok", "radio", "sim radio selected: no Bluetooth needed")]
    out: list[DoctorCheck] = []
    adapters = sorted(p.name for p in Path("/sys/class/bluetooth").glob("hci*")) if Path(
        "/sys/class/bluetooth").exists() else []
    # No adapter configured means hci0 to bless (get_adapter's default), not "any": check the one `run` will use.
    want = cfg.server.adapter or DEFAULT_ADAPTER
    if not adapters:
        out.append(DoctorCheck("fail", "adapter",
                               "no Bluetooth adapter (no /sys/class/bluetooth/hci*): is the kernel module "
                               "loaded and the adapter enabled (`rfkill unblock bluetooth`)?"))
    elif want and want not in adapters:
        out.append(DoctorCheck("fail", "adapter", f"{want} not found; present: {', '.join(adapters)}"))
    else:
        out.append(DoctorCheck("ok", "adapter", ", ".join(adapters)))
    bluetoothd = shutil.which("bluetoothd") or next(
        (p for p in ("/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd") if Path(p).exists()), None)
    if bluetoothd is None:
        out.append(DoctorCheck("fail", "BlueZ", "bluetoothd not installed: apt install bluez"))
    else:
        try:
            version = subprocess.run([bluetoothd, "--version"], capture_output=True, text=True, timeout=5,  # noqa: S603
                                     check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "unknown"
        out.append(DoctorCheck("ok", "BlueZ", f"bluetoothd {version}; BlueZ >= 5.62 recommended (docs/DEPLOY.md)"))
    bus = Path("/run/dbus/system_bus_socket")
    out.append(DoctorCheck("ok" if bus.exists() else "fail", "D-Bus",
                "system bus socket present" if bus.exists() else "no system D-Bus: is dbus running?"))
    if os.geteuid() != 0:
        import grp

        groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
        out.append(DoctorCheck("ok" if "bluetooth" in groups else "warn", "permissions",
                    "in group bluetooth" if "bluetooth" in groups else
                    "not root and not in group 'bluetooth': BlueZ may refuse to register the GATT application"))
    warning = kernel_warning(os.uname().release)
    if warning:
        out.append(DoctorCheck("warn", "kernel", warning))
    return out


# Raspberry Pi kernel builds whose LE advertising through BlueZ's D-Bus API fails with "Invalid Parameters (0x0d)":
# 6.12.93+rpt (6.12.87+rpt works: RPi-Distro/repo#407, bluez#2269) and 6.18.34+rpt (raspberrypi/linux#7473,
# bluez#2268). Only these are named: a warning on every 6.12 kernel would teach people to ignore it.
ADVERTISING_BROKEN_KERNELS: Final = ("6.12.93", "6.18.34")


def kernel_warning(release: str) -> str | None:
    """The warning for a Pi kernel build known to break LE advertising, or None (`uname -r` as `release`)."""
    version, _, build = release.partition("+")
    if version in ADVERTISING_BROKEN_KERNELS and ("rpt" in build or "rpi" in build):
        return (f"{release}: this Raspberry Pi kernel build fails LE advertising with 'Invalid Parameters (0x0d)' "
                "(raspberrypi/linux#7473); use another kernel (docs/DEPLOY.md, Bluetooth set-up)")
    return None


def check_lock_matches_radio(cfg: Config) -> DoctorCheck | None:
    """A real radio with the simulated lock: phones would 'unlock' a car whose lock never moves."""
    if cfg.server.radio == "ble" and cfg.actuator.kind == "sim":
        return DoctorCheck("fail", "actuator",
                           "the real Bluetooth radio is configured with the simulated lock ([actuator] kind = "
                           f"\"sim\" in {cfg.source or 'the defaults'}): set kind and pins (docs/HARDWARE.md), "
                           "or use --radio sim for a test")
    return None


def _system_bus_present() -> bool:
    return Path("/run/dbus/system_bus_socket").exists() or bool(os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"))


async def _bluez_over_dbus(cfg: Config) -> list[DoctorCheck]:
    """Ask BlueZ itself (over D-Bus) whether it runs and which adapters can advertise and serve GATT."""
    if cfg.server.radio == "sim":
        return []
    from .radio.ble import probe_bluez

    if not _system_bus_present():
        return []  # _bluetooth already said there is no system bus; probing would only leak a socket
    report = await probe_bluez()
    if not report["bluez"]:
        return [DoctorCheck("fail", "BlueZ over D-Bus", report["error"] or "org.bluez not reachable")]
    out: list[DoctorCheck] = []
    for ad in report["adapters"]:
        if ad.get("name") != (cfg.server.adapter or DEFAULT_ADAPTER):
            continue
        ok = ad.get("powered") and ad.get("gatt_server") and ad.get("advertising")
        out.append(DoctorCheck("ok" if ok else "fail", f"adapter {ad.get('name')}",
                    f"{ad.get('address')} powered={ad.get('powered')} gatt={ad.get('gatt_server')} "
                    f"advertising={ad.get('advertising')} slots={ad.get('supported_advertisements')}"
                    + ("" if ok else ": power it on (`bluetoothctl power on`) and check LE support")))
        if ok:
            privacy = address_privacy(bluez_privacy(BLUEZ_MAIN_CONF), ad.get("extended_advertising"),
                                      renew_legacy=cfg.ble.renew_legacy_address)
            if privacy is not None:
                out.append(privacy)
    return out or [DoctorCheck("fail", "BlueZ over D-Bus",
                               f"BlueZ runs but does not report {cfg.server.adapter or DEFAULT_ADAPTER}, the adapter "
                               "`run` uses (set [server] adapter to use another)")]


BLUEZ_MAIN_CONF: Final = Path("/etc/bluetooth/main.conf")


def bluez_privacy(main_conf: Path) -> str:
    """main.conf's [General] Privacy value ("off" when unset, as bluetoothd defaults; "" if unreadable)."""
    try:
        text = main_conf.read_text(errors="replace")
    except FileNotFoundError:
        return "off"
    except OSError:
        return ""
    section, value = "", "off"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "General" and "=" in line:
            key, _, val = line.partition("=")
            if key.strip() == "Privacy":
                value = val.strip().lower()
    return value


def address_privacy(privacy: str, extended: bool | None, *, renew_legacy: bool = True) -> DoctorCheck | None:
    """What the car's advertising address reveals (docs/DEPLOY.md §8), from BlueZ's Privacy setting, whether the
    kernel drives the controller with extended advertising, and [ble] renew_legacy_address; None when unknown."""
    if privacy == "" or extended is None:
        return None
    if privacy == "off":
        return DoctorCheck("warn", "address privacy",
                           f"BlueZ Privacy is off in {BLUEZ_MAIN_CONF}: the car advertises from the controller's "
                           "fixed public address, which anyone can follow; set `Privacy = device` "
                           "(docs/DEPLOY.md §5) and restart bluetooth")
    if extended:
        return DoctorCheck("ok", "address privacy",
                           f"Privacy = {privacy}, extended advertising: a new resolvable private address with every "
                           "advertising token")
    if renew_legacy:
        return DoctorCheck("ok", "address privacy",
                           f"Privacy = {privacy}, legacy advertising: key-server powers the adapter off and on with "
                           "every new token, while no device is connected, for a new private address "
                           "([ble] renew_legacy_address)")
    return DoctorCheck("warn", "address privacy",
                       f"Privacy = {privacy}, but this controller advertises the legacy way and [ble] "
                       "renew_legacy_address is off: the kernel renews the private address every 15 min on its own "
                       "timer, out of step with the token, so one address can link two tokens (docs/DEPLOY.md §8 "
                       "\"The address and the token\")")


_GPIO_LEVEL: dict[CheckLevel, Level] = {CheckLevel.OK: "ok", CheckLevel.WARN: "warn", CheckLevel.FAIL: "fail"}
GPIO_DEVICES: Final = Path("/dev")


class GpioDevices(NamedTuple):
    """check_gpio_devices' line, and whether no chip opened at all (then lgpio cannot work either)."""

    check: DoctorCheck
    none_open: bool


def check_gpio_devices(cfg: Config) -> GpioDevices | None:
    """Every /dev/gpiochip* opens read-write for this process (None: the simulated lock, or no chip at all).

    Opened, not stat()ed: a systemd unit's device policy (DevicePolicy=closed without DeviceAllow=char-gpiochip)
    refuses the open with EPERM while the file's mode and groups say yes; lgpio then fails with no reason given.
    """
    if cfg.actuator.kind == "sim":
        return None
    chips = sorted(GPIO_DEVICES.glob("gpiochip*"))
    if not chips:
        return None  # check_hardware says that no GPIO backend or chip is there
    refused: dict[str, list[str]] = {}
    for chip in chips:
        try:
            os.close(os.open(chip, os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            refused.setdefault(exc.strerror or str(exc), []).append(str(chip))
    if not refused:
        return GpioDevices(DoctorCheck("ok", "gpio devices", f"{', '.join(map(str, chips))} open read-write"), False)
    parts = []
    for reason, paths in refused.items():
        hint = ("blocked by a device policy: a systemd unit with DevicePolicy=closed needs DeviceAllow=char-gpiochip "
                "rw (the shipped unit has it)" if reason == os.strerror(errno.EPERM) else
                "this user may not open them: add it to group gpio (docs/DEPLOY.md §3)"
                if reason == os.strerror(errno.EACCES) else "")
        parts.append(f"{', '.join(paths)}: {reason}" + (f": {hint}" if hint else ""))
    return GpioDevices(DoctorCheck("fail", "gpio devices", "; ".join(parts)),
                       sum(map(len, refused.values())) == len(chips))


def check_lgpio_workdir(cfg: Config) -> DoctorCheck | None:
    """lgpio can create its notification pipe: in $LG_WD, else in the working directory (None: lgpio not used).

    lgpio makes a FIFO `.lgd-nfy0` there when it is imported (gpiozero#1106, joan2937/lg#22); where it cannot,
    gpiozero only says that no pin factory loads. `sudo -u dkey ...` keeps the caller's directory (a home directory
    the service user cannot write); the unit points LG_WD at its runtime directory.
    """
    factory = os.environ.get("GPIOZERO_PIN_FACTORY", "")
    if cfg.actuator.kind == "sim" or factory not in ("", "lgpio") or importlib.util.find_spec("lgpio") is None:
        return None  # gpiozero will not import lgpio here (find_spec looks without importing it)
    where = os.environ.get("LG_WD") or os.getcwd()
    origin = "$LG_WD" if os.environ.get("LG_WD") else "the working directory"
    if os.access(where, os.W_OK | os.X_OK):
        return DoctorCheck("ok", "gpio workdir", f"{where} ({origin}) is writable for lgpio's notification pipe")
    return DoctorCheck("fail", "gpio workdir",
                       f"{where} ({origin}) is not writable by this user, and lgpio creates its notification pipe "
                       "there: set LG_WD to a directory it can write (e.g. `sudo -u dkey env LG_WD=/var/lib/dkey "
                       "key-server ...`); the unit sets LG_WD=/run/dkey")


def sandbox_check() -> DoctorCheck | None:
    """Inside `doctor --as-service`'s transient unit: which sandbox and user the checks run in (else None)."""
    where = os.environ.get(SANDBOX_ENV)
    if not where:
        return None
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = "?"
    return DoctorCheck("ok", "service sandbox", f"these checks ran inside {where}, as user {user} (uid {os.geteuid()})")


def root_outside_unit_warning() -> DoctorCheck:
    """The line for checks run as root in a shell on a machine where the unit is installed."""
    return DoctorCheck("warn", "service sandbox",
                       f"these checks ran as root, with root's permissions, not as the service's user inside "
                       f"{UNIT}'s sandbox (a file only root can read passes here, a device the unit blocks too): "
                       "check there with `sudo key-server doctor --as-service`")


async def run_checks(cfg: Config) -> list[DoctorCheck]:
    """All checks, in the order a person should fix them."""
    checks = [check_config(cfg)]
    if checks[0].level == "fail":
        return [*checks, DoctorCheck("warn", "other checks", "skipped: fix the config first")]
    checks += _files(cfg) + _bluetooth(cfg) + await _bluez_over_dbus(cfg)
    mismatch = check_lock_matches_radio(cfg)
    if mismatch is not None:
        checks.append(mismatch)
    devices = check_gpio_devices(cfg)
    workdir = check_lgpio_workdir(cfg)
    checks += [c for c in (devices.check if devices else None, workdir) if c is not None]
    if (devices is not None and devices.none_open) or (workdir is not None and workdir.level == "fail"):
        # lgpio would fail too, with an error that names no cause ("can not open gpiochip", "Unable to load any
        # default pin factory") and a hint to install it.
        checks.append(DoctorCheck("warn", "gpio", "backend and pins not checked: fix the line above first"))
    else:
        try:
            for c in await check_hardware(cfg.actuator):
                checks.append(DoctorCheck(_GPIO_LEVEL.get(c.level, "warn"), f"gpio: {c.name}", c.detail))
        except Exception as exc:  # noqa: BLE001 - doctor reports, it does not crash
            checks.append(DoctorCheck("fail", "gpio", str(exc)))
    checks.append(DoctorCheck("ok", "checked at", time.strftime("%Y-%m-%d %H:%M:%S")))
    return checks
