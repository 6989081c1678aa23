"""`diffier info`'s reader: one object per file saying who made it (`kind`) and what with.

- `diffier`: diffier's own record, read by diffier (embedded.read_record: a PNG's chunk, a JPEG's
  or WebP's EXIF, a WAV's sidecar), shown whole.
- `a1111`, `comfyui`, `invokeai`: another generator's metadata, found by diffier's bounded reader
  (embedded.embedded) and parsed by sd-parsers (MIT, the `readers` extra), whose fields are
  gathered into one shape: prompt, negative_prompt, seed, steps, sampler, cfg, width, height,
  model, where the source has them, and the rest of what sd-parsers found under `other`.
  AUTOMATIC1111: a PNG's `parameters` chunk, a JPEG's or WebP's EXIF UserComment; ComfyUI: a PNG's
  `prompt` (API graph) and `workflow` chunks; InvokeAI: `invokeai_metadata`, `sd-metadata` or `Dream`.
- `none`: nothing to show (unreadable, or no metadata a reader knows), with the error saying why.

sd-parsers' parsers are given the chunks diffier has read and checked (JSON already bounded by
untrusted.loads) rather than the file: its ParserManager would read the file without diffier's
bounds, and (0.6) keeps the last JPEG's UserComment in a module global keyed by `id(image)`, an id
a later image may get once the first is freed.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from diffier_cli.embedded import Embedded, NoRecord, embedded, json_object, read_record, record_in
from diffier_cli.errors import DiffierError, ExitCode, UsageError, first_line

KINDS = ("diffier", "a1111", "comfyui", "invokeai", "none")
LABELS = {"diffier": "diffier", "a1111": "AUTOMATIC1111", "comfyui": "ComfyUI", "invokeai": "InvokeAI", "none": "none"}
EXTRA = "readers"  # pip install 'diffier[readers]': sd-parsers

# The PNG chunks that say which generator wrote a file (sd-parsers' own triggers), in the order
# they are tried: ComfyUI's graph pair, then InvokeAI's, then AUTOMATIC1111's infotext.
SIGNATURES = {"comfyui": ("prompt", "workflow"), "invokeai": ("invokeai_metadata", "sd-metadata", "Dream"), "a1111": ("parameters",)}
JSON_CHUNKS = ("prompt", "workflow", "invokeai_metadata", "invokeai_graph", "sd-metadata")


@dataclass
class Reading:
    """One file as `info` shows it: its kind and record, or the error that left it without one."""

    path: str
    kind: str
    record: dict | None = None
    error: DiffierError | None = None

    @property
    def code(self) -> ExitCode:
        return ExitCode.OK if self.error is None else self.error.code

    def as_json(self) -> dict:
        shown = {"path": self.path, "kind": self.kind, "record": self.record}
        if self.error is not None:
            shown.update(error=str(self.error), exit_code=int(self.error.code))
        return shown


def read(name: str) -> Reading:
    """What `info` says of one file; every failure is a Reading with its error, never a raise."""
    path = Path(name)
    kind = "none"
    try:
        if not path.is_file() or path.suffix.lower() == ".wav":
            return Reading(name, "diffier", read_record(path))
        found = embedded(path)
        try:
            return Reading(name, "diffier", record_in(path, found))
        except NoRecord:
            pass
        kind = foreign_kind(found)
        if kind == "none":
            raise UsageError(f"{path}: carries no generation metadata that info reads (diffier's, AUTOMATIC1111's, "
                             "ComfyUI's or InvokeAI's)")
        return Reading(name, kind, parse(path, kind, found))
    except DiffierError as exc:  # its message is "PATH: why"; the kind found so far stays
        return Reading(name, kind, None, exc)


def foreign_kind(found: Embedded) -> str:
    """Which other generator's metadata an image holds, from its chunk names (or EXIF UserComment)."""
    for kind, keys in SIGNATURES.items():
        if any(key in found.text for key in keys):
            return kind
    return "a1111" if found.user_comment is not None else "none"


