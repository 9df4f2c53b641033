"""Every `key-server` subcommand, driven into its error paths as a separate process.

Bad arguments, bad files (a garbage or loose vehicle_key.pem, a corrupt keys.db, a state dir that is not one, a
broken config), a missing radio, Ctrl-C during start-up: each must end with no traceback, one plain line on stderr
and the exit code `key-server --help` documents. Only the command line is used, plus the shared exit-code table.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


@dataclass
class Vehicle:
    """A state dir (initialised or not) and a short sim air dir, with the environment a run gets."""

    state: Path
    air: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
        env.update(DKEY_STATE_DIR=str(self.state), DKEY_SIM_DIR=str(self.air), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "key_server", *args], capture_output=True, text=True,
                              cwd=ROOT, env=self.env(**env), timeout=TIMEOUT, check=False)

    @property
    def pem(self) -> Path:
        return self.state / "vehicle_key.pem"

    @property
    def db(self) -> Path:
        return self.state / "keys.db"

    @property
    def config(self) -> Path:
        return self.state / "config.toml"


def fails_cleanly(proc: subprocess.CompletedProcess[str], code: ExitCode, says: str = "") -> str:
    """Assert the documented failure shape; return the one stderr line."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("key-server"), lines[0]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert says in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """One `key-server init` for the module; each test gets a copy (init costs a process start)."""
    base = Path(tempfile.mkdtemp(prefix="dke"))
    v = Vehicle(base / "s", base / "a")
    done = v.run("init")
    assert done.returncode == ExitCode.OK, done.stderr
    yield v.state
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh() -> Iterator[Vehicle]:
    """A vehicle whose state dir does not exist yet (short paths: AF_UNIX socket paths are limited)."""
    base = Path(tempfile.mkdtemp(prefix="dke"))
    yield Vehicle(base / "s", base / "a")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def vehicle(template: Path, fresh: Vehicle) -> Vehicle:
    """An initialised vehicle, configured for the simulated lock."""
    shutil.copytree(template, fresh.state)
    return fresh


# ---------------------------------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = [
    ["bogus"],
    [],
    ["init", "--name", "a b/c"],
    ["init", "--name", 'x"y'],
    ["run", "--name", "a b/c"],
    ["run", "--name", "n" * 30],
    ["run", "--radio", "wifi"],
    ["run", "--challenge-ttl", "0"],
    ["run", "--challenge-ttl", "-1"],
    ["run", "--challenge-ttl", "nan"],
    ["run", "--challenge-ttl", "61"],
    ["run", "--challenge-ttl", "0.4"],
    ["pair", "--role", "king"],
    ["pair", "--expires", "2020-01-01"],
    ["pair", "--expires", "soon"],
    ["pair", "--valid-from", "3d", "--expires", "1d"],
    ["pair", "--code-ttl", "30d"],
    ["pair", "--schedule", "Caturday 25:00-26:00"],
    ["pair", "--name", ""],
    ["pair", "--cancel", "100"],
    ["pair", "--cancel", "-1"],
    ["keys", "--bogus"],
    ["revoke"],
    ["revoke", "x", "--with-shares=yes"],
    ["edit"],
    ["edit", "x", "--role", "king"],
    ["edit", "x", "--valid-until", "3d", "--no-expiry"],
    ["edit", "x", "--schedule", "daily 08:00-20:00", "--no-schedule"],
    ["audit", "--limit", "-1"],
    ["audit", "--limit", "0"],
    ["audit", "--limit", "1001"],
    ["audit", "--limit", "x"],
    ["doctor", "--bogus"],
    ["actuate"],
    ["actuate", "--test", "--hold", "-1"],
    ["actuate", "--test", "--hold", "61"],
    ["config", "extra"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "(none)")
def test_bad_arguments_are_usage_errors(vehicle: Vehicle, argv: list[str]) -> None:
    fails_cleanly(vehicle.run(*argv), ExitCode.USAGE)


def test_an_expiry_in_the_past_is_refused_and_nothing_is_issued(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("pair", "--expires", "2020-01-01", "--no-qr"), ExitCode.USAGE, "dead on arrival")
    assert vehicle.run("pair", "--list", "--json").stdout.strip() == "[]"


def test_cancel_of_an_empty_slot_is_not_found(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("pair", "--cancel", "42"), ExitCode.NOT_FOUND)


def test_revoke_of_an_unknown_key_is_not_found(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("revoke", "nobody"), ExitCode.NOT_FOUND, "no key matches")


def test_edit_of_an_unknown_key_is_not_found(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("edit", "nobody", "--name", "x"), ExitCode.NOT_FOUND, "no key matches")


def test_dkey_radio_must_name_a_radio(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("run", DKEY_RADIO="wifi"), ExitCode.USAGE, "DKEY_RADIO")


# ---------------------------------------------------------------------------------------------- not initialised

@pytest.mark.parametrize("argv", [["keys"], ["pair"], ["pair", "--list"], ["revoke", "x"], ["edit", "x"],
                                  ["audit"], ["audit", "--verify"], ["run", "--radio", "sim"]])
def test_commands_before_init(fresh: Vehicle, argv: list[str]) -> None:
    fails_cleanly(fresh.run(*argv), ExitCode.NOT_INITIALISED, "init")


def test_init_twice(vehicle: Vehicle) -> None:
    fails_cleanly(vehicle.run("init"), ExitCode.ALREADY_EXISTS)


def test_state_dir_that_is_a_file(fresh: Vehicle) -> None:
    fresh.state.parent.mkdir(exist_ok=True)
    fresh.state.write_text("not a directory")
    fails_cleanly(fresh.run("init"), ExitCode.ERROR, str(fresh.state))
    fails_cleanly(fresh.run("keys"), ExitCode.NOT_INITIALISED)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_state_dir(vehicle: Vehicle) -> None:
    os.chmod(vehicle.state, 0)
    try:
        for argv in (["keys"], ["pair"], ["run", "--radio", "sim"], ["init"]):
            proc = vehicle.run(*argv)
            fails_cleanly(proc, ExitCode(proc.returncode))
            assert proc.returncode in (ExitCode.ERROR, ExitCode.KEYS, ExitCode.NOT_INITIALISED)
    finally:
        os.chmod(vehicle.state, 0o700)


# ---------------------------------------------------------------------------------------------- bad files

VEHICLE_KEY_USERS = [["pair", "--no-qr"], ["run", "--radio", "sim"]]


@pytest.mark.parametrize("argv", VEHICLE_KEY_USERS, ids=" ".join)
def test_garbage_vehicle_key(vehicle: Vehicle, argv: list[str]) -> None:
    vehicle.pem.write_text("garbage\n")
    fails_cleanly(vehicle.run(*argv), ExitCode.KEYS, "does not hold a usable vehicle key")


@pytest.mark.parametrize("argv", VEHICLE_KEY_USERS, ids=" ".join)
def test_loose_vehicle_key(vehicle: Vehicle, argv: list[str]) -> None:
    os.chmod(vehicle.pem, 0o644)
    fails_cleanly(vehicle.run(*argv), ExitCode.KEYS, "chmod 600")


@pytest.mark.parametrize("argv", VEHICLE_KEY_USERS, ids=" ".join)
def test_rejects_the_published_test_vehicle_key(vehicle: Vehicle, argv: list[str]) -> None:
    """A vehicle_key.pem holding the §10.1 test key (private key in every checkout) is refused at load."""
    from protocol import serialize_private_key
    from tests.protocol.helpers import VEHICLE_SCALAR, fixed_key

    assert vehicle.run("pair", "--no-qr").returncode == ExitCode.OK  # the honest case: the key `init` made
    vehicle.pem.write_bytes(serialize_private_key(fixed_key(VEHICLE_SCALAR).private_key))
    os.chmod(vehicle.pem, 0o600)
    fails_cleanly(vehicle.run(*argv), ExitCode.KEYS, "published test key")


def test_vehicle_key_that_is_a_directory(vehicle: Vehicle) -> None:
    vehicle.pem.unlink()
    vehicle.pem.mkdir(mode=0o700)
    fails_cleanly(vehicle.run("pair"), ExitCode.KEYS, "not a regular file")


STORE_USERS = [["keys"], ["revoke", "x"], ["edit", "x", "--name", "y"], ["audit"], ["audit", "--verify"],
               ["pair", "--no-qr"], ["pair", "--list"],
               ["run", "--radio", "sim"]]


def _other_schema(db: Path) -> None:
    db.unlink()
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE notes (x)")
    other.close()
    db.chmod(0o600)


# Each way a keys.db can stop being the store it was; each must be refused, never replaced by an empty store.
DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (lambda db: db.write_bytes(b""), "is empty (0 bytes)"),
    "truncated": (lambda db: os.truncate(db, db.stat().st_size // 2), "is truncated"),
    "cut in the header": (lambda db: os.truncate(db, 50), "is truncated"),
    "not sqlite": (lambda db: db.write_bytes(b"this is not an SQLite database" * 100), "not an SQLite database"),
    "another schema": (_other_schema, "another application's database"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("argv", STORE_USERS, ids=" ".join)
def test_a_damaged_key_store_is_refused_not_recreated(vehicle: Vehicle, argv: list[str], damage: str) -> None:
    spoil, says = DAMAGE[damage]
    spoil(vehicle.db)
    before = vehicle.db.read_bytes()
    line = fails_cleanly(vehicle.run(*argv), ExitCode.STORE_UNUSABLE, says)
    assert str(vehicle.db) in line and "restore keys.db from a backup" in line
    assert vehicle.db.read_bytes() == before  # left as it was, for whoever restores or inspects it


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_doctor_fails_a_damaged_key_store(vehicle: Vehicle, damage: str) -> None:
    spoil, says = DAMAGE[damage]
    spoil(vehicle.db)
    proc = vehicle.run("doctor", DKEY_RADIO="sim")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stdout
    assert any("[FAIL] key store" in line and says in line for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("argv", STORE_USERS, ids=" ".join)
def test_a_key_store_others_can_access_is_refused(vehicle: Vehicle, argv: list[str]) -> None:
    vehicle.db.chmod(0o666)
    line = fails_cleanly(vehicle.run(*argv), ExitCode.KEYS, f"chmod 600 {vehicle.db}")
    assert "mode 0666" in line


@pytest.mark.parametrize("argv", STORE_USERS, ids=" ".join)
def test_a_state_dir_others_can_write_is_refused(vehicle: Vehicle, argv: list[str]) -> None:
    vehicle.state.chmod(0o777)
    fails_cleanly(vehicle.run(*argv), ExitCode.KEYS, f"chmod 700 {vehicle.state}")


def test_the_honest_modes_pass(vehicle: Vehicle) -> None:
    # A state dir others may read but not write (the files in it are 0600) and a 0600 store are accepted.
    vehicle.state.chmod(0o755)
    for argv in (["keys"], ["audit", "--verify"], ["pair", "--list"]):
        proc = vehicle.run(*argv)
        assert proc.returncode == ExitCode.OK, proc.stderr
    proc = vehicle.run("doctor", DKEY_RADIO="sim")
    assert "[FAIL] key store" not in proc.stdout and "[FAIL] state dir" not in proc.stdout, proc.stdout


def test_doctor_fails_loose_store_permissions(vehicle: Vehicle) -> None:
    vehicle.db.chmod(0o644)
    proc = vehicle.run("doctor", DKEY_RADIO="sim")
    assert proc.returncode == ExitCode.CHECK_FAILED and "chmod 600" in proc.stdout, proc.stdout


def test_doctor_with_broken_files_reports_or_fails_cleanly(vehicle: Vehicle) -> None:
    vehicle.pem.write_text("garbage\n")
    proc = vehicle.run("doctor", DKEY_RADIO="sim")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == ExitCode.CHECK_FAILED and "[FAIL] vehicle key" in proc.stdout, proc.stdout


@pytest.mark.parametrize("text", ["[server]\nradio = 'wifi'\n", "[server\n", "[server]\nradoi = 'sim'\n",
                                  "[nonsense]\n"], ids=["bad value", "not toml", "unknown key", "unknown table"])
@pytest.mark.parametrize("argv", [["keys"], ["run"], ["pair"], ["doctor"], ["actuate", "--test", "--hold", "0"]],
                         ids=" ".join)
def test_broken_config(vehicle: Vehicle, text: str, argv: list[str]) -> None:
    vehicle.config.write_text(text)
    proc = vehicle.run(*argv)
    if argv == ["doctor"]:  # doctor reports the same error as a failing check, then stops checking
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.returncode == ExitCode.CHECK_FAILED and "[FAIL] config: " in proc.stdout, proc.stdout
    else:
        fails_cleanly(proc, ExitCode.CONFIG, "config")


def test_sample_config_is_printed_even_when_the_config_is_broken(vehicle: Vehicle) -> None:
    vehicle.config.write_text("[server\n")
    proc = vehicle.run("config")
    assert proc.returncode == ExitCode.OK and "[server]" in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("argv", [["pair", "--no-qr"], ["run", "--radio", "sim"]], ids=" ".join)
def test_unknown_time_zone(vehicle: Vehicle, argv: list[str]) -> None:
    vehicle.config.write_text(vehicle.config.read_text().replace('# timezone = "Europe/Berlin"',
                                                                 'timezone = "Mars/Olympus"'))
    fails_cleanly(vehicle.run(*argv), ExitCode.CONFIG, "Mars/Olympus")


def test_a_name_no_radio_can_advertise(vehicle: Vehicle) -> None:
    vehicle.config.write_text(vehicle.config.read_text().replace('name = "dkey"', 'name = "a b/c"'))
    fails_cleanly(vehicle.run("run", "--radio", "sim"), ExitCode.CONFIG, "a b/c")


@pytest.mark.parametrize("argv", [["actuate", "--test", "--hold", "0"], ["run", "--radio", "sim"]], ids=" ".join)
def test_gpio_actuator_without_gpio(vehicle: Vehicle, argv: list[str]) -> None:
    # An unknown pin factory fails the same way on a laptop and on a Pi, and never drives a real pin.
    vehicle.config.write_text(vehicle.config.read_text().replace('kind = "sim"', 'kind = "pulse"')
                              .replace("# unlock_pin = 5", "unlock_pin = 5"))
    line = fails_cleanly(vehicle.run(*argv, GPIOZERO_PIN_FACTORY="no-such-factory"), ExitCode.HARDWARE_UNAVAILABLE,
                         "actuator unavailable: no GPIO backend loads")
    assert "python3-lgpio" in line  # says what to install (the unit does not restart on this exit code)


# ---------------------------------------------------------------------------------------------- missing radio

def test_ble_radio_without_a_system_bus(vehicle: Vehicle) -> None:
    proc = vehicle.run("run", "--radio", "ble", DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent/dkey-test-bus")
    fails_cleanly(proc, ExitCode.ERROR, "radio problem")


def test_dkey_radio_moves_the_server_and_the_flag_wins(vehicle: Vehicle) -> None:
    # DKEY_RADIO=sim overrides the config's ble: the server starts on the sim radio (stopped right away).
    proc = subprocess.Popen([sys.executable, "-m", "key_server", "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=vehicle.env(DKEY_RADIO="sim"))
    try:
        assert proc.stdout is not None
        assert "radio sim" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)
    # The flag beats the environment: --radio ble with no system bus fails as the ble radio.
    fails_cleanly(vehicle.run("run", "--radio", "ble", DKEY_RADIO="sim",
                              DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent/dkey-test-bus"),
                  ExitCode.ERROR, "BLE peripheral")


_WITHOUT_BLESS = """
import importlib.abc, runpy, sys

