"""Regenerate the protocol test vectors from the published test keys and fixed randomness.

Run `python -m tests.vectors.generate` to rewrite tests/vectors/*.json; test_vectors.py checks that the
files on disk are exactly what this produces, and replays them through the public API.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import (
    LIST_WITH_SHARES,
    AuditHead,
    AuditRecord,
    ClockReport,
    Command,
    DoorState,
    KeyInfo,
    KeyPair,
    KeyState,
    LockState,
    Paired,
    RetryAfter,
    RevocationList,
    Role,
    ShareCertificate,
    Status,
    StatusReport,
    chunk_count,
    chunk_size_for_mtu,
    decode,
    encode_audit_page,
    encode_key_page,
    set_time_args,
    split,
)
from protocol import _crypto as c
from protocol._codec import CommandMessage, Message
from protocol._crypto import audit_head_transcript
from protocol._keys import encode_public_key
from tests.protocol.helpers import (
    DEVICE_SCALAR,
    DRIVER_SCALAR,
    OTHER_SCALAR,
    VEHICLE_SCALAR,
    Pair,
    fixed_key,
    make_pair,
)

HERE = Path(__file__).parent
CODE = "42123456"
# A LIST_KEYS answer with one key record (the test device key, owner, created at T0 seconds, active).
SAMPLE_KEY_PAGE = encode_key_page([KeyInfo(fixed_key(DEVICE_SCALAR).key_id, 1, "test device", 1000,
                                           state=KeyState.ACTIVE)], 1)[0]
T0 = 1000.0
# A SET_TIME statement (PROTOCOL.md §5.7) and the vehicle's answer: accepted, its clock now trusted at that time.
STATED_TIME = 1_800_000_000
SAMPLE_CLOCK_REPORT = ClockReport(STATED_TIME, True).encode()


def _hex_chunks(chunks: list[bytes]) -> list[str]:
    return [c.hex() for c in chunks]


def _message(chunks: list[bytes]) -> str:
    return b"".join(c[3:] if i == 0 else c[1:] for i, c in enumerate(chunks)).hex()


class Recorder:
    """Runs a Pair step by step and records each direction's chunks and the decoded message type."""

    def __init__(self, p: Pair) -> None:
        self.p = p
        self.steps: list[dict[str, Any]] = []

    def _record(self, direction: str, chunks: list[bytes], events: list[Any]) -> None:
        # One step per message: split the chunk run at first-chunk headers.
        runs: list[list[bytes]] = []
        for ch in chunks:
            if ch[0] & 0x80 or not runs:
                runs.append([])
            runs[-1].append(ch)
        for run in runs:
            msg = _message(run)
            self.steps.append({"dir": direction, "type": type(decode(bytes.fromhex(msg))).__name__,
                               "message": msg, "chunks": _hex_chunks(run)})
        if events:
            self.steps[-1]["events"] = [repr(e) for e in events]

    def down(self) -> list[Any]:
        chunks = self.p.vehicle.data_to_send()
        for ch in chunks:
            self.p.device.receive_data(ch, self.p.now)
        events = []
        while (ev := self.p.device.next_event(self.p.now)) is not None:
            events.append(ev)
        if chunks:
            self._record("v2d", chunks, events)
        return events

    def up(self) -> list[Any]:
        chunks = self.p.device.data_to_send()
        for ch in chunks:
            self.p.vehicle.receive_data(ch, self.p.now)
        events = []
        while (ev := self.p.vehicle.next_event(self.p.now)) is not None:
            events.append(ev)
        if chunks:
            self._record("d2v", chunks, events)
        return events


def _inputs(mtu: int, seed: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "vehicle_private_scalar": f"{VEHICLE_SCALAR:064x}",
        "vehicle_public_key": fixed_key(VEHICLE_SCALAR).public_bytes.hex(),
        "device_private_scalar": f"{DEVICE_SCALAR:064x}",
        "device_public_key": fixed_key(DEVICE_SCALAR).public_bytes.hex(),
        "rng": "SHA-256(seed || u64 counter) blocks; vehicle uses seed, device uses seed || '/device'",
        "rng_seed": seed.decode(),
        "att_mtu": mtu,
        "now": T0,
        **extra,
    }


