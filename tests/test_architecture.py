"""The import contract (docs/ARCHITECTURE.md): a napkin graph, checked on every import statement in the tree.

protocol (pure) <- dkey_link <- key_server, key_client; hardware <- key_server only. The device side never
imports the vehicle side, so a phone, watch or laptop installs and runs no vehicle code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "dkey_link", "hardware", "key_server", "key_client"}

# For each package: which of our packages it may import, and third-party modules it must never import.
ALLOWED = {
    "protocol": set(),
    "dkey_link": {"protocol"},
    "hardware": {"protocol"},
    "key_server": {"protocol", "dkey_link", "hardware"},
    "key_client": {"protocol", "dkey_link"},
}
FORBIDDEN_THIRD_PARTY = {
    "protocol": {"asyncio", "socket", "sqlite3", "bleak", "bless", "gpiozero", "lgpio", "dbus_next", "dbus_fast"},
    "dkey_link": {"bleak", "bless", "gpiozero", "lgpio"},
    "hardware": {"bleak", "bless"},
    "key_server": {"bleak", "bleak_retry_connector"},
    "key_client": {"bless", "gpiozero", "lgpio"},
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Top-level names of every module `path` (in `package`) imports, at any depth (lazy imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package
                found.add(package)
            elif node.module:
                found.add(node.module.split(".")[0])
    return found


def _violations() -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path, package):
                rel = path.relative_to(ROOT)
                if module in OURS and module != package and module not in allowed:
                    bad.append(f"{rel} imports {module}")
                if module in FORBIDDEN_THIRD_PARTY[package]:
                    bad.append(f"{rel} imports {module}")
    return bad


def test_import_graph_is_the_documented_one() -> None:
    assert _violations() == []


def test_contract_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text("def f():\n    from key_server.store import KeyStore\n    import bless\n")
    assert {"key_server", "bless"} <= imported_modules(bad, "key_client")


_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, runpy, sys
    BLOCKED = {"key_server", "hardware", "bless", "gpiozero", "lgpio"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"vehicle-side module {name} imported by the device side")
            return None

    sys.meta_path.insert(0, Blocker())
    sys.argv = ["key-client", *sys.argv[1:]]
    runpy.run_module("key_client", run_name="__main__")
    """
)


@pytest.mark.parametrize("argv", [["--help"], ["--radio", "sim", "vehicles"], ["--json", "vehicles"]])
def test_key_client_runs_with_vehicle_code_absent(argv: list[str], tmp_path: Path) -> None:
    env = {"DKEY_KEYCHAIN": str(tmp_path / "keychain"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _BLOCKER, *argv], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)
    assert "vehicle-side module" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