def parse(path: Path, kind: str, found: Embedded) -> dict:
    """Another generator's metadata through sd-parsers, as info's one shape of fields."""
    parameters = dict(found.text)
    if kind == "a1111" and "parameters" not in parameters:
        parameters["parameters"] = found.user_comment
    for key in JSON_CHUNKS:  # through the bounded reader before any parser sees them
        if key in parameters:
            json_object(parameters[key], f"{path}: its {key} chunk", "the file is damaged or was altered")
    if importlib.util.find_spec("sd_parsers") is None:
        raise UsageError(f"{path}: holds {LABELS[kind]} metadata, which info reads with sd-parsers; pip install 'diffier[{EXTRA}]'")
    from sd_parsers.parsers import AUTOMATIC1111Parser, ComfyUIParser, InvokeAIParser

    parser = {"a1111": AUTOMATIC1111Parser, "comfyui": ComfyUIParser, "invokeai": InvokeAIParser}[kind]()
    try:
        info = parser.parse(parameters)
    except Exception as exc:  # noqa: BLE001 - a third-party parser on untrusted data: ParserError, or worse
        raise UsageError(f"{path}: its {LABELS[kind]} metadata is not in a layout sd-parsers reads "
                         f"({type(exc).__name__}: {first_line(exc) or 'no detail'})") from None
    return fields(info)


def _number(value, cast):
    """A parsed value as int or float when it is a finite one (A1111's are text), else as it came."""
    try:
        number = cast(value) if not isinstance(value, bool) else value
    except (TypeError, ValueError, OverflowError):
        return value
    return number if math.isfinite(number) else value


def fields(info) -> dict:
    """An sd-parsers PromptInfo as info's shape: the common fields first (those the source has),
    then `other`, the rest of its parameters and metadata."""
    shown: dict = {}
    if info.full_prompt:
        shown["prompt"] = info.full_prompt
    if info.full_negative_prompt:
        shown["negative_prompt"] = info.full_negative_prompt
    other = dict(info.metadata)
    if info.samplers:
        first = info.samplers[0]
        parameters = dict(first.parameters)
        for name, keys, cast in (("seed", ("seed", "noise_seed"), int), ("steps", ("steps",), int), ("cfg", ("cfg_scale",), float)):
            key = next((key for key in keys if key in parameters), None)
            if key is not None:
                shown[name] = _number(parameters.pop(key), cast)
        shown["sampler"] = first.name
        if "scheduler" in parameters:
            shown["scheduler"] = parameters.pop("scheduler")
        width, height = _size(other, parameters)
        if width is not None:
            shown["width"], shown["height"] = width, height
        if first.model is not None:
            shown["model"] = first.model.name or first.model.hash
            if first.model.name and first.model.hash:
                shown["model_hash"] = first.model.hash
        other = {**parameters, **other}
        if len(info.samplers) > 1:
            other["samplers"] = [{"name": s.name, "parameters": s.parameters, "model": s.model and (s.model.name or s.model.hash)}
                                 for s in info.samplers]
    if other:
        shown["other"] = _plain(other)
    return shown


def _size(metadata: dict, parameters: dict) -> tuple[int | None, int | None]:
    """(width, height): A1111's `Size: WxH`, InvokeAI's width and height, or ComfyUI's empty latent's."""
    if isinstance(metadata.get("Size"), str) and "x" in metadata["Size"]:
        width, _, height = metadata.pop("Size").partition("x")
        return _number(width, int), _number(height, int)
    for source in (metadata, parameters):
        if "width" in source and "height" in source:
            return _number(source.pop("width"), int), _number(source.pop("height"), int)
    for node, values in metadata.items():  # ComfyUI: unprocessed nodes by class, e.g. EmptyLatentImage
        if "LatentImage" in str(node) and isinstance(values, list) and values and isinstance(values[0], dict):
            if "width" in values[0] and "height" in values[0]:
                return _number(values[0]["width"], int), _number(values[0]["height"], int)
    return None, None


def _plain(value):
    """sd-parsers' values as JSON: its dataclasses and enums as text, everything else as it is."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
