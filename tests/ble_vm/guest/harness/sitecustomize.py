"""Loaded at interpreter start-up by subprocesses whose PYTHONPATH includes this directory (the
guest conftest adds it for ``spawn(..., bleak_race_fix=True)`` / ``run_cli(..., bleak_race_fix=True)``).
Installs the test-only bleak race work-around; does nothing unless BLE_VM_BLEAK_RACE_FIX=1."""

import os

if os.environ.get("BLE_VM_BLEAK_RACE_FIX") == "1":
    import bleak_race_fix

    bleak_race_fix.install()
