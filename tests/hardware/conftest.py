"""Fixtures for the hardware tests: gpiozero's MockFactory (pins recorded across the board), manual timers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from .hwkit import ManualTimers, RecordingPin


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh MockFactory, also installed as gpiozero's default (as GPIOZERO_PIN_FACTORY=mock would)."""
    mock = MockFactory(pin_class=RecordingPin)
    mock.changes = []
    previous = Device.pin_factory
    Device.pin_factory = mock
    yield mock
    mock.reset()
    Device.pin_factory = previous


@pytest.fixture
def timers() -> ManualTimers:
    """A timer factory whose timers fire only on ``timers.fire()``."""
    return ManualTimers()
