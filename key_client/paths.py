"""Where the keychain lives by default (kept apart from keychain.py so `--help` loads no cryptography)."""

from __future__ import annotations

import os
from pathlib import Path


def default_path() -> Path:
    """$DKEY_KEYCHAIN, else $XDG_CONFIG_HOME/dkey, else ~/.config/dkey."""
    env = os.environ.get("DKEY_KEYCHAIN")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "dkey"


def audit_pins_path(keychain_dir: Path) -> Path:
    """The audit pins file (key_client/audit_pins.py) of the keychain in `keychain_dir`: beside its index."""
    return Path(keychain_dir) / "audit_pins.json"


__all__ = ["audit_pins_path", "default_path"]
