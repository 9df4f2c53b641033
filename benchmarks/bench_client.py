"""End-to-end `key-client unlock` over the sim radio, against a real `key-server run --radio sim` process.

Run: .venv/bin/python benchmarks/bench_client.py   (prints a table; no pass/fail)

1. Wall time of the `key-client unlock` command as a person runs it (new process each time), median of 20,
   measured in the same run as a bare `python -c pass` (the interpreter's own start-up, which no change to
   key-client can remove) and `key-client --help` (start-up without a command). The vehicle answers an unlock
   after its actuator has been energised for `reply_after` = 0.1 s (key_server ServiceConfig), so about 100 ms
   of the unlock figure is the vehicle's, not the client's.
2. In-process, with the same driver the CLI uses: time from starting the connection to the simulated actuator
   energising (read from the server's log timestamps, same machine clock), and the radio traffic per unlock.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dkey_link.sim import SimCentral  # noqa: E402
from key_client.driver import Target, connect_vehicle  # noqa: E402
from key_client.keychain import Keychain  # noqa: E402
from protocol import Command  # noqa: E402

RUNS = 20


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        env = {**os.environ, "DKEY_SIM_DIR": f"{tmp}/air", "PYTHONUNBUFFERED": "1"}
        server_cmd = [sys.executable, "-m", "key_server", "--state-dir", f"{tmp}/s"]
        subprocess.run([*server_cmd, "init"], env=env, check=True, capture_output=True)
        # One key unlocks 60 times here: the per-key actuation limit (6, then 12/min) at its most lenient (60, 120/min).
        config = Path(tmp) / "bench.toml"
        config.write_text("[rate_limit]\nactuation_burst = 60\nactuation_per_minute = 120\n")
        server = subprocess.Popen([*server_cmd, "--config", str(config), "run", "--radio", "sim", "--actuator", "sim",
                                   "--name", "bench"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            assert server.stdout is not None
            for line in server.stdout:
                lines.append(line)
                if "advertising as" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(20)
        try:
            code = json.loads(subprocess.run([*server_cmd, "pair", "--role", "owner", "--name", "bench", "--json"],
                                             env=env, check=True, capture_output=True, text=True).stdout)["code"]
            client = [sys.executable, "-m", "key_client", "--keychain", f"{tmp}/k", "--radio", "sim"]
            subprocess.run([*client, "pair", code], env=env, check=True, capture_output=True)
            bare = wall([sys.executable, "-c", "pass"], env)
            help_walls = wall([*client, "--help"], env)
            walls = []
            for _ in range(RUNS):
                t = time.perf_counter()
                subprocess.run([*client, "unlock"], env=env, check=True, capture_output=True)
                walls.append(time.perf_counter() - t)
                time.sleep(0.6)  # let the 500 ms simulated pulse end before the next run
            to_actuator, exchange, stats = asyncio.run(in_process(Path(f"{tmp}/k"), Path(f"{tmp}/air"), lines))
        finally:
            server.terminate()
            server.wait(10)
    print(f"key-client over the sim radio ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| `python -c pass` wall time, median of {RUNS} | {statistics.median(bare) * 1e3:.0f} ms |")
    print(f"| `key-client --help` wall time, median of {RUNS} | {statistics.median(help_walls) * 1e3:.0f} ms |")
    print(f"| `key-client unlock` wall time, new process, median of {RUNS} | {statistics.median(walls) * 1e3:.0f} ms "
          f"(min {min(walls) * 1e3:.0f}, max {max(walls) * 1e3:.0f}) |")
    print(f"| ... minus `python -c pass` | {(statistics.median(walls) - statistics.median(bare)) * 1e3:.0f} ms |")
    print(f"| connect start -> actuator energised, median of {RUNS} | {statistics.median(to_actuator) * 1e3:.1f} ms |")
    print(f"| unlock command -> signed result (answered while the 500 ms simulated pulse is held), median | "
          f"{statistics.median(exchange) * 1e3:.1f} ms |")
    print(f"| per unlock: ATT writes / notifications | {stats['writes']} / {stats['notifications']} "
          "(subscription pushes the challenge; 1 command write; result) |")
    print(f"| per unlock: bytes up / down | {stats['bytes_up']} / {stats['bytes_down']} |")


def wall(argv: list[str], env: dict[str, str]) -> list[float]:
    """Wall times of RUNS runs of `argv`, each a new process."""
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


async def in_process(keychain_dir: Path, air: Path, server_lines: list[str]) -> tuple[list[float], list[float], dict]:
    """Connect+unlock with the CLI's driver; match each unlock to the server's 'energised' log line."""
    chain = Keychain.open(keychain_dir)
    entry = chain.default()
    device = chain.load_key(entry)
    central = SimCentral(air_dir=air)
    to_actuator, exchange = [], []
    stats: dict = {}
    for _ in range(RUNS):
        await asyncio.sleep(0.6)  # a pulse still held from the previous run would be shared, not restarted
        mark = len(server_lines)
        t0 = time.time()
        link = await connect_vehicle(central, device, Target(entry.vehicle_public_key), scan_time=2, attempts=1)
        t1 = time.perf_counter()
        await link.command(Command.UNLOCK)
        exchange.append(time.perf_counter() - t1)
        stats = dict(link.stats)
        await link.close()
        await asyncio.sleep(0.05)  # the server logs right after it answers
        energised = next(ln for ln in server_lines[mark:] if "unlock energised" in ln)
        stamp = datetime.strptime(energised[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        to_actuator.append(stamp - t0)
    return to_actuator, exchange, stats


if __name__ == "__main__":
    main()
