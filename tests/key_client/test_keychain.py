"""The keychain: per-vehicle device keys in 0600 files, pinned vehicle keys, nicknames, selection."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dkey_link.exit_codes import ExitCode
from key_client.errors import KeychainError
from key_client.keychain import INDEX, KEYS_DIR, Keychain, default_path
from protocol import KeyPair, Paired, Role


def paired_with(vehicle: KeyPair, device: KeyPair, role: Role = Role.OWNER,
                valid_until: int | None = None) -> Paired:
    """What the vehicle's PAIR_DONE would tell us."""
    return Paired(vehicle_public_key=vehicle.public_bytes, vehicle_id=vehicle.key_id, key_id=device.key_id,
                  role=role, valid_from=None, valid_until=valid_until)


def add_vehicle(kc: Keychain, name: str | None = "car", passphrase: bytes | None = None, **kw):
    vehicle = KeyPair.generate()
    device = kc.new_device_key(passphrase)
    entry = kc.add(device, paired_with(vehicle, device, **kw), advertised_name=name, encrypted=bool(passphrase))
    return entry, device, vehicle


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_open_creates_private_directories(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    assert mode(kc.path) == 0o700 and mode(kc.path / KEYS_DIR) == 0o700
    assert kc.vehicles() == []


def test_pairing_result_round_trips_through_the_index(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, device, vehicle = add_vehicle(kc, role=Role.GUEST, valid_until=1_900_000_000)
    assert mode(kc.path / KEYS_DIR / entry.key_file) == 0o600
    again = Keychain.open(tmp_path / "kc")
    (got,) = again.vehicles()
    assert got == entry
    assert got.role == "guest" and got.valid_until == 1_900_000_000
    assert got.vehicle_public_key == vehicle.public_bytes and got.vehicle_id == vehicle.key_id
    assert again.load_key(got).public_bytes == device.public_bytes
    assert not [p for p in kc.path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing behind


def test_world_readable_key_file_is_refused(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, _, _ = add_vehicle(kc)
    os.chmod(kc.path / KEYS_DIR / entry.key_file, 0o644)
    with pytest.raises(KeychainError, match="chmod 600") as info:
        kc.load_key(entry)
    assert info.value.exit_code is ExitCode.KEYS


def test_missing_key_file_is_a_keychain_error(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, _, _ = add_vehicle(kc)
    (kc.path / KEYS_DIR / entry.key_file).unlink()
    with pytest.raises(KeychainError, match="missing"):
        kc.load_key(entry)


def test_passphrase_round_trip(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, device, _ = add_vehicle(kc, passphrase=b"correct horse")
    assert entry.encrypted
    assert b"ENCRYPTED" in (kc.path / KEYS_DIR / entry.key_file).read_bytes()
    assert kc.load_key(entry, b"correct horse").key_id == device.key_id
    with pytest.raises(KeychainError, match="protected by a passphrase"):
        kc.load_key(entry)
    with pytest.raises(KeychainError, match="wrong passphrase"):
        kc.load_key(entry, b"battery staple")


def test_forget_deletes_the_entry_and_its_key(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, _, _ = add_vehicle(kc, "car")
    other, _, _ = add_vehicle(kc, "van")
    assert kc.forget("car") == entry
    assert [e.name for e in kc.vehicles()] == ["van"]
    assert not (kc.path / KEYS_DIR / entry.key_file).exists()
    assert (kc.path / KEYS_DIR / other.key_file).exists()
    assert [e.name for e in Keychain.open(kc.path).vehicles()] == ["van"]
    with pytest.raises(KeychainError, match="no vehicle called 'car'"):
        kc.forget("car")


def test_several_vehicles_need_a_choice(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    with pytest.raises(KeychainError, match="pair with"):
        kc.default()
    car, _, _ = add_vehicle(kc, "car")
    assert kc.default() == car and kc.select(None) == car
    van, _, _ = add_vehicle(kc, "van")
    with pytest.raises(KeychainError, match="several vehicles: pick one with --vehicle"):
        kc.default()
    assert kc.select("van") == van and kc.get("VAN") == van
    assert kc.get(car.vehicle_id.hex()[:6]) == car


def test_names_are_made_unique(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    names = [add_vehicle(kc, "test-car")[0].name for _ in range(3)]
    assert names == ["test-car", "test-car-2", "test-car-3"]
    assert add_vehicle(kc, None)[0].name == "vehicle"
    assert add_vehicle(kc, "my car / garage")[0].name == "my-car-garage"


def test_ambiguous_id_prefix_is_refused(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    seen: dict[str, KeyPair] = {}
    while True:  # birthday bound: two of ~20 random ids share their first byte
        vehicle = KeyPair.generate()
        prefix = vehicle.key_id.hex()[:2]
        if prefix in seen:
            break
        seen[prefix] = vehicle
    for i, v in enumerate((seen[prefix], vehicle)):
        device = kc.new_device_key()
        kc.add(device, paired_with(v, device), advertised_name=f"v{i}")
    with pytest.raises(KeychainError, match="matches several vehicles"):
        kc.get(prefix)
    assert kc.get(vehicle.key_id.hex()).name == "v1"
    with pytest.raises(KeychainError, match="no vehicle called"):
        kc.get("zz-not-there")


def test_tampered_pinned_key_is_refused(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    add_vehicle(kc)
    doc = json.loads((kc.path / INDEX).read_text())
    doc["vehicles"][0]["vehicle_public_key"] = KeyPair.generate().public_bytes.hex()  # someone else's vehicle
    (kc.path / INDEX).write_text(json.dumps(doc))
    with pytest.raises(KeychainError, match="does not match its vehicle id"):
        Keychain.open(kc.path)


def test_damaged_index_is_a_keychain_error(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    (kc.path / INDEX).write_text("{not json")
    with pytest.raises(KeychainError, match="not valid JSON"):
        Keychain.open(kc.path)


def test_group_writable_keychain_is_refused(tmp_path) -> None:
    path = tmp_path / "kc"
    Keychain.open(path)
    os.chmod(path, 0o770)
    with pytest.raises(KeychainError, match="chmod 700"):
        Keychain.open(path)


def test_add_refuses_a_key_the_vehicle_did_not_enrol(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    vehicle, device = KeyPair.generate(), kc.new_device_key()
    with pytest.raises(KeychainError, match="different key"):
        kc.add(device, paired_with(vehicle, KeyPair.generate()))
    stranger = KeyPair.generate()  # never written by new_device_key
    with pytest.raises(KeychainError, match="new_device_key"):
        kc.add(stranger, paired_with(vehicle, stranger))


def test_discarding_an_unpaired_key_deletes_it(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    device = kc.new_device_key()
    kc.discard_device_key(device)
    assert not list((kc.path / KEYS_DIR).iterdir())
    entry, paired_device, _ = add_vehicle(kc)
    kc.discard_device_key(paired_device)  # an enrolled key is never discarded
    assert (kc.path / KEYS_DIR / entry.key_file).exists()


def test_address_is_only_a_remembered_hint(tmp_path) -> None:
    kc = Keychain.open(tmp_path / "kc")
    entry, _, _ = add_vehicle(kc)
    updated = kc.remember_address(entry, "AA:BB:CC:DD:EE:FF")
    assert Keychain.open(kc.path).get("car").address_hint == "AA:BB:CC:DD:EE:FF" == updated.address_hint


def test_default_path_follows_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DKEY_KEYCHAIN", str(tmp_path / "explicit"))
    assert default_path() == tmp_path / "explicit"
    monkeypatch.delenv("DKEY_KEYCHAIN")
    # The data directory, not the config one (~/.config is synced in dotfile repositories: key_client/paths.py).
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert default_path() == tmp_path / "xdg-data" / "dkey"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "dkey"
