"""key-client tests: the CLI runs in-process (`cli.amain`) against real key servers on the mock radio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from key_client import cli


@dataclass
class Result:
    """What one key-client invocation did."""

    code: int
    out: str
    err: str

    def json(self) -> list[dict[str, Any]]:
        """Every JSON object printed on stdout, in order: a list command's one array, or one object per line."""
        values = [json.loads(line) for line in self.out.splitlines() if line.strip()]
        if len(values) == 1 and isinstance(values[0], list):
            return values[0]
        assert all(isinstance(v, dict) for v in values), self.out
        return values


@dataclass
class Cli:
    """Runs `key-client --keychain DIR --radio mock ...` in the test's event loop (register_mock first)."""

    keychain: Path
    capsys: pytest.CaptureFixture[str]
    scan_time: float = 1.0

    async def __call__(self, *argv: str, keychain: Path | None = None) -> Result:
        self.capsys.readouterr()
        code = await cli.amain(["--keychain", str(keychain or self.keychain), "--radio", "mock",
                                "--scan-time", str(self.scan_time), *argv])
        out, err = self.capsys.readouterr()
        return Result(code, out, err)
