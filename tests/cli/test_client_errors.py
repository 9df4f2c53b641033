"""Every key-client subcommand on its error paths, as a separate process: bad arguments, bad files, no radio.

Each run must end in one plain line on stderr (no traceback) and the exit code `key-client --help` documents.
The keychain is made with the keychain API (a vehicle identity that no server runs), so no vehicle is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkey_link.exit_codes import ExitCode
from key_client.keychain import KEYS_DIR, Keychain
from protocol import KeyPair, Paired, Role

ROOT = Path(__file__).resolve().parents[2]
X = ExitCode
# Every subcommand with the arguments that get it past parsing.
COMMANDS: dict[str, list[str]] = {
    "scan": ["scan"], "pair": ["pair", "4212-3456"], "unlock": ["unlock"], "lock": ["lock"], "status": ["status"],
    "start": ["start"], "keys": ["keys"], "revoke": ["revoke", "watch"], "audit": ["audit"],
    "vehicles": ["vehicles"], "forget": ["forget", "car"], "auto": ["auto", "--i-understand-relay-risk", "--for", "1"],
    "request-share": ["request-share", "--no-qr"], "share": ["share", "dkey://share-request?key=AA", "--role", "guest"],
    "import-share": ["import-share", "dkey://share?v=1&c=AA&k=AA"], "watch": ["watch"],
    "issue-code": ["issue-code", "--role", "guest", "--name", "x"], "edit": ["edit", "watch", "--name", "y"],
}
RADIO_COMMANDS = ["scan", "pair", "unlock", "lock", "status", "start", "keys", "revoke", "audit", "auto", "watch",
                  "issue-code", "edit"]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dke"))  # short: AF_UNIX socket paths of the sim radio
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_keychain(path: Path, address: str | None = "nowhere") -> Path:
    """A keychain holding one vehicle 'car' (owner key), as pairing would leave it."""
    kc = Keychain.open(path)
    device, vehicle = kc.new_device_key(), KeyPair.generate()
    kc.add(device, Paired(vehicle_public_key=vehicle.public_bytes, vehicle_id=vehicle.key_id, key_id=device.key_id,
                          role=Role.OWNER, valid_from=None, valid_until=None), name="car", address=address)
    return path


def run(root: Path, *argv: str, keychain: Path | None = None, radio: str = "sim", scan_time: str = "0.5",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
    args = ["--keychain", str(keychain or root / "kc"), "--radio", radio, "--sim-dir", str(root / "air"),
            "--scan-time", scan_time, *argv]
    return subprocess.run([sys.executable, "-m", "key_client", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **(env or {})}, timeout=60, check=False)


# The one documented remark before an error: `auto` says it reads the status once to learn the address.
AUTO_NOTE = "finding car once to learn its address\n"


def check(r: subprocess.CompletedProcess[str], code: ExitCode, *words: str) -> None:
    """One plain line on stderr, no traceback, the documented exit code, and the words that say what is wrong."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    err = r.stderr.removeprefix(AUTO_NOTE)
    assert err.count("\n") == 1 and err.startswith("key-client: "), r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


# ---------------------------------------------------------------------- bad arguments (parse time)


