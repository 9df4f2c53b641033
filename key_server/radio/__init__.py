"""Radio backends: GATT-shaped links that only move bytes (ble, sim over a local socket, mock in memory)."""
