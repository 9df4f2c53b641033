"""A vehicle and a device joined by an in-memory link (h11's ConnectionPair, for our sessions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from protocol import (
    ChallengeBook,
    Command,
    CommandRequested,
    CommandResult,
    DeviceSession,
    Event,
    KeyPair,
    PairingKeyReceived,
    PairingRequested,
    Role,
    Status,
    VehicleSession,
    decode_public_key,
    pairing_prs,
)
from protocol._keys import private_key_from_scalar

# Published test keys (docs/PROTOCOL.md §10): NEVER ENROLL THESE.
VEHICLE_SCALAR = int.from_bytes(hashlib.sha256(b"dkey test vehicle key - never enroll").digest(), "big")
DEVICE_SCALAR = int.from_bytes(hashlib.sha256(b"dkey test device key - never enroll").digest(), "big")
OTHER_SCALAR = int.from_bytes(hashlib.sha256(b"dkey test other device key - never enroll").digest(), "big")
# A driver key for the share and revocation-list vectors (a driver that signs: PROTOCOL.md §12, §10.1).
DRIVER_SCALAR = int.from_bytes(hashlib.sha256(b"dkey test driver key - never enroll").digest(), "big")


def fixed_key(scalar: int) -> KeyPair:
    """A fixed key pair from a published scalar."""
    return KeyPair.from_private_key(private_key_from_scalar(scalar))


class CounterRng:
    """Deterministic 'randomness': SHA-256 in counter mode over a seed (vectors and tests only)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return out[:n]


@dataclass
class Pair:
    """A vehicle session and a device session wired together, recording every chunk that crossed."""

    vehicle: VehicleSession
    device: DeviceSession
    keys: dict[bytes, KeyPair]
    now: float = 1000.0
    uplink: list[bytes] = field(default_factory=list)  # device -> vehicle chunks
    downlink: list[bytes] = field(default_factory=list)  # vehicle -> device chunks
    vehicle_events: list[Event] = field(default_factory=list)

    def subscribe(self) -> None:
        """The device subscribes; the vehicle pushes a challenge."""
        self.vehicle.push_challenge(self.now)
        self.flush_down()

    def flush_down(self) -> list[Event]:
        """Deliver queued vehicle chunks to the device; return the device's events."""
        chunks = self.vehicle.data_to_send()
        self.downlink += chunks
        for ch in chunks:
            self.device.receive_data(ch, self.now)
        events = []
        while (ev := self.device.next_event(self.now)) is not None:
            events.append(ev)
        return events

    def flush_up(self) -> list[Event]:
        """Deliver queued device chunks to the vehicle; return the vehicle's events."""
        chunks = self.device.data_to_send()
        self.uplink += chunks
        for ch in chunks:
            self.vehicle.receive_data(ch, self.now)
        events = []
        while (ev := self.vehicle.next_event(self.now)) is not None:
            events.append(ev)
        self.vehicle_events += events
        return events

    def command(self, cmd: Command, args: bytes = b"", *, status: Status = Status.OK,
                data: bytes = b"") -> CommandResult:
        """Run one fast-path command end to end with the vehicle answering `status`."""
        self.device.send_command(cmd, args)
        events = self.flush_up()
        assert len(events) == 1 and isinstance(events[0], CommandRequested), events
        self.vehicle.respond(status, data)
        results = [e for e in self.flush_down() if isinstance(e, CommandResult)]
        assert len(results) == 1
        return results[0]


def make_pair(*, chunk_size: int = 20, device: KeyPair | None = None, enrolled: bool = True,
              rng_seed: bytes = b"pair", vehicle: KeyPair | None = None) -> Pair:
    """A vehicle with one enrolled device key, and that device, both with deterministic randomness."""
    vkey = vehicle or fixed_key(VEHICLE_SCALAR)
    dkey = device or fixed_key(DEVICE_SCALAR)
    keys = {dkey.key_id: dkey} if enrolled else {}
    rng = CounterRng(rng_seed)

    def lookup(kid: bytes) -> ec.EllipticCurvePublicKey | None:
        kp = keys.get(kid)
        return decode_public_key(kp.public_bytes) if kp else None

    book = ChallengeBook(ttl=5.0, rng=rng)
    # An unenrolled device is here to pair: the vehicle names itself in its challenges, as while a code is pending.
    v = VehicleSession(vkey, challenges=book, lookup_key=lookup, rng=rng, chunk_size=20,
                       names_itself=lambda: not enrolled)
    d = DeviceSession(dkey, vehicle_public_key=vkey.public_bytes if enrolled else None,
                      rng=CounterRng(rng_seed + b"/device"), chunk_size=chunk_size)
    return Pair(v, d, keys)


def run_pairing(p: Pair, code: str, *, vehicle_code: str | None = None, role: Role = Role.OWNER) -> list[Event]:
    """Pair p.device with p.vehicle; the vehicle's slot holds `vehicle_code` (default: the same code)."""
    slot = int(code[:2])
    p.subscribe()
    p.device.start_pairing(code, slot)
    ev = p.flush_up()
    assert isinstance(ev[0], PairingRequested) and ev[0].slot == slot
    prs = pairing_prs(vehicle_code or code, vehicle_id=p.vehicle.vehicle_id, slot=slot)
    p.vehicle.accept_pairing(prs)
    p.flush_down()
    ev = p.flush_up()
    if ev and isinstance(ev[0], PairingKeyReceived):
        p.keys[ev[0].key_id] = KeyPair.from_private_key(p.device.device.private_key)
        p.vehicle.finish_pairing(role, None, None)
    return ev + p.flush_down()
