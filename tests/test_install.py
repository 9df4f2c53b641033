"""The installs match the roles (README "Install", docs/DEPLOY.md): checked on the built wheel, not on the checkout.

- `pip install wearable-dkey` (a phone, watch or laptop) pulls no bless, no dbus-next, no gpiozero: key-client
  runs, and so does the whole sim-radio demo; key-server is installed too and says which install its BLE radio needs.
- `pip install 'wearable-dkey[server]'` (the vehicle) adds bless and dbus-next; key-server runs.
- The client install resolves on Windows, macOS and Linux to bleak 3.x from wheels alone, with nothing older than
  the newest release our bounds allow (while bless was a base dependency, Windows on Python 3.12+ only resolved by
  falling back to bless 0.2.6: bless 0.3 pins winrt 2.0.0b1 there, which bleak 3 refuses). `[server]` and `[pi]`
  resolve for Linux on x86-64 and aarch64; the documented Pi install resolves for 64-bit Python 3.11 and 3.13
  and 32-bit ARM Python 3.11 with wheels and the system packages docs/DEPLOY.md installs, never a compiler.
- The wheel ships the deploy files (`key-server print-file`), the sdist the docs, and both pass `twine check`.

The cross-platform part uses uv's resolver (`uv pip compile --python-platform`): `pip install --dry-run --platform`
checks wheel tags for the target but evaluates environment markers (sys_platform == 'linux', ...) for this
machine, so it would show a Linux dependency set under a Windows tag.

Needs PyPI and takes a minute or two: excluded from `./dev test` (marker `install`), run by `./dev test-install`
and CI (.ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
VEHICLE_ONLY = ("bless", "dbus_next", "gpiozero", "lgpio", "segno")  # import names a device install must not have


def run(*argv: str | Path, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)


def ok(*argv: str | Path, **kwargs: Any) -> str:
    proc = run(*argv, **kwargs)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once from a copy of the tracked files (the checkout stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    files = ok("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    ok(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", src, "-w", base / "dist")
    (built,) = (base / "dist").glob("wearable_dkey-*.whl")
    return built


class Venv:
    def __init__(self, path: Path) -> None:
        venv.EnvBuilder(with_pip=True).create(path)
        self.path = path
        self.bin = path / "bin"

    def install(self, requirement: str) -> None:
        ok(self.bin / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement)

    def distributions(self) -> dict[str, str]:
        listed = json.loads(ok(self.bin / "python", "-m", "pip", "list", "--format", "json"))
        return {canonical(d["name"]): d["version"] for d in listed}

    def importable(self, names: tuple[str, ...]) -> list[str]:
        probe = f"import importlib.util as u; print(' '.join(n for n in {names!r} if u.find_spec(n)))"
        return ok(self.bin / "python", "-c", probe).split()

    def env(self, home: Path) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
                "DKEY_KEYCHAIN": str(home / "keychain"), "DKEY_STATE_DIR": str(home / "state")}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def client_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    v = Venv(tmp_path_factory.mktemp("client") / "venv")
    v.install(str(wheel))
    return v


@pytest.fixture(scope="module")
def server_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    v = Venv(tmp_path_factory.mktemp("server") / "venv")
    v.install(f"{wheel}[server]")
    return v


# ------------------------------------------------------------------------------------------------ the device


def test_client_install_has_no_vehicle_dependencies(client_venv: Venv) -> None:
    assert client_venv.importable(VEHICLE_ONLY) == []
    dists = client_venv.distributions()
    assert not {"bless", "dbus-next", "gpiozero", "lgpio", "segno"} & dists.keys()
    assert dists["bleak"].startswith("3."), dists["bleak"]
    assert {"cryptography", "bleak-retry-connector", "dbus-fast"} <= dists.keys()  # dbus-fast: Linux only
    assert "platformdirs" in dists  # the keychain's default directory (key_client/paths.py)
    assert "keyring" not in dists  # the OS keyring is the optional extra [keyring]


def test_the_wheel_carries_the_license(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert "Apache License" in whl.read(license_file).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in whl.read(metadata).decode().splitlines()


def test_key_client_version_comes_from_the_installed_distribution(client_venv: Venv, tmp_path: Path) -> None:
    version = client_venv.distributions()["wearable-dkey"]
    out = ok(client_venv.bin / "key-client", "--version", env=client_venv.env(tmp_path), cwd=tmp_path)
    assert out == f"key-client {version}\n"


def test_key_client_runs_from_the_client_install(client_venv: Venv, tmp_path: Path) -> None:
    env = client_venv.env(tmp_path)
    assert "usage: key-client" in ok(client_venv.bin / "key-client", "--help", env=env, cwd=tmp_path)
    ok(client_venv.bin / "key-client", "--radio", "sim", "vehicles", env=env, cwd=tmp_path)


def test_the_sim_demo_runs_from_the_client_install(client_venv: Venv, tmp_path: Path) -> None:
    """Pair, unlock, lock, revoke: a key-server and key-clients over the sim radio, no vehicle extras."""
    ok(client_venv.bin / "python", "-m", "key_client.demo", env=client_venv.env(tmp_path), cwd=tmp_path, timeout=300)


def test_key_server_on_the_client_install_names_the_vehicle_install(client_venv: Venv, tmp_path: Path) -> None:
    env = client_venv.env(tmp_path)
    server = client_venv.bin / "key-server"
    assert "usage: key-server" in ok(server, "--help", env=env, cwd=tmp_path)
    ok(server, "init", env=env, cwd=tmp_path)
    proc = run(server, "run", "--radio", "ble", env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "wearable-dkey[server]" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------------------------------------ the vehicle


def test_server_install_adds_the_ble_peripheral(server_venv: Venv, tmp_path: Path) -> None:
    dists = server_venv.distributions()
    assert dists["bless"].startswith("0.3."), dists["bless"]
    assert {"dbus-next", "segno"} <= dists.keys()
    assert "gpiozero" not in dists  # the relays come with [pi]
    # What key_server/radio/ble.py patches is where it expects it.
    ok(server_venv.bin / "python", "-c", "from bless.backends.bluezdbus.dbus.characteristic import "
       "BlueZGattCharacteristic as C; assert callable(C.WriteValue); import key_server.radio.ble")
    assert "usage: key-server" in ok(server_venv.bin / "key-server", "--help", env=server_venv.env(tmp_path))


# ------------------------------------------------------------------------------------------------ resolution


@pytest.fixture(scope="module")
def uv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv from PyPI in a venv of its own (or $UV / uv on PATH)."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found:
        return Path(found)
    v = Venv(tmp_path_factory.mktemp("uv") / "venv")
    v.install("uv>=0.5")
    return v.bin / "uv"


def resolve(uv: Path, requirement: str, platform: str, python: str, *, binary_only: bool = True) -> dict[str, str]:
    """name -> version that `requirement` resolves to on `platform` / `python` (uv's resolver, markers for there)."""
    args = ["pip", "compile", "-q", "--no-header", "--no-annotate", "--python-platform", platform,
            "--python-version", python, "--python", sys.executable, "-"]
    if binary_only:
        args += ["--only-binary", ":all:"]
    # This interpreter runs any build step; never let uv fetch one of its own (the target is --python-version).
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    proc = run(uv, *args, input=requirement + "\n", timeout=300, env=env)
    assert proc.returncode == 0, f"{requirement} on {platform}/{python} does not resolve:\n{proc.stderr}"
    pins = {}
    for line in proc.stdout.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(";")[0].strip().split("==")
            pins[canonical(name)] = version
    return pins


PLATFORMS = ["x86_64-pc-windows-msvc", "aarch64-apple-darwin", "x86_64-apple-darwin", "x86_64-unknown-linux-gnu"]


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_client_install_resolves_everywhere_without_downgrades(uv: Path, wheel: Path, platform: str,
                                                               python: str) -> None:
    pins = resolve(uv, f"wearable-dkey @ {wheel.as_uri()}", platform, python)
    assert pins["bleak"].startswith("3."), pins
    assert not {"bless", "dbus-next", "gpiozero", "lgpio", "segno"} & pins.keys(), pins
    assert ("dbus-fast" in pins) == ("linux" in platform), pins
    # No downgrade: bleak and the connector are the newest releases our bounds allow, as if asked for alone.
    alone = resolve(uv, "bleak>=3.0.2,<4\nbleak-retry-connector>=4.6.2,<5", platform, python)
    assert (pins["bleak"], pins["bleak-retry-connector"]) == (alone["bleak"], alone["bleak-retry-connector"])


@pytest.mark.parametrize("platform", PLATFORMS)
def test_keyring_extra_resolves_everywhere_from_wheels(uv: Path, wheel: Path, platform: str) -> None:
    pins = resolve(uv, f"wearable-dkey[keyring] @ {wheel.as_uri()}", platform, "3.11")
    assert "keyring" in pins and pins["bleak"].startswith("3."), pins
    assert ("secretstorage" in pins) == ("linux" in platform), pins  # the Secret Service client, Linux only


@pytest.mark.parametrize("platform", ["aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"])
def test_vehicle_installs_resolve_for_linux(uv: Path, wheel: Path, platform: str) -> None:
    server = resolve(uv, f"wearable-dkey[server] @ {wheel.as_uri()}", platform, "3.11")
    assert server["bless"].startswith("0.3.") and server["bleak"].startswith("3."), server
    assert {"dbus-next", "segno"} <= server.keys() and "gpiozero" not in server
    pi = resolve(uv, f"wearable-dkey[pi] @ {wheel.as_uri()}", platform, "3.11")
    assert "gpiozero" in pi and pi["bless"] == server["bless"]


# ------------------------------------------------------------------------------------------------ the Pi targets
#
# docs/DEPLOY.md installs `[pi]` with `pip install --only-binary cffi,cryptography` into a venv made with
# --system-site-packages, after `apt-get install python3-cffi python3-lgpio`. These tests check that this
# resolves on every Pi target from PyPI's wheels plus those system packages, and fail where pip would have to
# compile something (no compiler, no swig on a stock Pi OS): 64-bit Python 3.11 (Pi OS 12) and 3.13 (Pi OS 13)
# with uv's resolver, 32-bit ARM Python 3.11 (Pi OS 12 armhf) with pip's (uv has no armv7 target).

DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"
# The python3-cffi of Debian 12, the only 32-bit target: what --system-site-packages shows pip there.
DEBIAN12_CFFI = "1.15.1"


def deploy_apt_packages() -> set[str]:
    """The packages DEPLOY.md's `apt-get install` lines install."""
    found: set[str] = set()
    for line in DEPLOY_MD.read_text().splitlines():
        words = line.split()
        if words[:2] == ["apt-get", "install"]:
            found |= {w for w in words[2:] if not w.startswith("-")}
    return found


def test_the_gpio_library_comes_from_the_documented_system_package(wheel: Path) -> None:
    """[pi] never asks pip for lgpio (no wheel for armv7 or Python 3.13: pip would need swig and a compiler)."""
    assert {"python3-lgpio", "python3-cffi", "python3-venv", "bluez"} <= deploy_apt_packages()
    assert "python3 -m venv --system-site-packages /opt/dkey/venv" in DEPLOY_MD.read_text()
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "lgpio" in r], requires


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_pi_install_resolves_from_wheels_on_64_bit_pi_os(uv: Path, wheel: Path, python: str) -> None:
    pins = resolve(uv, f"wearable-dkey[pi] @ {wheel.as_uri()}", "aarch64-unknown-linux-gnu", python)
    assert {"gpiozero", "bless", "cryptography", "dbus-fast"} <= pins.keys(), pins
    assert "lgpio" not in pins  # python3-lgpio


