"""Issue 12's client commands against the real `key-server`, as separate processes over the sim radio.

The client's own tests use a fake vehicle; these run the real vehicle (its store, policy, audit log and link
limits) and read what it recorded with `key-server keys --json` afterwards, which observes and changes nothing.
Keys come from the owner's device: after the owner's own pairing, no `key-server` command sets anything up.
"""

from __future__ import annotations

import json
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
from typing import Any

import pytest

from dkey_link.exit_codes import ExitCode

from .test_blackbox import ROOT, Server, _env, client

pytestmark = pytest.mark.slow

# A key-server whose links live `argv[1]` seconds. Everything else is the real `key-server run`; only the link
# lifetime changes, since its setting's floor (rate_limit.max_link_lifetime >= 60 s) is too long for a test.
SHORT_LIVED_LINKS = """\
import sys
import key_server.runner as runner
from key_server.service import ServiceConfig
lifetime = float(sys.argv.pop(1))
runner.ServiceConfig = lambda **kw: ServiceConfig(**{**kw, "max_link_lifetime": lifetime})
from key_server.__main__ import main
sys.exit(main())
"""


@pytest.fixture
def root() -> Iterator[Path]:
    # Short path: the sim radio's socket paths must fit AF_UNIX's ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="dk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(root: Path) -> Iterator[Server]:
    s = Server(root)
    try:
        yield s
    finally:
        s.stop()


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == ExitCode.OK, (r.returncode, r.stdout, r.stderr)
    return r


def js(r: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(r).stdout)


def paired(root: Path, server: Server, keychain: str, role: str, name: str) -> str:
    """Pair a device with a code from the Pi (`key-server pair`); its key id."""
    code = json.loads(ok(server.server("pair", "--role", role, "--name", name, "--json")).stdout)["code"]
    ok(client(root, "pair", code, keychain=keychain))
    (entry,) = js(client(root, "--json", "vehicles", keychain=keychain))
    return str(entry["key_id"])


def owner(root: Path, server: Server) -> str:
    """The owner's phone, paired at the Pi, and the vehicle's clock confirmed by it (`status` leaves the lock be)."""
    key_id = paired(root, server, "phone", "owner", "phone")
    ok(client(root, "status", keychain="phone"))
    return key_id


def vehicle_keys(server: Server) -> dict[str, dict[str, Any]]:
    """The vehicle's own key list, by name (revoked keys too)."""
    return {k["name"]: k for k in json.loads(ok(server.server("keys", "--all", "--json")).stdout)}


class Background:
    """A key-client process left running (`watch`); its stdout and stderr lines as they come."""

    def __init__(self, root: Path, *args: str, keychain: str, scan_time: str = "5") -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "key_client", "--keychain", str(root / keychain), "--radio", "sim",
             "--sim-dir", str(root / "air"), "--scan-time", scan_time, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out.put), daemon=True),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, self.err.append), daemon=True)]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, sink: Any) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def line(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON object on stdout."""
        try:
            return dict(json.loads(self.out.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(f"no line on stdout within {timeout:g} s; stderr: {self.err}") from None

    def wait_err(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.err):
            assert time.monotonic() < deadline, f"{text!r} never came on stderr: {self.err}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.err}"
            time.sleep(0.05)

    def end(self, timeout: float = 15.0) -> int:
        """Wait for it to exit (killing it if it will not); its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout:g} s; stderr: {self.err}") from None
        self._close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        for pump in self.pumps:
            pump.join(timeout=5)  # EOF once the process is gone: everything it wrote is read
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def test_a_share_enrols_on_first_contact_and_an_offline_revocation_rides_the_owners_next_unlock(
        root: Path, server: Server) -> None:
    server.start()
    owner_id = owner(root, server)
    request = js(client(root, "--json", "request-share", "--name", "watch", keychain="watch"))
    share = js(client(root, "--json", "share", request["request"], "--role", "driver", "--until", "2d",
                      keychain="phone"))
    assert "watch" not in vehicle_keys(server)  # signed offline: the vehicle knows nothing yet
    ok(client(root, "import-share", share["share"], keychain="watch"))

    first = ok(client(root, "unlock", keychain="watch"))
    assert f"bbcar enrolled this device's key with the share from owner key {owner_id}" in first.stderr
    watch = vehicle_keys(server)["watch"]
    assert (watch["key_id"], watch["via"], watch["enrolled_by"], watch["share_serial"]) == (
        request["key_id"], "share", owner_id, share["serial"])
    assert (watch["role"], watch["state"], watch["valid_until"]) == ("driver", "active", share["valid_until"])
    again = ok(client(root, "unlock", keychain="watch"))
    assert "enrolled" not in again.stderr  # presented once; from now on an ordinary key

    revoked = js(client(root, "--json", "revoke", "watch", "--offline", keychain="phone"))
    assert (revoked["reached"], revoked["list_version"], revoked["delivered"]) == (False, 1, False)
    # The honest case of an offline revocation: until a list reaches the vehicle, the key still works.
    ok(client(root, "unlock", keychain="watch"))
    assert vehicle_keys(server)["watch"]["state"] == "active"

    carried = ok(client(root, "unlock", keychain="phone"))
    assert f"delivered the revocation list of owner key {owner_id} (version 1) to bbcar" in carried.stderr
    refused = client(root, "unlock", keychain="watch")
    assert refused.returncode == ExitCode.DENIED, (refused.stdout, refused.stderr)
    watch = vehicle_keys(server)["watch"]
    assert watch["state"] == "revoked" and watch["revoked_at"] is not None
    # The vehicle acknowledged version 1: the owner's next unlock carries nothing.
    assert "delivered" not in ok(client(root, "unlock", keychain="phone")).stderr


