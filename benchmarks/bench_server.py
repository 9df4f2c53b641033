"""key-server figures: idle RSS, start-up time, unlock latency with 10,000 keys, revoke and intent latency, floods,
bytes written to disk per 1,000 bogus requests.

Run: .venv/bin/python benchmarks/bench_server.py   (prints a table; no pass/fail)
Unlocks run in-process over the mock radio (no radio latency) with the simulated lock set to a 1 ms pulse, so
the numbers are the server's own cost: protocol, SQLite, policy, audit, scheduling.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dkey_link.mock import MockAir  # noqa: E402
from hardware import ActuatorConfig, SimulatedLock  # noqa: E402
from key_client.driver import Target, connect_vehicle  # noqa: E402
from key_client.errors import ClientError  # noqa: E402
from key_server.audit import AuditLog  # noqa: E402
from key_server.clock import GuardedClock  # noqa: E402
from key_server.ratelimit import ActuationLimiter, FailureLimiter  # noqa: E402
from key_server.service import KeyService, ServiceConfig  # noqa: E402
from key_server.store import KeyRecord, KeyStore  # noqa: E402
from protocol import (  # noqa: E402
    Command,
    KeyPair,
    Role,
    split,
)
from protocol._codec import CommandMessage  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def process_figures() -> tuple[float, float]:
    """Start-up time to 'advertising' and idle RSS of `key-server run --radio sim`."""
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        env = {**os.environ, "DKEY_SIM_DIR": f"{tmp}/air"}
        subprocess.run([sys.executable, "-m", "key_server", "--state-dir", f"{tmp}/s", "init"], env=env, check=True,
                       capture_output=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "key_server", "--state-dir", f"{tmp}/s", "run", "--radio", "sim",
                                 "--actuator", "sim"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "advertising as" in line:
                break
        startup = time.perf_counter() - t0
        time.sleep(2.0)
        rss_kb = next(int(ln.split()[1]) for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if ln.startswith("VmRSS:"))
        proc.terminate()
        proc.wait(10)
    return startup, rss_kb / 1024


def _lifted() -> ServiceConfig:
    """The default service, per-key actuation limit lifted: one key unlocks back to back here, which it would meet."""
    return ServiceConfig(actuations=ActuationLimiter(burst=1e9, per_minute=1e9))


class Bench:
    """A KeyService on the mock radio with `n_keys` enrolled keys."""

    def __init__(self, tmp: Path, n_keys: int, config: ServiceConfig | None = None) -> None:
        self.store = KeyStore.open(tmp / "keys.db", create=True)
        now = int(time.time())
        self.device = KeyPair.generate()
        self.store.add_key(KeyRecord(self.device.key_id, self.device.public_bytes, "bench", Role.OWNER, None, None,
                                     None, now))
        with self.store.transaction():
            added = 0
            while added < n_keys - 1:
                kp = KeyPair.generate()
                try:
                    self.store.add_key(KeyRecord(kp.key_id, kp.public_bytes, f"k{added}", Role.DRIVER, None, None,
                                                 None, now))
                    added += 1
                except Exception:  # a 4-byte key id collision: try another key
                    continue
        self.air = MockAir()
        self.lock = SimulatedLock(ActuatorConfig(kind="sim", pulse_ms=1))
        self.service = KeyService(identity=KeyPair.generate(), store=self.store, audit=AuditLog(self.store),
                                  clock=GuardedClock(self.store), lock=self.lock,
                                  peripheral=self.air.peripheral("bench"), config=config or _lifted())

    async def unlock_latencies(self, n: int) -> list[float]:
        """Connect once, then n x (fresh challenge + UNLOCK + signed result) on that link."""
        link = await connect_vehicle(self.air.central(), self.device, Target(self.service.identity.public_bytes),
                                     scan_time=1, attempts=1)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await link.command(Command.UNLOCK)
            out.append(time.perf_counter() - t)
        await link.close()
        return out

    async def close(self) -> None:
        await self.service.stop()
        await self.lock.aclose()
        self.store.close()


async def unlock_figures(n_keys: int, n: int = 300) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        b = Bench(Path(tmp), n_keys)
        await b.service.start()
        await b.unlock_latencies(20)  # warm-up
        t = time.perf_counter()
        lat = await b.unlock_latencies(n)
        throughput = n / (time.perf_counter() - t)
        await b.close()
    return lat, throughput


def revoke_figures(n: int = 50) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        store = KeyStore.open(Path(tmp) / "keys.db", create=True)
        now = int(time.time())
        owner = KeyPair.generate()
        store.add_key(KeyRecord(owner.key_id, owner.public_bytes, "owner", Role.OWNER, None, None, None, now))
        keys = []
        for i in range(n):
            kp = KeyPair.generate()
            store.add_key(KeyRecord(kp.key_id, kp.public_bytes, f"d{i}", Role.DRIVER, None, None, None, now))
            keys.append(kp.key_id)
        out = []
        audit = AuditLog(store)
        for kid in keys:
            t = time.perf_counter()
            with store.transaction():  # what `key-server revoke` does: revocation + audit, one fsynced commit
                store.revoke_key(kid, now)
                audit.append("revoke", ts=now, key_id=kid)
            out.append(time.perf_counter() - t)
        store.close()
    return out


def intent_figures(n: int = 200) -> list[float]:
    """The durable write an actuation waits for before its relay moves: one audit append, one fsynced commit."""
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        store = KeyStore.open(Path(tmp) / "keys.db", create=True)
        audit = AuditLog(store)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            audit.append("actuate", ts=int(time.time()), key_id=b"\x01\x02\x03\x04", detail={"command": "unlock"})
            out.append(time.perf_counter() - t)
        store.close()
    return out


async def flood_figures(rate: int = 1000, seconds: float = 5.0) -> tuple[list[float], int, int, int]:
    """Honest unlocks (each on a fresh connection) while a second central writes `rate` bogus frames per second."""
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        b = Bench(Path(tmp), 1)
        await b.service.start()
        attacker = await b.air.central().connect((await b.air.central().scan(1))[0])
        await attacker.subscribe(lambda _d: None)
        intruder = KeyPair.generate()
        bogus_command = split(
            CommandMessage(intruder.key_id, os.urandom(16), Command.UNLOCK, b"", os.urandom(64)).encode(), 244)
        sent = 0
        stop = time.perf_counter() + seconds

        async def flood() -> None:
            nonlocal sent
            period = 1.0 / rate
            nxt = time.perf_counter()
            while time.perf_counter() < stop:
                frame = bogus_command[0] if sent % 2 else os.urandom(40)  # alternate bogus commands and garbage
                try:
                    await attacker.write(frame, response=False)
                except Exception:
                    pass
                sent += 1
                nxt += period
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

        task = asyncio.create_task(flood())
        lat: list[float] = []
        ok = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            link = await connect_vehicle(b.air.central(), b.device, Target(b.service.identity.public_bytes),
                                         scan_time=1, attempts=1)
            await link.command(Command.UNLOCK)
            await link.close()
            lat.append(time.perf_counter() - t)
            ok += 1
        await task
        limited = b.service.stats.rate_limited
        await attacker.disconnect()
        await b.close()
    return lat, ok, sent, limited


_HERE = Path(__file__).resolve().parent  # on the disk: /tmp may be tmpfs, whose writes /proc/self/io never sees


def _write_bytes() -> int:
    """Bytes this process has caused to be written to storage so far (Linux /proc/self/io; -1 elsewhere)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return -1
    return next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("write_bytes:"))


