"""The crypto suite: transcripts, HKDF labels, AEAD nonces and the counter window (PROTOCOL.md §4)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._codec import VERSION
from ._errors import AuthenticationError, ReplayError

# Domain-separation labels: every signature, MAC and key derivation names what it is for and which
# way it travels, so nothing signed for one purpose can be replayed as another.
LABEL_COMMAND = b"dkey/1 d2v command"
LABEL_RESULT = b"dkey/1 v2d result"
LABEL_SESSION_OPEN = b"dkey/1 d2v session open"
LABEL_SESSION_ACCEPT = b"dkey/1 v2d session accept"
LABEL_SESSION_KEYS = b"dkey/1 session keys"
LABEL_PAIR_CODE = b"dkey/1 pairing code"
LABEL_PAIR_CI = b"dkey/1 pairing channel"
LABEL_PAIR_KEYS = b"dkey/1 pairing keys"
LABEL_PAIR_CONFIRM_V2D = b"dkey/1 v2d pair confirm"
LABEL_PAIR_CONFIRM_D2V = b"dkey/1 d2v pair confirm"
LABEL_PAIR_DEVICE_KEY = b"dkey/1 d2v pair device key"
LABEL_PAIR_VEHICLE_KEY = b"dkey/1 v2d pair vehicle key"
LABEL_AUDIT_HEAD = b"dkey/1 v2d audit head"
LABEL_SHARE_CERTIFICATE = b"dkey/1 share certificate"  # an owner's signature on a share (PROTOCOL.md §12.1)
LABEL_REVOCATION_LIST = b"dkey/1 revocation list"  # an owner's signature on its revocation list (§12.2)
LABEL_SHARE_ANSWER = b"dkey/1 v2d share answer"
LABEL_REVOCATIONS_ANSWER = b"dkey/1 v2d revocations answer"

DIR_D2V = 0x01
DIR_V2D = 0x02
MAX_COUNTER = 0xFFFFFFFF


def transcript(label: bytes, *parts: bytes) -> bytes:
    """`label || 0x00 || version || (u16 length || part)*`: unambiguous, so no two inputs collide."""
    out = bytearray(label)
    out += bytes((0, VERSION))
    for part in parts:
        if len(part) > 0xFFFF:
            raise ValueError("transcript part over 65535 bytes")
        out += len(part).to_bytes(2, "big")
        out += part
    return bytes(out)


def result_transcript(vehicle_id: bytes, key_id: bytes, challenge: bytes, command: int, args: bytes, status: int,
                      data: bytes, request: bytes) -> bytes:
    """What the vehicle signs in a RESULT: the answer and SHA-256 of the exact request message it answers."""
    return transcript(LABEL_RESULT, vehicle_id, key_id, challenge, bytes((command,)), args, bytes((status,)), data,
                      hashlib.sha256(request).digest())


def audit_head_transcript(vehicle_id: bytes, seq: int, entry_hash: bytes, pruned_through: int) -> bytes:
    """What the vehicle signs about its audit log (PROTOCOL.md §5.6): its id, the head and the pruned prefix."""
    return transcript(LABEL_AUDIT_HEAD, vehicle_id, seq.to_bytes(8, "big"), entry_hash,
                      pruned_through.to_bytes(8, "big"))


def share_answer_transcript(vehicle_id: bytes, key_id: bytes, status: int, request: bytes) -> bytes:
    """What the vehicle signs in a SHARE_ANSWER: the subject key id, the status and SHA-256 of the SHARE_PRESENT."""
    return transcript(LABEL_SHARE_ANSWER, vehicle_id, key_id, bytes((status,)), hashlib.sha256(request).digest())


def revocations_answer_transcript(vehicle_id: bytes, issuer_id: bytes, version: int, status: int,
                                  request: bytes) -> bytes:
    """What the vehicle signs in a REVOCATIONS_ANSWER: issuer, held version, status, SHA-256 of the REVOCATIONS."""
    return transcript(LABEL_REVOCATIONS_ANSWER, vehicle_id, issuer_id, version.to_bytes(4, "big"), bytes((status,)),
                      hashlib.sha256(request).digest())


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256, 32 bytes."""
    return hmac.new(key, message, hashlib.sha256).digest()


