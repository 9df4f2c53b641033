"""The pairing code's text forms (protocol/_pairing_code.py): what is accepted, and what is refused, exactly.

Written against mutants that no protocol test reached (docs/MUTANTS.md): the code is the PAKE's password, so a
parser that drops or invents digits pairs with the wrong slot or not at all.
"""

from __future__ import annotations

import pytest

from protocol import pairing_uri, parse_code

VEHICLE = bytes.fromhex("0a1b2c3d")


@pytest.mark.parametrize("text", ["42123456", "4212 3456", "4212-3456", "  42 12-34 56\n"])
def test_spaces_and_dashes_are_ignored_and_no_vehicle_is_named(text: str) -> None:
    assert parse_code(text) == ("42123456", None)


def test_qr_payload_gives_the_code_and_the_vehicle_id() -> None:
    uri = pairing_uri("42123456", VEHICLE, "Maya's phone")
    assert uri.startswith("dkey://pair?code=42123456&vehicle=0a1b2c3d&name=")
    assert parse_code(uri) == ("42123456", VEHICLE)
    assert parse_code("dkey://pair?code=4212-3456") == ("42123456", None)  # the vehicle is optional


@pytest.mark.parametrize("text", ["4212345", "421234567", "4212345a", "", "dkey://pair?vehicle=0a1b2c3d",
                                  "dkey://pair?code=1234"])
def test_anything_but_eight_digits_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="8 digits"):
        parse_code(text)


def test_a_qr_vehicle_id_that_is_not_hex_is_refused() -> None:
    with pytest.raises(ValueError, match="not hex"):
        parse_code("dkey://pair?code=42123456&vehicle=zz")
