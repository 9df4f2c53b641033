"""Lock actuators behind one small interface: relays on a Pi's GPIO (gpiozero), or a simulated lock.

Everything here is testable without hardware: the drivers are written against a Relay/BinaryInput seam,
gpiozero is imported only by ``hardware.gpio`` (which ``build_lock`` loads for a GPIO config), and the
simulated lock runs the same drivers over in-memory relays. Every output starts de-energised, has a
hard maximum on-time enforced by a watchdog thread, and is de-energised on errors, cancellation, SIGTERM/
SIGINT (``install_signal_failsafe``) and at exit. Wiring and safety: docs/HARDWARE.md.
"""

from protocol import DoorState, LockState

from ._backend import BinaryInput, FakeInput, FakeRelay, Relay
from ._build import Check, CheckLevel, actuate_test, build_lock, check_hardware
from ._config import ActuatorConfig
from ._drivers import LatchedLock, PulseLock, RelayLock, TwoLineLock
from ._errors import (
    ActuatorConfigError,
    ActuatorError,
    ActuatorFault,
    BackendUnavailableError,
    DoorOpenError,
    HardwareUnavailableError,
    LockClosedError,
    NotConfiguredError,
)
from ._failsafe import install_signal_failsafe, shutdown_all
from ._sim import SimulatedLock
from ._types import (
    ActuatorEvent,
    ActuatorStatus,
    DoorChanged,
    Lock,
    LockChanged,
    OutputChanged,
)

__all__ = [
    "ActuatorConfig",
    "ActuatorConfigError",
    "ActuatorError",
    "ActuatorEvent",
    "ActuatorFault",
    "ActuatorStatus",
    "BackendUnavailableError",
    "BinaryInput",
    "Check",
    "CheckLevel",
    "DoorChanged",
    "DoorOpenError",
    "DoorState",
    "FakeInput",
    "FakeRelay",
    "HardwareUnavailableError",
    "LatchedLock",
    "Lock",
    "LockChanged",
    "LockClosedError",
    "LockState",
    "NotConfiguredError",
    "OutputChanged",
    "PulseLock",
    "Relay",
    "RelayLock",
    "SimulatedLock",
    "TwoLineLock",
    "actuate_test",
    "build_lock",
    "check_hardware",
    "install_signal_failsafe",
    "shutdown_all",
]
