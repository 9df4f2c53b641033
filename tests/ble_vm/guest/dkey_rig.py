"""Test rig for the product scenarios in the ble_vm guest: a real `key-server run --radio ble` (Vehicle), real
`key-client --radio ble` invocations (Device), and readers for the evidence they leave behind (the server's log
with its timestamps, bluetoothd's debug log). Used by test_key_scenarios.py; importable on a host without
Bluetooth (it only starts processes and reads files).

Every key-client run is made with -vv, so its stderr carries the driver's progress lines ("scanning for
vehicles", "connecting to ...", "connected to ..., max write N", "scan window N saw nothing", "connect to ...
failed"); with the wall-clock arrival time of each line (conftest.TimedResult) they give the phase split of an
unlock, and their counts give the retries. Each run is also appended to $BLE_VM_OUT/key_client_runs.jsonl,
which conftest summarises at the end of the session.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

VEHICLE_ADAPTER = "hci0"
# The product's GATT UUIDs (docs/PROTOCOL.md §1.1); kept here as text so this module imports without the product.
SERVICE_UUID = "7d4f0001-5e2a-4c1b-9f3a-6b1c2d3e4f50"
RX_UUID = "7d4f0002-5e2a-4c1b-9f3a-6b1c2d3e4f50"
TX_UUID = "7d4f0003-5e2a-4c1b-9f3a-6b1c2d3e4f50"

# key-server's log format: "%(asctime)s %(levelname)s %(name)s: %(message)s", asctime like 2026-11-21 21:58:15,728
_SERVER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")


def parse_asctime(text: str) -> float:
    """Wall-clock seconds of a logging asctime (local time, like time.time())."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


VM_SCAN_TIME = 30  # seconds key-client scans in the VM (the product's default is 10)
VM_CONNECT_ATTEMPTS = 8  # connects key-client may try in the VM, within 40 s (the product's default is 3)


@dataclass(frozen=True)
class ServerLine:
    ts: float
    level: str
    logger: str
    message: str


# ---------------------------------------------------------------------------------------------- vehicle