def unlock(mtu: int) -> dict[str, Any]:
    """Subscribe, challenge, UNLOCK, signed RESULT (status only: a fast-path RESULT carries no data, §5.3)."""
    seed = b"vector-unlock"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), rng_seed=seed)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.send_command(Command.UNLOCK)
    r.up()
    p.vehicle.respond(Status.OK)
    r.down()
    return {"description": f"fast-path unlock at ATT MTU {mtu}", "inputs": _inputs(mtu, seed), "steps": r.steps}


def busy(mtu: int = 247) -> dict[str, Any]:
    """Subscribe, challenge, UNLOCK, signed RESULT BUSY naming the seconds to wait (a key over its actuation rate)."""
    seed = b"vector-busy"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), rng_seed=seed)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.send_command(Command.UNLOCK)
    r.up()
    p.vehicle.respond(Status.BUSY, RetryAfter(30).encode())
    r.down()
    return {"description": f"fast-path unlock refused BUSY with retry_after 30 s at ATT MTU {mtu}",
            "inputs": _inputs(mtu, seed), "steps": r.steps}


def confidential(mtu: int = 247) -> dict[str, Any]:
    """SESSION_OPEN / SESSION_ACCEPT, a sealed LIST_KEYS and its answer, then a sealed SET_TIME and its answer."""
    seed = b"vector-confidential"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), rng_seed=seed)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.open_session()
    r.up()
    r.down()
    p.device.send_secure(Command.LIST_KEYS, bytes.fromhex("000032"))
    r.up()
    p.vehicle.respond(Status.OK, SAMPLE_KEY_PAGE)
    r.down()
    p.device.send_secure(Command.SET_TIME, set_time_args(STATED_TIME))
    r.up()
    p.vehicle.respond(Status.OK, SAMPLE_CLOCK_REPORT)
    r.down()
    return {"description": "confidential session, a sealed LIST_KEYS, then a sealed SET_TIME",
            "inputs": _inputs(mtu, seed, stated_time=STATED_TIME), "steps": r.steps}


def pairing(mtu: int = 247) -> dict[str, Any]:
    """CPace pairing with code 42123456 (slot 42), then PAIR_DONE with role owner."""
    from protocol import pairing_prs

    seed = b"vector-pairing"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), rng_seed=seed, enrolled=False)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.start_pairing(CODE, 42)
    r.up()
    p.vehicle.accept_pairing(pairing_prs(CODE, vehicle_id=p.vehicle.vehicle_id, slot=42))
    r.down()
    r.up()
    p.vehicle.finish_pairing(Role.OWNER, None, None)
    events = r.down()
    assert any(isinstance(e, Paired) for e in events)
    return {"description": "pairing with a one-time code", "inputs": _inputs(mtu, seed, code=CODE, slot=42),
            "prs": pairing_prs(CODE, vehicle_id=p.vehicle.vehicle_id, slot=42).hex(), "steps": r.steps}


def framing(mtu: int) -> dict[str, Any]:
    """How messages of a few lengths split into chunks at this MTU."""
    from protocol import split

    size = chunk_size_for_mtu(mtu)
    cases = []
    for n in (2, 17, 18, 95, 300):
        message = bytes((1, 0x8F)) + bytes(i % 256 for i in range(n - 2))
        message = message[:n]
        cases.append({"message": message.hex(), "chunks": _hex_chunks(split(message, size))})
    return {"description": f"framing at ATT MTU {mtu} (chunk size {size})", "att_mtu": mtu, "cases": cases}


def _one_write(message: Message) -> str:
    """A whole message as one write (hex), as a central at MTU 247 sends it."""
    [write] = split(message.encode(), 244)
    return write.hex()


