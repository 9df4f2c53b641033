"""Self-test of the fixture library in conftest.py (spawn, run_cli), so scenario tests can trust
its teardown and timeouts. Plain shell commands: no Bluetooth, and fast under TCG."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ble


def test_spawn_waits_for_output_and_kills_a_process_that_ignores_sigterm(spawn) -> None:
    proc = spawn("ignores_term", ["sh", "-c", 'trap "" TERM; echo up; exec sleep 600'], ready="^up$")
    assert proc.running
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert not proc.running
    assert "up" in proc.log_path.read_text()


def test_spawn_reports_an_early_exit_with_its_output(spawn) -> None:
    proc = spawn("early_exit", ["sh", "-c", "echo boom; exit 7"])
    with pytest.raises(AssertionError, match=r"exited with 7[\s\S]*boom"):
        proc.wait_for_output("never printed", timeout=30.0)


def test_spawn_teardown_stops_processes_left_running(spawn) -> None:
    spawn("left_running", ["sleep", "600"])  # the fixture's teardown must end it


def test_run_cli_captures_output_exit_code_and_log(run_cli, ble_out: Path) -> None:
    result = run_cli(["sh", "-c", "echo out; echo err >&2; exit 3"], name="cli_demo")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert "# exit code 3" in (ble_out / "cli_demo.log").read_text()
    with pytest.raises(AssertionError, match="exited with 3"):
        run_cli(["sh", "-c", "exit 3"], check=True)


def test_run_cli_kills_on_timeout(run_cli) -> None:
    with pytest.raises(AssertionError, match="did not finish"):
        run_cli(["sleep", "600"], timeout=0.5)


def test_children_find_the_venv_first_on_path(run_cli) -> None:
    result = run_cli(["sh", "-c", 'echo "$PATH"'], check=True)
    assert result.stdout.split(os.pathsep)[0] == str(Path(sys.executable).parent)