@dataclass
class Vehicle:
    """A key-server state dir and the `key-server run --radio ble` process serving it."""

    state_dir: Path
    name: str
    spawner: Any  # conftest.Spawner
    run_cli: Callable[..., Any]
    adapter: str = VEHICLE_ADAPTER
    proc: Any = None  # conftest.GuestProcess
    generation: int = 0

    def ks(self, *args: str) -> list[str]:
        return ["key-server", "--state-dir", str(self.state_dir), *args]

    def init(self) -> None:
        """`key-server init`, then a config with a start-enable output (so `start` has something to drive)."""
        self.run_cli(self.ks("init", "--name", self.name), check=True, name="key-server-init")
        config = self.state_dir / "config.toml"
        text = config.read_text()
        for old, new in (("# start_pin = 4", "start_pin = 4"), ("# start_on_s = 120", "start_on_s = 2")):
            assert old in text, f"sample config changed: no {old!r} in {config}"
            text = text.replace(old, new)
        config.write_text(text)

    def start(self, timeout: float = 90.0) -> None:
        """Start `key-server run --radio ble` and wait for its "advertising as" line."""
        self.generation += 1
        argv = self.ks("-v", "run", "--radio", "ble", "--adapter", self.adapter, "--name", self.name,
                       "--actuator", "sim")
        self.proc = self.spawner(f"key-server-run.{self.generation}", argv, ready=r"^advertising as ",
                                 ready_timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, as systemd would; returns the exit code."""
        return int(self.proc.stop(timeout=15.0, sig=signal.SIGTERM))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def output(self) -> str:
        return str(self.proc.output())

    def lines(self) -> list[ServerLine]:
        found = []
        for line in self.output().splitlines():
            m = _SERVER_LINE.match(line)
            if m:
                found.append(ServerLine(parse_asctime(m.group(1)), m.group(2), m.group(3), m.group(4)))
        return found

    def actuator_events(self, since: float = 0.0) -> list[ServerLine]:
        """The server's "actuator: ..." log lines at or after wall-clock time `since`."""
        return [ln for ln in self.lines() if ln.message.startswith("actuator: ") and ln.ts >= since - 0.002]

    def pair_code(self, role: str, name: str) -> str:
        out = self.run_cli(self.ks("pair", "--role", role, "--name", name, "--json"), check=True,
                           name=f"key-server-pair-{name}")
        return str(json.loads(out.stdout)["code"])

    def keys(self, *, all_keys: bool = True) -> list[dict[str, Any]]:
        args = ["keys", "--json"] + (["--all"] if all_keys else [])
        return list(json.loads(self.run_cli(self.ks(*args), check=True, name="key-server-keys").stdout))

    def audit(self, since: float = 0.0, limit: int = 200) -> list[dict[str, Any]]:
        """`key-server audit --json` entries stamped at or after wall-clock second int(since)."""
        out = self.run_cli(self.ks("audit", "--json", "--limit", str(limit)), check=True, name="key-server-audit")
        return [e for e in json.loads(out.stdout) if e["ts"] >= int(since)]


# ---------------------------------------------------------------------------------------------- device


@dataclass
class ClientRun:
    """One finished `key-client` invocation."""

    label: str
    argv: list[str]
    result: Any  # conftest.TimedResult
    race_fix: bool

    @property
    def rc(self) -> int:
        return int(self.result.returncode)

    @property
    def json(self) -> list[dict[str, Any]]:
        """The JSON objects on stdout: a list command's one array (scan, keys, ...), else one object per line."""
        objs: list[dict[str, Any]] = []
        for ln in self.result.stdout.splitlines():
            if ln.startswith("["):
                objs.extend(json.loads(ln))
            elif ln.startswith("{"):
                objs.append(json.loads(ln))
        return objs

    @property
    def obj(self) -> dict[str, Any]:
        objs = self.json
        assert len(objs) == 1, f"{self.label}: expected one JSON object on stdout, got {self.result.stdout!r}"
        return objs[0]

    def err_times(self, pattern: str) -> list[float]:
        regex = re.compile(pattern)
        return [ts for ts, where, text in self.result.lines if where == "err" and regex.search(text)]

    @property
    def cycles(self) -> int:
        """Whole scan+connect cycles the driver started (1 = no retry)."""
        return len(self.err_times(r"^key-client: scanning for vehicles"))

    @property
    def failed_connects(self) -> int:
        return len(self.err_times(r"^key-client: connect to .* failed"))

    @property
    def busy_elsewhere(self) -> int:
        """Connects refused because the vehicle was connected through another adapter of this machine."""
        return len(self.err_times(r"is busy: already connected through"))

    @property
    def blind_windows(self) -> int:
        return len(self.err_times(r"^key-client: scan window \d+ saw nothing"))

    def phases(self, actuator_ts: float | None = None) -> dict[str, float]:
        """Seconds spent in each phase of the successful cycle (see test_unlock_figures)."""
        scans = self.err_times(r"^key-client: scanning for vehicles")
        connecting = self.err_times(r"^key-client: connecting to ")
        connected = self.err_times(r"^key-client: connected to .*, max write")
        assert scans and connecting and connected, f"{self.label}: progress lines missing (was -vv given?)"
        done = connected[-1]
        last_scan = max(t for t in scans if t <= done)
        last_connecting = max(t for t in connecting if t <= done)
        p = {
            "startup": scans[0] - self.result.started,  # interpreter + imports + keychain, until the first scan
            "retries": last_scan - scans[0],  # earlier, failed cycles (0 when the first cycle worked)
            "scan": last_connecting - last_scan,
            "connect_discovery": done - last_connecting,
        }
        if actuator_ts is not None:
            p["exchange"] = actuator_ts - done  # subscribe, challenge push, signed command, verify, actuate
            p["total"] = actuator_ts - self.result.started
        return p

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "argv": self.argv, "rc": self.rc, "cycles": self.cycles,
                "failed_connects": self.failed_connects,
                "busy_elsewhere": self.busy_elsewhere, "blind_windows": self.blind_windows,
                "race_fix": self.race_fix, "seconds": round(self.result.lines[-1][0] - self.result.started, 2)
                if self.result.lines else None}


