"""Fixtures for the real-stack BLE tests, which run only inside the tests/ble_vm QEMU guest.

Run them with ``bash tests/ble_vm/run.sh`` (or ``./dev test-ble``). On the host every test in this
directory is marked ``ble`` (deselected by the project's ``-m 'not ble'``) and, if selected anyway,
skipped. This module must stay importable on a host without Bluetooth: bless and bleak are imported
only inside fixtures and tests.

What the guest provides (set by guest_main.sh):
  BLE_VM=1            we are inside the guest
  BLE_VM_OUT          writable output dir (the host's .ble-vm/out/); logs written here are printed by
                      run.sh when the run fails. Everything else outside /tmp is read-only.
  BLE_VM_ADAPTERS     "hci0 hci1 hci2": three powered btvirt LE controllers that see each other.
                      Convention: hci0 = the peripheral (key-server), hci1/hci2 = centrals.

Fixtures:
  ble_out          Path of BLE_VM_OUT
  ble_adapters     list of adapter names
  ble_log          a logging.Logger writing to $BLE_VM_OUT/<test name>.log (bleak's debug log too)
  spawn            start a long-running subprocess (e.g. ``key-server run --radio ble --adapter hci0``)
                   with its output in $BLE_VM_OUT/<name>.log, wait for a readiness line, and stop it
                   (SIGTERM, then SIGKILL) at teardown whatever happens
  find_device      await find_device(service_uuid, adapter): scan in short fresh windows (see why there)
  forget_devices   forget_devices(adapter=None): make BlueZ forget remote devices (done before each test)
  run_cli          run a command to completion with a timeout, output captured and logged; from an
                   async test use ``await asyncio.to_thread(run_cli, [...])``
  (autouse)        forget remote devices before each test; patch bleak in-process against the
                   missing Connected=True signal (harness/bleak_race_fix.py). Subprocesses get that
                   patch only with ``spawn(..., bleak_race_fix=True)`` / ``run_cli(..., bleak_race_fix=True)``.

Subprocesses inherit the environment plus: the venv's bin/ first on PATH (so ``key-server`` and
``key-client`` resolve), PYTHONUNBUFFERED=1 and PYTHONDONTWRITEBYTECODE=1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest
from dkey_rig import bluez_ready

if TYPE_CHECKING:  # bleak is imported lazily: this module must import on a host without it
    from bleak.backends.device import BLEDevice

GUEST_DIR = Path(__file__).resolve().parent
HARNESS_DIR = GUEST_DIR / "harness"
IN_GUEST = os.environ.get("BLE_VM") == "1"


# --- collection: ble marker everywhere here, skipped outside the guest ---------------------------


@pytest.hookimpl(tryfirst=True)  # before the -m deselection of pytest's mark plugin sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs the tests/ble_vm guest: run bash tests/ble_vm/run.sh")
    for item in items:
        if GUEST_DIR not in item.path.parents:
            continue
        # A test file here that forgot `pytestmark = pytest.mark.ble` must still never run on the host.
        item.add_marker(pytest.mark.ble)
        if not IN_GUEST:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Summarise every key-client run of the session (dkey_rig appends them to key_client_runs.jsonl) into
    key_client_runs.txt, which run.sh prints: how many runs needed a retry, and why."""
    out = os.environ.get("BLE_VM_OUT")
    if not IN_GUEST or not out:
        return
    import json

    path = Path(out) / "key_client_runs.jsonl"
    if not path.exists():
        return
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    retried = [r for r in runs if r["cycles"] > 1]
    lines = [
        f"key-client runs over BlueZ this session: {len(runs)}; exit codes "
        + ", ".join(f"{rc}: {n}" for rc, n in sorted(_count(r["rc"] for r in runs).items())),
        f"  needing a whole scan+connect cycle retry: {len(retried)}"
        + (f" ({', '.join(r['label'] + ' x' + str(r['cycles'] - 1) for r in retried)})" if retried else ""),
        f"  failed connects (each retried by the driver): {sum(r['failed_connects'] for r in runs)}; "
        f"busy through another adapter: {sum(r.get('busy_elsewhere', 0) for r in runs)}; "
        f"blind scan windows (restarted by the scanner): {sum(r['blind_windows'] for r in runs)}",
        f"  product CLIs with the test-only bleak patch: {sorted({r['race_fix'] for r in runs})}",
    ]
    (Path(out) / "key_client_runs.txt").write_text("\n".join(lines) + "\n")


