from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny_sd import save_tiny_sd

# The installed console script, next to the interpreter running the tests.
DIFFIER = str(Path(sys.executable).with_name("diffier"))


@dataclass
class CliResult:
    returncode: int
    stdout_bytes: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input_text: str | None = None) -> CliResult:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
    done = subprocess.run(
        [DIFFIER, *args], cwd=cwd, env=full_env, capture_output=True, timeout=300, check=False,
        input=None if input_text is None else input_text.encode(),
    )
    return CliResult(done.returncode, done.stdout, done.stderr.decode("utf-8", errors="replace"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny SD pipeline, ε- and v-prediction, saved with save_pretrained."""
    return save_tiny_sd(tmp_path_factory.mktemp("models"))
