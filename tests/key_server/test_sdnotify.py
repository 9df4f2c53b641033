"""systemd's notify protocol: READY/WATCHDOG/STOPPING reach the socket, abstract names work, a hung loop stops pinging.

The last test runs `key-server run` on the sim radio the way the unit does (Type=notify, WatchdogSec=), with this
test standing in for systemd on a socket of its own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from key_server.sdnotify import Notifier, watchdog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notify socket: (NOTIFY_SOCKET value, socket)."""
    path = Path(tempfile.mkdtemp(prefix="sdn")) / "notify"  # short: AF_UNIX paths are at most 107 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield str(path), sock
    sock.close()
    path.unlink()
    path.parent.rmdir()


def received(sock: socket.socket) -> list[str]:
    """Every message waiting on `sock`, without blocking."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(10)


def test_ready_status_and_stopping_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    address, sock = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert n.enabled and n.watchdog_interval is None
    assert n.ready("advertising as dkey")
    assert sock.recv(4096) == b"READY=1\nSTATUS=advertising as dkey"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_a_newline_in_a_status_cannot_forge_another_assignment(listener: tuple[str, socket.socket]) -> None:
    address, sock = listener
    Notifier(address).notify("STATUS=name\nREADY=1")
    assert sock.recv(4096) == b"STATUS=name READY=1"


def test_abstract_socket_names_are_used_as_abstract() -> None:
    name = f"dkey-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled and not n.ready("x") and n.watchdog_interval is None
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}).enabled
    # systemd gone (socket removed): a failed send is False, never an exception in the server.
    assert not Notifier("/nonexistent/notify").notify("WATCHDOG=1")


def test_watchdog_interval_is_for_the_named_process_only() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000"}
    assert Notifier.from_environ(env).watchdog_interval == 20.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "4242"}, pid=4242).watchdog_interval == 20.0
    # A process that inherited another's watchdog variables must not ping for it.
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "4242"}, pid=4243).watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval is None


async def test_a_blocked_event_loop_stops_the_pings(listener: tuple[str, socket.socket]) -> None:
    """The property the unit's WatchdogSec= rests on: pings come from the loop, so a hung loop sends none."""
    address, sock = listener
    n = Notifier(address, watchdog_usec=250_000)  # a ping every 0.1 s
    task = asyncio.create_task(watchdog(n))
    try:
        await asyncio.sleep(0.55)
        assert len(received(sock)) >= 4
        time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is stuck, as a hung server's would be
        # At most the one ping that was due when the loop stopped: none in the 0.6 s it was stuck.
        assert len(received(sock)) <= 1
        await asyncio.sleep(0.35)  # the loop runs again: so do the pings
        assert len(received(sock)) >= 2
    finally:
        task.cancel()


async def test_no_watchdog_configured_returns_at_once() -> None:
    await asyncio.wait_for(watchdog(Notifier("/run/x")), 1)
    await asyncio.wait_for(watchdog(Notifier(None, watchdog_usec=1_000_000)), 1)


@pytest.mark.slow
def test_key_server_run_notifies_ready_pings_and_stopping(listener: tuple[str, socket.socket]) -> None:
    address, sock = listener
    base = Path(tempfile.mkdtemp(prefix="dkn"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DKEY_", "NOTIFY_", "WATCHDOG_"))}
    env.update(DKEY_STATE_DIR=str(base / "s"), DKEY_SIM_DIR=str(base / "a"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "key_server"]
    subprocess.run([*cmd, "init"], env=env, check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([*cmd, "run", "--radio", "sim"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 30
        while not any(m.startswith("READY=1") for m in messages) and time.monotonic() < deadline:
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert "STATUS=advertising as dkey" in ready
        pings_before = sum(m == "WATCHDOG=1" for m in messages)
        time.sleep(1.2)
        assert sum(m == "WATCHDOG=1" for m in received(sock)) >= 2, "no pings at 0.4 s while serving"
        # SIGSTOP, as the deploy tier does: a stopped loop sends nothing, so systemd's watchdog fires.
        proc.send_signal(signal.SIGSTOP)
        received(sock)
        time.sleep(1.0)
        assert received(sock) == []
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert any(m.startswith("STOPPING=1") for m in received(sock))
        assert pings_before >= 1  # pinged during start-up too, before READY
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(base, ignore_errors=True)
