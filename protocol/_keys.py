"""P-256 key pairs, short key ids and (de)serialization of public and private keys (PROTOCOL.md §4.1)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ._errors import AuthenticationError, DecodeError

CURVE = ec.SECP256R1()
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # n, P-256's group order (SEC 2 §2.4.2)
SCALAR_RNG_BYTES = 48  # random bytes per scalar: 128 bits beyond n's 256, so the reduction's bias is ~2^-128
KEY_ID_LEN = 4
PUBLIC_KEY_LEN = 65  # uncompressed SEC1: 0x04 || X || Y
SIGNATURE_LEN = 64  # raw r || s, 32 bytes each, big-endian
_KEY_ID_LABEL = b"dkey/1 key id\x00"
# RFC 6979 deterministic ECDSA: no RNG failure can leak the key, and test vectors are reproducible.
_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFY = ec.ECDSA(hashes.SHA256())


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key from the OS's CSPRNG."""
    return ec.generate_private_key(CURVE)


def random_scalar(rng: Callable[[int], bytes]) -> int:
    """A scalar in [1, n-1] from one rng(48) call: (OS2IP(r) mod (n - 1)) + 1 (PROTOCOL.md §6.2, §10.2)."""
    raw = rng(SCALAR_RNG_BYTES)
    if len(raw) != SCALAR_RNG_BYTES:
        raise ValueError(f"rng({SCALAR_RNG_BYTES}) returned {len(raw)} bytes")
    return int.from_bytes(raw, "big") % (ORDER - 1) + 1


def ephemeral_from_rng(rng: Callable[[int], bytes]) -> ec.EllipticCurvePrivateKey:
    """An ephemeral P-256 key whose scalar comes from `rng` (see random_scalar)."""
    return ec.derive_private_key(random_scalar(rng), CURVE)


def private_key_from_scalar(scalar: int) -> ec.EllipticCurvePrivateKey:
    """The P-256 key with this secret scalar (test keys and vectors only)."""
    return ec.derive_private_key(scalar, CURVE)


def encode_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed SEC1 encoding used on the wire and in storage."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def decode_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a compressed (33) or uncompressed (65) SEC1 P-256 point; DecodeError if it is not on the curve."""
    if len(data) not in (33, PUBLIC_KEY_LEN) or data[0] not in (2, 3, 4) or (data[0] == 4) != (len(data) == 65):
        raise DecodeError(f"not a SEC1 P-256 public key ({len(data)} bytes)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, data)
    except ValueError as exc:
        raise DecodeError("public key is not a point on P-256") from exc


def key_id(public_key: bytes | ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte id of a public key: SHA-256("dkey/1 key id" 0x00 || uncompressed SEC1)[:4]."""
    raw = public_key if isinstance(public_key, bytes) else encode_public_key(public_key)
    if len(raw) != PUBLIC_KEY_LEN:
        raw = encode_public_key(decode_public_key(raw))
    return hashlib.sha256(_KEY_ID_LABEL + raw).digest()[:KEY_ID_LEN]


def serialize_private_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the passphrase if one is given; write it to a 0600 file."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def load_private_key(data: bytes, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Parse a PKCS#8 PEM P-256 private key; ValueError if it is not one or the passphrase is wrong."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:  # cryptography's way of saying "encrypted, but no passphrase" and vice versa
        raise ValueError(str(exc)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise ValueError("not a P-256 private key")
    return key


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-P256-SHA256 over `message`, as 64 raw bytes r || s."""
    r, s = decode_dss_signature(key.sign(message, _SIGN))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
    """Raise AuthenticationError unless `signature` (r || s) is valid for `message`."""
    if len(signature) != SIGNATURE_LEN:
        raise AuthenticationError("signature has the wrong length")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < ORDER and 0 < s < ORDER):
        raise AuthenticationError("signature out of range")
    try:
        public_key.verify(encode_dss_signature(r, s), message, _VERIFY)
    except InvalidSignature:
        raise AuthenticationError("bad signature") from None


# The published test keys of PROTOCOL.md §10.1 (vehicle, device, other device, driver). Their private scalars are
# public: whoever holds one of these is anyone. A vehicle refuses to run with one or to enroll one.
PUBLISHED_TEST_KEYS = frozenset(bytes.fromhex(h) for h in (
    "049c34a2cb5ca57b3a98c79b1559e2c64bf07a38d63ceef1b9a344c08a631ba6b6"
    "0e24a202537ad66aad24c8367ff7e33bcc09486401aa33bbd36a7a6c8b348395",
    "04b15cbae41d9b7b26a32b016a43161bd8031710a941dfc7f38a91330a1a40674d"
    "3ae619a2a3fa1c80359b3aea72722bfb814d68e8c3f5f27dca24b2ca0be778c2",
    "042e9cd0a2b60750206b92dd9a936bde3207f383d87acae70318bf4c83a1579860"
    "5f8bb80f4fdb389e4aaefdae6fcca63b5aae503d49f3e4b7ad9c6ea0f70198e8",
    "04f590ecee770b6d6c959c31f3442d2d06e0abf524c251f8265feb5d217bf23c6a"
    "58e4a046389c3cccbf218029277ce493e31374c1f06af800235cbbec777f103f",
))


def is_published_test_key(public_key: bytes | ec.EllipticCurvePublicKey) -> bool:
    """True for one of the published test keys (PROTOCOL.md §10.1: NEVER ENROLL), in any SEC1 encoding."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return encode_public_key(public_key) in PUBLISHED_TEST_KEYS
    try:
        return encode_public_key(decode_public_key(public_key)) in PUBLISHED_TEST_KEYS
    except DecodeError:
        return False  # not a key at all: whatever refuses it, it is not one of ours


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A P-256 private key with its encoded public key and key id precomputed."""

    private_key: ec.EllipticCurvePrivateKey
    public_bytes: bytes
    key_id: bytes

    @classmethod
    def from_private_key(cls, key: ec.EllipticCurvePrivateKey) -> KeyPair:
        """Wrap a private key, computing its public encoding and id once."""
        pub = encode_public_key(key.public_key())
        return cls(key, pub, key_id(pub))

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        return cls.from_private_key(generate_private_key())

    def sign(self, message: bytes) -> bytes:
        """Sign with this key (64 raw bytes)."""
        return sign(self.private_key, message)
