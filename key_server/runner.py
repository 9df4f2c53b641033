"""`key-server run`: wire config, identity, store, actuator and radio into a KeyService and serve."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path

from dkey_link.contract import Peripheral, RadioError
from dkey_link.exit_codes import ExitCode
from hardware import ActuatorEvent, LockChanged, OutputChanged, build_lock, install_signal_failsafe
from protocol import KeyPair, Role

from .audit import AuditLog
from .cli_errors import CliError
from .clock import GuardedClock
from .config import ClockOptions, Config
from .identity import load_identity
from .radio import check_advertised_name
from .ratelimit import ActuationLimiter, FailureLimiter
from .sdnotify import Notifier, watchdog
from .service import KeyService, ServiceConfig
from .store import KeyStore
from .timezone import named_zone

log = logging.getLogger("key_server.run")

def _log_actuator(event: ActuatorEvent) -> None:
    """One log line per actuator change, so a person (and the demo) can see the lock move."""
    if isinstance(event, OutputChanged):
        log.info("actuator: %s %s", event.output, "energised" if event.energised else "off")
    elif isinstance(event, LockChanged):
        log.info("actuator: lock is now %s", event.lock.label)


def schedule_zone(cfg: Config) -> tzinfo | None:
    """The configured zone for guest schedules (None: local); CliError(CONFIG) if the system does not know it."""
    if not cfg.server.timezone:
        return None
    try:
        return named_zone(cfg.server.timezone)
    except ValueError as exc:
        raise CliError(f"configuration error: {exc}", ExitCode.CONFIG) from None


def statement_bounds(opts: ClockOptions) -> dict[Role, int]:
    """The roles whose SET_TIME counts, each with how far it may move an untrusted clock forward (seconds)."""
    bounds: dict[Role, int] = {}
    if opts.trust_owner:
        bounds[Role.OWNER] = opts.owner_max_forward_s
    if opts.trust_driver:
        bounds[Role.DRIVER] = opts.driver_max_forward_s
    return bounds


def make_peripheral(cfg: Config) -> Peripheral:
    """The configured radio backend (ble imports bless only now); CliError if it cannot be built."""
    try:
        if cfg.server.radio == "sim":
            from dkey_link.sim import SimPeripheral

            return SimPeripheral(cfg.server.name, air_dir=Path(cfg.server.sim_dir) if cfg.server.sim_dir else None)
        try:
            import bless  # noqa: F401 - only to say now, in one line, that the vehicle install is missing
        except ImportError as exc:
            from .radio.ble import bless_missing

            raise CliError(bless_missing(exc), ExitCode.HARDWARE_UNAVAILABLE) from None
        from .radio.ble import BlessPeripheral

        return BlessPeripheral(cfg.server.name, adapter=cfg.server.adapter, local_name=cfg.ble.local_name,
                               advertising_interval_ms=cfg.ble.advertising_interval_ms,
                               renew_legacy_address=cfg.ble.renew_legacy_address)
    except (ValueError, RadioError) as exc:
        raise CliError(f"cannot set up the {cfg.server.radio} radio: {exc}") from None


def missing_store(cfg: Config) -> str:
    """What to do about a missing keys.db: init on a fresh state dir, restore where the vehicle key exists."""
    if cfg.identity_path.exists():
        # init refuses here (the vehicle key exists), and a new empty store would orphan every paired device.
        return (f"no key store at {cfg.store_path}, but the vehicle key exists: restore keys.db from a backup "
                f"(`key-server --state-dir {cfg.state_dir} restore BACKUP`)")
    return f"{cfg.state_dir} is not initialised: run `key-server --state-dir {cfg.state_dir} init` first"


def load_vehicle(cfg: Config) -> KeyPair:
    """The vehicle identity; CliError(NOT_INITIALISED) before `init`; load_identity's errors for a bad key file."""
    if not cfg.identity_path.exists() or not cfg.store_path.exists():
        raise CliError(missing_store(cfg), ExitCode.NOT_INITIALISED)
    return load_identity(cfg.identity_path)


async def serve(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; the actuator is de-energised on the way out, whatever happens."""
    try:
        check_advertised_name(cfg.server.name)
    except ValueError as exc:
        raise CliError(f"configuration error: [server] name: {exc}", ExitCode.CONFIG) from None
    identity = load_vehicle(cfg)
    tz = schedule_zone(cfg)
    peripheral = make_peripheral(cfg)
    store = KeyStore.open(cfg.store_path)
    try:
        clock = GuardedClock(store, probes=cfg.clock.probes())
        # Every change the lock reports goes to the log and, once the service exists, to its watching sessions.
        listeners: list[Callable[[ActuatorEvent], None]] = [_log_actuator]

        def on_change(event: ActuatorEvent) -> None:
            for listen in tuple(listeners):
                listen(event)

        lock = build_lock(cfg.actuator, on_change=on_change)
    except BaseException:
        store.close()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # De-energise synchronously inside the signal handler (works even if the loop is stuck), then ask the
    # loop to shut down cleanly.

    def on_signal(_signum: int) -> None:
        loop.call_soon_threadsafe(stop.set)

    restore = install_signal_failsafe(lock, on_signal=on_signal)
    rl = cfg.rate_limit
    audit = AuditLog(store, max_entries=cfg.audit.max_entries)
    service = KeyService(
        identity=identity, store=store, audit=audit, clock=clock, lock=lock, peripheral=peripheral,
        config=ServiceConfig(
            challenge_ttl=cfg.server.challenge_ttl, link_idle_timeout=cfg.server.link_idle_timeout, tz=tz,
            limiter=FailureLimiter(rl.link_burst, rl.link_rate, rl.global_burst, rl.global_rate),
            actuations=ActuationLimiter(rl.actuation_burst, rl.actuation_per_minute),
            link_queue=rl.link_queue, max_links=rl.max_links, max_link_lifetime=rl.max_link_lifetime,
            statements=statement_bounds(cfg.clock), token_rotation=cfg.ble.token_rotation),
    )
    listeners.append(service.actuator_changed)
    systemd = Notifier.from_environ()
    # Pinged from this loop from the start: registering with BlueZ can take a while, and a loop that hangs
    # then is as dead as one that hangs later (docs/DEPLOY.md, "Run as a service").
    pinger = asyncio.create_task(watchdog(systemd), name="systemd watchdog")
    try:
        await service.start()
        ready = f"advertising as {cfg.server.name} (vehicle id {identity.key_id.hex()}, radio {cfg.server.radio})"
        print(ready, flush=True)
        systemd.ready(ready)
        await stop.wait()
        log.info("stopping")
        return ExitCode.OK
    finally:
        systemd.stopping()
        pinger.cancel()
        try:
            await service.stop()
        finally:
            await lock.aclose()
            restore()
            clock.close()
            store.close()