def test_issue_code_edit_and_what_a_guest_may_not_do(root: Path, server: Server) -> None:
    server.start()
    owner_id = owner(root, server)
    issued = js(client(root, "--json", "issue-code", "--role", "guest", "--name", "tom", "--expires", "1h",
                       keychain="phone"))
    assert issued["ok"] and issued["role"] == "guest" and len(issued["code"]) == 8
    assert "tom" not in vehicle_keys(server)
    ok(client(root, "pair", issued["code"], keychain="tom"))
    tom = vehicle_keys(server)["tom"]
    assert (tom["role"], tom["via"], tom["enrolled_by"], tom["state"]) == ("guest", "code", owner_id, "active")

    before = int(time.time())
    edited = js(client(root, "--json", "edit", "tom", "--name", "tom's laptop", "--valid-until", "2d",
                       keychain="phone"))
    assert edited["ok"] and edited["name"] == "tom's laptop"
    keys = vehicle_keys(server)
    assert "tom" not in keys
    renamed = keys["tom's laptop"]
    assert renamed["key_id"] == tom["key_id"] and renamed["state"] == "active"
    assert before + 2 * 86400 - 5 <= renamed["valid_until"] <= int(time.time()) + 2 * 86400 + 5
    ok(client(root, "unlock", keychain="tom"))  # the window holds now: the guest still opens

    # The guest may not hand out keys or change them, neither by asking the vehicle nor by signing a share.
    for args in (("issue-code", "--role", "guest", "--name", "friend"), ("edit", "tom's laptop", "--name", "x")):
        r = client(root, *args, keychain="tom")
        assert r.returncode == ExitCode.DENIED, (args, r.stdout, r.stderr)
        assert "guest key" in r.stderr, r.stderr
    request = js(client(root, "--json", "request-share", "--name", "friend", keychain="friend"))
    r = client(root, "share", request["request"], "--role", "guest", keychain="tom")
    assert r.returncode == ExitCode.DENIED and "only an owner's key can sign a share" in r.stderr, r.stderr
    assert set(vehicle_keys(server)) == {"phone", "tom's laptop"}  # nothing was enrolled or renamed