@pytest.mark.parametrize(("argv", "words"), [
    ([], ["COMMAND"]),
    (["fly"], ["invalid choice"]),
    (["unlock", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["--radio", "carrier-pigeon", "unlock"], ["unknown radio"]),
    (["--scan-time", "-1", "unlock"], ["--scan-time", "out of range"]),
    (["--scan-time", "0", "scan"], ["--scan-time", "out of range"]),
    (["--scan-time", "abc", "scan"], ["--scan-time", "not a number"]),
    (["--scan-time", "nan", "scan"], ["--scan-time", "out of range"]),
    (["--scan-time", "1e9", "scan"], ["--scan-time", "out of range"]),
    (["scan", "extra"], ["unrecognized arguments: extra"]),
    (["pair"], ["code"]),
    (["pair", "1234", "5678"], ["unrecognized arguments"]),
    (["unlock", "now"], ["unrecognized arguments: now"]),
    (["lock", "now"], ["unrecognized arguments: now"]),
    (["status", "--identify"], ["unrecognized arguments"]),
    (["start", "x"], ["unrecognized arguments"]),
    (["keys", "--all"], ["unrecognized arguments"]),
    (["revoke"], ["key"]),
    (["audit", "--after", "-5"], ["--after", "out of range"]),
    (["audit", "--after", str(2**63)], ["--after", "at most 9223372036854775807"]),  # PROTOCOL.md §5.4
    (["audit", "--limit", "0"], ["--limit", "out of range"]),
    (["audit", "--limit", "-3"], ["--limit", "out of range"]),
    (["audit", "--limit", "99999999"], ["--limit", "out of range"]),
    (["audit", "--limit", "ten"], ["--limit", "not an integer"]),
    (["vehicles", "all"], ["unrecognized arguments"]),
    (["forget"], ["VEHICLE"]),
    (["auto", "--unlock-rssi", "500"], ["--unlock-rssi", "out of range"]),
    (["auto", "--dwell", "-1"], ["--dwell", "out of range"]),
    (["auto", "--interval", "0"], ["--interval", "out of range"]),
    (["auto", "--for", "-1"], ["--for", "out of range"]),
    (["auto", "--lost", "inf"], ["--lost", "out of range"]),
    (["auto", "--for", "inf"], ["--for", "a finite number above 0"]),
    (["revoke", "watch", "--force"], ["unrecognized arguments: --force"]),  # never over the air (PROTOCOL.md §5.3)
    (["share", "dkey://share-request?key=AA"], ["--role"]),
    (["share", "dkey://share-request?key=AA", "--role", "owner"], ["--role", "invalid choice"]),
    (["import-share"], ["SHARE"]),
    (["issue-code", "--role", "guest"], ["--name"]),
    (["issue-code", "--role", "guest", "--name", "x", "--attempts", "0"], ["--attempts", "out of range"]),
    (["edit", "watch", "--valid-until", "1d", "--no-expiry"], ["not allowed with"]),
    (["edit", "watch", "--schedule", "Mon 08:00-09:00", "--no-schedule"], ["not allowed with"]),
    (["watch", "now"], ["unrecognized arguments: now"]),
])
def test_bad_arguments_are_one_usage_line(root: Path, argv: list[str], words: list[str]) -> None:
    r = run(root, *argv)
    check(r, X.USAGE, *words)
    assert r.stdout == ""


def test_usage_errors_with_json_also_print_the_object(root: Path) -> None:
    r = run(root, "--json", "audit", "--limit", "0")
    check(r, X.USAGE)
    assert '"exit": "usage"' in r.stdout


@pytest.mark.parametrize(("argv", "code", "word"), [
    (["pair", "12-34"], X.USAGE, "8 digits"),
    (["auto"], X.USAGE, "--i-understand-relay-risk"),
    (["auto", "--i-understand-relay-risk", "--lock-rssi", "-50", "--unlock-rssi", "-60"], X.USAGE, "below"),
    (["share", "garbage", "--role", "guest"], X.USAGE, "not a share request"),
    (["share", "dkey://share-request?key=AA", "--role", "guest", "--until", "someday"], X.USAGE, "cannot read"),
    (["import-share", "garbage"], X.USAGE, "not a share"),
    (["import-share", "@/no/such/file"], X.USAGE, "cannot read the share file"),
    (["revoke", "watch", "--offline"], X.USAGE, "--offline needs"),
    (["edit", "watch"], X.USAGE, "nothing to change"),
    (["issue-code", "--role", "guest", "--name", "x", "--expires", "8d"], X.USAGE, "within 7 days"),
])
def test_impossible_requests_are_usage_errors(root: Path, argv: list[str], code: ExitCode, word: str) -> None:
    check(run(root, *argv, keychain=make_keychain(root / "kc-usage")), code, word)
    shutil.rmtree(root / "kc-usage")


def test_an_unknown_radio_in_the_environment_is_a_usage_error(root: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DKEY_")}
    r = subprocess.run([sys.executable, "-m", "key_client", "--keychain", str(root / "kc"), "scan"],
                       capture_output=True, text=True, cwd=ROOT, env={**base, "DKEY_RADIO": "carrier"}, timeout=60,
                       check=False)
    check(r, X.USAGE, "DKEY_RADIO")


# ---------------------------------------------------------------------- bad files


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_corrupt_keychain_index_is_a_keys_error(root: Path, command: str) -> None:
    kc = root / f"corrupt-{command}"
    kc.mkdir(mode=0o700)
    (kc / "keychain.json").write_text("{not json")
    check(run(root, *COMMANDS[command], keychain=kc), X.KEYS, "not valid JSON")


@pytest.mark.parametrize("command", ["unlock", "lock", "status", "start", "keys", "revoke", "audit", "auto"])
def test_a_key_file_others_can_read_is_refused(root: Path, command: str) -> None:
    kc = make_keychain(root / f"loose-{command}")
    (key_file,) = (kc / KEYS_DIR).iterdir()
    key_file.chmod(0o644)
    check(run(root, *COMMANDS[command], keychain=kc), X.KEYS, str(key_file))


@pytest.mark.parametrize("command", ["unlock", "keys"])
def test_a_garbage_key_file_is_refused(root: Path, command: str) -> None:
    kc = make_keychain(root / f"garbage-{command}")
    (key_file,) = (kc / KEYS_DIR).iterdir()
    key_file.write_bytes(b"this is not a key\n")
    check(run(root, *COMMANDS[command], keychain=kc), X.KEYS, "not a P-256 private key")


def test_a_share_book_others_can_write_is_refused(root: Path) -> None:
    kc = make_keychain(root / "kc-book")
    (kc / "shares.json").write_text('{"version": 1}')
    os.chmod(kc / "shares.json", 0o666)
    check(run(root, "request-share", "--no-qr", keychain=kc), X.KEYS, "chmod 600")
    check(run(root, "revoke", "00000001", "--offline", keychain=kc), X.KEYS, "chmod 600")
    os.chmod(kc / "shares.json", 0o600)
    (kc / "shares.json").write_text("{damaged")
    check(run(root, "request-share", "--no-qr", keychain=kc), X.KEYS, "is damaged")


def test_a_keychain_others_can_write_is_refused(root: Path) -> None:
    kc = make_keychain(root / "open-kc")
    kc.chmod(0o777)
    check(run(root, "unlock", keychain=kc), X.KEYS, "writable by other users")


@pytest.mark.parametrize(("where", "mode", "fix"), [
    ("keychain.json", 0o666, "chmod 600"), ("keychain.json", 0o620, "chmod 600"),
    (KEYS_DIR, 0o777, "chmod 700"), (KEYS_DIR, 0o730, "chmod 700"),
])
def test_an_index_or_keys_dir_others_can_write_is_refused(root: Path, where: str, mode: int, fix: str) -> None:
    # Others who can write the index or keys/ can swap the pinned vehicle key or this device's key.
    kc = make_keychain(root / f"open-{where}-{mode:o}")
    (kc / where).chmod(mode)
    result = run(root, "unlock", keychain=kc)
    check(result, X.KEYS, str(kc / where))
    assert fix in result.stderr


def test_the_honest_keychain_modes_pass_the_permission_checks(root: Path) -> None:
    # 0700 directories, 0600 key file and a 0644 index (readable, no secrets in it): only the radio can fail.
    kc = make_keychain(root / "honest-kc")
    (kc / "keychain.json").chmod(0o644)
    check(run(root, "unlock", keychain=kc), X.NOT_FOUND, "")


@pytest.mark.parametrize(("text", "words"), [
    ("[auto]\nrelay_risk_accepted = true\nunlock_rsi = -60\n", ["auto.unlock_rsi", "did you mean unlock_rssi"]),
    ("[auto]\nrelay_risk_accepted = true\ndwell = \"long\"\n", ["auto.dwell", "not a number", "allowed"]),
    ("[auto]\nrelay_risk_accepted = true\nlock_rssi = -50\n", ["auto.lock_rssi", "below auto.unlock_rssi"]),
    ("[outo]\nrelay_risk_accepted = true\n", ["outo", "did you mean auto"]),
    ("[auto\n", ["not valid TOML"]),
])
def test_an_invalid_config_is_a_config_error_naming_the_key(root: Path, text: str, words: list[str]) -> None:
    kc = make_keychain(root / "cfg")
    (kc / "config.toml").write_text(text)
    check(run(root, "auto", "--for", "1", keychain=kc), X.CONFIG, str(kc / "config.toml"), *words)
    shutil.rmtree(kc)


# ---------------------------------------------------------------------- no radio


@pytest.mark.parametrize("command", RADIO_COMMANDS)
def test_no_vehicle_on_the_sim_radio_is_not_found(root: Path, command: str) -> None:
    kc = make_keychain(root / f"sim-{command}", address=None)  # auto then looks for the vehicle once first
    check(run(root, *COMMANDS[command], keychain=kc), X.NOT_FOUND, "no vehicle found in 0.5 s")


@pytest.mark.parametrize("command", RADIO_COMMANDS)
def test_no_bluetooth_is_one_plain_error(root: Path, command: str) -> None:
    kc = make_keychain(root / f"ble-{command}", address=None)
    # A system bus that is not there: what a machine without BlueZ/D-Bus looks like to bleak.
    r = run(root, *COMMANDS[command], keychain=kc, radio="ble",
            env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={root}/no-such-bus"})
    check(r, X.ERROR, "Bluetooth is not available")