class NoBless(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "bless":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoBless())
sys.argv = ["key-server", *sys.argv[1:]]
runpy.run_module("key_server", run_name="__main__")
"""


def test_ble_radio_on_a_client_only_install(vehicle: Vehicle) -> None:
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_BLESS, "run", "--radio", "ble"], capture_output=True,
                          text=True, cwd=ROOT, env=vehicle.env(), timeout=TIMEOUT, check=False)
    fails_cleanly(proc, ExitCode.HARDWARE_UNAVAILABLE, "pip install 'wearable-dkey[server]'")


# ---------------------------------------------------------------------------------------------- Ctrl-C

def _python_start_time() -> float:
    """How long this machine takes to start a bare interpreter (a Ctrl-C before that hits Python, not us)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import runpy"], check=True, timeout=TIMEOUT)
    return time.monotonic() - start


@pytest.mark.parametrize("after", [0.05, 0.15, 0.3, 0.6])
def test_ctrl_c_during_start_up(vehicle: Vehicle, after: float) -> None:
    """Interrupted while loading or starting: 'interrupted' and 130; once serving: a clean stop."""
    delay = 1.5 * _python_start_time() + after
    proc = subprocess.Popen([sys.executable, "-m", "key_server", "run", "--radio", "sim"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=vehicle.env())
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in out + err, err
    if "advertising as" in out:  # it got going: SIGINT stops it like SIGTERM, cleanly
        assert proc.returncode in (ExitCode.OK, ExitCode.INTERRUPTED, -signal.SIGINT), err
    else:
        # -SIGINT: the signal landed as the interpreter was exiting; a shell shows 130 for that too.
        assert proc.returncode in (ExitCode.INTERRUPTED, -signal.SIGINT), err
        assert err.splitlines() == ["key-server: interrupted"], err
