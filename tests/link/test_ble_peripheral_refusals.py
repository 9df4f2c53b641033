"""A write the vehicle refuses is answered with the D-Bus error and no ERROR log (real bless + dbus-next on a
private dbus-daemon, fake bluetoothd). dbus-next 0.2.3 logs "got unexpected error processing a message" with a
traceback when a D-Bus *method* raises an error, so BlessPeripheral answers RX's WriteValue from its bus message
handler instead; the ble_vm tier saw one such traceback per garbage write before."""

from __future__ import annotations

import logging

import pytest

from dkey_link.contract import AttError, AttErrorCode

from .fakes_ble import FakeBlueZ
from .test_ble_peripheral import bluez, car, needs_dbus  # noqa: F401 - fixtures (bus_address: conftest)


@needs_dbus
async def test_a_refused_write_is_answered_without_an_error_log(car, bluez: FakeBlueZ,  # noqa: F811
                                                               caplog: pytest.LogCaptureFixture) -> None:
    _, rec = car
    rec.fail = AttError(AttErrorCode.APP_REJECTED, "garbage")
    with caplog.at_level(logging.DEBUG):
        reply = await bluez.write(bluez.add_device(), b"\x05junk")
    assert reply == ("org.bluez.Error.Failed", "0x81")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "refused a write of 5 bytes" in caplog.text


@needs_dbus
async def test_an_accepted_write_gets_an_empty_method_return(car, bluez: FakeBlueZ) -> None:  # noqa: F811
    _, rec = car
    dev = bluez.add_device()
    assert await bluez.write(dev, b"ok") is None
    assert rec.writes(dev) == [b"ok"]
