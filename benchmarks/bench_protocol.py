"""Per-unlock cost of the protocol: CPU on each side, messages, ATT writes/notifications and bytes.

Run: .venv/bin/python benchmarks/bench_protocol.py   (prints a table; no pass/fail)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from protocol import (  # noqa: E402
    ChallengeBook,
    Command,
    CommandRequested,
    DeviceSession,
    KeyPair,
    Status,
    VehicleSession,
    chunk_size_for_mtu,
    decode_public_key,
)

RUNS = 1000


def one_unlock(vkey: KeyPair, dkey: KeyPair, lookup, mtu: int, mtu_known: bool) -> dict[str, float]:
    """One full connection's unlock; returns CPU seconds per side and traffic counts."""
    book = ChallengeBook()
    # mtu_known: the backend told the vehicle the link's MTU (sim, mock, bless via our WriteValue hook);
    # otherwise the vehicle starts at 20-byte notifications and learns from the size of the writes.
    vehicle = VehicleSession(vkey, challenges=book, lookup_key=lookup,
                             chunk_size=chunk_size_for_mtu(mtu) if mtu_known else 20)
    device = DeviceSession(dkey, vehicle_public_key=vkey.public_bytes, chunk_size=chunk_size_for_mtu(mtu))
    now = time.monotonic()
    v_cpu = d_cpu = 0.0
    t = time.process_time()
    vehicle.push_challenge(now)
    down1 = vehicle.data_to_send()
    v_cpu += time.process_time() - t
    t = time.process_time()
    for ch in down1:
        device.receive_data(ch, now)
    while device.next_event(now):
        pass
    device.send_command(Command.UNLOCK)
    up = device.data_to_send()
    d_cpu += time.process_time() - t
    t = time.process_time()
    for ch in up:
        vehicle.receive_data(ch, now)
    ev = vehicle.next_event(now)
    assert isinstance(ev, CommandRequested)
    vehicle.respond(Status.OK)  # a fast-path RESULT carries no state (PROTOCOL.md §5.3)
    down2 = vehicle.data_to_send()
    v_cpu += time.process_time() - t
    t = time.process_time()
    for ch in down2:
        device.receive_data(ch, now)
    res = device.next_event(now)
    d_cpu += time.process_time() - t
    assert res is not None and res.status is Status.OK  # type: ignore[union-attr]
    down = down1 + down2
    return {"v_cpu": v_cpu, "d_cpu": d_cpu, "writes": len(up), "notifications": len(down),
            "up_bytes": sum(map(len, up)), "down_bytes": sum(map(len, down))}


def main() -> None:
    vkey, dkey = KeyPair.generate(), KeyPair.generate()
    enrolled = {dkey.key_id: decode_public_key(dkey.public_bytes)}

    def lookup(kid: bytes) -> ec.EllipticCurvePublicKey | None:
        return enrolled.get(kid)

    print(f"protocol per unlock, {RUNS} runs per MTU, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print()
    print("| ATT MTU | vehicle knows MTU | vehicle CPU median | vehicle p99 | device CPU median | messages "
          "| ATT writes | notifications | bytes up | bytes down | ATT exchanges connected->confirmed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mtu, known in ((23, True), (185, False), (185, True), (247, False), (247, True)):
        rows = [one_unlock(vkey, dkey, lookup, mtu, known) for _ in range(RUNS)]
        v = sorted(r["v_cpu"] for r in rows)
        d = [r["d_cpu"] for r in rows]
        r0 = rows[0]
        # Exchanges: the CCC subscription write, then the command write(s); the challenge and result ride
        # notifications, which need no request of their own.
        exchanges = 1 + int(r0["writes"])
        p99 = v[int(len(v) * 0.99)]
        print(f"| {mtu} | {'yes' if known else 'no'} | {statistics.median(v) * 1e3:.3f} ms | {p99 * 1e3:.3f} ms "
              f"| {statistics.median(d) * 1e3:.3f} ms | 3 | {r0['writes']} | {r0['notifications']} "
              f"| {r0['up_bytes']} | {r0['down_bytes']} | {exchanges} |")


if __name__ == "__main__":
    main()
