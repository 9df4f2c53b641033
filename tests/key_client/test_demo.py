"""`./dev demo` tells the truth: its verdict on the revoked key's attempt depends on what that attempt did.

Its wearable scene (issue 12) is checked the same way: each claim's line is printed only when the exit codes,
the clients' remarks and the vehicle's audit log say so.

Issue 11: the tail of an earlier pulse ("unlock off", "lock is now unlocked") landed in the refused step's
window, and the demo said the revoked key had moved the lock. The verdict now rests on the audit log's `actuate`
entries and on outputs energised after the refused command, never on leftover lines.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from key_client.demo import energised_outputs, refused_command_moved

REFUSED = {"seq": 17, "event": "refused", "key_id": "d186efcc", "detail": {"status": "DENIED"}}
EARLIER_OUTCOME = {"seq": 16, "event": "unlock", "key_id": "d186efcc", "detail": {"intent": 15, "status": "OK"}}


def test_tail_of_an_earlier_pulse_is_not_a_movement() -> None:
    # The exact lines the issue saw at step 10, with the audit showing only the refusal.
    assert refused_command_moved([EARLIER_OUTCOME, REFUSED], ["unlock off", "lock is now unlocked"]) == []


def test_an_actuate_entry_after_the_mark_is_a_movement() -> None:
    actuate = {"seq": 18, "event": "actuate", "key_id": "d186efcc", "detail": {"command": "unlock"}}
    assert refused_command_moved([REFUSED, actuate], []) == ["audit #18: actuate unlock"]


def test_an_output_energised_after_the_mark_is_a_movement() -> None:
    assert refused_command_moved([REFUSED], ["unlock off", "unlock energised"]) == ["unlock energised"]


def test_energised_outputs_follows_each_output() -> None:
    assert energised_outputs(["unlock energised", "lock energised", "unlock off"]) == {"lock"}
    assert energised_outputs(["unlock energised", "unlock off", "lock is now unlocked"]) == set()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_and_its_verdicts_hold() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
    proc = subprocess.run([sys.executable, "-m", "key_client.demo"], capture_output=True, text=True, env=env,
                          timeout=220, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = [ln.strip() for ln in out.splitlines()]
    assert "the lock did not move (audit: no actuation)" in lines, out
    assert any(ln.startswith("the audit log recorded the refusal (entry ") for ln in lines), out
    assert not any("the lock moved" in ln or "showed something wrong" in ln for ln in lines), out
    assert lines.count("exit code 3, as expected") == 3, out  # Tom's guest before the clock, Tom revoked, the watch
    # Issue 12's wearable scene: the watch set up by share from the owner's device, revoked offline, refused.
    assert "the watch was enrolled by the share and unlocked (exit code 0, unlock energised)" in lines, out
    assert "the revocation is on Maya's list (version 1); the vehicle was not contacted" in lines, out
    assert "Maya's unlock delivered the revocation list" in lines, out
    assert "the watch did not move the lock (audit: no actuation)" in lines, out
    for claim in ("the watch enrolled by share from ", "Maya's list revoked the watch (entry ",
                  "the watch's unlock refused (entry "):
        assert any(ln.startswith("the vehicle's audit: " + claim) for ln in lines), (claim, out)
    assert "nothing in the scene was done at the Pi (no audit entry by the vehicle's CLI)" in lines, out
    assert any(ln.startswith("Demo complete.") for ln in lines), out