def negative() -> dict[str, Any]:
    """Recorded unlock plus mutations the vehicle must refuse, with the expected outcome of each."""
    seed = b"vector-negative"
    p = make_pair(chunk_size=244, rng_seed=seed)
    p.vehicle.push_challenge(p.now)
    challenge_chunks = p.vehicle.data_to_send()
    for ch in challenge_chunks:
        p.device.receive_data(ch, p.now)
    p.device.next_event(p.now)
    p.device.send_command(Command.UNLOCK)
    [honest] = p.device.data_to_send()
    tampered_challenge = bytearray(honest)
    tampered_challenge[3 + 12] ^= 0x01  # message offset 12: inside the challenge field
    tampered_signature = bytearray(honest)
    tampered_signature[3 + 40] ^= 0x01  # message offset 40: inside the signature field
    wrong_key = make_pair(chunk_size=244, rng_seed=seed, device=fixed_key(OTHER_SCALAR))
    wrong_key.device = type(p.device)(fixed_key(OTHER_SCALAR), vehicle_public_key=p.vehicle.identity.public_bytes,
                                      chunk_size=244)
    for ch in challenge_chunks:
        wrong_key.device.receive_data(ch, p.now)
    wrong_key.device.next_event(p.now)
    wrong_key.device.send_command(Command.UNLOCK)
    [wrong] = wrong_key.device.data_to_send()

    def signed(command: int, args: bytes = b"") -> bytes:
        """The test device's own request for `command` on the recorded challenge (one write at this MTU)."""
        device = type(p.device)(fixed_key(DEVICE_SCALAR), vehicle_public_key=p.vehicle.identity.public_bytes,
                                chunk_size=244)
        for ch in challenge_chunks:
            device.receive_data(ch, p.now)
        device.next_event(p.now)
        device.send_command(command, args)
        [write] = device.data_to_send()
        return write

    real = decode(honest[3:])
    assert isinstance(real, CommandMessage)
    # Issue 10: the code is judged only after the challenge and the signature (PROTOCOL.md §5.2, §8.4).
    never_issued = CommandMessage(real.key_id, bytes(range(16)), 0x7F, bytes(range(64)), bytes(64))
    unknown_forged = CommandMessage(real.key_id, real.challenge, 0x7F, bytes(range(64)), real.signature)
    args_added = CommandMessage(real.key_id, real.challenge, real.command, b"\x01", real.signature)
    # The application's refusal of a guest while the clock is untrusted (§5.7): a signed RESULT with status 0x0f.
    untrusted = make_pair(chunk_size=244, rng_seed=seed)
    untrusted.vehicle.push_challenge(untrusted.now)
    untrusted.vehicle.data_to_send()
    untrusted.vehicle.receive_data(honest, untrusted.now)
    untrusted.vehicle.next_event(untrusted.now)
    untrusted.vehicle.respond(Status.CLOCK_UNTRUSTED)
    untrusted_result = untrusted.vehicle.data_to_send()
    return {
        "description": "writes a vehicle must refuse after pushing the challenge of the first step",
        "inputs": _inputs(247, seed),
        "challenge_chunks": _hex_chunks(challenge_chunks),
        "other_device_public_key": encode_public_key(fixed_key(OTHER_SCALAR).private_key.public_key()).hex(),
        "cases": [
            {"name": "honest", "writes": [honest.hex()], "expect": ["CommandRequested"]},
            {"name": "replayed", "writes": [honest.hex(), honest.hex()],
             "expect": ["CommandRequested", "Refused:CHALLENGE_INVALID"]},
            {"name": "tampered_challenge", "writes": [bytes(tampered_challenge).hex()],
             "expect": ["Refused:CHALLENGE_INVALID"]},
            {"name": "tampered_signature", "writes": [bytes(tampered_signature).hex()], "expect": ["Refused:DENIED"]},
            {"name": "wrong_key", "writes": [wrong.hex()], "expect": ["Refused:DENIED"]},
            {"name": "truncated", "writes": [(bytes((0x80, 0, 60)) + honest[3:63]).hex()],
             "expect": ["RemoteProtocolError"]},
            {"name": "expired", "advance_seconds": 5.5, "writes": [honest.hex()],
             "expect": ["Refused:CHALLENGE_INVALID"]},
            {"name": "unknown_command_never_issued_challenge", "writes": [_one_write(never_issued)],
             "expect": ["Refused:CHALLENGE_INVALID"]},
            {"name": "unknown_command_bad_signature", "writes": [_one_write(unknown_forged)],
             "expect": ["Refused:DENIED"]},
            {"name": "unknown_command_signed", "writes": [signed(0x7F).hex()], "expect": ["Refused:NOT_SUPPORTED"]},
            {"name": "secure_only_command_on_fast_path", "writes": [signed(Command.LIST_KEYS).hex()],
             "expect": ["Refused:NOT_SUPPORTED"]},
            {"name": "status_on_fast_path", "writes": [signed(Command.STATUS).hex()],
             "expect": ["Refused:NOT_SUPPORTED"]},
            {"name": "args_added_to_signed_command", "writes": [_one_write(args_added)],
             "expect": ["Refused:DENIED"]},
            {"name": "time_limited_key_while_clock_untrusted", "writes": [honest.hex()],
             "expect": ["CommandRequested"], "app_status": "CLOCK_UNTRUSTED",
             "result_chunks": _hex_chunks(untrusted_result)},
        ],
    }