def _count(values: Iterator[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


# --- environment --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ble_out() -> Path:
    """The guest's writable output dir, shared with the host (.ble-vm/out/)."""
    return Path(os.environ["BLE_VM_OUT"])


@pytest.fixture(scope="session")
def ble_adapters() -> list[str]:
    """Powered adapters, in order: hci0 (peripheral side), hci1, hci2 (central side)."""
    names = os.environ.get("BLE_VM_ADAPTERS", "").split()
    if not names:
        names = sorted(p.name for p in Path("/sys/class/bluetooth").glob("hci*"))
    return names


@pytest.fixture(scope="session", autouse=True)
def _bleak_race_fix() -> None:
    """Test-only: work around the bleak/BlueZ connect race for in-process centrals (harness/)."""
    sys.path.insert(0, str(HARNESS_DIR))
    import bleak_race_fix

    bleak_race_fix.install()


_DEVICE_PATH = re.compile(r"^/org/bluez/(hci\d+)/dev_[0-9A-F_]+$")


def forget_devices(adapter: str | None = None) -> list[str]:
    """Remove the remote devices BlueZ remembers on ``adapter`` (all adapters if None); returns
    their D-Bus paths. Blocking (busctl); from async code use ``asyncio.to_thread``.

    Run before every guest test (autouse fixture below), so each test starts from the same BlueZ
    state whatever ran before it: no device objects left with stale properties or half-torn-down
    links. Also handy before retrying a failed connection.
    """
    tree = subprocess.run(
        ["busctl", "--system", "--list", "tree", "org.bluez"], capture_output=True, text=True, timeout=15
    )
    removed = []
    for path in tree.stdout.split():
        match = _DEVICE_PATH.match(path)
        if match and adapter in (None, match.group(1)):
            subprocess.run(
                ["busctl", "--system", "call", "org.bluez", f"/org/bluez/{match.group(1)}",
                 "org.bluez.Adapter1", "RemoveDevice", "o", path],
                capture_output=True, timeout=15,
            )  # fmt: skip
            removed.append(path)
    return removed


@pytest.fixture(autouse=True)
def _forget_devices_before_each_test() -> None:
    """Each test starts with bluetoothd up and knowing no remote devices (see forget_devices).

    guest_main.sh restarts bluetoothd when it dies (recorded in $BLE_VM_OUT/bluetoothd.exits); a test that
    follows such a death waits for the new daemon to power the adapters instead of failing on its absence."""
    adapters = os.environ.get("BLE_VM_ADAPTERS", "").split()
    deadline = time.monotonic() + 30
    while adapters and not bluez_ready(adapters) and time.monotonic() < deadline:
        time.sleep(0.25)
    forget_devices()


@pytest.fixture(name="forget_devices")
def forget_devices_fixture() -> Callable[[str | None], list[str]]:
    """``forget_devices(adapter=None)``: see the module-level function; e.g. before a scan retry."""
    return forget_devices


async def find_device(service_uuid: str, adapter: str, *, timeout: float = 20.0, window: float = 2.5) -> BLEDevice:
    """Scan on ``adapter`` for a device advertising ``service_uuid``, in fresh scans of ``window``
    seconds until ``timeout``; raise TimeoutError if none is seen.

    Why short scans: btvirt (BlueZ 5.66) sends an advertiser's reports only at the moment a scan or
    the advertising is enabled, and the kernel sometimes drops those reports because its discovery
    is not marked active yet (seen: the controller reports the device, bluetoothd gets nothing).
    A single long scan then stays blind for its whole length (20 s seen, across the kernel's own
    restart); every new scan is a fresh chance. Real advertisers repeat every interval.

    The vehicle carries its service UUID as the key of its service data (the advertising token, PROTOCOL.md
    §13), which BlueZ's discovery UUID filter does not match: the scan is unfiltered and the check is here.
    """
    from bleak import BleakScanner

    uuid = service_uuid.lower()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        device = await BleakScanner.find_device_by_filter(
            lambda _d, adv: uuid in adv.service_uuids or uuid in adv.service_data,
            timeout=min(window, left),
            bluez={"adapter": adapter},
        )
        if device is not None:
            return device
    raise TimeoutError(f"no device advertising {service_uuid} seen on {adapter} in {timeout:.0f} s")


@pytest.fixture(name="find_device")
def find_device_fixture() -> Callable[..., Awaitable[BLEDevice]]:
    """``await find_device(service_uuid, adapter, *, timeout=20, window=2.5)`` -> BLEDevice."""
    return find_device


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "log"


def _unique_log_path(out_dir: Path, name: str) -> Path:
    """<name>.log, or <name>.2.log, ... when a test session uses the same name again."""
    base = _safe_name(name)
    path = out_dir / f"{base}.log"
    n = 2
    while path.exists():
        path = out_dir / f"{base}.{n}.log"
        n += 1
    return path


@pytest.fixture
def ble_log(request: pytest.FixtureRequest, ble_out: Path) -> Iterator[logging.Logger]:
    """A logger writing to $BLE_VM_OUT/<test name>.log; bleak's debug log and the harness's own
    messages (loggers "bleak" and "ble_vm") go there too."""
    path = _unique_log_path(ble_out, request.node.name)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(relativeCreated)9.0f ms %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("ble_vm"), logging.getLogger("bleak")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield logging.getLogger(f"ble_vm.{request.node.name}")
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


# --- subprocesses -------------------------------------------------------------------------------


def _child_env(extra: Mapping[str, str] | None, bleak_race_fix: bool) -> dict[str, str]:
    """Environment for commands under test: the venv's console scripts (key-server, key-client) on
    PATH, unbuffered output so logs are live, no .pyc writes (the host root is read-only)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if bleak_race_fix:
        env["BLE_VM_BLEAK_RACE_FIX"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HARNESS_DIR), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's whole process group (it runs in its own session), so helpers it started
    go down with it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ProcessExitedError(AssertionError):
    """A spawned process ended while a test was waiting for its output."""


@dataclass
class GuestProcess:
    """A long-running subprocess whose stdout+stderr go to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def _check_output(self, regex: re.Pattern[str], deadline: float, timeout: float) -> re.Match[str] | None:
        match = regex.search(self.output())
        if match:
            return match
        if not self.running:
            raise ProcessExitedError(
                f"{self.name} exited with {self.returncode} before printing {regex.pattern!r}; "
                f"log {self.log_path}:\n{_tail(self.output())}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{self.name}: no {regex.pattern!r} after {timeout:.0f} s; log {self.log_path}:\n{_tail(self.output())}"
            )
        return None

    def wait_for_output(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """Block until the output matches ``pattern`` (re.search, MULTILINE); fail if the process
        exits first or ``timeout`` seconds pass."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while not (match := self._check_output(regex, deadline, timeout)):
            time.sleep(0.1)
        return match

    async def wait_for_output_async(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """``wait_for_output`` for async tests: polls without blocking the event loop."""
        import asyncio

        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:  # polling a file: there is no event to wait on
            if match := self._check_output(regex, deadline, timeout):
                return match
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """Stop the process: ``sig`` (SIGTERM) to its group, SIGKILL after ``timeout`` seconds.
        Returns the exit code (negative: killed by that signal). Safe to call twice."""
        if self.running:
            _signal_group(self.popen, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader is gone, but children it left in its group must not outlive the test.
            _signal_group(self.popen, signal.SIGKILL)
        return self.popen.returncode


class Spawner:
    """The ``spawn`` fixture: starts processes, stops all of them at teardown (newest first)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.processes: list[GuestProcess] = []

    def __call__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: str | re.Pattern[str] | None = None,
        ready_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        bleak_race_fix: bool = False,
    ) -> GuestProcess:
        """Start ``argv`` with output in $BLE_VM_OUT/<name>.log. With ``ready``, block until the output
        matches it (e.g. the line a server prints once it advertises); in an async test pass no
        ``ready`` and ``await proc.wait_for_output_async(...)`` instead. ``env`` adds to the inherited
        environment; ``bleak_race_fix`` applies the test-only bleak patch inside the child."""
        log_path = _unique_log_path(self.out_dir, name)
        argv = [str(a) for a in argv]
        with log_path.open("wb") as log_file:
            log_file.write(f"# {' '.join(argv)}\n".encode())
            log_file.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_child_env(env, bleak_race_fix),
                cwd=cwd,
                start_new_session=True,  # own process group: teardown kills its children too
            )
        proc = GuestProcess(name=name, argv=argv, log_path=log_path, popen=popen)
        self.processes.append(proc)
        if ready is not None:
            proc.wait_for_output(ready, ready_timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            rc = proc.stop()
            with proc.log_path.open("a") as log_file:
                log_file.write(f"# exit code {rc} after {time.monotonic() - proc.started:.1f} s\n")


@pytest.fixture
def spawn(ble_out: Path) -> Iterator[Spawner]:
    """Factory for long-running subprocesses, all stopped at teardown. See ``Spawner.__call__``."""
    spawner = Spawner(ble_out)
    try:
        yield spawner
    finally:
        spawner.stop_all()


class CliTimeoutError(AssertionError):
    """A command run by ``run_cli`` did not finish in time (it was killed)."""


class TimedResult(subprocess.CompletedProcess[str]):
    """What ``run_cli`` returns: a CompletedProcess plus ``started`` (wall-clock time.time() just before the
    command was started) and ``lines``: every output line as (wall-clock arrival time, "out"|"err", text).
    Wall-clock, not monotonic, so it compares with the ``%(asctime)s`` of key-server's log in the same guest."""

    started: float = 0.0
    lines: list[tuple[float, str, str]]

    def first_line(self, pattern: str, stream: str | None = None) -> tuple[float, str] | None:
        """(arrival time, text) of the first line matching ``pattern`` (re.search), or None."""
        regex = re.compile(pattern)
        for ts, where, text in self.lines:
            if (stream is None or where == stream) and regex.search(text):
                return ts, text
        return None


def _pump(pipe: IO[str], where: str, sink: list[tuple[float, str, str]]) -> None:
    """Read a child's pipe line by line, stamping each line on arrival (a thread per pipe)."""
    for line in iter(pipe.readline, ""):
        sink.append((time.time(), where, line))
    pipe.close()


def _run_cli(
    out_dir: Path,
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    name: str | None = None,
    input: str | None = None,  # noqa: A002  (mirrors subprocess.run)
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = False,
    bleak_race_fix: bool = False,
) -> TimedResult:
    argv = [str(a) for a in argv]
    log_path = _unique_log_path(out_dir, name or Path(argv[0]).name)
    started_wall = time.time()
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=_child_env(env, bleak_race_fix),
        cwd=cwd,
        start_new_session=True,
    )
    lines: list[tuple[float, str, str]] = []
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [threading.Thread(target=_pump, args=(pipe, where, lines), daemon=True)
             for pipe, where in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for t in pumps:
        t.start()
    if input is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(input)
        proc.stdin.close()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    for t in pumps:
        t.join(10)
    elapsed = time.monotonic() - started
    stdout = "".join(text for _, where, text in lines if where == "out")
    stderr = "".join(text for _, where, text in lines if where == "err")
    stamped = "".join(f"{ts - started_wall:8.3f} {where} {text}" for ts, where, text in lines)
    log_path.write_text(
        f"# {' '.join(argv)}\n# exit code {proc.returncode} after {elapsed:.1f} s"
        f"{' (TIMED OUT)' if timed_out else ''}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        f"--- all output, seconds since start\n{stamped}"
    )
    if timed_out:
        raise CliTimeoutError(f"{argv} did not finish in {timeout} s; log {log_path}:\n{_tail(stdout + stderr)}")
    result = TimedResult(argv, proc.returncode, stdout, stderr)
    result.started = started_wall
    result.lines = lines
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited with {result.returncode}; log {log_path}:\n{_tail(stdout + stderr)}")
    return result


def make_run_cli(out_dir: Path) -> Callable[..., TimedResult]:
    """The ``run_cli`` function for ``out_dir`` (for fixtures of a wider scope than a test)."""

    def run(argv: Sequence[str], **kwargs: object) -> TimedResult:
        return _run_cli(out_dir, argv, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture
def run_cli(ble_out: Path) -> Callable[..., TimedResult]:
    """``run_cli(argv, *, timeout=60, name=None, input=None, env=None, cwd=None, check=False,
    bleak_race_fix=False)`` -> TimedResult (a CompletedProcess with text stdout/stderr, plus each output
    line's wall-clock arrival time), also written to $BLE_VM_OUT/<name>.log (name defaults to argv[0]'s
    basename). On timeout the command's process group is killed and CliTimeoutError raised. Blocking: in
    async tests use asyncio.to_thread."""
    return make_run_cli(ble_out)


@pytest.fixture(scope="module")
def module_spawn() -> Iterator[Spawner]:
    """``spawn`` for fixtures that outlive one test (e.g. a key-server shared by a module's tests);
    everything it started is stopped when the module's tests are done."""
    spawner = Spawner(Path(os.environ["BLE_VM_OUT"]) if IN_GUEST else Path("/tmp"))
    try:
        yield spawner
    finally:
        spawner.stop_all()