def verify_mac(key: bytes, message: bytes, tag: bytes) -> None:
    """Raise AuthenticationError unless `tag` is HMAC-SHA256(key, message); compared in constant time."""
    if not hmac.compare_digest(mac(key, message), tag):
        raise AuthenticationError("key confirmation failed")


def nonce(direction: int, counter: int) -> bytes:
    """The 12-byte AES-GCM nonce: 0x000000 || direction || counter (8 bytes, big-endian)."""
    return bytes((0, 0, 0, direction)) + counter.to_bytes(8, "big")


def seal(key: bytes, direction: int, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt; the (direction, counter) pair must never repeat under one key."""
    return AESGCM(key).encrypt(nonce(direction, counter), plaintext, aad)


def open_sealed(key: bytes, direction: int, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decrypt; AuthenticationError if the tag does not verify."""
    try:
        return AESGCM(key).decrypt(nonce(direction, counter), ciphertext, aad)
    except InvalidTag:
        raise AuthenticationError("AEAD tag did not verify") from None


def ecdh(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """The 32-byte x-coordinate of the shared point."""
    return private_key.exchange(ec.ECDH(), peer)


def update_window(last: int, counter: int) -> int:
    """Accept `counter` only if it is newer than `last` (strictly increasing); return the new high mark."""
    if not last < counter <= MAX_COUNTER:
        raise ReplayError(f"counter {counter} is not newer than {last}")
    return counter


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Per-direction AES-256-GCM keys of one confidential session."""

    d2v: bytes
    v2d: bytes


def derive_session_keys(
    shared: bytes, *, challenge: bytes, vehicle_id: bytes, key_id: bytes,
    device_ephemeral: bytes, vehicle_ephemeral: bytes, session_id: bytes,
) -> SessionKeys:
    """HKDF the ephemeral ECDH secret into the two direction keys (PROTOCOL.md §4.4)."""
    info = transcript(LABEL_SESSION_KEYS, vehicle_id, key_id, device_ephemeral, vehicle_ephemeral, session_id)
    okm = hkdf(shared, salt=challenge, info=info, length=64)
    return SessionKeys(d2v=okm[:32], v2d=okm[32:])


@dataclass(frozen=True, slots=True)
class PairingKeys:
    """Keys derived from the CPace ISK: two confirmation MAC keys and two sealing keys."""

    confirm_v2d: bytes
    confirm_d2v: bytes
    seal_d2v: bytes
    seal_v2d: bytes


def pairing_prs(code: str, *, vehicle_id: bytes, slot: int) -> bytes:
    """The CPace password-related string for a one-time code: SHA-256(transcript(code label, ...))."""
    return hashlib.sha256(
        transcript(LABEL_PAIR_CODE, vehicle_id, bytes((slot,)), code.encode("ascii"))
    ).digest()


def pairing_ci(vehicle_id: bytes) -> bytes:
    """The CPace channel identifier: binds the exchange to this vehicle."""
    return transcript(LABEL_PAIR_CI, vehicle_id)


def derive_pairing_keys(isk: bytes, *, challenge: bytes, vehicle_id: bytes, slot: int,
                        device_share: bytes, vehicle_share: bytes) -> PairingKeys:
    """HKDF the CPace ISK into the pairing keys (PROTOCOL.md §6)."""
    info = transcript(LABEL_PAIR_KEYS, vehicle_id, bytes((slot,)), device_share, vehicle_share)
    okm = hkdf(isk, salt=challenge, info=info, length=128)
    return PairingKeys(okm[0:32], okm[32:64], okm[64:96], okm[96:128])
