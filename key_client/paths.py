"""Where the keychain lives by default (kept apart from keychain.py so `--help` loads no cryptography).

The default is the platform's per-user *data* directory (platformdirs.user_data_dir): the keychain holds
private keys and pinned vehicle keys, which are data, not settings. On Linux that is $XDG_DATA_HOME/dkey
(~/.local/share/dkey), not the config directory: ~/.config is the folder people keep in dotfile repositories
and sync between machines, and a private key must not travel with it. Earlier versions used
$XDG_CONFIG_HOME/dkey (~/.config/dkey) on every system; key_client/relocate.py moves such a keychain.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "dkey"


def default_path() -> Path:
    """$DKEY_KEYCHAIN, else the platform's per-user data directory for dkey."""
    env = os.environ.get("DKEY_KEYCHAIN")
    if env:
        return Path(env).expanduser()
    return platform_path()


def platform_path() -> Path:
    """The per-user data directory: ~/.local/share/dkey ($XDG_DATA_HOME), ~/Library/Application Support/dkey,
    %LOCALAPPDATA%\\dkey (local, not roaming: a private key stays on this machine)."""
    from platformdirs import user_data_path

    return user_data_path(APP, appauthor=False, roaming=False)


def legacy_paths() -> list[Path]:
    """Where earlier versions kept the keychain: $XDG_CONFIG_HOME/dkey if set, and ~/.config/dkey."""
    found: list[Path] = []
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        found.append(Path(xdg).expanduser() / APP)
    home = Path.home() / ".config" / APP
    if home not in found:
        found.append(home)
    return found


def audit_pins_path(keychain_dir: Path) -> Path:
    """The audit pins file (key_client/audit_pins.py) of the keychain in `keychain_dir`: beside its index."""
    return Path(keychain_dir) / "audit_pins.json"


__all__ = ["audit_pins_path", "default_path", "legacy_paths", "platform_path"]
