"""Device-side radio backends; `key_client.radio.ble.BleakCentral` imports bleak only when it is used."""
