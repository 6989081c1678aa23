"""The `diffier` command: the root of the command line, its commands (one module each in
commands/) and the entry point that turns every user-facing failure into one stderr line.

Only typer and click are imported at module level, so `diffier --help` never loads torch.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Annotated, Optional

import typer

from diffier_cli import __version__
from diffier_cli.commands import eval as eval_commands
from diffier_cli.commands import files, gap, sr, t2i, tts
from diffier_cli.errors import EXIT_CODES_HELP, DiffierError, ExitCode, as_diffier_error, one_line, print_error

app = typer.Typer(
    name="diffier",
    help=(
        "Run pretrained diffusion models with and without an inference-time correction (DiffIER, or IEC), "
        f"on the same seed, and keep what made every output. {EXIT_CODES_HELP}"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(epilog=t2i.EPILOG)(t2i.t2i)
app.command(epilog=tts.EPILOG)(tts.tts)
app.command(epilog=sr.EPILOG)(sr.sr)
app.add_typer(eval_commands.app, name="eval")
app.command(epilog=EXIT_CODES_HELP)(files.info)
app.command(epilog=gap.EPILOG)(gap.gap)
app.command(epilog=files.MANIFEST_EPILOG + EXIT_CODES_HELP)(files.manifest)
app.command(epilog=EXIT_CODES_HELP)(files.convert)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffier {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


def _fail(message: str, code: int) -> None:
    print_error(message)
    sys.exit(code)


def _resumable(command, argv: Optional[list[str]]) -> bool:
    """Whether the invoked command takes --skip-existing, so that an interrupted run can resume."""
    args = sys.argv[1:] if argv is None else argv
    name = next((arg for arg in args if not arg.startswith("-")), None)
    invoked = getattr(command, "commands", {}).get(name)
    return invoked is not None and any(param.name == "skip_existing" for param in invoked.params)


def _terminate(signum, frame) -> None:
    """SIGTERM (Slurm's time limit, scancel, kill) before a job loop takes over: stop as Ctrl-C does,
    with exit 130 and the resume hint, instead of dying silently with 143."""
    raise KeyboardInterrupt


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line on stderr, never a multi-line dump with source lines."""
    text = str(message).strip()
    print(f"diffier: warning: {one_line(text.splitlines()[0]) if text else category.__name__}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: every user-facing failure ends as one stderr line and a documented exit code."""
    import signal
    import warnings

    command = typer.main.get_command(app)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    previous_show, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        _main(command, argv)
    finally:
        warnings.showwarning = previous_show
        if previous_handler is not None:  # None: a handler installed outside Python, left alone
            signal.signal(signal.SIGTERM, previous_handler)


def _main(command, argv: Optional[list[str]]) -> None:
    try:
        code = command.main(args=argv, prog_name="diffier", standalone_mode=False)
    except typer.TyperException as exc:  # bad option values, missing arguments, unknown options
        ctx = getattr(exc, "ctx", None)
        where = f"diffier {ctx.info_name} --help" if ctx is not None and ctx.parent else "diffier --help"
        message = " ".join(exc.format_message().split())
        if not message:  # bare `diffier`: the help was printed, there is nothing to add
            sys.exit(exc.exit_code)
        _fail(f"{message} (see {where})", exc.exit_code)
    except DiffierError as exc:
        _fail(str(exc), exc.code)
    except (KeyboardInterrupt, typer.Abort):
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `diffier tts ... -o - | head`: the reader left; nothing more to say
        sys.stderr.close()
        os._exit(ExitCode.RUNTIME)
    except Exception as exc:
        mapped = as_diffier_error(exc)
        if mapped is None:
            raise
        _fail(str(mapped), mapped.code)
    if code == ExitCode.INTERRUPTED:  # typer also turns a KeyboardInterrupt into a bare exit code 130
        hint = "; rerun the same command with --skip-existing (and the printed --seed) to resume" if _resumable(command, argv) else ""
        _fail(f"interrupted{hint}", code)
    sys.exit(code if isinstance(code, int) else 0)
