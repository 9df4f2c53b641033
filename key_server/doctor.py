"""`key-server doctor`: plain-word checks of everything a Pi set-up gets wrong, each with what to do."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from hardware import CheckLevel, check_hardware
from protocol import Role

from .audit import AuditLog
from .clock import GuardedClock
from .config import Config
from .identity import load_identity
from .store import KeyStore

Check = tuple[str, str, str]  # (ok|warn|fail, name, detail)


def _files(cfg: Config) -> list[Check]:
    out: list[Check] = []
    if not cfg.state_dir.exists():
        return [("fail", "state dir", f"{cfg.state_dir} missing: run `key-server init`")]
    mode = stat.S_IMODE(cfg.state_dir.stat().st_mode)
    out.append(("ok" if not mode & 0o077 else "warn", "state dir",
                f"{cfg.state_dir} mode {mode:o}" + ("" if not mode & 0o077 else f": chmod 700 {cfg.state_dir}")))
    try:
        ident = load_identity(cfg.identity_path)
        out.append(("ok", "vehicle key", f"{cfg.identity_path} (0600), vehicle id {ident.key_id.hex()}"))
    except FileNotFoundError:
        out.append(("fail", "vehicle key", f"{cfg.identity_path} missing: run `key-server init`"))
    except (PermissionError, ValueError) as exc:
        out.append(("fail", "vehicle key", str(exc)))
    if cfg.store_path.exists():
        with KeyStore.open(cfg.store_path) as store:
            problems = store.integrity_check()
            keys = store.list_keys()
            owners = [k for k in keys if k.role is Role.OWNER and not k.revoked]
            out.append(("ok" if not problems else "fail", "key store",
                        f"schema {store.schema_version()}, {len(keys)} keys, {len(owners)} active owners"
                        + (f"; integrity: {problems}" if problems else "")))
            if not owners:
                out.append(("warn", "owner key", "no active owner: `key-server pair --role owner --name 'my phone'`"))
            verdict = AuditLog(store).verify()
            out.append(("ok" if verdict.ok else "fail", "audit log",
                        f"{verdict.entries} entries, chain intact" if verdict.ok else verdict.reason))
            clock = GuardedClock(store)
            behind = clock.source_behind_by()
            out.append(("ok" if behind < 60 else "warn", "clock",
                        "system time is current" if behind < 60 else
                        f"system time is {behind} s behind the last time seen: no RTC/NTP yet? expiry uses the later"))
            clock.close()
    else:
        out.append(("fail", "key store", f"{cfg.store_path} missing: run `key-server init`"))
    return out


def _bluetooth(cfg: Config) -> list[Check]:
    if cfg.server.radio == "sim":
        return [("ok", "radio", "sim radio selected: no Bluetooth needed")]
    out: list[Check] = []
    adapters = sorted(p.name for p in Path("/sys/class/bluetooth").glob("hci*")) if Path(
        "/sys/class/bluetooth").exists() else []
    want = cfg.server.adapter
    if not adapters:
        out.append(("fail", "adapter", "no Bluetooth adapter (no /sys/class/bluetooth/hci*): is the kernel module "
                                       "loaded and the adapter enabled (`rfkill unblock bluetooth`)?"))
    elif want and want not in adapters:
        out.append(("fail", "adapter", f"{want} not found; present: {', '.join(adapters)}"))
    else:
        out.append(("ok", "adapter", ", ".join(adapters)))
    bluetoothd = shutil.which("bluetoothd") or next(
        (p for p in ("/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd") if Path(p).exists()), None)
    if bluetoothd is None:
        out.append(("fail", "BlueZ", "bluetoothd not installed: apt install bluez"))
    else:
        try:
            version = subprocess.run([bluetoothd, "--version"], capture_output=True, text=True, timeout=5,  # noqa: S603
                                     check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "unknown"
        out.append(("ok", "BlueZ", f"bluetoothd {version}; BlueZ >= 5.62 recommended (LIBRARIES.md)"))
    bus = Path("/run/dbus/system_bus_socket")
    out.append(("ok" if bus.exists() else "fail", "D-Bus",
                "system bus socket present" if bus.exists() else "no system D-Bus: is dbus running?"))
    if os.geteuid() != 0:
        import grp

        groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
        out.append(("ok" if "bluetooth" in groups else "warn", "permissions",
                    "in group bluetooth" if "bluetooth" in groups else
                    "not root and not in group 'bluetooth': BlueZ may refuse to register the GATT application"))
    release = os.uname().release
    if release.startswith(("6.12.", "6.18.")) and "rpi" in release:
        out.append(("warn", "kernel", f"{release}: some Pi kernels fail LE advertising with 'Invalid Parameters "
                                      "(0x0d)' (raspberrypi/linux#7473); see docs/DEPLOY.md"))
    return out


def _system_bus_present() -> bool:
    return Path("/run/dbus/system_bus_socket").exists() or bool(os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"))


async def _bluez_over_dbus(cfg: Config) -> list[Check]:
    """Ask BlueZ itself (over D-Bus) whether it runs and which adapters can advertise and serve GATT."""
    if cfg.server.radio == "sim":
        return []
    from .radio.ble import probe_bluez

    if not _system_bus_present():
        return []  # _bluetooth already said there is no system bus; probing would only leak a socket
    report = await probe_bluez()
    if not report["bluez"]:
        return [("fail", "BlueZ over D-Bus", report["error"] or "org.bluez not reachable")]
    out: list[Check] = []
    for ad in report["adapters"]:
        if cfg.server.adapter and ad.get("name") != cfg.server.adapter:
            continue
        ok = ad.get("powered") and ad.get("gatt_server") and ad.get("advertising")
        out.append(("ok" if ok else "fail", f"adapter {ad.get('name')}",
                    f"{ad.get('address')} powered={ad.get('powered')} gatt={ad.get('gatt_server')} "
                    f"advertising={ad.get('advertising')} slots={ad.get('supported_advertisements')}"
                    + ("" if ok else ": power it on (`bluetoothctl power on`) and check LE support")))
    return out or [("fail", "BlueZ over D-Bus", "BlueZ runs but reports no usable adapter")]


async def run_checks(cfg: Config) -> list[Check]:
    """All checks, in the order a person should fix them."""
    checks = _files(cfg) + _bluetooth(cfg) + await _bluez_over_dbus(cfg)
    try:
        for c in await check_hardware(cfg.actuator):
            level = {CheckLevel.OK: "ok", CheckLevel.WARN: "warn", CheckLevel.FAIL: "fail"}.get(c.level, "warn")
            checks.append((level, f"gpio: {c.name}", c.detail))
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not crash
        checks.append(("fail", "gpio", str(exc)))
    checks.append(("ok", "checked at", time.strftime("%Y-%m-%d %H:%M:%S")))
    return checks
