"""What the tests share besides fixtures (conftest.py) and tolerances (tolerance.py): running the
`diffier` command and checking what it printed or wrote. Test modules import from here, never
from one another.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, input_text: str | None = None, in_process: bool = True
) -> CliResult:
    """Run `diffier ARGS` and collect its exit code and streams.

    By default in this process, through the console script's own entry point
    (`diffier_cli.app:main`), with stdin, stdout, stderr, the environment and the working folder
    swapped for the call: the same code path as the installed command without paying ~5 s of
    interpreter start and imports per call. `in_process=False` runs the installed script itself.
    """
    if not in_process:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
        done = subprocess.run(
            [DIFFIER, *args], cwd=cwd, env=full_env, capture_output=True, timeout=300, check=False,
            input=None if input_text is None else input_text.encode(),
        )
        return CliResult(done.returncode, done.stdout, done.stderr.decode("utf-8", errors="replace"))

    from diffier_cli.app import main

    stdin = io.TextIOWrapper(io.BytesIO((input_text or "").encode()), encoding="utf-8")
    stdout_bytes = io.BytesIO()
    stdout = io.TextIOWrapper(stdout_bytes, encoding="utf-8", write_through=True)
    stderr = io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    os.environ.update({"NO_COLOR": "1", **(env or {})})
    threads = (env or {}).get("OMP_NUM_THREADS")  # read once at start-up by a real process
    if threads is not None:
        import torch

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        stdout.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        if threads is not None:
            torch.set_num_threads(saved_threads)
    return CliResult(code, stdout_bytes.getvalue(), stderr.getvalue())


def assert_one_line_error(result: CliResult, code: int, *needles: str) -> None:
    """The command failed with `code` and said why in one `diffier: error:` line holding every needle."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("diffier: error: ")
    for needle in needles:
        assert needle in lines[0]


def pixels(path) -> np.ndarray:
    """An image file's RGB pixels, as int16 so that differences of two images do not wrap."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# `diffier sr` options that keep a run on the tiny StableSR checkpoints (tiny_stablesr.py) small.
SR_SMALL = ("--tile-size", "64", "--tile-overlap", "4", "--steps", "3")


def damaged_copies(original: bytes, seed: int, trials: int, keep: int):
    """`trials` copies of a file's bytes, each with one random byte changed, a cut or an insertion
    after its first `keep` bytes (a fixed seed, so a failure is reproducible)."""
    import random

    rng = random.Random(seed)
    for trial in range(trials):
        data = bytearray(original)
        if trial % 3 == 0:
            data[rng.randrange(keep, len(data))] = rng.randrange(256)
        elif trial % 3 == 1:
            del data[rng.randrange(keep, len(data)):]
        else:
            data[rng.randrange(keep, len(data)):0] = rng.randbytes(rng.randint(1, 16))
        yield bytes(data)