async def disk_figures(n: int = 1000, links: int = 1) -> tuple[int, int, int]:
    """Bytes written to disk (and audit rows added) while `n` bogus COMMANDs over `links` links are all refused.

    The failure limiter is lifted so that every request reaches crypto and is refused: the worst case for the
    audit log, whatever admission control would shed. The store lives under the working tree's filesystem
    (not tmpfs), so its fsynced writes reach /proc/self/io's write_bytes.
    """
    lifted = ServiceConfig(limiter=FailureLimiter(1e9, 1e9, 1e9, 1e9),
                           actuations=ActuationLimiter(burst=1e9, per_minute=1e9))
    with tempfile.TemporaryDirectory(prefix="dkb", dir=_HERE) as tmp:
        b = Bench(Path(tmp), 1, lifted)
        await b.service.start()
        rows_before = b.service.audit.head()[0]
        frame = _bogus_frame()
        written_before = _write_bytes()
        for _ in range(links):
            conn = await b.air.central().connect((await b.air.central().scan(1))[0])
            answered = asyncio.Event()
            await conn.subscribe(lambda _d, ev=answered: ev.set())
            await asyncio.sleep(0)
            for _ in range(n // links):
                answered.clear()
                await conn.write(frame)
                await asyncio.wait_for(answered.wait(), 2.0)  # the signed refusal
            await conn.disconnect()
        while b.service.links:  # noqa: ASYNC110 - the service's state, no event to wait on
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        b.service.refusals.flush()  # what the window's end or the server's stop would write
        written = _write_bytes() - written_before
        rows = b.service.audit.head()[0] - rows_before
        refused = b.service.stats.refused
        await b.close()
    return written, rows, refused


class AttackFigures:
    """What one admission-control attack did, measured while an honest device kept unlocking."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.bogus = 0  # bogus requests the attacker sent
        self.reached_crypto = 0  # bogus requests processed (each cost the vehicle at least one signature)
        self.budget = 0.0  # global_burst + global_rate * seconds: the documented ceiling for reached_crypto
        self.peak_queue = 0
        self.queue_cap = 0
        self.mem_before = 0
        self.mem_after = 0
        self.tracked_after = 0  # per-link buckets and key lanes left once the attacker is gone (lanes: enrolled keys)
        self.honest_ok = 0
        self.honest_tries = 0
        self.honest_lat: list[float] = []
        self.honest_errors: dict[str, int] = {}


def _bogus_frame() -> bytes:
    intruder = KeyPair.generate()
    return split(CommandMessage(intruder.key_id, os.urandom(16), Command.UNLOCK, b"", os.urandom(64)).encode(),
                 244)[0]


async def attack_figures(kind: str) -> AttackFigures:
    """`pipeline`: one link writes 2,000 bogus COMMANDs without waiting; `fresh`: 200 new links, one each."""
    fig = AttackFigures()
    with tempfile.TemporaryDirectory(prefix="dkb", dir="/tmp") as tmp:
        b = Bench(Path(tmp), 1)
        limiter: FailureLimiter = b.service.limiter
        tracemalloc.start()
        await b.service.start()
        await b.unlock_latencies(1)  # warm-up: caches, the key's lane, the audit statements
        gc.collect()
        fig.mem_before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        done = asyncio.Event()

        async def pipeline() -> None:
            conn = await b.air.central().connect((await b.air.central().scan(1))[0])
            await conn.subscribe(lambda _d: None)
            frame = _bogus_frame()
            for i in range(2000):
                await conn.write(frame, response=False)  # APP_BUSY past the queue cap is swallowed, as over the air
                fig.bogus += 1
                if i % 50 == 49:
                    await asyncio.sleep(0)  # let the honest device's traffic interleave
            while any(c.session.queued for c in b.service.links.values()):  # noqa: ASYNC110 - the service's state
                await asyncio.sleep(0.001)
            await conn.disconnect()

        async def fresh() -> None:
            for _ in range(200):
                conn = await b.air.central().connect((await b.air.central().scan(1))[0])
                answered = asyncio.Event()
                await conn.subscribe(lambda _d, ev=answered: ev.set())
                answered.clear()  # the pushed challenge
                await asyncio.sleep(0)
                answered.clear()
                try:
                    await conn.write(_bogus_frame())
                    fig.bogus += 1
                    await asyncio.wait_for(answered.wait(), 2.0)  # signed refusal or unsigned BUSY
                except Exception:
                    pass
                await conn.disconnect()

        async def attack() -> None:
            await (pipeline() if kind == "pipeline" else fresh())
            done.set()

        task = asyncio.create_task(attack())
        while not done.is_set() or fig.honest_tries < 5:
            t = time.perf_counter()
            fig.honest_tries += 1
            try:
                link = await connect_vehicle(b.air.central(), b.device, Target(b.service.identity.public_bytes),
                                             scan_time=1, attempts=1)
                try:
                    await link.command(Command.UNLOCK)
                    fig.honest_ok += 1
                    fig.honest_lat.append(time.perf_counter() - t)
                finally:
                    await link.close()
            except ClientError as exc:  # BUSY, a lost link: counted as a failed unlock
                fig.honest_errors[type(exc).__name__] = fig.honest_errors.get(type(exc).__name__, 0) + 1
        await task
        fig.seconds = time.perf_counter() - t0
        while b.service.links:  # noqa: ASYNC110 - the service's state, no event to wait on
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stats = b.service.stats
        fig.reached_crypto = stats.refused + stats.protocol_errors  # every admitted bogus request is refused
        fig.budget = limiter.global_burst + limiter.global_rate * fig.seconds
        fig.peak_queue, fig.queue_cap = stats.peak_queue, b.service.config.link_queue
        fig.tracked_after = limiter.tracked
        gc.collect()  # what is still held, not garbage awaiting collection; mostly the 256-entry challenge book
        fig.mem_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        await b.close()
    return fig


def print_attack(name: str, fig: AttackFigures) -> None:
    p50 = statistics.median(fig.honest_lat) * 1e3 if fig.honest_lat else float("nan")
    print(f"| {name}: bogus requests reaching crypto / documented budget (30 + 5/s x {fig.seconds:.1f} s) | "
          f"{fig.reached_crypto} of {fig.bogus} / {fig.budget:.0f} |")
    print(f"| {name}: peak queued messages on one link / cap | {fig.peak_queue} / {fig.queue_cap} |")
    print(f"| {name}: traced Python memory before / after (limiter buckets left: the honest key's lane) | "
          f"{fig.mem_before / 1024:.0f} KiB / {fig.mem_after / 1024:.0f} KiB ({fig.tracked_after}) |")
    print(f"| {name}: honest unlocks meanwhile, succeeded (p50 connect+unlock+disconnect) | "
          f"{fig.honest_ok} of {fig.honest_tries} ({p50:.2f} ms){_errors(fig.honest_errors)} |")


def _errors(errors: dict[str, int]) -> str:
    return "" if not errors else ", failures: " + ", ".join(f"{n} {kind}" for kind, n in errors.items())


async def main() -> None:
    startup, rss = process_figures()
    print(f"key-server figures ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| start-up to advertising (`key-server run --radio sim`, new process) | {startup * 1000:.0f} ms |")
    print(f"| idle RSS of `key-server run --radio sim` | {rss:.1f} MB |")
    for n_keys in (1, 10_000):
        lat, thr = await unlock_figures(n_keys)
        print(f"| unlock latency, {n_keys} keys enrolled (p50 / p99) | {statistics.median(lat) * 1e3:.2f} ms / "
              f"{pct(lat, 0.99) * 1e3:.2f} ms |")
        print(f"| unlock throughput, one link, {n_keys} keys | {thr:.0f} unlocks/s |")
    rev = revoke_figures()
    print(f"| revoke latency incl. fsync (p50 / max) | {statistics.median(rev) * 1e3:.2f} ms / "
          f"{max(rev) * 1e3:.2f} ms |")
    intent = intent_figures()
    print(f"| actuation intent (`actuate` audit row) incl. fsync, part of each unlock above (p50 / max) | "
          f"{statistics.median(intent) * 1e3:.2f} ms / {max(intent) * 1e3:.2f} ms |")
    lat, ok, sent, limited = await flood_figures()
    print(f"| honest unlock (connect+unlock+disconnect) under {sent / 5:.0f} bogus frames/s (p50 / p99) | "
          f"{statistics.median(lat) * 1e3:.2f} ms / {pct(lat, 0.99) * 1e3:.2f} ms, {ok} of {ok} succeeded |")
    print(f"| bogus writes refused by the rate limiter before any crypto | {limited} of {sent} |")
    for links in (1, 100):
        written, rows, refused = await disk_figures(links=links)
        print(f"| bytes written to disk per 1,000 bogus COMMANDs refused (limiter lifted; {links} link(s)): "
              f"audit rows added | {written / 1024:.0f} KiB: {rows} rows for {refused} refusals |")
    print_attack("one link pipelining 2,000 bogus COMMANDs", await attack_figures("pipeline"))
    print_attack("200 fresh links, one bogus COMMAND each", await attack_figures("fresh"))


if __name__ == "__main__":
    asyncio.run(main())
