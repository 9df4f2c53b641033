"""Value types shared by every actuator: states, status, events, and the ``Lock`` interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from protocol import DoorState, LockState


@dataclass(frozen=True, slots=True)
class ActuatorStatus:
    """A snapshot of the actuator: lock state, door state, and whether start-enable is energised."""

    lock: LockState
    door: DoorState
    start_enabled: bool


@dataclass(frozen=True, slots=True)
class OutputChanged:
    """An output line was energised or de-energised at monotonic time ``at``."""

    at: float
    output: str
    energised: bool


@dataclass(frozen=True, slots=True)
class LockChanged:
    """The reported lock state changed at monotonic time ``at``."""

    at: float
    lock: LockState


@dataclass(frozen=True, slots=True)
class DoorChanged:
    """The debounced door state changed at monotonic time ``at``."""

    at: float
    door: DoorState


ActuatorEvent = OutputChanged | LockChanged | DoorChanged


@runtime_checkable
class Lock(Protocol):
    """What the key server drives: every implementation starts de-energised and fails safe."""

    async def unlock(self) -> ActuatorStatus:
        """Unlock; returns once the relay has done its job (a pulse has ended); raises ActuatorError."""
        ...

    async def lock(self) -> ActuatorStatus:
        """Lock; raises DoorOpenError if configured to refuse while the door is open."""
        ...

    async def start_enable(self) -> ActuatorStatus:
        """Energise the start-enable output for its window; raises NotConfiguredError if not wired."""
        ...

    def status(self) -> ActuatorStatus:
        """The current status; never blocks, never touches an output."""
        ...

    def shutdown(self) -> None:
        """De-energise everything now and refuse further commands; synchronous, safe in a signal handler."""
        ...

    async def aclose(self) -> None:
        """De-energise everything and release the pins; idempotent."""
        ...
