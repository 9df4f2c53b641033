"""The vehicle's BLE radio backend (ble.py, on bless/BlueZ) and what every radio asks of the advertised name.

The sim and mock radios live in dkey_link; nothing here imports bless, so the name rule can be checked anywhere.
"""

import re
from typing import Final

SERVER_INSTALL: Final = "pip install 'wearable-dkey[server]'"  # the vehicle install: brings bless along

# The advertised name. One rule for every place it goes:
# - the sim radio's socket file `<air_dir>/<name>.sock` (dkey_link.sim.NAME_RE: [A-Za-z0-9][A-Za-z0-9._-]{0,63});
# - bless's D-Bus object paths (built from its [A-Za-z0-9_] characters: the first character guarantees one);
# - the BLE advertisement: a legacy scan response is 31 bytes, 2 of which are the Complete Local Name's AD
#   header, so 29 ASCII characters is the longest name a scanner receives whole (longer ones are shortened);
# - the adapter alias bless sets (BlueZ takes up to 248 bytes: no tighter limit there).
# No spaces or '/': a shell, a file name and a D-Bus path all take the name as it is.
# The adapter bless uses when none is named (bless.backends.bluezdbus.dbus.utils.get_adapter), so doctor checks it.
DEFAULT_ADAPTER: Final = "hci0"
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,28}"
NAME_ALLOWED: Final = "1 to 29 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME_RE: Final = re.compile(NAME_PATTERN)


def check_advertised_name(name: str) -> str:
    """`name` if it can be advertised on either radio; ValueError saying what is allowed otherwise."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"advertised name {name!r} is not allowed: use {NAME_ALLOWED}")
    return name
