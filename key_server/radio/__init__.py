"""The vehicle's BLE radio backend (ble.py, on bless/BlueZ); the sim and mock radios live in dkey_link."""

from typing import Final

SERVER_INSTALL: Final = "pip install 'wearable-dkey[server]'"  # the vehicle install: brings bless along
