"""Where outputs go and how they are written: planned before any model loads, written atomically.

Planning first means a clobber, a bad template or an unwritable folder fails in milliseconds,
not after minutes of sampling; writing to a temporary file and renaming means a killed run never
leaves a truncated image behind.
"""

from __future__ import annotations

import io
import os
import re
import string
import tempfile
import unicodedata
from pathlib import Path
from typing import Mapping

from diffier_cli.errors import DiffierError, UsageError

NAME_FIELDS = ("index", "seed", "slug", "mode", "stem")
SLUG_MAX = 60


def slugify(text: str, limit: int = SLUG_MAX) -> str:
    """A filesystem-safe, lower-case ASCII rendering of a prompt, capped so names stay legal."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "untitled"


def _template_fields(template: str) -> set[str]:
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise UsageError(f"bad name template {template!r}: {exc}") from exc


def plan_outputs(output: str | None, items: list[Mapping[str, object]], default_name: str) -> list[Path]:
    """Resolve `-o` into one path per item.

    `-o` is a file for one output, a folder (existing, or ending in '/') for any number, or a
    template with fields {index} {seed} {slug} {mode} {stem}; unset means the current folder.
    Every path must have the suffix of `default_name`, the format the command writes.
    """
    suffix = Path(default_name).suffix
    if output is None:
        template = default_name
    elif "{" in output:
        template = output
    elif output.endswith(("/", os.sep)) or Path(output).is_dir():
        template = str(Path(output) / default_name)
    else:
        if len(items) > 1:
            raise UsageError(
                f"-o {output} names one file but this run makes {len(items)} outputs; "
                f"pass a folder (-o out/) or a template (-o 'out-{{index}}{suffix}')"
            )
        template = output.replace("}", "}}")

    unknown = _template_fields(template) - set(NAME_FIELDS)
    if unknown:
        raise UsageError(
            f"unknown field(s) {', '.join(sorted(unknown))} in -o {output}; use {', '.join('{' + f + '}' for f in NAME_FIELDS)}"
        )
    try:
        paths = [Path(template.format(**item)) for item in items]
    except (ValueError, IndexError) as exc:
        raise UsageError(f"bad name template {template!r}: {exc}") from exc
    for path in paths:
        if path.suffix.lower() != suffix:
            raise UsageError(f"output {path} must end in {suffix} (the format this command writes)")
    if len(set(paths)) < len(paths):
        raise UsageError(f"-o {output} gives several outputs the same name; include {{index}} or {{seed}}")
    return paths


def preflight(paths: list[Path], overwrite: bool) -> None:
    """Refuse clobbering and unwritable places before any work starts; create nothing yet."""
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a folder; pass a file name or a folder ending in '/'")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it, or choose another -o")
    for folder in sorted({path.parent for path in paths}):
        existing = folder.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"cannot write to {folder}: {existing} is not a folder; choose another -o")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}; choose another -o") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(files: Mapping[Path, bytes], overwrite: bool) -> None:
    """Write each file to a temporary file in its folder, then rename them all: a killed or failed
    run never leaves a truncated file, nor one output of a pair (a WAV without its sidecar)."""
    for path in files:
        if path.exists() and not overwrite:
            raise UsageError(f"{path} appeared during the run; pass --overwrite to replace it")
    staged: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, staged[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(staged[path], 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, folder removed or made read-only mid-run
            raise DiffierError(f"cannot write {', '.join(map(str, files))}: {exc.strerror or exc}") from exc
        raise


def png_bytes(image, text: Mapping[str, str]) -> bytes:
    """A PNG with text chunks; Pillow writes iTXt (UTF-8) when a value is not Latin-1."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
