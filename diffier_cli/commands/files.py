"""`diffier info`, `manifest` and `convert`: reading outputs back, auditing jobs, converting checkpoints."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from diffier_cli.commands.options import Overwrite, Quiet
from diffier_cli.errors import ExitCode, one_line, print_error

MANIFEST_EPILOG = "Example: diffier manifest out/ -o out/manifest.ndjson . "


def info(
    files: Annotated[list[str], typer.Argument(help="Images (PNG, JPEG, WebP) written by diffier t2i or sr, AUTOMATIC1111, ComfyUI or InvokeAI, or WAVs written by tts (their .json sidecar is read).")],
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per file on stdout: {path, kind, record}, kind diffier, a1111, comfyui, invokeai or none (then with error and exit_code).")] = False,
) -> None:
    """Print what made each file: diffier's whole record, or another generator's prompt, seed,
    steps, sampler, CFG, size and model (AUTOMATIC1111, ComfyUI, InvokeAI; read with sd-parsers,
    pip install 'diffier[readers]').

    Every file is listed; one that cannot be read, or carries no metadata info reads, is also one
    error line on stderr, and the exit code is the worst of them (2 for a bad file or a missing
    extra), so one bad file in `diffier info *.png` hides nothing.
    """
    import json

    from diffier_cli.readers import LABELS, read

    worst = ExitCode.OK
    for name in files:
        reading = read(name)
        if reading.error is not None:
            print_error(str(reading.error))
            worst = max(worst, reading.code)
        if json_lines:
            typer.echo(json.dumps(reading.as_json(), ensure_ascii=False))
        elif reading.record is not None:
            typer.echo(f"{reading.path}: {LABELS[reading.kind]}")
            typer.echo(json.dumps(reading.record, ensure_ascii=False, indent=2))
    if worst:
        raise typer.Exit(int(worst))


def manifest(
    paths: Annotated[list[str], typer.Argument(help="Output folders (searched recursively) or files.")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write the NDJSON manifest to this file instead of stdout.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """List every output with its record and check that each job is complete.

    NDJSON, one line per file, sorted by job and item index. A file whose record cannot be read or
    trusted is left out and named on stderr ("PATH: why", even with -q: they are errors); exit 5
    when some item index of a job has no output or some file was left out so.
    """
    from pathlib import Path

    from diffier_cli import manifest as audit
    from diffier_cli.errors import UsageError
    from diffier_cli.jobs import PartialFailure
    from diffier_cli.outputs import preflight, write_atomically

    if output is not None:
        preflight([Path(output)], overwrite)
    found = audit.collect(paths)
    for problem in found.problems:
        typer.echo(one_line(problem), err=True)
    if not found.lines and not found.problems:
        raise UsageError(f"no diffier outputs (.png, .jpg or .webp with a diffier record, .wav with its sidecar) under {' '.join(paths)}")
    text = audit.to_ndjson(found.lines)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomically({Path(output): text.encode()}, overwrite)
    if not quiet:
        if found.foreign:
            typer.echo(f"{len(found.foreign)} file(s) without a diffier record left out", err=True)
        for message in audit.summary(found.audits):
            typer.echo(message, err=True)
    failures = []
    incomplete = sorted(job_id for job_id, job in found.audits.items() if job.missing_count)
    if incomplete:
        failures.append(f"{len(incomplete)} of {len(found.audits)} job(s) incomplete: {', '.join(incomplete)} "
                        "(rerun their commands with --skip-existing)")
    if found.problems:
        failures.append(f"{len(found.problems)} file(s) left out, their record unreadable or untrusted (remove or replace them)")
    if failures:
        raise PartialFailure(f"{'; '.join(failures)}; see the lines above")



def convert(
    source: Annotated[str, typer.Argument(help="An original .ckpt: StableSR's (diffusion model or CFW VAE) or a Stable Diffusion single file.")],
    destination: Annotated[str, typer.Argument(help="The .safetensors file to write.")],
    overwrite: Overwrite = False,
) -> None:
    """Convert an original Lightning checkpoint to .safetensors once, so later loads unpickle nothing.

    `diffier sr --ckpt/--vae-ckpt` and `diffier t2i --model` take the .safetensors file directly;
    a `<file>.config.json` beside the source is copied beside the destination.
    """
    import shutil
    from pathlib import Path

    from diffier_cli.errors import UsageError
    from models.lightning import convert_to_safetensors, neutralised_message

    src, dst = Path(source), Path(destination)
    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst} must end in .safetensors")
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst} exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise UsageError(f"cannot write to {dst.parent}: no such folder")
    neutralised = convert_to_safetensors(src, dst)
    if neutralised:
        typer.echo(neutralised_message(src, neutralised), err=True)
    config = src.with_name(src.name + ".config.json")
    if config.is_file():
        shutil.copyfile(config, dst.with_name(dst.name + ".config.json"))
    typer.echo(f"wrote {dst}", err=True)