def audit_head() -> dict[str, Any]:
    """The signed audit head (PROTOCOL.md §5.6): statement, signature, head record and a READ_AUDIT page."""
    vehicle = fixed_key(VEHICLE_SCALAR)
    # Any 32 bytes stand for the newest entry's hash (the statement does not recompute the chain); 1..3 pruned.
    detail = '{"status":"OK"}'
    entry_hash = bytes.fromhex("5d1c3a1f2b7e4a9c8d6e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e")
    head = AuditHead.signed(vehicle, 5, entry_hash, 3)
    page, fitted = encode_audit_page([AuditRecord(5, 1_700_000_000, "unlock", detail, entry_hash,
                                                  fixed_key(DEVICE_SCALAR).key_id)], head)
    assert fitted == 1
    other_vehicle = fixed_key(OTHER_SCALAR)
    return {
        "description": "the vehicle's signed audit head and a READ_AUDIT page carrying it (PROTOCOL.md §5.6)",
        "inputs": {
            "vehicle_private_scalar": f"{VEHICLE_SCALAR:064x}",
            "vehicle_public_key": vehicle.public_bytes.hex(),
            "vehicle_id": vehicle.key_id.hex(),
            "seq": head.seq, "entry_hash": entry_hash.hex(), "pruned_through": head.pruned_through,
        },
        "statement": audit_head_transcript(vehicle.key_id, head.seq, entry_hash, head.pruned_through).hex(),
        "signature": head.signature.hex(),
        "head_record": head.encode().hex(),
        "page": page.hex(),
        "must_not_verify": [
            {"name": "another_vehicle_id", "vehicle_id": other_vehicle.key_id.hex()},
            {"name": "seq_changed", "seq": head.seq - 1},
            {"name": "pruned_through_changed", "pruned_through": 0},
        ],
    }


# ------------------------------------------------------------------ shares and revocation lists (PROTOCOL.md §12)

SHARE_NOW = 1_800_000_000  # the vehicle's (trusted) time in the share and revocation-list vectors
DAY = 86_400
SHARE_SERIAL = bytes.fromhex("5e7a11a1c0ffee01")
OTHER_VEHICLE_ID = bytes.fromhex("5a5a5a5a")  # a vehicle that is not the test vehicle


def share_state(owner: KeyPair, driver: KeyPair, **changes: Any) -> dict[str, Any]:
    """The vehicle state a share case is judged in: its keys, clock, lists and revoked ids (§12.4)."""
    state: dict[str, Any] = {
        "now": SHARE_NOW, "clock_trusted": True,
        "keys": {owner.key_id.hex(): {"role": "owner", "revoked": False},
                 driver.key_id.hex(): {"role": "driver", "revoked": False}},
        "revoked_key_ids": [], "revoked_serials": [],
    }
    state.update(changes)
    return state


