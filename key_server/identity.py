"""The vehicle's identity key: created once by `key-server init`, kept in a 0600 file, refused if looser."""

from __future__ import annotations

from pathlib import Path

from dkey_link.secretfile import read_secret, write_secret
from protocol import KeyPair, generate_private_key, load_private_key, serialize_private_key


class IdentityExists(FileExistsError):
    """`init` found an identity already and will not overwrite it."""


def create_identity(path: Path) -> KeyPair:
    """Generate the vehicle key and write it to `path` (0600); IdentityExists if the file is there."""
    if path.exists():
        raise IdentityExists(f"{path} already exists; refusing to overwrite the vehicle key")
    key = generate_private_key()
    write_secret(path, serialize_private_key(key))
    return KeyPair.from_private_key(key)


def load_identity(path: Path) -> KeyPair:
    """Load the vehicle key; InsecureSecretFile if group/world-readable, FileNotFoundError if missing."""
    return KeyPair.from_private_key(load_private_key(read_secret(path)))
