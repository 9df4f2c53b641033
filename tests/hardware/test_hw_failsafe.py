"""The process-level fail-safe: signals (in a child process and in-process) and the atexit hook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hardware
from hardware import ActuatorConfig, FakeRelay, LockClosedError, SimulatedLock, _failsafe, install_signal_failsafe
from hardware._failsafe import live_locks

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("hw_signal_child.py")


def run_child(mode: str, sig: int | None = None) -> tuple[int, dict[str, list[bool]], str]:
    """Run the child; once it reports READY send ``sig``; return its exit code and reports by tag."""
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, str(CHILD), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        if sig is not None:
            ready = proc.stdout.readline()
            assert ready.strip() == "READY", ready + proc.communicate(timeout=60)[1]
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    reports = {r["tag"]: r["states"] for r in map(json.loads, filter(None, out.splitlines()))}
    return proc.returncode, reports, err


def test_sigterm_during_a_pulse_de_energises_and_exits_cleanly() -> None:
    code, reports, err = run_child("pulse", signal.SIGTERM)
    assert reports["final"] == [False, True, False], err
    assert code == 128 + signal.SIGTERM, err  # SystemExit, not a kill: finally blocks and atexit ran


def test_sigterm_with_a_stuck_event_loop_de_energises_in_the_handler() -> None:
    code, reports, err = run_child("stuck", signal.SIGTERM)
    assert reports["in-handler"] == [False, True, False], err  # before any cleanup: the handler did it
    assert reports["final"] == [False, True, False], err
    assert code == 128 + signal.SIGTERM, err


def test_sigint_during_a_pulse_de_energises() -> None:
    code, reports, err = run_child("pulse", signal.SIGINT)
    assert reports["final"] == [False, True, False], err
    assert code != 0  # chained to asyncio's Ctrl-C handling: KeyboardInterrupt


def test_interpreter_exit_de_energises_a_lock_that_was_never_closed() -> None:
    code, reports, err = run_child("exit")
    assert code == 0, err
    assert reports["energised"] == [False, True], err
    assert reports["at-exit"] == [False, True, False], err  # our hook ran before gpiozero released the pin


# -- install_signal_failsafe in this process, with SIGUSR1 ---------------------------------------------


@pytest.fixture
def usr1() -> Iterator[None]:
    """Leave SIGUSR1's handler as we found it."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


async def test_handler_shuts_the_lock_down_then_calls_on_signal(usr1: None) -> None:
    sim = SimulatedLock(ActuatorConfig(simulate="latched"))
    await sim.unlock()
    got: list[int] = []
    restore = install_signal_failsafe(sim, signals=[signal.SIGUSR1], on_signal=got.append)
    signal.raise_signal(signal.SIGUSR1)
    assert got == [signal.SIGUSR1]
    assert not sim.relays["unlock"].energised
    with pytest.raises(LockClosedError):
        await sim.unlock()
    restore()
    assert signal.getsignal(signal.SIGUSR1) is not None
    await sim.aclose()


async def test_handler_chains_to_the_previous_python_handler(usr1: None) -> None:
    order: list[str] = []
    relay = FakeRelay("unlock")

    def previous(signum: int, frame: Any) -> None:
        order.append(f"previous sees energised={relay.energised}")

    signal.signal(signal.SIGUSR1, previous)
    lock = hardware.LatchedLock(ActuatorConfig(simulate="latched"), {"unlock": relay})
    await lock.unlock()
    restore = install_signal_failsafe(lock, signals=[signal.SIGUSR1])
    signal.raise_signal(signal.SIGUSR1)
    assert order == ["previous sees energised=False"]  # de-energised first, then chained
    restore()
    assert signal.getsignal(signal.SIGUSR1) is previous
    await lock.aclose()


async def test_default_action_becomes_systemexit(usr1: None) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    sim = SimulatedLock()
    restore = install_signal_failsafe(sim, signals=[signal.SIGUSR1])
    with pytest.raises(SystemExit) as caught:
        signal.raise_signal(signal.SIGUSR1)
    assert caught.value.code == 128 + signal.SIGUSR1
    restore()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    await sim.aclose()


async def test_ignored_signals_stay_ignored(usr1: None) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    install_signal_failsafe(signals=[signal.SIGUSR1])()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN


async def test_without_a_lock_every_live_lock_is_shut_down(usr1: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_failsafe, "_live", set())  # only this test's locks: others' must not be shut down
    first, second = SimulatedLock(ActuatorConfig(simulate="latched")), SimulatedLock(ActuatorConfig(simulate="latched"))
    await first.unlock()
    await second.unlock()
    assert set(live_locks()) == {first.driver, second.driver}
    restore = install_signal_failsafe(signals=[signal.SIGUSR1], on_signal=lambda signum: None)
    signal.raise_signal(signal.SIGUSR1)
    restore()
    assert not first.relays["unlock"].energised and not second.relays["unlock"].energised
    await first.aclose()
    await second.aclose()
    assert first.driver not in live_locks()  # aclose() unregisters
