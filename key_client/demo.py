"""The whole system on one machine with no Bluetooth: `./dev demo` (or `python -m key_client.demo`).

It starts a real `key-server` process on the simulated radio with the simulated lock in a temporary
state directory, then drives real `key-client` processes: pair with a one-time code, unlock, lock, pair a
second device, revoke it and show that its unlock is refused while the owner's still works.
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
from pathlib import Path

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")


class Demo:
    """Runs the steps and prints them for a person to follow."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "vehicle"
        self.env = {**os.environ, "DKEY_SIM_DIR": str(root / "air"), "PYTHONUNBUFFERED": "1"}
        self.server: subprocess.Popen[str] | None = None
        self.server_lines: list[str] = []
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n{BOLD}{self.step_no}. {title}{RESET}")

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
        time.sleep(0.2)  # the server logs right after it answers
        for line in self.actuator_lines(since):
            print(f"  {GREEN}[simulated lock] {line}{RESET}")

    def main(self) -> None:
        print(f"{BOLD}Wearable digital key: a demo of the whole system on the simulated radio{RESET}")
        print(f"{DIM}(a key-server and key-client processes talking GATT over {self.root}/air; no Bluetooth){RESET}")
        self.step("The vehicle (a Pi in real life) creates its identity key and key store")
        self.server_cmd("init", "--name", "demo-car")
        # Like a Pi in a car with no RTC and no network: only its owners' and drivers' devices can confirm the
        # time (docs/PROTOCOL.md §5.6), so the demo shows the same steps on every machine.
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
        self.client("tom", "unlock")
        self.step("Maya lists the keys over the confidential (forward-secret) session")
        self.client("maya", "keys")
        self.step("Tom's phone is stolen: revoke that one device")
        self.server_cmd("revoke", "Tom's phone")
        self.step("The stolen phone's unlock is now refused (exit code 3 = denied)")
        mark = len(self.server_lines)
        self.client("tom", "unlock", expect=3)
        moved = self.actuator_lines(mark)
        print(f"  {GREEN}the lock did not move{RESET}" if not moved else f"  {RED}the lock moved: {moved}{RESET}")
        self.step("Every other key keeps working")
        self.client("maya", "unlock")
        self.step("The hash-chained audit log recorded everything, and verifies")
        self.server_cmd("audit", "--limit", "14")
        self.server_cmd("audit", "--verify")
        self.stop_server()
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