def test_a_guest_that_makes_its_keychain_say_owner_signs_a_share_the_vehicle_refuses(
        root: Path, server: Server) -> None:
    # The attack: the guest's device is the attacker's own; its keychain's role is only a local hint.
    server.start()
    owner(root, server)
    guest_id = paired(root, server, "tom", "guest", "tom")
    index = root / "tom" / "keychain.json"
    doc = json.loads(index.read_text())
    assert doc["vehicles"][0]["role"] == "guest"
    doc["vehicles"][0]["role"] = "owner"
    index.write_text(json.dumps(doc))
    request = js(client(root, "--json", "request-share", "--name", "friend", keychain="friend"))
    share = js(client(root, "--json", "share", request["request"], "--role", "driver", keychain="tom"))
    ok(client(root, "import-share", share["share"], keychain="friend"))
    r = client(root, "unlock", keychain="friend")
    assert r.returncode == ExitCode.DENIED, (r.stdout, r.stderr)
    assert f"from owner key {guest_id}" in r.stderr and "its signer is not an active owner" in r.stderr, r.stderr
    assert set(vehicle_keys(server)) == {"phone", "tom"}  # nothing enrolled
    # The honest case beside it: a share the real owner signs enrols.
    request = js(client(root, "--json", "request-share", "--name", "friend", keychain="friend2"))
    share = js(client(root, "--json", "share", request["request"], "--role", "driver", keychain="phone"))
    ok(client(root, "import-share", share["share"], keychain="friend2"))
    ok(client(root, "unlock", keychain="friend2"))
    assert vehicle_keys(server)["friend"]["via"] == "share"


def test_watch_json_prints_the_change_another_keys_unlock_caused(
        root: Path, server: Server, background: list[Background]) -> None:
    server.start()
    owner(root, server)
    paired(root, server, "driver", "driver", "driver")
    watcher = Background(root, "--json", "watch", keychain="phone")
    background.append(watcher)
    now = watcher.line()
    assert (now["initial"], now["vehicle"]) == (True, "bbcar")
    assert now["lock"] != "unlocked", now  # the simulated lock starts "unknown" (nothing has moved it yet)
    ok(client(root, "unlock", keychain="driver"))  # another key, another device
    change = watcher.line()
    assert (change["initial"], change["lock"]) == (False, "unlocked")
    watcher.proc.send_signal(signal.SIGINT)
    assert watcher.end() == ExitCode.OK, watcher.err
    assert "stopped watching after 1 change" in watcher.err, watcher.err


def test_watch_reconnects_when_the_vehicle_ends_the_link_and_exits_1_once_it_is_gone(
        root: Path, background: list[Background]) -> None:
    server = Server(root, launcher=("-c", SHORT_LIVED_LINKS, "3"))
    try:
        server.start()
        owner(root, server)
        paired(root, server, "driver", "driver", "driver")
        watcher = Background(root, "--json", "watch", keychain="phone", scan_time="2")
        background.append(watcher)
        assert watcher.line()["initial"] is True
        # The vehicle drops the watching link after 3 s; the watch waits 2 s and subscribes again.
        watcher.wait_err("the link to bbcar ended after 0 changes (")
        assert any("reconnecting in 2 s" in ln for ln in watcher.err), watcher.err
        watcher.wait_err("watching bbcar again")
        ok(client(root, "unlock", keychain="driver"))
        change = watcher.line()
        assert (change["initial"], change["lock"]) == (False, "unlocked")  # seen over the new link
        assert watcher.proc.poll() is None
    finally:
        server.stop()
    server_log = []
    while not server.lines.empty():
        server_log.append(server.lines.get())
    assert any("(max_link_lifetime)" in ln for ln in server_log), server_log
    # The vehicle gone for good: no scan finds it again within --scan-time, so the watch ends with exit 1.
    assert watcher.end() == ExitCode.ERROR, watcher.err
    assert any("could not reconnect after the link ended" in ln for ln in watcher.err), watcher.err


def test_a_watcher_revoked_meanwhile_is_refused_on_reconnecting(
        root: Path, server: Server, background: list[Background]) -> None:
    server.start()
    owner(root, server)
    paired(root, server, "driver", "driver", "driver")
    watcher = Background(root, "--json", "watch", keychain="driver")
    background.append(watcher)
    assert watcher.line()["initial"] is True
    # Revoking the key ends its session on the vehicle; the watch tries again and the vehicle refuses it.
    revoked = js(client(root, "--json", "revoke", "driver", keychain="phone"))
    assert revoked["revoked"] is True
    watcher.wait_err("reconnecting in 2 s")
    assert watcher.end() == ExitCode.DENIED, watcher.err
    assert not any("watching bbcar again" in ln for ln in watcher.err), watcher.err
