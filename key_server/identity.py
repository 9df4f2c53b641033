"""The vehicle's identity key: created once by `key-server init`, kept in a 0600 file, refused if looser."""

from __future__ import annotations

from pathlib import Path

from dkey_link.secretfile import read_secret, write_secret
from protocol import KeyPair, generate_private_key, is_published_test_key, load_private_key, serialize_private_key


class IdentityExists(FileExistsError):
    """`init` found an identity already and will not overwrite it."""


class UnusableIdentity(ValueError):
    """The vehicle key file is there and private, but holds no usable P-256 private key."""


def create_identity(path: Path) -> KeyPair:
    """Generate the vehicle key and write it to `path` (0600); IdentityExists if the file is there."""
    if path.exists():
        raise IdentityExists(f"{path} already exists; refusing to overwrite the vehicle key")
    key = generate_private_key()
    write_secret(path, serialize_private_key(key))
    return KeyPair.from_private_key(key)


def load_identity(path: Path) -> KeyPair:
    """Load the vehicle key; InsecureSecretFile if group/world-readable, FileNotFoundError if missing,
    UnusableIdentity if the file holds something else or a published test key (PROTOCOL.md §10.1)."""
    data = read_secret(path)
    try:
        identity = KeyPair.from_private_key(load_private_key(data))
    except (ValueError, TypeError) as exc:  # cryptography's parse errors; TypeError: a key of another kind
        reason = str(exc).split(". ")[0]  # cryptography appends a FAQ link and an internal error name
        raise UnusableIdentity(f"{path} does not hold a usable vehicle key ({reason}): restore it "
                               "from a backup, or start over with a new state directory and pair every device "
                               "again") from None
    if is_published_test_key(identity.public_bytes):  # PROTOCOL.md §10.1: its private key is in every checkout
        raise UnusableIdentity(f"{path} holds a published test key (PROTOCOL.md §10.1), whose private "
                               "key anyone can read: start over with a new state directory (key-server init) and "
                               "pair every device again")
    return identity
