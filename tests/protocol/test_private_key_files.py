"""Private keys at rest (PROTOCOL.md §4.1): a passphrase really encrypts, and only a P-256 key loads.

Written against mutants that survived the protocol tests (docs/MUTANTS.md): dropping the passphrase wrote the key
in clear and every test still passed.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from protocol import KeyPair, load_private_key, serialize_private_key

from .helpers import DEVICE_SCALAR, fixed_key


def _same_key(a: ec.EllipticCurvePrivateKey, b: ec.EllipticCurvePrivateKey) -> bool:
    return a.private_numbers().private_value == b.private_numbers().private_value


def test_passphrase_encrypts_the_key_and_only_that_passphrase_opens_it() -> None:
    key = fixed_key(DEVICE_SCALAR).private_key
    pem = serialize_private_key(key, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert _same_key(load_private_key(pem, b"correct horse"), key)
    with pytest.raises(ValueError):
        load_private_key(pem, b"wrong horse")
    with pytest.raises(ValueError):
        load_private_key(pem)  # encrypted, and no passphrase given: a ValueError, not cryptography's TypeError


def test_without_a_passphrase_the_key_is_plain_pkcs8_and_refuses_a_passphrase() -> None:
    key = fixed_key(DEVICE_SCALAR).private_key
    pem = serialize_private_key(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _same_key(load_private_key(pem), key)
    with pytest.raises(ValueError):
        load_private_key(pem, b"a passphrase for a key that has none")


@pytest.mark.parametrize("other", [
    ed25519.Ed25519PrivateKey.generate(),  # not an EC key at all
    ec.generate_private_key(ec.SECP384R1()),  # an EC key on another curve
], ids=["ed25519", "p384"])
def test_a_key_that_is_not_p256_is_refused(other: object) -> None:
    pem = other.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="not a P-256 private key"):
        load_private_key(pem)


def test_a_generated_pair_round_trips_through_an_encrypted_file() -> None:
    pair = KeyPair.generate()
    loaded = KeyPair.from_private_key(load_private_key(serialize_private_key(pair.private_key, b"pw"), b"pw"))
    assert loaded.public_bytes == pair.public_bytes and loaded.key_id == pair.key_id
