"""Device keys kept in the operating system's keyring (`pair --keyring`) through the `keyring` library.

macOS Keychain, Windows Credential Locker, or the Secret Service (GNOME Keyring, KWallet) on Linux: the system
encrypts the key at rest and unlocks it with the user's login. One item per device key: service `wearable-dkey`,
user name the key id in hex, the secret the PKCS#8 PEM text of the private key. The keychain index only records
that the key is there (VehicleEntry.keyring); nothing of it is written under keys/.

Not the default (docs/CLIENT.md): a keyring needs a logged-in desktop session (the Secret Service lives on the
session D-Bus) and may show an unlock dialog, so a watch, `auto` under a service manager, SSH or CI would fail.
Only a real OS keyring is accepted: the `fail`/`null` backends (none found) and the keyrings.alt file backends
(a plaintext or home-made encrypted file, no better than our own 0600 or passphrase file) are refused.

`keyring` is imported only here, only for keyring keys (start-up time; it is the optional extra [keyring]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import KeychainError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

SERVICE = "wearable-dkey"
INSTALL_HINT = "pip install 'wearable-dkey[keyring]'"


def _backend() -> KeyringBackend:
    """The keyring backend, if it is a real OS keyring; KeychainError (exit 8) saying why not otherwise."""
    try:
        import keyring
    except ImportError:
        raise KeychainError(f"OS keyring support is not installed: {INSTALL_HINT}, or keep the key in a file "
                            "(the default, or --passphrase)") from None
    backend = keyring.get_keyring()
    for member in getattr(backend, "backends", None) or [backend]:  # a ChainerBackend writes to any of its members
        module = type(member).__module__
        if module.startswith(("keyring.backends.fail", "keyring.backends.null")) or member.priority <= 0:
            raise KeychainError("no OS keyring is available here (no Secret Service on the session D-Bus, no "
                                "macOS Keychain or Windows Credential Locker): keep the key in a file instead "
                                "(the default, or --passphrase)")
        if module.startswith("keyrings.alt"):
            raise KeychainError(f"the keyring backend {module}.{type(member).__name__} is a file, not an OS "
                                "keyring: keep the key in our own file instead (the default, or --passphrase)")
    return backend


def _failed(action: str, key_id: bytes, exc: Exception) -> KeychainError:
    detail = str(exc) or type(exc).__name__
    return KeychainError(f"the OS keyring could not {action} the device key {key_id.hex()} ({detail}); "
                         "is it unlocked, in a desktop session?")


def store(key_id: bytes, pem: bytes) -> None:
    """Put this device key in the OS keyring and read it back; KeychainError if either fails."""
    backend = _backend()
    try:
        backend.set_password(SERVICE, key_id.hex(), pem.decode("ascii"))
        back = backend.get_password(SERVICE, key_id.hex())
    except Exception as exc:  # noqa: BLE001 - backends raise their own types (D-Bus, Security framework, WinRT)
        raise _failed("store", key_id, exc) from exc
    if back is None or back.encode("ascii") != pem:
        # Checked before pairing: a key the vehicle enrolls must be one we can read again.
        raise KeychainError(f"the OS keyring did not keep the device key {key_id.hex()}: keep it in a file instead")


def load(key_id: bytes) -> bytes | None:
    """This device key's PEM from the OS keyring; None if the keyring has no such item."""
    backend = _backend()
    try:
        text = backend.get_password(SERVICE, key_id.hex())
    except Exception as exc:  # noqa: BLE001 - see store()
        raise _failed("read", key_id, exc) from exc
    return None if text is None else text.encode("ascii")


def delete(key_id: bytes) -> None:
    """Remove this device key from the OS keyring (nothing if it is not there); KeychainError if that fails."""
    backend = _backend()
    from keyring.errors import PasswordDeleteError

    try:
        backend.delete_password(SERVICE, key_id.hex())
    except PasswordDeleteError:
        return  # not there (already deleted, or never stored)
    except Exception as exc:  # noqa: BLE001 - see store()
        raise _failed("delete", key_id, exc) from exc


__all__ = ["SERVICE", "delete", "load", "store"]