def share_cases(vehicle_id: bytes, owner: KeyPair, driver: KeyPair, subject: KeyPair) -> list[dict[str, Any]]:
    """share.json's certificates, each with the vehicle state it meets and the SHARE_ANSWER status (§12.4).

    A function of the keys so that end-to-end tests can issue the same cases with fresh keys (the reference
    vehicle refuses to run with or enroll the published test keys, §10.1).
    """
    honest = ShareCertificate(SHARE_SERIAL, vehicle_id, owner.key_id, subject.public_bytes, Role.DRIVER, "Maya watch",
                              SHARE_NOW - DAY, SHARE_NOW + 30 * DAY, None).signed_by(owner)
    raw = honest.encode()
    forged = raw[:-1] + bytes((raw[-1] ^ 0x01,))
    guest = dataclasses.replace(honest, role=Role.GUEST, name="Guest laptop", valid_until=SHARE_NOW + 3 * DAY,
                                schedule="Sat-Sun 09:00-21:00").signed_by(owner)
    subject_hex = subject.key_id.hex()
    state = share_state(owner, driver)
    revoked_owner = {**state["keys"], owner.key_id.hex(): {"role": "owner", "revoked": True}}
    enrolled = {**state["keys"], subject_hex: {"role": "driver", "revoked": False}}

    def case(name: str, cert: bytes, expect: Status, why: str, **changes: Any) -> dict[str, Any]:
        return {"name": name, "certificate": cert.hex(), "state": share_state(owner, driver, **changes),
                "expect": expect.name, "why": why}

    return [
        case("honest", raw, Status.OK, "every check passes: the subject is enrolled as a driver"),
        case("honest_guest_with_schedule", guest.encode(), Status.OK, "a guest share with expiry and schedule"),
        case("not_yet_valid", dataclasses.replace(honest, valid_from=SHARE_NOW + DAY).signed_by(owner).encode(),
             Status.OK, "valid_from in the future still enrolls; the key's commands get KEY_NOT_YET_VALID"),
        case("forged_signature", forged, Status.DENIED, "step 2: the signature does not verify"),
        case("issuer_not_an_owner", honest.signed_by(driver).encode(), Status.DENIED,
             "step 2: signed by (and naming) a driver key"),
        case("issuer_revoked", raw, Status.DENIED, "step 2: same bytes as honest; the issuing owner is revoked",
             keys=revoked_owner),
        case("role_escalation_to_owner", dataclasses.replace(honest, role=Role.OWNER).signed_by(owner).encode(),
             Status.NOT_PERMITTED, "step 3: a genuine owner signature, but a share never grants owner"),
        case("clock_untrusted", raw, Status.CLOCK_UNTRUSTED, "step 4: same bytes as honest; the vehicle's clock is "
             "not yet confirmed", clock_trusted=False),
        case("expired", dataclasses.replace(honest, valid_from=SHARE_NOW - 10 * DAY,
                                            valid_until=SHARE_NOW).signed_by(owner).encode(),
             Status.KEY_EXPIRED, "step 4: valid_until is now (the window is half-open)"),
        case("wrong_vehicle", dataclasses.replace(honest, vehicle_id=OTHER_VEHICLE_ID).signed_by(owner).encode(),
             Status.DENIED, "step 1: issued for another vehicle"),
        case("subject_revoked", raw, Status.DENIED, "step 5: same bytes as honest; a revocation list named the "
             "subject key id before it was ever enrolled", revoked_key_ids=[subject_hex]),
        case("serial_revoked", raw, Status.DENIED, "step 5: same bytes as honest; the serial is revoked",
             revoked_serials=[SHARE_SERIAL.hex()]),
        case("already_enrolled", raw, Status.NO_CHANGE, "step 6: same bytes as honest; the subject is an active key",
             keys=enrolled),
    ]


