"""The hardware package's one exception tree; each error says whether the lock may have moved."""

from __future__ import annotations

from protocol import DoorState


class ActuatorError(Exception):
    """Base of every error this package raises: a command was not (fully) carried out."""

    #: False means the outputs were never energised for this command; True means the lock may have moved.
    may_have_acted: bool = False


class ActuatorConfigError(ActuatorError, ValueError):
    """An ActuatorConfig that is invalid or unsafe; raised before any pin is touched.

    ``key`` is the option at fault (None if no one option is), ``value`` what it was given (None: not set),
    ``problem`` what is wrong and ``allowed`` what would be accepted, so a caller that knows the config file
    can name it too (key_server.config does). str() is one line: ``pulse_ms = 0: too small (allowed: ...)``.
    """

    def __init__(self, key: str | None, value: object, problem: str, allowed: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.allowed = allowed
        where = "actuator" if key is None else (f"{key} (not set)" if value is None else f"{key} = {value!r}")
        super().__init__(f"{where}: {problem} (allowed: {allowed})")


class HardwareUnavailableError(ActuatorError):
    """The GPIO backend or a pin could not be opened: gpiozero/lgpio missing, not a Pi, pin busy or invalid."""


class BackendUnavailableError(HardwareUnavailableError):
    """No GPIO backend loads (gpiozero or lgpio missing, no pin factory works): an install problem, not a busy pin."""


class NotConfiguredError(ActuatorError):
    """The command needs an output that is not wired (e.g. start-enable without ``start_pin``)."""


class DoorOpenError(ActuatorError):
    """Lock refused because the door sensor reports the door open (``refuse_lock_when_open``)."""

    def __init__(self, door: DoorState = DoorState.OPEN) -> None:
        super().__init__("refusing to lock: the door is open")
        self.door = door


class LockClosedError(ActuatorError):
    """The lock was closed, or shut down by the fail-safe (signal, exit); it energises nothing any more."""


class ActuatorFault(ActuatorError):
    """A GPIO error or an interrupted pulse: outputs were de-energised, but the lock may have moved."""

    def __init__(self, message: str, *, output: str | None = None, may_have_acted: bool = True) -> None:
        super().__init__(message)
        self.output = output
        self.may_have_acted = may_have_acted
