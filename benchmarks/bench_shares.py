"""Traffic of the share flows next to the plain unlock: ATT exchanges, writes, notifications and bytes per flow.

Run: .venv/bin/python benchmarks/bench_shares.py   (prints a table; no pass/fail)

Every flow runs through the real sessions (protocol.VehicleSession and DeviceSession) joined in memory, with the
vehicle told the link's MTU. An exchange is one central-initiated ATT request (a write, or the CCC write that
subscribes); notifications ride on it. Counted from a connected, subscribed-to-nothing link, without the ATT MTU
exchange and service discovery (PROTOCOL.md §5.5).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from protocol import (  # noqa: E402
    ChallengeBook,
    Command,
    CommandRequested,
    DeviceSession,
    DoorState,
    Event,
    KeyPair,
    LockState,
    RevocationList,
    RevocationsOffered,
    Role,
    SessionOpened,
    ShareCertificate,
    ShareOffered,
    Status,
    StatusReport,
    VehicleSession,
    chunk_size_for_mtu,
    decode_public_key,
)

NOW = 1_800_000_000  # Unix time the certificates and lists are issued at


@dataclass
class Link:
    """A vehicle and a device session over one link, counting what crosses it."""

    vehicle: VehicleSession
    device: DeviceSession
    writes: int = 0
    notifications: int = 0
    up: int = 0
    down: int = 0
    exchanges: int = 0
    vehicle_events: list[Event] = field(default_factory=list)

    def subscribe(self) -> None:
        """The CCC write (one exchange); the vehicle answers with a CHALLENGE."""
        self.exchanges += 1
        self.vehicle.push_challenge(time.monotonic())
        self.down_flush()

    def up_flush(self) -> list[Event]:
        """Deliver the device's queued writes (each an exchange); return the vehicle's events."""
        chunks = self.device.data_to_send()
        self.writes += len(chunks)
        self.exchanges += len(chunks)
        self.up += sum(map(len, chunks))
        for ch in chunks:
            self.vehicle.receive_data(ch, time.monotonic())
        events = []
        while (ev := self.vehicle.next_event(time.monotonic())) is not None:
            events.append(ev)
        return events

    def down_flush(self) -> list[Event]:
        """Deliver the vehicle's queued notifications; return the device's events."""
        chunks = self.vehicle.data_to_send()
        self.notifications += len(chunks)
        self.down += sum(map(len, chunks))
        for ch in chunks:
            self.device.receive_data(ch, time.monotonic())
        events = []
        while (ev := self.device.next_event(time.monotonic())) is not None:
            events.append(ev)
        return events

    def unlock(self) -> None:
        """A fast-path UNLOCK answered OK."""
        self.device.send_command(Command.UNLOCK)
        assert any(isinstance(e, CommandRequested) for e in self.up_flush())
        self.vehicle.respond(Status.OK)
        self.down_flush()


class Car:
    """A vehicle key and its enrolled keys."""

    def __init__(self) -> None:
        self.key = KeyPair.generate()
        self.enrolled: dict[bytes, bytes] = {}

    def enroll(self, kp: KeyPair) -> None:
        self.enrolled[kp.key_id] = kp.public_bytes

    def lookup(self, kid: bytes) -> ec.EllipticCurvePublicKey | None:
        pub = self.enrolled.get(kid)
        return decode_public_key(pub) if pub else None

    def link(self, device: KeyPair, mtu: int) -> Link:
        size = chunk_size_for_mtu(mtu)
        v = VehicleSession(self.key, challenges=ChallengeBook(), lookup_key=self.lookup, chunk_size=size)
        d = DeviceSession(device, vehicle_public_key=self.key.public_bytes, chunk_size=size)
        return Link(v, d)


def plain_unlock(car: Car, owner: KeyPair, watch: KeyPair, mtu: int) -> Link:
    """Today's unlock: subscribe, COMMAND, RESULT."""
    link = car.link(owner, mtu)
    link.subscribe()
    link.unlock()
    return link


def share_first_contact(car: Car, owner: KeyPair, watch: KeyPair, mtu: int) -> Link:
    """A watch's first connection with a share: subscribe, SHARE_PRESENT, SHARE_ANSWER, then the unlock."""
    cert = ShareCertificate.issue(owner, car.key.key_id, watch.public_bytes, Role.DRIVER, "Maya watch",
                                  valid_from=NOW, valid_until=NOW + 365 * 86400)
    link = car.link(watch, mtu)
    link.subscribe()
    link.device.present_share(cert.encode())
    assert any(isinstance(e, ShareOffered) for e in link.up_flush())
    car.enroll(watch)
    link.vehicle.answer_share(Status.OK)
    link.down_flush()
    link.unlock()
    return link


def list_after_unlock(car: Car, owner: KeyPair, watch: KeyPair, mtu: int) -> Link:
    """The owner's unlock followed by its revocation list (one entry), delivered after the RESULT."""
    rlist = RevocationList.issue(owner, car.key.key_id, 1, NOW, [(watch.key_id, 0)])
    link = plain_unlock(car, owner, watch, mtu)
    link.device.send_revocations(rlist.encode())
    assert any(isinstance(e, RevocationsOffered) for e in link.up_flush())
    link.vehicle.answer_revocations(Status.OK, 1)
    link.down_flush()
    return link


def watch_subscription(car: Car, owner: KeyPair, watch: KeyPair, mtu: int) -> Link:
    """SESSION_OPEN, WATCH answered with the state, then one push (a lock change)."""
    link = car.link(owner, mtu)
    link.subscribe()
    link.device.open_session()
    assert any(isinstance(e, SessionOpened) for e in link.up_flush())
    link.down_flush()
    link.device.send_secure(Command.WATCH)
    assert any(isinstance(e, CommandRequested) for e in link.up_flush())
    link.vehicle.respond(Status.OK, StatusReport(LockState.LOCKED, DoorState.CLOSED, False).encode())
    link.down_flush()
    link.vehicle.push_watch(StatusReport(LockState.UNLOCKED, DoorState.CLOSED, False).encode())
    link.down_flush()
    return link


FLOWS: tuple[tuple[str, Callable[[Car, KeyPair, KeyPair, int], Link]], ...] = (
    ("plain unlock (today)", plain_unlock),
    ("first unlock with a share (enrolment + unlock)", share_first_contact),
    ("unlock + revocation list (1 entry)", list_after_unlock),
    ("WATCH: session open + subscribe + 1 push", watch_subscription),
)


def main() -> None:
    print("share flows: traffic per flow (real sessions, vehicle told the MTU;"
          " exchanges = ATT requests by the central)")
    print()
    print("| flow | ATT MTU | ATT exchanges | writes | notifications | bytes up | bytes down |")
    print("|---|---|---|---|---|---|---|")
    for name, flow in FLOWS:
        for mtu in (23, 185, 247):
            car, owner, watch = Car(), KeyPair.generate(), KeyPair.generate()
            car.enroll(owner)
            link = flow(car, owner, watch, mtu)
            print(f"| {name} | {mtu} | {link.exchanges} | {link.writes} | {link.notifications} | {link.up} "
                  f"| {link.down} |")
    cert = ShareCertificate.issue(KeyPair.generate(), b"\0" * 4, KeyPair.generate().public_bytes, Role.DRIVER,
                                  "Maya watch", valid_from=NOW, valid_until=NOW + 86400)
    print()
    print(f"certificate with a 10-character name and an expiry: {len(cert.encode())} bytes")


if __name__ == "__main__":
    main()
