"""Exit codes and the one exception type that carries a user-facing message to the top level.

Every failure a user can cause or fix ends as one line on stderr and one of these codes, so shell
scripts can branch on them; tracebacks are kept for genuine bugs.
"""

from __future__ import annotations

import errno
from enum import IntEnum

# The models' own failures, mapped to exit codes below; first_line serves both layers' messages.
from models.errors import ModelUnavailable, NumericalOverflow, UnsupportedSetting, first_line  # noqa: F401


class ExitCode(IntEnum):
    OK = 0
    RUNTIME = 1
    USAGE = 2
    MODEL_UNAVAILABLE = 3
    OUT_OF_MEMORY = 4
    PARTIAL = 5  # --keep-going: the run finished, some items failed
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 runtime error, 2 bad usage or input, "
    "3 model or weights unavailable, 4 out of memory, 5 some items failed (--keep-going), 130 interrupted."
)


def excerpt(text: str, limit: int = 80) -> str:
    """A piece of the user's input for a one-line message: quoted with control characters escaped
    (repr), at most `limit` characters, so a 20 000-character prompt or a name holding a newline
    neither fills the terminal nor breaks the line."""
    return repr(text if len(text) <= limit else f"{text[: limit - 3]}...")


MESSAGE_LIMIT = 2000  # characters of one stderr line; paths alone may take 4096 bytes


def one_line(message: str) -> str:
    """A message as one bounded line, whatever user input went into it: control characters
    escaped, and past MESSAGE_LIMIT the middle cut, keeping the start (the problem) and the end
    (the fix)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(text) <= MESSAGE_LIMIT:
        return text
    return f"{text[: MESSAGE_LIMIT // 2]} [...] {text[-MESSAGE_LIMIT // 2:]}"


def print_error(message: str) -> None:
    """The one form every user-facing failure takes on stderr: `diffier: error: ...`, one line."""
    import sys

    print(f"diffier: error: {one_line(message)}", file=sys.stderr, flush=True)


class DiffierError(Exception):
    """A failure with a message that names the problem and the fix, and the exit code to end with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.RUNTIME):
        super().__init__(message)
        self.code = code


class UsageError(DiffierError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.USAGE)


def numerical_overflow(overflow: NumericalOverflow, advice: str) -> DiffierError:
    """A NaN or infinite output as a runtime error whose fix fits the run: half precision is the
    usual cause, so it is named unless the run was float32 already; then `advice` (the sampling
    knobs that scale the numbers, each with the direction that shrinks them)."""
    fix = "rerun with --dtype float32" if overflow.dtype != "float32" else advice
    return DiffierError(f"{overflow}; {fix}")


OOM_HINT = (
    "out of memory: make the work smaller (t2i: --batch-size 1, --vae-slicing, --vae-tiling, "
    "--attention-slicing or --cpu-offload, smaller --height/--width; sr: a smaller --tile-size, --pixel-tile "
    "or --scale) or use --dtype float16 on a GPU"
)


def as_diffier_error(exc: BaseException) -> DiffierError | None:
    """The failures any step can meet, as user-facing errors: weights that cannot be had or used
    (models.errors.ModelUnavailable) are exit code 3, a setting the model cannot run with exit 2;
    running out of memory (torch's GPU and CPU allocators, numpy, Python) is exit code 4; a path
    the operating system will not take (a name over 255 bytes anywhere in it, a symbolic-link loop)
    is bad input, exit 2. None for others."""
    if isinstance(exc, ModelUnavailable):
        return DiffierError(str(exc), ExitCode.MODEL_UNAVAILABLE)
    if isinstance(exc, UnsupportedSetting):
        return UsageError(str(exc))
    if isinstance(exc, NumericalOverflow):  # the commands word their own fix; this is the general one
        return numerical_overflow(exc, "lower the settings that scale the numbers (--cfg, the refinement's --eta and --max-iters)")
    message = str(exc)
    is_oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in message.lower() or "can't allocate memory" in message.lower())
    )
    if is_oom:
        return DiffierError(OOM_HINT, ExitCode.OUT_OF_MEMORY)
    if isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        where = f" {excerpt(str(exc.filename), 120)}" if exc.filename else ""
        return UsageError(f"the path{where} cannot be used: {exc.strerror}; shorten its names or fix its links")
    return None