@dataclass
class Device:
    """A wearable's keychain on one central adapter, driven through the real `key-client --radio ble`."""

    keychain: Path
    adapter: str
    run_cli: Callable[..., Any]
    out_dir: Path
    race_fix: bool = False
    runs: list[ClientRun] = field(default_factory=list)
    key_id: str | None = None  # this device's key id for the vehicle, from its `pair --json` answer

    def argv(self, *args: str, json_out: bool = True) -> list[str]:
        """The command line `run` uses, for a key-client that must run in the background (e.g. `watch`)."""
        argv = ["key-client", "-vv", "--keychain", str(self.keychain), "--radio", "ble", "--adapter", self.adapter,
                "--scan-time", str(VM_SCAN_TIME), "--connect-attempts", str(VM_CONNECT_ATTEMPTS)]
        return argv + (["--json"] if json_out else []) + list(args)

    def run(self, *args: str, label: str | None = None, timeout: float = 120.0, json_out: bool = True,
            env: dict[str, str] | None = None) -> ClientRun:
        """`key-client -vv --keychain K --radio ble --adapter A [--json] ARGS...`; env adds to its environment
        (e.g. BLEAK_LOGGING=1 for bleak's own debug log on stderr)."""
        # key-client's budget is honest ("no vehicle found in 10 s" takes 10 s, 3 connects at most; docs/CLIENT.md)
        # and the VM is slower and flakier than any radio: under TCG btvirt can keep a scan blind for 10 s and
        # more (see conftest.find_device), and BlueZ misses Connected=True on many first connects ("failed to
        # discover services"). The VM gives the client what a user of such a radio would: a longer budget.
        argv = self.argv(*args, json_out=json_out)
        label = label or f"key-client-{self.adapter}-{args[0]}"
        result = self.run_cli(argv, timeout=timeout, name=label, bleak_race_fix=self.race_fix, env=env)
        run = ClientRun(label, argv, result, self.race_fix)
        self.runs.append(run)
        with (self.out_dir / "key_client_runs.jsonl").open("a") as f:
            f.write(json.dumps(run.record()) + "\n")
        return run


# ---------------------------------------------------------------------------------------------- bluetoothd log


