"""`key-server` and `key-client` as separate processes talking over the sim radio in a temp directory.

Only the command lines, stdout/stderr and exit codes are used: nothing is imported from the packages
except the exit-code enum the client documents.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 30.0


@pytest.fixture
def root() -> Iterator[Path]:
    # Short path: the sim radio's socket paths must fit AF_UNIX's ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="dk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One CLI invocation, to completion."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=STEP_TIMEOUT, check=False)


class Server:
    """`key-server run --radio sim` in the background; stop() always ends it."""

    def __init__(self, root: Path, name: str = "bbcar", launcher: tuple[str, ...] = ("-m", "key_server")) -> None:
        self.state, self.air, self.name = root / "state", root / "air", name
        self.launcher = launcher  # how `run` is started: python LAUNCHER --state-dir ... run ...
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread | None = None

    def server(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("key_server", "--state-dir", str(self.state), *args)

    def start(self) -> None:
        init = self.server("init")
        assert init.returncode == 0, init.stderr
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "--state-dir", str(self.state), "run", "--radio", "sim",
             "--name", self.name, "--sim-dir", str(self.air), "--actuator", "sim"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + STEP_TIMEOUT
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"key-server exited early: {''.join(seen)}"
                continue
            seen.append(line)
            if f"advertising as {self.name}" in line:
                return
        raise AssertionError(f"key-server never said it was advertising: {''.join(seen)}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=5)  # EOF once the process is gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server(root: Path) -> Iterator[Server]:
    s = Server(root)
    try:
        yield s
    finally:
        s.stop()


def client(root: Path, *args: str, keychain: str = "kc", scan_time: str = "5") -> subprocess.CompletedProcess[str]:
    return run("key_client", "--keychain", str(root / keychain), "--radio", "sim", "--sim-dir", str(root / "air"),
               "--scan-time", scan_time, *args)


def test_pair_unlock_status_revoke_over_the_sim_radio(root: Path, server: Server) -> None:
    server.start()
    ticket = server.server("pair", "--role", "owner", "--name", "laptop", "--json")
    assert ticket.returncode == 0, ticket.stderr
    code = json.loads(ticket.stdout)["code"]

    paired = client(root, "pair", code)
    assert paired.returncode == ExitCode.OK, paired.stderr
    assert "paired with bbcar" in paired.stdout and "as owner" in paired.stdout

    unlocked = client(root, "unlock")
    assert unlocked.returncode == ExitCode.OK, unlocked.stderr
    assert unlocked.stdout.startswith("unlocked bbcar")

    status = client(root, "--json", "status")
    assert status.returncode == ExitCode.OK, status.stderr
    (report,) = [json.loads(line) for line in status.stdout.splitlines()]
    assert report["ok"] and report["vehicle"] == "bbcar" and report["command"] == "status"

    keys = client(root, "--json", "keys")
    assert keys.returncode == ExitCode.OK, keys.stderr
    assert [(k["name"], k["this_device"]) for k in json.loads(keys.stdout)] == [("laptop", True)]  # one array

    revoked = server.server("revoke", "laptop", "--force")
    assert revoked.returncode == 0, revoked.stderr

    refused = client(root, "unlock")
    assert refused.returncode == ExitCode.DENIED, (refused.stdout, refused.stderr)
    assert "refused" in refused.stderr

    listed = json.loads(server.server("keys", "--all", "--json").stdout)
    assert [k["name"] for k in listed if k["revoked_at"]] == ["laptop"]


def test_wrong_pairing_code_is_denied(root: Path, server: Server) -> None:
    server.start()
    code = json.loads(server.server("pair", "--role", "driver", "--name", "watch", "--json").stdout)["code"]
    wrong = code[:2] + f"{(int(code[2:]) + 1) % 10**6:06d}"
    r = client(root, "pair", wrong)
    assert r.returncode == ExitCode.DENIED, r.stderr
    assert client(root, "--json", "vehicles").stdout == "[]\n"  # an empty list, like key-server's


def test_not_found_when_no_server_runs(root: Path) -> None:
    r = client(root, "scan", scan_time="1")
    assert r.returncode == ExitCode.NOT_FOUND, r.stderr
    assert "no vehicle found in 1 s: is key-server running and in range?" in r.stderr
