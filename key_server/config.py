"""key-server configuration: a TOML file with every option, defaults that suit a Pi service and a laptop user."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hardware import ActuatorConfig

SYSTEM_STATE_DIR = Path("/var/lib/dkey")  # the systemd unit's StateDirectory=dkey
SYSTEM_CONFIG = Path("/etc/dkey/config.toml")
IDENTITY_FILE = "vehicle_key.pem"
STORE_FILE = "keys.db"


class ConfigError(ValueError):
    """The configuration file or an option is wrong; the message says which and how to fix it."""


def default_state_dir() -> Path:
    """$DKEY_STATE_DIR, else /var/lib/dkey for root (the service), else ~/.local/state/dkey."""
    env = os.environ.get("DKEY_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dkey"


@dataclass(slots=True)
class ServerOptions:
    """The [server] table."""

    name: str = "dkey"  # advertised BLE name (bless also sets the adapter alias to it)
    radio: str = "ble"  # ble | sim
    adapter: str | None = None  # e.g. "hci0"; None = BlueZ's default adapter
    sim_dir: str | None = None  # sim radio only: the air directory ($DKEY_SIM_DIR or /tmp/dkey-sim-<uid>)
    challenge_ttl: float = 5.0  # seconds a challenge stays valid; lower it for stronger relay resistance
    link_idle_timeout: float = 30.0  # drop a central that stays idle this long (frees the connection slot)
    timezone: str | None = None  # for guest schedules; None = the system's local zone
    log_level: str = "info"


@dataclass(slots=True)
class PairingOptions:
    """The [pairing] table."""

    code_ttl: str = "10m"  # how long a one-time code lives
    attempts: int = 5  # wrong tries before a code dies


@dataclass(slots=True)
class RateLimitOptions:
    """The [rate_limit] table: failed attempts (see key_server/ratelimit.py)."""

    link_burst: float = 5
    link_rate: float = 0.5
    global_burst: float = 30
    global_rate: float = 5.0


@dataclass(slots=True)
class Config:
    """Everything key-server reads from its config file and command line."""

    state_dir: Path = field(default_factory=default_state_dir)
    server: ServerOptions = field(default_factory=ServerOptions)
    pairing: PairingOptions = field(default_factory=PairingOptions)
    rate_limit: RateLimitOptions = field(default_factory=RateLimitOptions)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    source: Path | None = None  # the file it was read from, if any

    @property
    def identity_path(self) -> Path:
        """The vehicle private key file (0600)."""
        return self.state_dir / IDENTITY_FILE

    @property
    def store_path(self) -> Path:
        """The SQLite key store."""
        return self.state_dir / STORE_FILE


def _table(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown option(s) in [{where}]: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from exc


def load_config(path: Path | None, state_dir: Path | None = None) -> Config:
    """Read `path` (or <state_dir>/config.toml, or /etc/dkey/config.toml, whichever exists) over the defaults."""
    sd = state_dir or default_state_dir()
    candidates = [path] if path else [sd / "config.toml", SYSTEM_CONFIG]
    data: dict[str, Any] = {}
    source = None
    for cand in candidates:
        if cand is not None and cand.exists():
            try:
                data = tomllib.loads(cand.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{cand}: not valid TOML: {exc}") from exc
            source = cand
            break
        if path is not None:
            raise ConfigError(f"config file {path} does not exist")
    known = {"state_dir", "server", "pairing", "rate_limit", "actuator"}
    if set(data) - known:
        raise ConfigError(f"unknown table(s) in {source}: {', '.join(sorted(set(data) - known))}")
    cfg = Config(
        state_dir=state_dir or Path(data.get("state_dir", sd)),
        server=_table(ServerOptions, data.get("server", {}), "server"),
        pairing=_table(PairingOptions, data.get("pairing", {}), "pairing"),
        rate_limit=_table(RateLimitOptions, data.get("rate_limit", {}), "rate_limit"),
        actuator=_table(ActuatorConfig, data.get("actuator", {}), "actuator"),
        source=source,
    )
    if cfg.server.radio not in ("ble", "sim"):
        raise ConfigError(f"[server] radio must be 'ble' or 'sim', not {cfg.server.radio!r}")
    return cfg


SAMPLE_CONFIG = """\
# key-server configuration (TOML). Every option is shown with its default.
# state_dir = "/var/lib/dkey"

[server]
name = "dkey"                 # advertised BLE name
radio = "ble"                 # ble (BlueZ via bless) | sim (local simulated radio)
# adapter = "hci0"            # BlueZ adapter; default: BlueZ's default
challenge_ttl = 5.0           # seconds; lower = stronger against relayed or delayed commands
link_idle_timeout = 30.0      # seconds before an idle central is dropped
# timezone = "Europe/Berlin"  # guest schedules; default: system local time
log_level = "info"

[pairing]
code_ttl = "10m"              # lifetime of a one-time pairing code
attempts = 5                  # wrong tries before the code dies

[rate_limit]                  # failed attempts (bad signatures, stale challenges, garbage)
link_burst = 5
link_rate = 0.5               # per second, per connected central
global_burst = 30
global_rate = 5.0

[actuator]
kind = "sim"                  # sim | pulse | two-line | latched   (see docs/HARDWARE.md)
# unlock_pin = 5              # BCM; active-low boards: 5/6/4 (pulled up at power-on = off), active-high: 17/27/22
# lock_pin = 6                # two-line only (docs/HARDWARE.md, "Which pins")
# active_high = false         # most relay boards are active-low
# pulse_ms = 500
# max_on_ms = 2000
# relock_after_s = 30
# start_pin = 4
# start_on_s = 120
# door_pin = 16
# refuse_lock_when_open = false
"""
