"""Device keys in the OS keyring (`pair --keyring`), through a fake `keyring` backend that records every item."""

from __future__ import annotations

from collections.abc import Iterator

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.errors import KeyringLocked, PasswordDeleteError

from dkey_link.exit_codes import ExitCode
from key_client import oskeyring
from key_client.errors import KeychainError
from key_client.keychain import KEYS_DIR, Keychain
from key_client.radios import mock_air
from protocol import KeyPair

from ..key_server.harness import Harness
from . import Cli
from .test_keychain import add_vehicle, paired_with


class FakeKeyring(KeyringBackend):
    """An OS keyring stand-in: a dict; `locked` makes every call fail as a locked Secret Service collection does."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}
        self.locked = False

    def _check(self) -> None:
        if self.locked:
            raise KeyringLocked("the collection is locked")

    def get_password(self, service: str, username: str) -> str | None:
        self._check()
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._check()
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self._check()
        if self.items.pop((service, username), None) is None:
            raise PasswordDeleteError("no such item")


@pytest.fixture
def fake() -> Iterator[FakeKeyring]:
    before = keyring.get_keyring()
    backend = FakeKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(before)


@pytest.fixture
def run(h: Harness, tmp_path, capsys):
    with mock_air(h.air):
        yield Cli(tmp_path / "kc", capsys)


def test_keyring_key_round_trips_without_a_file(tmp_path, fake: FakeKeyring) -> None:
    kc = Keychain.open(tmp_path / "kc")
    vehicle, device = KeyPair.generate(), kc.new_device_key(keyring=True)
    entry = kc.add(device, paired_with(vehicle, device), advertised_name="car", keyring=True)
    assert entry.keyring and not entry.encrypted
    assert list(fake.items) == [(oskeyring.SERVICE, device.key_id.hex())]
    assert not list((kc.path / KEYS_DIR).iterdir())  # nothing of it on disk
    again = Keychain.open(kc.path)
    assert again.get("car").keyring
    assert again.load_key(again.get("car")).public_bytes == device.public_bytes
    again.forget("car")
    assert fake.items == {}


def test_plain_file_keys_keep_working_beside_keyring_keys(tmp_path, fake: FakeKeyring) -> None:
    kc = Keychain.open(tmp_path / "kc")
    file_entry, file_device, _ = add_vehicle(kc, name="van")  # what earlier versions wrote
    device = kc.new_device_key(keyring=True)
    kc.add(device, paired_with(KeyPair.generate(), device), advertised_name="car", keyring=True)
    again = Keychain.open(kc.path)
    assert again.load_key(again.get("van")).public_bytes == file_device.public_bytes
    assert again.load_key(again.get("car")).public_bytes == device.public_bytes
    assert not again.get("van").keyring and (kc.path / KEYS_DIR / file_entry.key_file).exists()


def test_a_keyring_item_that_disappeared_is_a_keys_error(tmp_path, fake: FakeKeyring) -> None:
    kc = Keychain.open(tmp_path / "kc")
    device = kc.new_device_key(keyring=True)
    entry = kc.add(device, paired_with(KeyPair.generate(), device), advertised_name="car", keyring=True)
    fake.items.clear()
    with pytest.raises(KeychainError, match="not in the OS keyring") as info:
        kc.load_key(entry)
    assert info.value.exit_code is ExitCode.KEYS


def test_a_swapped_keyring_item_is_refused(tmp_path, fake: FakeKeyring) -> None:
    kc = Keychain.open(tmp_path / "kc")
    device = kc.new_device_key(keyring=True)
    entry = kc.add(device, paired_with(KeyPair.generate(), device), advertised_name="car", keyring=True)
    other = KeyPair.generate()
    from protocol import serialize_private_key

    fake.items[(oskeyring.SERVICE, device.key_id.hex())] = serialize_private_key(other.private_key).decode()
    with pytest.raises(KeychainError, match="does not hold the key the index names"):
        kc.load_key(entry)


def test_a_locked_keyring_is_a_keys_error_naming_the_cause(tmp_path, fake: FakeKeyring) -> None:
    kc = Keychain.open(tmp_path / "kc")
    fake.locked = True
    with pytest.raises(KeychainError, match=r"could not store .* \(the collection is locked\)"):
        kc.new_device_key(keyring=True)


@pytest.mark.parametrize("module", ["keyring.backends.fail", "keyrings.alt.file"])
def test_no_os_keyring_or_a_file_backend_is_refused(tmp_path, module: str) -> None:
    class Backend(FakeKeyring):
        pass

    Backend.__module__ = module
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring() if module.endswith("fail") else Backend())
    try:
        with pytest.raises(KeychainError, match="keep the key in .*file"):
            Keychain.open(tmp_path / "kc").new_device_key(keyring=True)
    finally:
        keyring.set_keyring(before)


async def test_pair_with_keyring_then_unlock_and_forget(run: Cli, h: Harness, fake: FakeKeyring) -> None:
    r = await run("pair", h.new_code(name="laptop"), "--keyring")
    assert r.code == ExitCode.OK, r.err
    (entry,) = Keychain.open(run.keychain).vehicles()
    assert entry.keyring and (oskeyring.SERVICE, entry.key_id.hex()) in fake.items
    assert not (run.keychain / KEYS_DIR / entry.key_file).exists()
    assert (await run("unlock")).code == ExitCode.OK
    assert "(keyring)" in (await run("vehicles")).out
    assert (await run("forget", "test-car")).code == ExitCode.OK
    assert fake.items == {}


async def test_pair_with_keyring_refused_before_the_code_is_spent(run: Cli, h: Harness, fake: FakeKeyring) -> None:
    code = h.new_code(name="laptop")
    fake.locked = True
    r = await run("pair", code, "--keyring")
    assert r.code == ExitCode.KEYS and "OS keyring could not store" in r.err
    assert Keychain.open(run.keychain).vehicles() == [] and h.store.list_keys() == []
    fake.locked = False
    assert (await run("pair", code, "--keyring")).code == ExitCode.OK  # the code still works


async def test_keyring_and_passphrase_are_one_choice(run: Cli, h: Harness, fake: FakeKeyring) -> None:
    r = await run("pair", h.new_code(), "--keyring", "--passphrase")
    assert r.code == ExitCode.USAGE and "not allowed with argument" in r.err


def test_without_the_keyring_extra_it_names_the_install(tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "keyring", None)  # makes "import keyring" fail, as without [keyring]
    with pytest.raises(KeychainError, match=r"pip install 'wearable-dkey\[keyring\]'") as info:
        Keychain.open(tmp_path / "kc").new_device_key(keyring=True)
    assert info.value.exit_code is ExitCode.KEYS
    assert not list((tmp_path / "kc" / KEYS_DIR).iterdir())
