"""The whole system on one machine with no Bluetooth: `./dev demo` (or `python -m key_client.demo`).

It starts a real `key-server` process on the simulated radio with the simulated lock in a temporary
state directory, then drives real `key-client` processes: pair with a one-time code, unlock, lock, pair a
second device, revoke it and show that its unlock is refused while the owner's still works. Then, without
touching the vehicle, the owner's device sets up her watch (a second keychain) by share, the watch unlocks, the
owner revokes it offline, her next unlock carries the revocation list, and the watch is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")


def energised_outputs(actuator_lines: list[str]) -> set[str]:
    """The outputs these actuator log lines (oldest first) leave energised."""
    on: set[str] = set()
    for line in actuator_lines:
        output, _, state = line.rpartition(" ")
        if state == "energised":
            on.add(output)
        elif state == "off":
            on.discard(output)
    return on


REFUSAL_EVENTS = frozenset({"refused", "refusals"})  # the audit events that record a refused command


def refused_command_moved(audit_after: list[dict[str, Any]], actuator_lines: list[str]) -> list[str]:
    """What a refused command moved: empty if nothing did.

    The server writes an `actuate` audit entry, durably, before it energises anything (PROTOCOL.md §5.3), so a
    command that moved the lock left one; and nothing may be energised after it was sent. The tail
    of an earlier pulse (an output going off, the lock's new state) is not a movement of this command.
    """
    intents = [f"audit #{e['seq']}: actuate {e['detail'].get('command', '?')}" for e in audit_after
               if e["event"] == "actuate"]
    energised = [line for line in actuator_lines if line.endswith(" energised")]
    return intents + energised


class Demo:
    """Runs the steps and prints them for a person to follow."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "vehicle"
        self.env = {**os.environ, "DKEY_SIM_DIR": str(root / "air"), "PYTHONUNBUFFERED": "1"}
        self.server: subprocess.Popen[str] | None = None
        self.server_lines: list[str] = []
        self.step_no = 0
        self.failed: list[str] = []

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n{BOLD}{self.step_no}. {title}{RESET}")

    def verdict(self, ok: bool, good: str, bad: str) -> None:
        """Print the outcome of one of the demo's claims; a false claim makes the demo exit 1."""
        print(f"  {GREEN}{good}{RESET}" if ok else f"  {RED}{bad}{RESET}")
        if not ok:
            self.failed.append(bad)

    def run(self, who: str, args: list[str], *, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """Run a key-server / key-client command, print it and its output, check the exit code."""
        module = "key_server" if who == "key-server" else "key_client"
        shown = " ".join([who, *(shlex.quote(a) for a in args)])
        print(f"{DIM}$ {shown}{RESET}")
        proc = subprocess.run([sys.executable, "-m", module, *args], env=self.env, capture_output=True,  # noqa: S603
                              text=True, timeout=60, check=False)
        out = (proc.stdout + proc.stderr).rstrip()
        if out:
            print(textwrap.indent(out, "  "))
        if proc.returncode != expect:
            raise SystemExit(f"{RED}unexpected exit code {proc.returncode} (wanted {expect}) from: {shown}{RESET}")
        if expect:
            print(f"  {GREEN}exit code {proc.returncode}, as expected{RESET}")
        return proc

    def client(self, keychain: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return self.run("key-client", ["--keychain", str(self.root / keychain), "--radio", "sim", *args],
                        expect=expect)

    def server_cmd(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return self.run("key-server", ["--state-dir", str(self.state), *args], expect=expect)

    def actuator_lines(self, since: int) -> list[str]:
        return [ln.split("actuator: ", 1)[1] for ln in self.server_lines[since:] if "actuator: " in ln]

    def wait_lock_idle(self, since: int, *, timeout: float = 10.0) -> None:
        """Wait until an actuation logged after line `since` has finished: every output it energised is off again.

        The server answers once a pulse has started (key_server/commands.py, `_actuate`), so its tail (the
        output going off, the lock's new state) is logged after the client has exited.
        """
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            lines = self.actuator_lines(since)
            if len(lines) != seen:
                seen, quiet_since = len(lines), time.monotonic()
            # Quiet for a moment after the last output went off: the lock's new state (if it changed) is
            # logged just after that, from the same change.
            if any(ln.endswith(" energised") for ln in lines) and not energised_outputs(lines) \
                    and time.monotonic() - quiet_since >= 0.2:
                return
            time.sleep(0.05)
        raise SystemExit(f"{RED}the simulated lock did not finish its pulse within {timeout:g} s:{RESET} "
                         f"{self.actuator_lines(since)}")

    def audit_after(self, seq: int) -> list[dict[str, Any]]:
        """The vehicle's audit entries after `seq` (read quietly, for the demo's own checks)."""
        proc = subprocess.run([sys.executable, "-m", "key_server", "--state-dir", str(self.state),  # noqa: S603
                               "audit", "--json", "--limit", "100"], env=self.env, capture_output=True, text=True,
                              timeout=60, check=True)
        return [e for e in json.loads(proc.stdout) if e["seq"] > seq]

    def start_server(self) -> None:
        args = ["--state-dir", str(self.state), "run", "--radio", "sim", "--name", "demo-car", "--actuator", "sim"]
        print(f"{DIM}$ key-server {' '.join(args)} &{RESET}")
        self.server = subprocess.Popen([sys.executable, "-m", "key_server", *args], env=self.env,  # noqa: S603
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.server is not None and self.server.stdout is not None
            for line in self.server.stdout:
                self.server_lines.append(line.rstrip())
                if "advertising as" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(20):
            self.stop_server()
            raise SystemExit(f"{RED}key-server did not start:{RESET}\n" + "\n".join(self.server_lines))
        print("  " + next(ln for ln in self.server_lines if "advertising as" in ln).split(": ", 1)[-1])

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()

    def show_lock(self, since: int) -> None:
        self.wait_lock_idle(since)  # the whole pulse, so its tail does not land in the next step
        for line in self.actuator_lines(since):
            print(f"  {GREEN}[simulated lock] {line}{RESET}")

    def audit_until(self, seq: int, want: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 5.0) -> list[dict[str, Any]]:
        """The audit entries after `seq` once `want` holds for them, or as they are after `timeout` seconds.

        Some rows are written just after the answer went out (a refusal's when its link ends, PROTOCOL.md §5.3):
        on a loaded machine give them a few seconds.
        """
        after, deadline = self.audit_after(seq), time.monotonic() + timeout
        while not want(after) and time.monotonic() < deadline:
            time.sleep(0.1)
            after = self.audit_after(seq)
        return after

    def wearable_scene(self) -> None:
        """The owner's device sets up her watch by share and revokes it offline; no key-server command is run.

        Every verdict rests on what happened: the clients' exit codes and remarks, the simulated lock's outputs,
        and the vehicle's audit log, read (only read) once the scene is over.
        """
        scene_start = self.audit_after(-1)[-1]["seq"]
        self.step("Maya's watch (a second keychain, no pairing code) makes its key and shows a share request")
        request = json.loads(self.client("watch", "request-share", "--name", "Maya's watch", "--json").stdout)
        watch_id = request["key_id"]
        self.step("Maya's laptop, her owner device (a phone in real life), signs a driver share for the watch, "
                  "offline: nothing goes over the air and the vehicle is not asked")
        share = json.loads(self.client("maya", "share", request["request"], "--role", "driver", "--json").stdout)
        self.step("The watch imports the share (it pins the vehicle's key from it)")
        imported = json.loads(self.client("watch", "import-share", share["share"], "--json").stdout)
        owner_id = imported["issuer_id"]
        self.step("The watch unlocks: on first contact it presents the share; the vehicle checks Maya's signature "
                  "and enrols the watch's key")
        mark = len(self.server_lines)
        first = self.client("watch", "unlock")
        self.show_lock(mark)
        self.verdict("enrolled this device's key with the share from owner key " + owner_id in first.stderr
                     and any(ln.endswith("unlock energised") for ln in self.actuator_lines(mark)),
                     "the watch was enrolled by the share and unlocked (exit code 0, unlock energised)",
                     "the watch's first unlock did not enrol it by the share, or did not move the lock")
        self.step("The watch is lost: Maya revokes it from her laptop, offline (it signs her revocation list)")
        revoked = json.loads(self.client("maya", "revoke", "Maya's watch", "--offline", "--json").stdout)
        self.verdict(revoked["list_version"] is not None and not revoked["reached"],
                     f"the revocation is on Maya's list (version {revoked['list_version']}); the vehicle was not "
                     "contacted",
                     f"the offline revoke did not sign a list without contacting the vehicle: {revoked}")
        self.step("Maya's next unlock carries the list to the vehicle (after the command's answer: same 2 exchanges)")
        mark = len(self.server_lines)
        carried = self.client("maya", "unlock")
        self.show_lock(mark)
        self.verdict(f"delivered the revocation list of owner key {owner_id} (version {revoked['list_version']})"
                     in carried.stderr,
                     "Maya's unlock delivered the revocation list",
                     "Maya's unlock did not say it delivered the revocation list")
        self.step("The lost watch's unlock is now refused (exit code 3 = denied)")
        mark = len(self.server_lines)
        refused_mark = self.audit_after(-1)[-1]["seq"]
        self.client("watch", "unlock", expect=3)
        time.sleep(0.3)  # a relay the refused command had energised would be logged by now
        after = self.audit_until(refused_mark, lambda rows: any(
            e["event"] in REFUSAL_EVENTS and e["key_id"] == watch_id for e in rows))
        moved = refused_command_moved(after, self.actuator_lines(mark))
        self.verdict(not moved, "the watch did not move the lock (audit: no actuation)", f"the lock moved: {moved}")
        # Observation only, once the scene is over: what the vehicle recorded, and that no one acted at the Pi.
        self.step("What the vehicle recorded during the scene (`key-server audit --json`, read afterwards)")
        scene = self.audit_until(scene_start, lambda rows: any(e["event"] in REFUSAL_EVENTS for e in rows))
        enrolled = next((e["seq"] for e in scene if e["event"] == "pair" and e["key_id"] == watch_id
                         and e["detail"].get("via") == "share" and e["detail"].get("by") == owner_id), None)
        self.verdict(enrolled is not None, f"the vehicle's audit: the watch enrolled by share from {owner_id} "
                     f"(entry {enrolled})", "the vehicle's audit has no enrolment of the watch by share")
        applied = next((e["seq"] for e in scene if e["event"] == "revocations"
                        and watch_id in e["detail"].get("revoked", "").split(",")), None)
        self.verdict(applied is not None, f"the vehicle's audit: Maya's list revoked the watch (entry {applied})",
                     "the vehicle's audit has no revocation list that revoked the watch")
        refusal = next((e["seq"] for e in scene if e["event"] in REFUSAL_EVENTS and e["key_id"] == watch_id), None)
        self.verdict(refusal is not None, f"the vehicle's audit: the watch's unlock refused (entry {refusal})",
                     "the vehicle's audit has no refusal of the watch's unlock")
        at_pi = [e["seq"] for e in scene if e["detail"].get("by") == "cli"]
        self.verdict(not at_pi, "nothing in the scene was done at the Pi (no audit entry by the vehicle's CLI)",
                     f"audit entries made at the Pi during the scene: {at_pi}")

    def main(self) -> None:
        print(f"{BOLD}Wearable digital key: a demo of the whole system on the simulated radio{RESET}")
        print(f"{DIM}(a key-server and key-client processes talking GATT over {self.root}/air; no Bluetooth){RESET}")
        self.step("The vehicle (a Pi in real life) creates its identity key and key store")
        self.server_cmd("init", "--name", "demo-car")
        # Like a Pi in a car with no RTC and no network: only its owners' and drivers' devices can confirm the
        # time (docs/PROTOCOL.md §5.7), so the demo shows the same steps on every machine.
        (self.state / "config.toml").write_text("[clock]\ntrust_rtc = false\ntrust_ntp = false\n")
        print(f"{DIM}  (config: [clock] trust_rtc = false, trust_ntp = false: a car with no RTC and no network){RESET}")
        self.step("The vehicle starts serving on the simulated radio, with a simulated lock")
        self.start_server()
        self.step("The owner asks the vehicle for a one-time pairing code")
        code = json.loads(self.server_cmd("pair", "--role", "owner", "--name", "Maya's laptop", "--json").stdout)
        print(f"  -> code {code['code'][:4]} {code['code'][4:]}, single-use, expires in 10 minutes")
        self.step("Maya's laptop pairs with the code (CPace over P-256: an eavesdropper cannot guess it offline)")
        self.client("maya", "pair", code["code"])
        self.step("A guest key for Tom's phone, valid for 3 days, paired the same way")
        code = json.loads(self.server_cmd("pair", "--role", "guest", "--name", "Tom's phone", "--expires", "3d",
                                          "--json").stdout)
        self.client("tom", "pair", code["code"])
        self.step("Tom tries first: the vehicle just started and cannot know the time yet, so it refuses guests")
        self.client("tom", "unlock", expect=3)
        self.step("Maya unlocks: one signed command answering the challenge pushed at subscription; the answer "
                  "asks for the time, and her laptop states it in a confidential session")
        mark = len(self.server_lines)
        self.client("maya", "unlock")
        self.show_lock(mark)
        self.step("...and locks again")
        mark = len(self.server_lines)
        self.client("maya", "lock")
        self.show_lock(mark)
        self.step("Now the vehicle trusts its clock: Tom's guest key works")
        mark = len(self.server_lines)
        self.client("tom", "unlock")
        self.show_lock(mark)
        self.step("Maya lists the keys over the confidential (forward-secret) session")
        self.client("maya", "keys")
        self.step("Tom's phone is stolen: revoke that one device")
        self.server_cmd("revoke", "Tom's phone")
        self.step("The stolen phone's unlock is now refused (exit code 3 = denied)")
        # Every earlier pulse has ended (show_lock waited for it), so what follows the mark is this command's.
        if energised_outputs(self.actuator_lines(0)):
            raise SystemExit(f"{RED}an earlier pulse is still running: {self.actuator_lines(0)}{RESET}")
        mark, audit_mark = len(self.server_lines), self.audit_after(-1)[-1]["seq"]
        self.client("tom", "unlock", expect=3)
        time.sleep(0.3)  # a relay the refused command had energised would be logged by now
        # The refusal's row is written just after the answer goes out: on a loaded machine give it a few seconds.
        after, deadline = self.audit_after(audit_mark), time.monotonic() + 5.0
        # A revoked key is refused before it is authenticated, so the refusal is counted per link: one `refusals`
        # row, written when the link ends (PROTOCOL.md §5.3); a policy refusal would be its own `refused` row.
        while not any(e["event"] in REFUSAL_EVENTS for e in after) and time.monotonic() < deadline:
            time.sleep(0.1)
            after = self.audit_after(audit_mark)
        moved = refused_command_moved(after, self.actuator_lines(mark))
        self.verdict(not moved, "the lock did not move (audit: no actuation)", f"the lock moved: {moved}")
        refusal = next((e["seq"] for e in after if e["event"] in REFUSAL_EVENTS), None)
        self.verdict(refusal is not None, f"the audit log recorded the refusal (entry {refusal})",
                     "the audit log has no entry for the refused unlock")
        self.step("Every other key keeps working")
        mark = len(self.server_lines)
        self.client("maya", "unlock")
        self.show_lock(mark)
        self.wearable_scene()
        self.step("The hash-chained audit log recorded everything, and verifies")
        self.server_cmd("audit", "--limit", "22")
        self.server_cmd("audit", "--verify")
        self.stop_server()
        if self.failed:
            raise SystemExit(f"\n{RED}Demo finished, but it showed something wrong: {'; '.join(self.failed)}{RESET}")
        print(f"\n{BOLD}{GREEN}Demo complete.{RESET} Next: `./dev test`; docs/PROTOCOL.md; docs/DEPLOY.md (a real Pi).")


def main() -> int:
    """Run the demo in a temporary directory (short path: Unix socket paths are limited to ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="dkey-demo-", dir="/tmp") as tmp:
        demo = Demo(Path(tmp))
        try:
            demo.main()
        finally:
            demo.stop_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
