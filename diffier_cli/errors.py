"""Exit codes and the one exception type that carries a user-facing message to the top level.

Every failure a user can cause or fix ends as one line on stderr and one of these codes, so shell
scripts can branch on them; tracebacks are kept for genuine bugs.
"""

from __future__ import annotations

from enum import IntEnum


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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DiffierError(Exception):
    """A failure with a message that names the problem and the fix, and the exit code to end with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.RUNTIME):
        super().__init__(message)
        self.code = code


class UsageError(DiffierError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.USAGE)


class ModelUnavailable(DiffierError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.MODEL_UNAVAILABLE)


def numerical_overflow(what: str, dtype: str, knobs: str) -> DiffierError:
    """A NaN or infinite output as a runtime error whose fix fits the run: half precision is the
    usual cause, so it is named unless the run was float32 already."""
    fix = "rerun with --dtype float32" if dtype != "float32" else f"lower {knobs}"
    return DiffierError(f"the {what} is NaN or infinite (numerical overflow in {dtype}); {fix}")


OOM_HINT = (
    "out of memory: make the work smaller (t2i: --batch-size 1, --vae-slicing, --vae-tiling, "
    "--attention-slicing or --cpu-offload, smaller --height/--width; sr: a smaller --tile-size, --pixel-tile "
    "or --scale) or use --dtype float16 on a GPU"
)


def as_diffier_error(exc: BaseException) -> DiffierError | None:
    """Map the out-of-memory errors of torch (GPU and CPU allocators) to exit code 4; None for others."""
    message = str(exc)
    is_oom = type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in message.lower() or "can't allocate memory" in message.lower())
    )
    if is_oom:
        return DiffierError(OOM_HINT, ExitCode.OUT_OF_MEMORY)
    return None
