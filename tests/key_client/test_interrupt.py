"""Ctrl-C / SIGTERM of a running key-client, as separate processes over the sim radio.

The vehicle (tests/key_client/stuck_vehicle.py) receives the unlock but never answers: interrupting the client
then must say "outcome unknown" (exit 6, and the JSON object with --json), never "interrupted", because the
vehicle may have unlocked. Interrupted before anything was sent, it is INTERRUPTED (130).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
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
STEP = 30.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Lines:
    """A process's stdout, line by line, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self.q.put(line) for line in stream], daemon=True).start()

    def wait_for(self, prefix: str) -> str:
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting with {prefix!r} within {STEP} s")


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dki"))  # short: AF_UNIX socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def vehicle(root: Path) -> Iterator[tuple[Lines, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.key_client.stuck_vehicle", str(root), "stuckcar"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env())
    try:
        lines = Lines(proc)
        code = lines.wait_for("code ").split()[1]
        lines.wait_for("ready")
        yield lines, code
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def client(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "key_client", "--keychain", str(root / "kc"), "--radio", "sim",
            "--sim-dir", str(root / "air"), "--scan-time", "5", *args]


def paired(root: Path, code: str) -> None:
    r = subprocess.run(client(root, "pair", code), capture_output=True, text=True, cwd=ROOT, env=_env(),
                       timeout=STEP, check=False)
    assert r.returncode == ExitCode.OK, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_after_the_unlock_was_written_is_outcome_unknown(root: Path, vehicle: tuple[Lines, str],
                                                                    sig: signal.Signals) -> None:
    lines, code = vehicle
    paired(root, code)
    proc = subprocess.Popen(client(root, "--json", "unlock"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env())
    try:
        lines.wait_for("unlock received")  # the command reached the vehicle's lock: it may have acted
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STEP)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.OUTCOME_UNKNOWN, (out, err)
    assert "Traceback" not in err and "interrupted before" not in err
    assert err.count("\n") == 1 and "may have acted" in err
    (obj,) = [json.loads(line) for line in out.splitlines()]
    assert obj["ok"] is False and obj["exit"] == "outcome_unknown" and obj["may_have_succeeded"] is True


def test_interrupt_before_anything_was_sent_is_interrupted(root: Path) -> None:
    # Nobody advertises: the client is still scanning when the signal comes.
    (root / "air").mkdir()
    (root / "kc").mkdir(mode=0o700)
    proc = subprocess.Popen(client(root, "--json", "scan"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env())
    try:
        time.sleep(1.5)  # well inside the 5 s scan (start-up takes a fraction of that)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=STEP)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED, (out, err)
    assert err == "key-client: interrupted before anything that could act was sent\n"
    (obj,) = [json.loads(line) for line in out.splitlines()]
    assert obj["exit"] == "interrupted" and obj["may_have_succeeded"] is False
