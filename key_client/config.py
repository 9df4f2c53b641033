"""The keychain's optional config.toml (docs/CLIENT.md), checked against a schema by dkey_link.settings.

Unknown sections and keys are refused with a did-you-mean; every error is one line naming the file, the key,
the value and what is allowed, and exits with CONFIG (13).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dkey_link.settings import SettingsError, check_keys, load_table, setting

from .errors import ConfigError

CONFIG = "config.toml"


@dataclass(frozen=True, slots=True)
class AutoConfig:
    """[auto]: passive entry (`key-client auto`); command-line flags override these."""

    relay_risk_accepted: bool = setting(False, help="opt in to passive entry and its relay-attack risk")
    unlock_rssi: int = setting(-60, help="unlock at or above this RSSI, dBm", min=-127, max=20)
    lock_rssi: int = setting(-75, help="lock below this RSSI, dBm (must be below unlock_rssi)", min=-127, max=20)
    dwell: float = setting(2.0, help="seconds the signal must stay strong before unlocking", min=0, max=600)
    lost: float = setting(5.0, help="seconds the signal must stay weak or gone before locking", min=0.1, max=3600)
    interval: float = setting(1.0, help="seconds between readings", min=0.01, max=60)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The whole of config.toml."""

    auto: AutoConfig = field(default_factory=AutoConfig)


SECTIONS = ("auto",)


def load_config(keychain_dir: Path) -> ClientConfig:
    """`keychain_dir`/config.toml checked (the defaults if it is absent); ConfigError if it is invalid."""
    import tomllib  # only when a command reads the config: most commands never do

    path = keychain_dir / CONFIG
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return ClientConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        check_keys(data, SECTIONS, file=path, what="section")
        auto = load_table(AutoConfig, data.get("auto", {}), file=path, section="auto")
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc
    if auto.lock_rssi >= auto.unlock_rssi:
        raise ConfigError(f"{path}: auto.lock_rssi = {auto.lock_rssi}: must be below auto.unlock_rssi = "
                          f"{auto.unlock_rssi} (allowed: a gap between the two, e.g. -75 and -60)")
    return ClientConfig(auto=auto)


__all__ = ["CONFIG", "AutoConfig", "ClientConfig", "load_config"]
