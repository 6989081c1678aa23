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
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from diffier_cli.errors import DiffierError, UsageError, excerpt
from diffier_cli.limits import MAX_NAME_BYTES, MAX_PATH_BYTES

if TYPE_CHECKING:
    from diffier_cli.jobs import Item

NAME_FIELDS = ("index", "seed", "slug", "mode", "stem")
SLUG_MAX = 60


def slugify(text: str, limit: int = SLUG_MAX) -> str:
    """A filesystem-safe, lower-case ASCII rendering of a prompt, capped so names stay legal:
    `кот` → `kot`, `一只猫` → `yi-zhi-mao`, `untitled` only when no letter or digit is left.

    Accents come off by NFKD decomposition, as they always have; a letter or digit with no ASCII
    form then (Cyrillic, Greek, CJK, ß, ...) is transliterated by Unidecode, and anything else that
    is not ASCII (punctuation, symbols, emoji) is dropped. So a prompt's name changes from before
    only where it held such a letter or digit, which earlier versions dropped, and never for an
    ASCII prompt: `--skip-existing` still finds the outputs of earlier runs by name.
    """
    ascii_text = "".join(_ascii_char(char) for char in unicodedata.normalize("NFKD", text))
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "untitled"


def _ascii_char(char: str) -> str:
    """A character of an NFKD-decomposed text as ASCII: itself, the letters and digits of its
    transliteration (a letter or digit), or nothing. Unidecode ends a syllable it reads for a CJK
    ideograph with a space (`猫` → `Mao `); a space before it too keeps `猫cat` apart (`mao-cat`)."""
    if char.isascii():
        return char
    if unicodedata.category(char)[0] not in "LN":
        return ""
    from unidecode import unidecode  # only for the letters and digits that NFKD left non-ASCII

    spelled = unidecode(char)
    return re.sub(r"[^A-Za-z0-9 ]", "", " " + spelled if spelled.endswith(" ") else spelled)


