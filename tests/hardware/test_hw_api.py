"""The public surface of ``hardware``: pinned names, the Lock protocol, config validation, doctor checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

import hardware
import protocol
from hardware import (
    ActuatorConfig,
    ActuatorConfigError,
    ActuatorError,
    ActuatorStatus,
    CheckLevel,
    DoorState,
    HardwareUnavailableError,
    Lock,
    LockState,
    SimulatedLock,
    build_lock,
    check_hardware,
)

ROOT = Path(__file__).resolve().parents[2]


def test_public_api_is_pinned() -> None:
    assert sorted(hardware.__all__) == [
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
    for name in hardware.__all__:
        assert getattr(hardware, name) is not None


def test_values_the_server_relies_on() -> None:
    # One vocabulary: the actuator's states are the protocol's (wire codes and text names).
    assert LockState is protocol.LockState and DoorState is protocol.DoorState
    assert {s.label for s in LockState} == {"locked", "unlocked", "unknown"}
    assert {s.label for s in DoorState} == {"open", "closed", "unknown"}
    status = ActuatorStatus(LockState.LOCKED, DoorState.CLOSED, start_enabled=False)
    with pytest.raises(AttributeError):
        status.lock = LockState.UNLOCKED  # type: ignore[misc]
    for error in (hardware.DoorOpenError, hardware.NotConfiguredError, hardware.ActuatorFault, ActuatorConfigError):
        assert issubclass(error, ActuatorError)
    assert issubclass(ActuatorConfigError, ValueError)
    assert hardware.ActuatorFault("x").may_have_acted and not hardware.DoorOpenError().may_have_acted


async def test_every_lock_satisfies_the_protocol(factory: MockFactory) -> None:
    locks: list[Any] = [SimulatedLock()]
    for config in (
        ActuatorConfig(kind="pulse", unlock_pin=17),
        ActuatorConfig(kind="two-line", unlock_pin=18, lock_pin=27),
        ActuatorConfig(kind="latched", unlock_pin=22),
    ):
        locks.append(build_lock(config, pin_factory=factory))
    for lock in locks:
        assert isinstance(lock, Lock)
        await lock.aclose()


def test_importing_hardware_does_not_import_gpiozero() -> None:
    code = "import sys, hardware; hardware.build_lock(hardware.ActuatorConfig()); print('gpiozero' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_a_gpio_kind_without_gpiozero_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # makes "import gpiozero" fail
    monkeypatch.delitem(sys.modules, "hardware.gpio", raising=False)
    with pytest.raises(HardwareUnavailableError, match=r"wearable-dkey\[pi\]"):
        build_lock(ActuatorConfig(kind="pulse", unlock_pin=17))


# -- ActuatorConfig --------------------------------------------------------------------------------------


def test_defaults_are_a_safe_simulation() -> None:
    config = ActuatorConfig()
    assert config.kind == "sim" and config.relay_kind == "two-line"
    assert config.active_high and config.relock_after_s is None and not config.refuse_lock_when_open
    assert config.max_on_s == 2.0
    assert ActuatorConfig(kind="latched", unlock_pin=17).max_on_s == 60.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "relay"}, "kind"),
        ({"kind": "pulse"}, "unlock_pin"),
        ({"kind": "two-line", "unlock_pin": 17}, "lock_pin"),
        ({"kind": "pulse", "unlock_pin": 17, "lock_pin": 27}, "only used by a two-line"),
        ({"kind": "pulse", "unlock_pin": 17, "pulse_ms": 0}, "pulse_ms"),
        ({"kind": "pulse", "unlock_pin": 17, "pulse_ms": 2500}, "exceeds max_on_ms"),
        ({"kind": "pulse", "unlock_pin": 17, "relock_after_s": 5}, "does not apply to a pulse"),
        ({"kind": "latched", "unlock_pin": 17, "relock_after_s": 120}, "raise max_on_ms"),
        ({"kind": "latched", "unlock_pin": 17, "max_on_ms": 10_000_000}, "max_on_ms"),
        ({"kind": "two-line", "unlock_pin": 17, "lock_pin": "GPIO17"}, "same pin"),
        ({"kind": "pulse", "unlock_pin": 17, "refuse_lock_when_open": True}, "needs door_pin"),
        ({"kind": "pulse", "unlock_pin": True}, "unlock_pin"),
        ({"kind": "pulse", "unlock_pin": 17, "active_high": "no"}, "active_high"),
        ({"door_pull": "sideways"}, "door_pull"),
        ({"start_on_s": float("nan")}, "start_on_s"),
        ({"debounce_ms": -1}, "debounce_ms"),
    ],
)
def test_invalid_configs_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ActuatorConfigError, match=message):
        ActuatorConfig(**options)


def test_from_mapping_reads_a_toml_table_and_rejects_unknown_keys() -> None:
    config = ActuatorConfig.from_mapping({"kind": "two-line", "unlock-pin": 17, "lock_pin": 27, "relock-after-s": 30})
    assert (config.unlock_pin, config.lock_pin, config.relock_after_s) == (17, 27, 30)
    with pytest.raises(ActuatorConfigError, match="unlock_pn"):
        ActuatorConfig.from_mapping({"unlock_pn": 17})
    with pytest.raises(ActuatorConfigError):
        ActuatorConfig.from_mapping({"pulse_ms": "500"})


@pytest.mark.parametrize(
    ("options", "key", "value", "problem", "allowed"),
    [
        ({"unlock_pn": 17}, "unlock_pn", 17, "unknown actuator option; did you mean unlock_pin?", "kind, simulate"),
        ({"pulse_ms": "500"}, "pulse_ms", "500", "not a finite number", "a number from 1 to 3600000"),
        ({"pulse_ms": True}, "pulse_ms", True, "not a finite number", "a number from 1 to 3600000"),
        ({"kind": "relay"}, "kind", "relay", "not one of the choices", '"sim", "pulse", "two-line", "latched"'),
        ({"kind": "pulse"}, "unlock_pin", None, "a pulse relay needs unlock_pin", "a BCM pin number"),
        ({"kind": "pulse", "unlock_pin": -1}, "unlock_pin", -1, "negative", "a BCM pin number"),
        ({"kind": "pulse", "unlock_pin": " "}, "unlock_pin", " ", "empty", "a BCM pin number"),
        ({"kind": "two-line", "unlock_pin": 17, "lock_pin": "BCM17"}, "lock_pin", "BCM17",
         "the same pin as unlock_pin", "no other"),
        ({"debounce_ms": 10_001}, "debounce_ms", 10_001, "too large", "from 0 to 10000"),
    ],
)
def test_config_errors_name_the_option_value_and_what_is_allowed(
    options: dict[str, Any], key: str, value: object, problem: str, allowed: str
) -> None:
    with pytest.raises(ActuatorConfigError) as info:
        ActuatorConfig.from_mapping(options)
    err = info.value
    assert (err.key, err.value, err.problem) == (key, value, problem)
    assert allowed in err.allowed
    assert "\n" not in str(err) and str(err).startswith(key)


def test_honest_wiring_passes_the_same_checks() -> None:
    config = ActuatorConfig.from_mapping({"kind": "two-line", "unlock_pin": "GPIO17", "lock_pin": 27,
                                          "door_pin": 16, "refuse_lock_when_open": True, "debounce_ms": 10_000})
    assert config.unlock_pin == "GPIO17" and config.refuse_lock_when_open


def test_describe_names_the_wiring() -> None:
    config = ActuatorConfig(kind="two-line", unlock_pin=17, lock_pin=27, active_high=False, start_pin=22)
    assert config.describe() == (
        "two-line relay, unlock GPIO 17, lock GPIO 27, active-low, pulse 500 ms, max on 2000 ms, "
        "start GPIO 22 for 120 s"
    )


# -- check_hardware (key-server doctor) ------------------------------------------------------------------


async def test_doctor_on_a_simulated_lock() -> None:
    checks = await check_hardware(ActuatorConfig())
    assert [(c.name, c.level) for c in checks] == [("actuator", CheckLevel.OK)]


async def test_doctor_claims_pins_without_energising(factory: MockFactory) -> None:
    config = ActuatorConfig(kind="two-line", unlock_pin=17, lock_pin=27, door_pin=5)
    checks = {c.name: c for c in await check_hardware(config, pin_factory=factory)}
    assert all(c.level is CheckLevel.OK for c in checks.values()), checks
    assert checks["door sensor"].detail == "door reads open"
    assert [s.state for s in factory.pin(17).states] == [False]  # nothing was energised
    await build_lock(config, pin_factory=factory).aclose()  # and the pins were released


async def test_doctor_warns_about_boot_levels_and_busy_pins(factory: MockFactory) -> None:
    config = ActuatorConfig(kind="pulse", unlock_pin=17, active_high=False)
    running = build_lock(config, pin_factory=factory)
    checks = {c.name: c for c in await check_hardware(config, pin_factory=factory)}
    assert checks["unlock pin at boot"].level is CheckLevel.WARN
    assert "pulled down at power-on" in checks["unlock pin at boot"].detail
    assert checks["pins"].level is CheckLevel.FAIL and "already running" in checks["pins"].detail
    await running.aclose()
