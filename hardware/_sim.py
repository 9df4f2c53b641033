"""SimulatedLock: the real drivers over in-memory relays, with a timestamped history of what they did."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType

from protocol import DoorState

from ._backend import FakeInput, FakeRelay
from ._config import ActuatorConfig
from ._drivers import DRIVERS, EventListener, RelayLock
from ._types import ActuatorEvent, ActuatorStatus, OutputChanged


class SimulatedLock:
    """A lock with no GPIO: same pulse, relock, cap and fail-safe behaviour, recorded in ``history``.

    It prints nothing; pass ``on_change`` to see each event (it may be called from a watchdog or debounce thread).
    By default a ``kind="sim"`` config gets a start-enable output and a door sensor (closed); any other
    config is simulated as wired, so ``SimulatedLock(real_config)`` is a dry run of the real set-up.
    """

    def __init__(
        self,
        config: ActuatorConfig | None = None,
        *,
        on_change: EventListener | None = None,
        start_output: bool | None = None,
        door_sensor: bool | None = None,
        door: DoorState = DoorState.CLOSED,
    ) -> None:
        self._config = config if config is not None else ActuatorConfig()
        simulated = self._config.kind == "sim"
        with_start = start_output if start_output is not None else simulated or self._config.start_pin is not None
        with_door = door_sensor if door_sensor is not None else simulated or self._config.door_pin is not None
        self._user_on_change = on_change
        self._history: list[ActuatorEvent] = []
        self._history_lock = threading.Lock()
        driver = DRIVERS[self._config.relay_kind]
        names = [*driver.lines, *(["start"] if with_start else [])]
        self.relays: Mapping[str, FakeRelay] = {name: FakeRelay(name) for name in names}
        self.door_input: FakeInput | None = None
        if with_door:
            self.door_input = FakeInput(level=self._level_for(door))
        self._driver: RelayLock = driver(self._config, self.relays, door=self.door_input, on_change=self._record)

    @property
    def config(self) -> ActuatorConfig:
        """The configuration being simulated."""
        return self._config

    @property
    def driver(self) -> RelayLock:
        """The driver doing the work (the same class that drives GPIO)."""
        return self._driver

    @property
    def history(self) -> list[ActuatorEvent]:
        """Every output, lock-state and door change so far, oldest first (a copy)."""
        with self._history_lock:
            return list(self._history)

    def output_history(self) -> list[tuple[float, str, bool]]:
        """Only the output changes, as ``(monotonic_time, output_name, energised)``."""
        return [(e.at, e.output, e.energised) for e in self.history if isinstance(e, OutputChanged)]

    def clear_history(self) -> None:
        """Forget the history so far."""
        with self._history_lock:
            self._history.clear()

    def set_door(self, door: DoorState) -> None:
        """Move the simulated reed switch; the state changes after the configured debounce."""
        if self.door_input is None:
            raise ValueError("this simulated lock has no door sensor")
        if door is DoorState.UNKNOWN:
            raise ValueError("a reed switch is either open or closed")
        self.door_input.drive(self._level_for(door))

    def _level_for(self, door: DoorState) -> bool:
        return (door is DoorState.OPEN) == self._config.door_open_is_high

    def _record(self, event: ActuatorEvent) -> None:
        with self._history_lock:
            self._history.append(event)
        if self._user_on_change is not None:
            self._user_on_change(event)

    async def unlock(self) -> ActuatorStatus:
        """Unlock, as the simulated relay kind would."""
        return await self._driver.unlock()

    async def lock(self) -> ActuatorStatus:
        """Lock; DoorOpenError when refusing with the door open."""
        return await self._driver.lock()

    async def start_enable(self) -> ActuatorStatus:
        """Energise the simulated start-enable output for ``start_on_s``."""
        return await self._driver.start_enable()

    def status(self) -> ActuatorStatus:
        """The current simulated status."""
        return self._driver.status()

    def shutdown(self) -> None:
        """De-energise everything now and refuse further commands."""
        self._driver.shutdown()

    async def aclose(self) -> None:
        """De-energise and close; idempotent."""
        await self._driver.aclose()

    async def __aenter__(self) -> SimulatedLock:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<SimulatedLock {self._config.describe()}>"