def _stub_wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    """A wheel with metadata only: stands for a Debian package that --system-site-packages makes visible."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    files = {f"{dist}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
    return path


def _pure_python_wheel_from_source(tools: Venv, requirement: str, out: Path) -> Path:
    """Build `requirement` from its sdist with no C compiler; fail if the wheel holds compiled code."""
    import zipfile

    built = out / "built"
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    name = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]
    ok(tools.bin / "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--no-binary", name,
       requirement, "-w", built, env=env, timeout=600)
    (path,) = built.glob("*.whl")
    with zipfile.ZipFile(path) as zf:
        compiled = [n for n in zf.namelist() if n.endswith((".so", ".pyd"))]
    assert not compiled, f"{requirement} needs a compiler: {compiled}"
    # Pure Python, so the same files on ARM: retag it for the target's resolver.
    name, version = path.name.split("-")[:2]
    pure = out / f"{name}-{version}-py3-none-any.whl"
    shutil.copy(path, pure)
    return pure


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A venv with build and twine from PyPI."""
    v = Venv(tmp_path_factory.mktemp("tools") / "venv")
    v.install("build>=1")
    v.install("twine>=5")
    return v


def test_pi_install_resolves_without_a_compiler_on_32_bit_pi_os(uv: Path, wheel: Path, tools: Venv,
                                                                  tmp_path: Path) -> None:
    # On armv7 PyPI has no wheel of cffi 2 or of dbus-fast: cffi is the system's python3-cffi (a stand-in wheel
    # here), dbus-fast must build from source with no compiler (pure Python).
    pins = resolve(uv, f"wearable-dkey[pi] @ {wheel.as_uri()}", "aarch64-unknown-linux-gnu", "3.11")
    links = tmp_path / "links"
    links.mkdir()
    _stub_wheel(links, "cffi", DEBIAN12_CFFI, ["pycparser"])
    _pure_python_wheel_from_source(tools, f"dbus-fast=={pins['dbus-fast']}", links)
    (links / "constraints.txt").write_text(f"cffi=={DEBIAN12_CFFI}\n")  # installed: pip cannot replace it
    # Debian 12's glibc is 2.36; PyPI's armv7 wheels are manylinux_2_17 .. _2_36 or plain linux_armv7l.
    platforms = [arg for m in range(17, 37) for arg in ("--platform", f"manylinux_2_{m}_armv7l")]
    report = tmp_path / "report.json"
    proc = run(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
               "--disable-pip-version-check", "--report", report, "--target", tmp_path / "target",
               "--only-binary", ":all:", "--platform", "linux_armv7l", "--platform", "manylinux2014_armv7l",
               *platforms, "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--find-links", links, "-c", links / "constraints.txt", f"{wheel}[pi]", timeout=600)
    assert proc.returncode == 0, f"[pi] does not resolve for armv7 Python 3.11 without a compiler:\n{proc.stderr}"
    chosen = {canonical(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    assert {"gpiozero", "bless", "cryptography", "dbus-fast"} <= chosen.keys(), chosen
    assert chosen["cffi"] == DEBIAN12_CFFI and "lgpio" not in chosen


# ------------------------------------------------------------------------------------------------ the artefacts


def test_the_wheel_ships_the_deploy_files_and_prints_them(server_venv: Venv, wheel: Path, tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = {p.name for p in (ROOT / "key_server" / "deploy").iterdir() if p.is_file()}
    assert {f"key_server/deploy/{n}" for n in shipped} <= names
    env = server_venv.env(tmp_path)
    for name in shipped:
        printed = ok(server_venv.bin / "key-server", "print-file", name, env=env, cwd=tmp_path)
        assert printed == (ROOT / "key_server" / "deploy" / name).read_text()
    assert ok(server_venv.bin / "key-server", "--version", env=env).strip() == f"key-server {wheel.name.split('-')[1]}"


def test_the_sdist_has_docs_and_deploy_files_and_both_pass_twine(tools: Venv, wheel: Path, tmp_path: Path) -> None:
    import tarfile

    src = wheel.parent.parent / "src"  # the copy of the tracked files the wheel was built from
    ok(tools.bin / "python", "-m", "build", "--sdist", "--outdir", tmp_path, src, timeout=600)
    (sdist,) = tmp_path.glob("wearable_dkey-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"docs/DEPLOY.md", "docs/HARDWARE.md", "key_server/deploy/key-server.service",
            "key_server/deploy/config.toml"} <= names, sorted(names)
    ok(tools.bin / "twine", "check", "--strict", wheel, sdist)
