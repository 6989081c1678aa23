"""What a model can fail with, as plain exceptions: the command line (diffier_cli.errors) turns
each into its one-line message and exit code, so nothing here knows about the command line."""

from __future__ import annotations


class ModelUnavailable(Exception):
    """The weights or their description cannot be had, read or trusted, or do not fit the
    architecture: the message says which file and why (exit code 3 on the command line)."""


class UnsupportedSetting(ValueError):
    """A setting this model or device cannot run with (exit code 2 on the command line)."""


class NumericalOverflow(ArithmeticError):
    """An output came out NaN or infinite; `what` names it and `dtype` the precision it ran in,
    so the caller can name the fix that fits its own settings."""

    def __init__(self, what: str, dtype: str):
        super().__init__(f"the {what} is NaN or infinite (numerical overflow in {dtype})")
        self.what = what
        self.dtype = dtype


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