class BluetoothdLog:
    """bluetoothd's debug log (-d), written by guest_main.sh to $BLE_VM_OUT/bluetoothd.log.

    One bluetoothd serves all three controllers, so both ends of every link are in this one log: each ATT PDU
    sent on a link shows up once, as "ATT PDU received: 0xNN" on the receiving side. Slices between two marks
    therefore count every ATT PDU exchanged in between, both directions.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, start: int, end: int | None = None) -> str:
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        return data.decode(errors="replace")


_PDU = re.compile(r"ATT PDU received: 0x([0-9a-f]{2})")
_CHRC = re.compile(r"discover_chrcs_cb\(\) start: 0x[0-9a-f]{4}, end: 0x[0-9a-f]{4}, value: 0x([0-9a-f]{4}), "
                   r"props: 0x[0-9a-f]{2}, uuid: ([0-9a-f-]{36})")
_WRITE = re.compile(r"gatt-server\.c:write_cb\(\) Write (Req|Command) - handle: 0x([0-9a-f]{4})")
ATT_OPCODES = {
    0x02: "mtu_req", 0x04: "find_info_req", 0x08: "read_by_type_req", 0x0A: "read_req", 0x10: "read_by_group_req",
    0x12: "write_req", 0x16: "prep_write_req", 0x18: "exec_write_req", 0x1B: "notification", 0x1D: "indication",
    0x23: "multi_notification", 0x52: "write_cmd",
}
# bluetoothd 5.66 logs "ATT PDU received" for requests, commands, notifications and indications, not for
# responses; every request gets exactly one response (or an error response), every indication a confirmation.
_REQUESTS = {0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x16, 0x18, 0x20}
_NOTIFICATIONS = {0x1B, 0x23}


def att_summary(text: str) -> dict[str, Any]:
    """Counts of the ATT traffic in a bluetoothd log slice: every PDU by type, the total both ways, and the key
    service's own share (the write to RX, the CCC enable, the vehicle's notifications)."""
    by_op = Counter(int(m.group(1), 16) for m in _PDU.finditer(text))
    rx_handles = {m.group(1) for m in _CHRC.finditer(text) if m.group(2) == RX_UUID}
    rx_writes = sum(1 for m in _WRITE.finditer(text) if m.group(2) in rx_handles)
    requests = sum(n for op, n in by_op.items() if op in _REQUESTS)
    notification_pdus = sum(n for op, n in by_op.items() if op in _NOTIFICATIONS)
    return {
        "att_pdus_both_ways": 2 * requests + notification_pdus + 2 * by_op.get(0x1D, 0) + by_op.get(0x52, 0),
        "requests": requests,
        "notification_pdus": notification_pdus,
        "logged_by_type": {ATT_OPCODES.get(op, f"0x{op:02x}"): n for op, n in sorted(by_op.items())},
        "rx_writes": rx_writes,
        "ccc_enables": text.count("External CCC write received with value: 0x0001"),
        "notifications_sent": text.count("GATT server sending notification"),
        "connections": len(re.findall(r"connected_callback\(\) hci0 device ", text)),
    }


def max_concurrent_links(text: str, vehicle_address: str) -> int:
    """The most centrals connected to the vehicle's adapter at once in a log slice."""
    connected: set[str] = set()
    most = 0
    for line in text.splitlines():
        m = re.search(r"connected_callback\(\) hci0 device ([0-9A-F:]{17}) connected", line)
        if m:
            connected.add(m.group(1))
            most = max(most, len(connected))
            continue
        m = re.search(r"dev_disconnected\(\) Device ([0-9A-F:]{17}) disconnected", line)
        if m and m.group(1) != vehicle_address:
            connected.discard(m.group(1))
    return most


def adapter_address(adapter: str) -> str:
    out = subprocess.run(["busctl", "--system", "get-property", "org.bluez", f"/org/bluez/{adapter}",
                          "org.bluez.Adapter1", "Address"], capture_output=True, text=True, timeout=15, check=True)
    return out.stdout.split('"')[1]


def bluez_ready(adapters: list[str]) -> bool:
    """bluetoothd owns org.bluez and shows every adapter in `adapters` powered (busctl; blocking)."""
    for adapter in adapters:
        out = subprocess.run(["busctl", "--system", "get-property", "org.bluez", f"/org/bluez/{adapter}",
                              "org.bluez.Adapter1", "Powered"], capture_output=True, text=True, timeout=15)
        if out.returncode != 0 or out.stdout.strip() != "b true":
            return False
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class LinkWatcher:
    """Polls BlueZ (GetManagedObjects) in a thread and records which remote devices are connected to the
    vehicle's adapter, to tell whether two centrals were ever connected to it at the same time."""

    def __init__(self, adapter: str = VEHICLE_ADAPTER, interval: float = 0.2) -> None:
        self.prefix = f"/org/bluez/{adapter}/dev_"
        self.interval = interval
        self.most = 0
        self.seen: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def connected(self) -> set[str]:
        out = subprocess.run(["busctl", "--system", "--json=short", "call", "org.bluez", "/",
                              "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"],
                             capture_output=True, text=True, timeout=15)
        try:
            objects = json.loads(out.stdout)["data"][0] if out.returncode == 0 else {}
        except (ValueError, KeyError, IndexError):
            return set()
        return {path for path, ifaces in objects.items() if path.startswith(self.prefix) and "/" not in
                path[len(self.prefix):] and ifaces.get("org.bluez.Device1", {}).get("Connected", {}).get("data")}

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.connected()
            self.polls += 1
            self.seen |= now
            self.most = max(self.most, len(now))
            self._stop.wait(self.interval)

    def __enter__(self) -> LinkWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)
