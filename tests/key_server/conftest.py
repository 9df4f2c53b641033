"""Fixtures shared by the key server tests: a key store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from key_server.store import KeyStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's key store lives (not created yet)."""
    return tmp_path / "keys.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[KeyStore]:
    """An open key store at db_path, closed after the test."""
    with KeyStore.open(db_path, create=True) as s:
        yield s