def share() -> dict[str, Any]:
    """Share certificates (PROTOCOL.md §12.1) and the first contact of a shared key (§12.3)."""
    vehicle, owner, driver, subject = (fixed_key(s) for s in (VEHICLE_SCALAR, DEVICE_SCALAR, DRIVER_SCALAR,
                                                              OTHER_SCALAR))
    cases = share_cases(vehicle.key_id, owner, driver, subject)
    honest = ShareCertificate.decode(bytes.fromhex(cases[0]["certificate"]))
    largest = dataclasses.replace(honest, name="x" * 32, schedule="Mon 08:00-09:00; Tue 08:00-09:00; Wed "
                                  "08:00-09:00; Thu 8:00-9:00").signed_by(owner).encode()
    # The first contact at MTU 185: CHALLENGE, SHARE_PRESENT, SHARE_ANSWER, then the first COMMAND and its RESULT.
    mtu, seed = 185, b"vector-share"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), device=subject, rng_seed=seed)
    p.keys.clear()  # the watch knows the vehicle from the share; the vehicle does not know the watch yet
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.present_share(honest.encode())
    r.up()
    p.keys[subject.key_id] = subject  # the application enrolls the subject (the checks of §12.4 passed)
    p.vehicle.answer_share(Status.OK)
    r.down()
    p.device.send_command(Command.UNLOCK)
    r.up()
    p.vehicle.respond(Status.OK)
    r.down()
    present = bytes.fromhex(r.steps[1]["message"])

    def sizes(cert: bytes) -> dict[str, int]:
        n = len(cert) + 5
        return {"certificate": len(cert), "share_present": n, "writes_mtu23": chunk_count(n, 20),
                "writes_mtu185": chunk_count(n, 182)}

    return {
        "description": "share certificates with the vehicle state each meets and the expected SHARE_ANSWER status "
                       "(PROTOCOL.md §12.4), and a shared key's first contact",
        "inputs": {
            **_inputs(mtu, seed),
            "device_private_scalar": f"{OTHER_SCALAR:064x}", "device_public_key": subject.public_bytes.hex(),
            "issuer_private_scalar": f"{DEVICE_SCALAR:064x}", "issuer_public_key": owner.public_bytes.hex(),
            "driver_private_scalar": f"{DRIVER_SCALAR:064x}", "driver_public_key": driver.public_bytes.hex(),
            "note": "the device is the share's subject (the other device test key); the issuer is the device test "
                    "key, enrolled as owner; the reference vehicle refuses to enroll any published test key "
                    "(§10.1), so an end-to-end test issues the same cases with fresh keys",
        },
        "honest": {"certificate": honest.encode().hex(), "tbs": honest.tbs().hex(),
                   "transcript": c.transcript(c.LABEL_SHARE_CERTIFICATE, honest.tbs()).hex(),
                   "subject_key_id": honest.subject_key_id.hex(), "serial": honest.serial.hex(),
                   "valid_from": honest.valid_from, "valid_until": honest.valid_until, "role": "driver",
                   "name": honest.name},
        "cases": cases,
        "sizes": {"honest": sizes(honest.encode()), "largest": sizes(largest)},
        "largest_certificate": largest.hex(),
        "share_present_chunks_mtu23": _hex_chunks(split(present, 20)),
        "steps": r.steps,
    }


def revocation_lists(vehicle_id: bytes, owner: KeyPair, driver: KeyPair, subject: KeyPair) -> dict[str, RevocationList]:
    """revocations.json's lists: the owner's v1 and v2 (cumulative), a driver's, a forged v2, another vehicle's."""
    v1 = RevocationList.issue(owner, vehicle_id, 1, SHARE_NOW, [(subject.key_id, 0)])
    v2 = RevocationList.issue(owner, vehicle_id, 2, SHARE_NOW + DAY,
                              [(subject.key_id, 0), (driver.key_id, LIST_WITH_SHARES)])
    forged = dataclasses.replace(v2, signature=v2.signature[:-1] + bytes((v2.signature[-1] ^ 0x01,)))
    return {"v1": v1, "v2": v2, "forged_v2": forged,
            "by_driver": RevocationList.issue(driver, vehicle_id, 1, SHARE_NOW, [(owner.key_id, 0)]),
            "wrong_vehicle": RevocationList.issue(owner, OTHER_VEHICLE_ID, 3, SHARE_NOW, [(subject.key_id, 0)])}


def revocations() -> dict[str, Any]:
    """Revocation lists (PROTOCOL.md §12.2), what the vehicle answers to each (§12.5), and a delivery after a RESULT."""
    vehicle, owner, driver, subject = (fixed_key(s) for s in (VEHICLE_SCALAR, DEVICE_SCALAR, DRIVER_SCALAR,
                                                              OTHER_SCALAR))
    lists = revocation_lists(vehicle.key_id, owner, driver, subject)
    own = owner.key_id.hex()

    def case(name: str, which: str, held: int, expect: Status, version: int, why: str) -> dict[str, Any]:
        return {"name": name, "list": which, "state": {"held_versions": {own: held} if held else {},
                                                       "keys": share_state(owner, driver)["keys"]},
                "expect": expect.name, "expect_version": version, "why": why}

    mtu, seed = 185, b"vector-revocations"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), device=owner, rng_seed=seed)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.send_command(Command.UNLOCK)
    r.up()
    p.vehicle.respond(Status.OK)
    r.down()
    p.device.send_revocations(lists["v1"].encode())  # after the RESULT: the unlock kept its two exchanges
    r.up()
    p.vehicle.answer_revocations(Status.OK, 1)
    r.down()
    return {
        "description": "revocation lists with the version the vehicle holds for the issuer and the expected "
                       "REVOCATIONS_ANSWER (PROTOCOL.md §12.5), and a list delivered after an unlock",
        "inputs": {**_inputs(mtu, seed), "driver_public_key": driver.public_bytes.hex(),
                   "subject_public_key": subject.public_bytes.hex()},
        "lists": {name: {"bytes": lst.encode().hex(), "tbs": lst.tbs().hex(), "issuer": lst.issuer_id.hex(),
                         "version": lst.version, "entries": [[kid.hex(), flags] for kid, flags in lst.entries]}
                  for name, lst in lists.items()},
        "cases": [
            case("honest_v1", "v1", 0, Status.OK, 1, "nothing held for this owner: v1 applied"),
            case("honest_v2", "v2", 1, Status.OK, 2, "newer: applied; the driver and the keys it enrolled by "
                 "share are revoked too (flag with_shares)"),
            case("older_list", "v1", 2, Status.NO_CHANGE, 2, "a replayed older list changes nothing"),
            case("same_version", "v2", 2, Status.NO_CHANGE, 2, "the held version again changes nothing"),
            case("signed_by_driver", "by_driver", 0, Status.DENIED, 0, "the issuer is not an owner"),
            case("forged", "forged_v2", 1, Status.DENIED, 0, "the signature does not verify"),
            case("wrong_vehicle", "wrong_vehicle", 1, Status.DENIED, 0, "issued for another vehicle"),
        ],
        "steps": r.steps,
    }