# Names Windows reserves for devices, with any extension: an output shared to such a machine
# could not be opened or copied there.
WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an output's file name on common file systems, or None.

    Checked for every item before any model loads, so a bad name never costs a sampling run.
    """
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"{excerpt(name)} holds a control character (NUL, newline, ...)"
    if "/" in name or "\\" in name:
        return f"{excerpt(name)} holds a folder separator"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return f"{excerpt(name, 40)} is {size} bytes long; at most {MAX_NAME_BYTES} fit (255 minus the temporary file's 15)"
    if name.split(".")[0].strip().lower() in WINDOWS_DEVICES:
        return f"{excerpt(name)} is a device name Windows reserves, so the file could not be copied there; rename it"
    return None


def _template_fields(template: str) -> set[str]:
    """The fields a name template uses; a format spec may not nest fields or ask for more
    characters than a file name holds (`{index:>100000}` would build 100 000 of them per item)."""
    try:
        parsed = [(field, spec or "") for _, field, spec, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise UsageError(f"bad name template {excerpt(template)}: {exc}") from exc
    for field, spec in parsed:
        if "{" in spec or "}" in spec:
            raise UsageError(f"bad name template {excerpt(template)}: {excerpt(field + ':' + spec, 40)} nests a field in a "
                             "format spec; use {index:05d}-style specs")
        if any(len(width.lstrip("0")) > 3 or int(width) > MAX_NAME_BYTES for width in re.findall(r"\d+", spec)):
            raise UsageError(f"bad name template {excerpt(template)}: {excerpt(field + ':' + spec, 40)} asks for more than "
                             f"the {MAX_NAME_BYTES} bytes a file name holds")
    return {field for field, _ in parsed}


def check_path(path: Path) -> None:
    """One-line usage error for an output path no file system would take (see name_problem)."""
    problem = name_problem(path.name)
    if problem is not None:
        raise UsageError(f"cannot name an output {excerpt(str(path), 120)}: {problem}; choose another -o or --name")
    if any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise UsageError(f"a folder name in the output path {excerpt(str(path), 120)} is over the 255 bytes file systems take; "
                         "choose another -o")
    if len(os.fsencode(path.absolute())) >= MAX_PATH_BYTES:
        raise UsageError(f"the output path {excerpt(str(path), 60)} is longer than the {MAX_PATH_BYTES} bytes Linux takes; "
                         "choose a shorter -o")


def names_folder(output: str | None) -> bool:
    """Whether `-o` is a folder (existing, or ending in '/') rather than a file or a name template."""
    return output is not None and "{" not in output and (output.endswith(("/", os.sep)) or Path(output).is_dir())


def plan_outputs(output: str | None, items: Sequence[Item], default_name: str, name: str | None = None,
                 suffixes: Sequence[str] = ()) -> list[Path]:
    """Resolve `-o` and `--name` into one path per item, for every item of the run (all shards
    compute the same list, so names come from the global index alone).

    `-o` is a file for one output, or a folder (existing, or ending in '/') for any number; `--name`
    is the file-name template inside it, with fields {index} {seed} {slug} {mode} {stem}. A template
    given straight to `-o` still works. An item with a `subdir` (sr --recursive) goes in that
    sub-folder of the output folder. Every path must end in one of `suffixes` (default: the suffix
    of `default_name`, which a name without one of them gets).
    """
    suffix = Path(default_name).suffix
    suffixes = tuple(suffixes) or (suffix,)
    folder_given = names_folder(output)
    if name is not None:
        if os.sep in name or "/" in name:
            raise UsageError(f"--name {name} holds a folder; put the folder in -o and the file name in --name")
        if output is not None and not folder_given:
            raise UsageError(f"--name needs -o to be a folder; -o {output} is a file (write -o {output}/ for a folder)")
        if not Path(name).suffix:
            name += suffix
    file_name = name or default_name
    if output is None:
        template = file_name
    elif folder_given:
        template = str(Path(output) / file_name)
    elif "{" in output:
        template = output
    else:
        if len(items) > 1:
            raise UsageError(
                f"-o {output} names one file but this run makes {len(items)} outputs; "
                f"pass a folder (-o out/) and optionally --name '{{index:05d}}-{{seed}}{suffix}'"
            )
        template = output.replace("{", "{{").replace("}", "}}")
    names_from_template = output is None or folder_given or "{" in output

    unknown = _template_fields(template) - set(NAME_FIELDS)
    if unknown:
        raise UsageError(
            f"unknown field(s) {', '.join(sorted(field or '{}' for field in unknown))} in the output name {template}; "
            f"use {', '.join('{' + f + '}' for f in NAME_FIELDS)}"
        )
    try:
        paths = [Path(template.format(**item.name_fields())) for item in items]
    except (ValueError, IndexError, KeyError) as exc:
        raise UsageError(f"bad name template {template!r}: {exc}") from exc
    for i, item in enumerate(items if names_from_template else []):  # an explicit -o FILE is taken as given
        if item.name:  # a name given with the input (a .jsonl line's "name") replaces the template's
            paths[i] = paths[i].with_name(item.name if Path(item.name).suffix.lower() in suffixes else item.name + suffix)
        if item.subdir:  # sr --recursive: the input's sub-folder, kept under the output folder
            paths[i] = paths[i].parent / item.subdir / paths[i].name
    for path in paths:
        if path.suffix.lower() not in suffixes:
            raise UsageError(f"output {path} must end in {' or '.join(suffixes)} (the format this run writes)")
        check_path(path)
    seen: dict[Path, int] = {}
    for item, path in zip(items, paths):
        if path in seen:
            raise UsageError(
                f"items {seen[path]} and {item.index} would both be written to {path}; "
                "include {index} or {seed} in --name"
            )
        seen[path] = item.index
    return paths


def preflight(paths: list[Path], overwrite: bool, resumable: bool = False) -> None:
    """Refuse clobbering and unwritable places before any work starts; create nothing yet.
    `resumable`: the command has --skip-existing, so the refusal offers it."""
    for path in paths:
        check_path(path)
        if path.is_dir():
            raise UsageError(f"{path} is a folder; pass a file name or a folder ending in '/'")
        if path.exists() and not overwrite:
            keep = "--skip-existing to keep it (resume), " if resumable else ""
            raise UsageError(f"{path} exists; pass {keep}--overwrite to replace it, or choose another -o")
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


def remove_stale_parts(path: Path) -> None:
    """Delete the temporary files a killed run left for this output (`.<name>.*.part`), so a
    resumed run starts clean; only this output's own names are touched."""
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.part"):
            leftover.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_folders(folder: Path) -> list[Path]:
    """The folders `folder.mkdir(parents=True)` would create."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def write_atomically(files: Mapping[Path, bytes], overwrite: bool) -> None:
    """Write each file to a temporary file in its folder, then rename them in the order given: a
    killed or failed run never leaves a truncated file. Put last the file whose presence says the
    item is done (a WAV after its sidecar), since a kill can fall between two renames."""
    for path in files:
        if path.exists() and not overwrite:
            raise UsageError(f"{path} appeared during the run; pass --overwrite to replace it")
    staged: dict[Path, str] = {}
    created: list[Path] = []  # folders this call made, so that a failure leaves no empty one behind
    try:
        for path, data in files.items():
            created += _missing_folders(path.parent)
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
        for folder in sorted(created, key=lambda folder: len(folder.parts), reverse=True):
            try:
                folder.rmdir()  # only when empty: another shard may have written into it meanwhile
            except OSError:
                pass
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
