"""The vehicle's BLE radio backend (ble.py, on bless/BlueZ) and what every radio asks of the advertised name.

The sim and mock radios live in dkey_link; nothing here imports bless, so the name rule can be checked anywhere.
"""

import re
from typing import Final

SERVER_INSTALL: Final = "pip install 'wearable-dkey[server]'"  # the vehicle install: brings bless along

# One rule for both radios, so a name that works on the sim radio works on the Pi: the sim radio's file-name
# rule (dkey_link.sim.NAME_RE), and at most 29 bytes, what a BLE scan response holds after its 2-byte header.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,28}")


def check_advertised_name(name: str) -> str:
    """`name` if it can be advertised on either radio; ValueError saying what is allowed otherwise."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"advertised name {name!r} is not allowed: use 1 to 29 ASCII letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return name
