"""The link layer both sides share: GATT-shaped contracts, the mock and sim airs, owner-only secret files.

It sits between `protocol` (pure, below it) and `key_server` / `key_client` (above it, never importing each
other). Nothing here decides anything about keys: links move bytes, secret files hold bytes. The BlueZ
adapters live with the side that uses them (bless in `key_server.radio.ble`, bleak in `key_client.radio.ble`).
See docs/ARCHITECTURE.md.
"""
