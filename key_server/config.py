"""key-server configuration: one TOML file, every option typed and bounded, checked when it is read.

The schema below is the one description of every option: each field's ``help`` (and the rules beside it) is
what the sample config (`key-server config`, SAMPLE_CONFIG) prints, so the two cannot drift. The [actuator]
table is hardware's ActuatorConfig (validated there, since hardware may not import dkey_link); its errors
are turned into the same ConfigError form. A ConfigError's str() is one line naming the file, the key
(section.key), the bad value and what is allowed; key-server exits with ExitCode.CONFIG on it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dkey_link.settings import (
    MISSING,
    SettingsError,
    check_keys,
    load_table,
    parse_duration,
    sample_table,
    setting,
)
from hardware import ActuatorConfig, ActuatorConfigError
from protocol import DEFAULT_CHALLENGE_TTL

from .audit import DEFAULT_MAX_ENTRIES, MIN_MAX_ENTRIES
from .clock import DRIVER_MAX_FORWARD, OWNER_MAX_FORWARD, Probe, Source, probes_for
from .enrollment import MAX_ATTEMPTS
from .radio import NAME_ALLOWED, NAME_PATTERN
from .ratelimit import (
    ACTUATION_BURST,
    ACTUATION_PER_MINUTE,
    GLOBAL_BURST,
    GLOBAL_RATE,
    LINK_BURST,
    LINK_QUEUE,
    LINK_RATE,
    MAX_LINK_LIFETIME,
    MAX_LINKS,
)

SYSTEM_STATE_DIR = Path("/var/lib/dkey")  # the systemd unit's StateDirectory=dkey
SYSTEM_CONFIG = Path("/etc/dkey/config.toml")
IDENTITY_FILE = "vehicle_key.pem"
STORE_FILE = "keys.db"

DEFAULT_TOKEN_ROTATION: Final = 900.0  # seconds between two advertising tokens (PROTOCOL.md §13)
DEFAULT_ADVERTISING_INTERVAL_MS: Final = 152.5  # a waiting person does not notice; one of Apple's recommended values
DEFAULT_LINK_IDLE_TIMEOUT: Final = 30.0  # seconds: connect, act, disconnect; an idle link only holds a slot

# AF_UNIX paths are at most 107 bytes; `/<name>.sock` takes up to 35 of them.
SIM_DIR_MAX: Final = 70
# A challenge must outlive a watch's round trip, and the shorter it lives the less a relay can do with it.
CHALLENGE_TTL_MIN: Final = 0.5
CHALLENGE_TTL_MAX: Final = 60.0


class ConfigError(ValueError):
    """The config file or an option is wrong; str() is one line naming the file, the key, the value and the fix."""

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None,
                 value: object = MISSING, allowed: str | None = None) -> None:
        super().__init__(_one_line(message))
        self.file = None if file is None else str(file)
        self.key = key  # "section.key", a table name, or None for a whole-file problem
        self.value = value  # the bad value as read, or MISSING
        self.allowed = allowed

    @classmethod
    def from_settings(cls, err: SettingsError) -> ConfigError:
        """The same error, as the type key-server's callers catch."""
        return cls(str(err), file=err.file, key=err.key, value=err.value, allowed=err.allowed)