def watch(mtu: int = 247) -> dict[str, Any]:
    """A confidential session, WATCH and its answer, then one pushed status report (PROTOCOL.md §9.6)."""
    seed = b"vector-watch"
    p = make_pair(chunk_size=chunk_size_for_mtu(mtu), rng_seed=seed)
    r = Recorder(p)
    p.vehicle.push_challenge(p.now)
    r.down()
    p.device.open_session()
    r.up()
    r.down()
    p.device.send_secure(Command.WATCH)
    r.up()
    p.vehicle.respond(Status.OK, StatusReport(LockState.LOCKED, DoorState.CLOSED, False).encode())
    r.down()
    p.vehicle.push_watch(StatusReport(LockState.UNLOCKED, DoorState.OPEN, False).encode())
    r.down()
    return {"description": "confidential session, WATCH answered OK with a status report, then one push",
            "inputs": _inputs(mtu, seed), "steps": r.steps}


def privacy() -> dict[str, Any]:
    """Advertising tokens (PROTOCOL.md §13): one secret, three prands, and a token of another secret."""
    from protocol import AdSecret, make_token

    ad = AdSecret(1, bytes(range(0x10, 0x20)))
    other = bytes(range(0x20, 0x30))
    prands = [bytes(4), bytes.fromhex("a1b2c3d4"), bytes.fromhex("ffffffff")]
    return {
        "description": "advertising tokens: prand (4) || HMAC-SHA256(secret, transcript(label, prand))[0:6]",
        "label": c.transcript(b"dkey/1 advertising token", bytes(4))[:24].hex(),
        "ad_secret": {"generation": ad.generation, "secret": ad.secret.hex(), "record": ad.encode().hex(),
                      "packed": ad.pack().hex()},
        "tokens": [{"prand": p.hex(), "transcript": c.transcript(b"dkey/1 advertising token", p).hex(),
                    "token": make_token(ad.secret, p).hex()} for p in prands],
        "not_ours": {"other_secret": other.hex(), "token": make_token(other, prands[1]).hex(),
                     "why": "made with another vehicle's secret: must not resolve with ad_secret (false match 2^-48)"},
    }


VECTORS: dict[str, Callable[[], dict[str, Any]]] = {
    "unlock_mtu23.json": lambda: unlock(23),
    "unlock_mtu247.json": lambda: unlock(247),
    "busy.json": busy,
    "confidential.json": confidential,
    "pairing.json": pairing,
    "framing_mtu23.json": lambda: framing(23),
    "framing_mtu247.json": lambda: framing(247),
    "negative.json": negative,
    "audit_head.json": audit_head,
    "share.json": share,
    "revocations.json": revocations,
    "watch.json": watch,
    "privacy.json": privacy,
}


def render(name: str) -> str:
    """The exact file content of one vector file."""
    return json.dumps(VECTORS[name](), indent=1, sort_keys=True) + "\n"


def main() -> None:
    """Write every vector file."""
    for name in VECTORS:
        (HERE / name).write_text(render(name))
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
