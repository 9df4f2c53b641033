"""`key-server run`: wire config, identity, store, actuator and radio into a KeyService and serve."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

from dkey_link.contract import Peripheral
from hardware import ActuatorEvent, LockChanged, OutputChanged, build_lock, install_signal_failsafe

from .audit import AuditLog
from .clock import GuardedClock
from .config import Config
from .identity import load_identity
from .ratelimit import FailureLimiter
from .service import KeyService, ServiceConfig
from .store import KeyStore

log = logging.getLogger("key_server.run")


def _log_actuator(event: ActuatorEvent) -> None:
    """One log line per actuator change, so a person (and the demo) can see the lock move."""
    if isinstance(event, OutputChanged):
        log.info("actuator: %s %s", event.output, "energised" if event.energised else "off")
    elif isinstance(event, LockChanged):
        log.info("actuator: lock is now %s", event.lock.label)


def make_peripheral(cfg: Config) -> Peripheral:
    """The configured radio backend (ble imports bless only now)."""
    if cfg.server.radio == "sim":
        from dkey_link.sim import SimPeripheral

        return SimPeripheral(cfg.server.name, air_dir=Path(cfg.server.sim_dir) if cfg.server.sim_dir else None)
    from .radio.ble import BlessPeripheral

    return BlessPeripheral(cfg.server.name, adapter=cfg.server.adapter)


async def serve(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; the actuator is de-energised on the way out, whatever happens."""
    from .cli import CliError, Exit

    if not cfg.identity_path.exists() or not cfg.store_path.exists():
        raise CliError(f"{cfg.state_dir} is not initialised: run `key-server init` first", Exit.NOT_INITIALISED)
    identity = load_identity(cfg.identity_path)
    store = KeyStore.open(cfg.store_path)
    clock = GuardedClock(store)
    lock = build_lock(cfg.actuator, on_change=_log_actuator)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # De-energise synchronously inside the signal handler (works even if the loop is stuck), then ask the
    # loop to shut down cleanly.

    def on_signal(_signum: int) -> None:
        loop.call_soon_threadsafe(stop.set)

    restore = install_signal_failsafe(lock, on_signal=on_signal)
    rl = cfg.rate_limit
    service = KeyService(
        identity=identity, store=store, audit=AuditLog(store), clock=clock, lock=lock,
        peripheral=make_peripheral(cfg),
        config=ServiceConfig(
            challenge_ttl=cfg.server.challenge_ttl, link_idle_timeout=cfg.server.link_idle_timeout,
            tz=ZoneInfo(cfg.server.timezone) if cfg.server.timezone else None,
            limiter=FailureLimiter(rl.link_burst, rl.link_rate, rl.global_burst, rl.global_rate)),
    )
    try:
        await service.start()
        print(f"advertising as {cfg.server.name} (vehicle id {identity.key_id.hex()}, radio {cfg.server.radio})",
              flush=True)
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        try:
            await service.stop()
        finally:
            await lock.aclose()
            restore()
            clock.close()
            store.close()