def default_state_dir() -> Path:
    """$DKEY_STATE_DIR, else /var/lib/dkey for root or its owner (the service user), else ~/.local/state/dkey."""
    env = os.environ.get("DKEY_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0 or _owned_by_me(SYSTEM_STATE_DIR):
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dkey"


def _owned_by_me(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.geteuid()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- checks


def _absolute_path(value: str) -> None:
    """A path the service finds whatever its working directory (systemd starts it in /)."""
    if "\0" in value:
        raise ValueError("contains a NUL character")
    if not value.startswith("/"):
        raise ValueError("not an absolute path")


def _known_zone(value: str) -> None:
    """A zone zoneinfo can load now, so guest schedules never meet an unknown zone at unlock time."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: "../x", "" and other non-keys
        raise ValueError("not a known time zone") from None


# ---------------------------------------------------------------------------------------------- schema


@dataclass(slots=True)
class TopLevel:
    """Keys outside any table."""

    state_dir: str | None = setting(
        None, help="where the vehicle key, key store and config live (default: /var/lib/dkey for root and its owner)",
        min=1, check=_absolute_path, allowed="an absolute path")


@dataclass(slots=True)
class ServerOptions:
    """The [server] table."""

    name: str = setting(
        "dkey", help="advertised BLE name (bless also sets the adapter alias to it)", pattern=NAME_PATTERN,
        allowed=NAME_ALLOWED)
    radio: str = setting("ble", help="the radio: ble is BlueZ via bless, sim a local simulated radio",
                         choices=("ble", "sim"))
    adapter: str | None = setting(None, help="BlueZ adapter; default: hci0 (bless's default)",
                                  pattern=r"hci[0-9]{1,3}", allowed="an adapter name like hci0")
    sim_dir: str | None = setting(
        None, help="sim radio only: the air directory (default: $DKEY_SIM_DIR or /tmp/dkey-sim-<uid>)",
        max=SIM_DIR_MAX, check=_absolute_path, allowed=f"an absolute path of at most {SIM_DIR_MAX} characters")
    challenge_ttl: float = setting(
        DEFAULT_CHALLENGE_TTL, help="seconds a challenge stays valid; lower = stronger against relayed commands",
        min=CHALLENGE_TTL_MIN, max=CHALLENGE_TTL_MAX)
    link_idle_timeout: float = setting(
        DEFAULT_LINK_IDLE_TIMEOUT, help="seconds before an idle central is dropped (at least challenge_ttl)",
        min=5.0, max=600.0)
    timezone: str | None = setting(None, help="for guest schedules; default: the system's local time zone",
                                   min=1, check=_known_zone, allowed="an IANA time zone such as Europe/Berlin or UTC")
    log_level: str = setting("info", help="how much key-server logs (-v means debug)",
                             choices=("debug", "info", "warning", "error"))


@dataclass(slots=True)
class PairingOptions:
    """The [pairing] table."""

    # Minutes and up only: `key-server pair` reads this with the same parser as --code-ttl (policy.parse_when).
    code_ttl: str = setting(
        "10m", help="lifetime of a one-time pairing code", duration=True, min=60, max=86_400,
        pattern=r"(?:[0-9]+[mhdw])+", allowed="a duration in m, h, d or w (10m, 2h, 1d) from 1m to 1d")
    # Each wrong try is a guess at the code: more than a few tens would weaken it for no honest gain.
    attempts: int = setting(5, help="wrong tries before the code dies", min=1, max=MAX_ATTEMPTS)

    @property
    def code_ttl_s(self) -> int:
        """code_ttl in seconds."""
        return parse_duration(self.code_ttl)


@dataclass(slots=True)
class RateLimitOptions:
    """The [rate_limit] table: failed attempts, and actuations per key (see key_server/ratelimit.py)."""

    # A burst below 1 would refuse every link after its first failure; rates bound CPU spent on bad signatures.
    link_burst: float = setting(LINK_BURST, help="failures a connected central may burst", min=1, max=1_000)
    link_rate: float = setting(LINK_RATE, help="failures per second afterwards, per central", min=0.01, max=100)
    global_burst: float = setting(GLOBAL_BURST, help="failures all centrals together may burst", min=1, max=10_000)
    global_rate: float = setting(GLOBAL_RATE, help="failures per second afterwards, all centrals", min=0.01,
                                 max=1_000)
    # A burst of at least 1 lets a key act at all; above 60 in a row, or 2 a second sustained, the limit would no
    # longer protect the relay from a key used as a toggle.
    actuation_burst: int = setting(ACTUATION_BURST, help="unlock/lock/start commands one key may burst",
                                   min=1, max=60)
    actuation_per_minute: float = setting(ACTUATION_PER_MINUTE, help="actuations per minute afterwards, per key",
                                          min=0.5, max=120)
    # An honest device has one message waiting at most; 64 waiting would let one link queue real work again.
    link_queue: int = setting(LINK_QUEUE, help="complete messages one central may have waiting (then ATT busy)",
                              min=1, max=64)
    # bless serves one central at a time anyway; above 64 the per-link state is no longer small.
    max_links: int = setting(MAX_LINKS, help="centrals served at once; one more is disconnected at once",
                             min=1, max=64)
    # At least the longest challenge_ttl (60 s), so a device can always finish what it fetched a challenge for.
    max_link_lifetime: float = setting(MAX_LINK_LIFETIME, help="seconds a central may stay connected, busy or not",
                                       min=60, max=3_600)


@dataclass(slots=True)
class AuditOptions:
    """The [audit] table: how much of the audit log the server keeps (docs/THREAT_MODEL.md, "The audit log")."""

    # Below 100 a burst of honest activity would prune what the owner has not read yet; 10 million rows are
    # about 2.5 GB, already more than a small SD card should give to a log.
    max_entries: int = setting(DEFAULT_MAX_ENTRIES, help="entries kept; past it the oldest tenth is pruned "
                               "(its last hash is kept, so the rest still verifies)",
                               min=MIN_MAX_ENTRIES, max=10_000_000)

@dataclass(slots=True)
class ClockOptions:
    """The [clock] table: which sources may confirm the vehicle's clock (docs/PROTOCOL.md §5.7, DEPLOY.md §9).

    Until one of them does, guests and keys with a validity window or schedule are refused CLOCK_UNTRUSTED.
    """

    trust_rtc: bool = setting(True, help="a real-time clock the kernel can read (/sys/class/rtc) confirms the time")
    trust_ntp: bool = setting(True, help="a synchronised NTP clock (the kernel's adjtimex state) confirms the time")
    trust_owner: bool = setting(True, help="an owner's device confirms the time when it connects (SET_TIME)")
    trust_driver: bool = setting(True, help="a driver's device (no validity window) confirms it too (SET_TIME)")
    # The system clock at start is what a Pi without an RTC gets wrong: only for a machine whose clock is known good.
    trust_system: bool = setting(False, help="trust the system clock as it is (a dev machine; never a Pi without RTC)")
    # At least an hour (a statement must be able to bridge a real power cut), at most ten years.
    owner_max_forward: str = setting(
        f"{OWNER_MAX_FORWARD // 86_400}d", help="how far ahead of the vehicle's last known time an owner may set it",
        duration=True, min=3_600, max=3_660 * 86_400)
    driver_max_forward: str = setting(
        f"{DRIVER_MAX_FORWARD // 86_400}d", help="the same for a driver (keep it short: it can start a guest early)",
        duration=True, min=3_600, max=3_660 * 86_400)

    @property
    def owner_max_forward_s(self) -> int:
        """owner_max_forward in seconds."""
        return parse_duration(self.owner_max_forward)

    @property
    def driver_max_forward_s(self) -> int:
        """driver_max_forward in seconds."""
        return parse_duration(self.driver_max_forward)

    def probes(self) -> dict[Source, Probe]:
        """The probes of the machine sources this table trusts (rtc, ntp, system), for GuardedClock."""
        return probes_for(rtc=self.trust_rtc, ntp=self.trust_ntp, system=self.trust_system)


@dataclass(slots=True)
class BleOptions:
    """The [ble] table: what the vehicle puts on air (docs/PROTOCOL.md §13, docs/THREAT_MODEL.md)."""

    # Empty by default: a fixed name would let anyone follow the car. The sim radio's socket keeps [server] name.
    local_name: str = setting(
        "", help="BLE local name to advertise; empty = none, so nothing static identifies the car",
        pattern=f"(?:{NAME_PATTERN})?", allowed=f"empty, or {NAME_ALLOWED}")
    # At least 10 s (a token must live long enough to be scanned and resolved), at most a day.
    token_rotation: float = setting(
        DEFAULT_TOKEN_ROTATION, help="seconds between two advertising tokens (a new one at every start too)",
        min=10, max=86_400)
    # Legacy advertising only (docs/DEPLOY.md §8): the kernel renews the private address only on its 15 min timer or
    # when it powers the controller on. Off: no power cycles, and the address may link two tokens.
    renew_legacy_address: bool = setting(
        True, help="on a controller that advertises the legacy way, power it off and on with every new token (while "
                   "no device is connected), so its private address changes with the token")
    # The Bluetooth range for an advertising interval is 20 ms to 10.24 s.
    advertising_interval_ms: float = setting(
        DEFAULT_ADVERTISING_INTERVAL_MS, help="advertising interval in ms; shorter = found sooner, more power",
        min=20, max=10_240)


TABLES: Final[Mapping[str, type]] = {"server": ServerOptions, "ble": BleOptions, "pairing": PairingOptions,
                                     "rate_limit": RateLimitOptions, "audit": AuditOptions, "clock": ClockOptions}
ACTUATOR_TABLE: Final = "actuator"


@dataclass(slots=True)
class Config:
    """Everything key-server reads from its config file and command line."""

    state_dir: Path = field(default_factory=default_state_dir)
    server: ServerOptions = field(default_factory=ServerOptions)
    ble: BleOptions = field(default_factory=BleOptions)
    pairing: PairingOptions = field(default_factory=PairingOptions)
    rate_limit: RateLimitOptions = field(default_factory=RateLimitOptions)
    audit: AuditOptions = field(default_factory=AuditOptions)
    clock: ClockOptions = field(default_factory=ClockOptions)
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


# ---------------------------------------------------------------------------------------------- loading


def find_config(state_dir: Path) -> Path | None:
    """The one config file without --config: <state_dir>/config.toml or /etc/dkey/config.toml, never a silent pick.

    Both present is a ConfigError: one would shadow the other, and which lock key-server drives must not depend
    on a file someone forgot (`init` once wrote a simulated-lock config into the state dir that won over /etc).
    """
    found = [c for c in (state_dir / "config.toml", SYSTEM_CONFIG) if c.exists()]
    if len(found) == 2 and not _same_file(*found):
        raise ConfigError(f"two config files, {found[0]} and {found[1]}: pass --config with the one to use, or move "
                          "the other away", file=found[0])
    return found[0] if found else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def load_config(path: Path | None, state_dir: Path | None = None) -> Config:
    """Read `path`, else the one file find_config names, over the defaults.

    Every key is checked here, so a bad file stops the program at start with one ConfigError line.
    """
    sd = state_dir or default_state_dir()
    if path is not None and not path.exists():
        raise ConfigError(f"{path}: no such config file", file=path)
    source = path if path is not None else find_config(sd)
    data: dict[str, Any] = {}
    if source is not None:
        try:
            with source.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc} (see https://toml.io)", file=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the config file: {exc}", file=source) from None
    cfg = parse_config(data, file=source or "(defaults)", state_dir=state_dir)
    cfg.source = source
    return cfg


def parse_config(data: Mapping[str, object], *, file: str | Path, state_dir: Path | None = None) -> Config:
    """A Config from a parsed TOML document; ConfigError (naming `file`) on the first unknown or bad key."""
    try:
        known = ["state_dir", *TABLES, ACTUATOR_TABLE]
        check_keys({k: v for k, v in data.items() if isinstance(v, Mapping)}, known, file=file, what="table")
        check_keys({k: v for k, v in data.items() if not isinstance(v, Mapping)}, known, file=file)
        top = load_table(TopLevel, {k: v for k, v in data.items() if k not in known[1:]}, file=file, section="")
        tables: dict[str, Any] = {
            name: load_table(schema, data.get(name, {}), file=file, section=name) for name, schema in TABLES.items()
        }
    except SettingsError as exc:
        raise ConfigError.from_settings(exc) from None
    cfg = Config(
        state_dir=state_dir or (Path(top.state_dir) if top.state_dir else default_state_dir()),
        server=tables["server"], ble=tables["ble"], pairing=tables["pairing"], rate_limit=tables["rate_limit"],
        audit=tables["audit"], clock=tables["clock"],
        actuator=_actuator(data.get(ACTUATOR_TABLE, {}), file=file),
    )
    _check_across(cfg, file=file)
    return cfg


def override(cfg: Config, section: str, values: Mapping[str, object], *, origin: str = "command line") -> None:
    """Apply command-line values to one table of `cfg`, through the same checks as the file (None = not given).

    All or nothing: on ConfigError `cfg` is left as it was.
    """
    given = {k: v for k, v in values.items() if v is not None}
    table: object
    if section == ACTUATOR_TABLE:
        table = _actuator({**_current(cfg.actuator), **given}, file=origin)
    elif section in TABLES:
        try:
            table = load_table(TABLES[section], {**_current(getattr(cfg, section)), **given}, file=origin,
                               section=section)
        except SettingsError as exc:
            raise ConfigError.from_settings(exc) from None
    else:
        raise ValueError(f"no config table [{section}]")
    changes: dict[str, Any] = {section: table}
    _check_across(dataclasses.replace(cfg, **changes), file=origin)
    setattr(cfg, section, table)


def validate(cfg: Config) -> None:
    """Check an in-memory Config again (after code changed it) exactly as a file is checked; ConfigError if bad."""
    origin = cfg.source or "(in memory)"
    for name in TABLES:
        override(cfg, name, {}, origin=str(origin))
    override(cfg, ACTUATOR_TABLE, {}, origin=str(origin))


def _current(table: object) -> dict[str, object]:
    """The set (non-None) values of a table instance, as a TOML table would give them."""
    return {f.name: getattr(table, f.name) for f in dataclasses.fields(table)  # type: ignore[arg-type]
            if getattr(table, f.name) is not None}


def _actuator(data: object, *, file: str | Path) -> ActuatorConfig:
    """hardware's ActuatorConfig from the [actuator] table, its errors in the ConfigError form."""
    if not isinstance(data, Mapping):
        raise ConfigError.from_settings(SettingsError(file, ACTUATOR_TABLE, data, "not a table", "an [actuator] table"))
    try:
        return ActuatorConfig.from_mapping(data)
    except ActuatorConfigError as exc:
        key = ACTUATOR_TABLE if exc.key is None else f"{ACTUATOR_TABLE}.{exc.key}"
        value = MISSING if exc.value is None else exc.value  # hardware's None is "not set": TOML has no null
        raise ConfigError.from_settings(SettingsError(file, key, value, exc.problem, exc.allowed)) from None


def _check_across(cfg: Config, *, file: str | Path) -> None:
    """Rules that tie two options together."""
    server = cfg.server
    if server.link_idle_timeout < server.challenge_ttl:
        # A device that fetched a challenge must keep its link for the challenge's whole lifetime.
        raise ConfigError.from_settings(SettingsError(
            file, "server.link_idle_timeout", server.link_idle_timeout,
            f"shorter than server.challenge_ttl ({server.challenge_ttl:g})",
            f"a number from {max(5.0, server.challenge_ttl):g} to 600"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # everything str.splitlines() breaks at


def _one_line(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


# ---------------------------------------------------------------------------------------------- sample


_EXAMPLES: Final[Mapping[str, str]] = {  # shown, commented out, for the options whose default is "not set"
    "state_dir": '"/var/lib/dkey"', "adapter": '"hci0"', "sim_dir": '"/run/dkey-sim"', "timezone": '"Europe/Berlin"',
}


# hardware's ActuatorConfig describes itself in docs/HARDWARE.md; tests/key_server/test_config.py checks
# that every key here is one of its fields and that the sample loads.
_ACTUATOR_SAMPLE = """\

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

SAMPLE_CONFIG: Final = "\n".join([
    "# key-server configuration (TOML). Every option is shown with its default; `key-server config` prints this.",
    *sample_table(TopLevel, None, examples=_EXAMPLES),
    "",
    *sample_table(ServerOptions, "server", examples=_EXAMPLES),
    "",
    "# What the car advertises: a rotating token only its own devices recognise (docs/PROTOCOL.md §13).",
    *sample_table(BleOptions, "ble", examples=_EXAMPLES),
    "",
    *sample_table(PairingOptions, "pairing", examples=_EXAMPLES),
    "",
    "# Token buckets: failed attempts (bad signatures, stale challenges, wrong or abandoned pairing codes,",
    "# garbage) per central and overall; actuations (unlock, lock, start) per key, refused with BUSY.",
    *sample_table(RateLimitOptions, "rate_limit", examples=_EXAMPLES),
    "",
    "# The audit log's retention bound, applied by the running server.",
    *sample_table(AuditOptions, "audit", examples=_EXAMPLES),
    "# Until one of these sources confirms the time after start, guests and keys with a validity window or",
    "# schedule are refused (\"the vehicle's clock is not yet trusted\"); owners and drivers without one work.",
    *sample_table(ClockOptions, "clock", examples=_EXAMPLES),
]) + "\n" + _ACTUATOR_SAMPLE
