"""Provenance for every output: the full JSON record and its A1111-style `parameters` summary.

The `parameters` text chunk follows AUTOMATIC1111's layout (prompt, `Negative prompt:` line, then
one line of `Key: value` pairs) so existing PNG-info readers show it; the `diffier` chunk holds
the whole record, which is what `--json` prints too.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path

from diffier_cli import __version__
from models import untrusted
from diffier_cli.errors import UsageError, first_line
from diffier_cli.limits import MAX_RECORD_BYTES
from diffier_cli.refiners import a1111_pairs
from models.untrusted import mib


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the numbers; called after they are imported."""
    import diffusers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def located(info: object, keep_paths: bool) -> object:
    """A record part with each local file's absolute `path` replaced by its `file` name, unless the
    user asked to keep paths (--record-paths): outputs get shared, and a path reveals a user's
    folders (and A1111 readers cut a value at its ':' or ',')."""
    if isinstance(info, list):
        return [located(value, keep_paths) for value in info]
    if not isinstance(info, dict):
        return info
    out = {key: located(value, keep_paths) for key, value in info.items() if keep_paths or key != "path"}
    if not keep_paths and isinstance(info.get("path"), str):
        out.setdefault("file", Path(info["path"]).name)
    return out


def _quote(value: object) -> str:
    """A1111's rule: a value holding ',', ':' or a newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(record: dict, extra: dict | None = None) -> str:
    """`extra`: pairs written after the record's own, before `Version` (a grid's axes)."""
    params = record["params"]
    pairs: dict[str, object] = {
        "Steps": params["steps"],
        "Sampler": params["scheduler"],
        **({"Schedule type": "Karras"} if params.get("karras") else {}),
        "CFG scale": params["cfg"],
        "Seed": record["seed"],
        "Size": f"{params['width']}x{params['height']}",
        # A1111 writes the checkpoint's hash and its name without the extension (sd_models.py name_for_extra).
        "Model hash": record["model"]["sha256"][:10],
        "Model": Path(record["model"]["id"]).stem if "single_file" in record["model"] else record["model"]["id"],
    }
    if record["model"]["revision"]:
        pairs["Model revision"] = record["model"]["revision"]
    if record["model"].get("loras"):  # A1111's field: each LoRA's name and the first 12 digits of its addnet hash
        pairs["Lora hashes"] = ", ".join(f"{Path(lora['file']).stem}: {lora['addnet_hash'][:12]}" for lora in record["model"]["loras"])
    pairs["RNG"] = "CPU"
    if params["ddim_eta"]:  # A1111's key for DDIM's η, written when not its default 0 ("Eta" is the ancestral samplers')
        pairs["Eta DDIM"] = params["ddim_eta"]
    pairs.update(a1111_pairs(record["refiner"], record["mode"]))
    pairs.update(extra or {})
    pairs["Version"] = f"diffier {__version__}"
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


def record_json(record: dict) -> str:
    """A record as a PNG's `diffier` chunk holds it: compact JSON, UTF-8 as it is."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def png_text(record: dict) -> dict[str, str]:
    return {"parameters": a1111_parameters(record), "diffier": record_json(record)}


# The text chunks that hold a record: diffier's own, then AUTOMATIC1111's summary.
RECORD_CHUNKS = ("diffier", "parameters")

# The fix offered for a record diffier cannot have written: its own records pass every check.
NOT_OURS = "not written by diffier, or altered since; move it away"


class NoRecord(UsageError):
    """A readable file that carries no diffier record: not an output of diffier, so `manifest`
    leaves it out without counting it as a problem (a bad record is one)."""


def read_record(path) -> dict | str:
    """The record stored with an output: a PNG's `diffier` chunk (else its A1111 `parameters`
    text), or a WAV's `<stem>.json` sidecar (else the record in brief in its INFO chunk).

    The file may come from anywhere, so nothing in it is trusted: every failure is a UsageError
    whose one-line message starts with the path ("PATH: why"), and the JSON goes through the one
    bounded reader (untrusted.loads) and must be an object.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() == ".wav":
        return _sidecar_record(path)
    text = _png_text(path)
    if "diffier" in text:
        return _parse_record(text["diffier"], f"{path}: its diffier chunk")
    if "parameters" in text:
        if len(text["parameters"]) > MAX_RECORD_BYTES:
            raise UsageError(f"{path}: its parameters chunk is over {mib(MAX_RECORD_BYTES)} (MAX_RECORD_BYTES); {NOT_OURS}")
        return text["parameters"]
    raise NoRecord(f"{path}: carries no diffier record and no parameters chunk")


def _parse_record(text: str | bytes, where: str) -> dict:
    """A record's JSON, bounded, as an object: anything else is a usage error naming `where`."""
    try:
        record = untrusted.loads(text)
    except untrusted.Refused as exc:
        raise UsageError(f"{where} {exc}; {NOT_OURS}") from None
    if not isinstance(record, dict):
        raise UsageError(f"{where} is a JSON {type(record).__name__}, not an object; {NOT_OURS}")
    return record


def _sidecar_record(path: Path) -> dict:
    """A WAV's record: its `<stem>.json` sidecar, read at most MAX_RECORD_BYTES of; without one,
    the record in brief in the WAV's INFO comment."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return _wav_info_record(path, sidecar)
    try:
        with sidecar.open("rb") as stream:
            data = untrusted.read_bytes(stream, MAX_RECORD_BYTES, "MAX_RECORD_BYTES")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read its sidecar {sidecar.name} ({exc.strerror or exc})") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"{path}: its sidecar {sidecar.name} {exc}; {NOT_OURS}") from None
    return _parse_record(data, f"{path}: its sidecar {sidecar.name}")


def _wav_info_record(path: Path, sidecar: Path) -> dict:
    """The record in brief that diffier writes into a WAV's INFO chunk (ISFT `diffier ...`, ICMT
    the JSON; see wavinfo.py and tts.wav_comment). A WAV without them, or one libsndfile cannot
    read, carries no diffier record; one whose software says diffier must hold a good record."""
    from diffier_cli.wavinfo import read_info

    try:
        software, comment = read_info(path)
    except ValueError as exc:
        raise NoRecord(f"{path}: no sidecar {sidecar.name} beside it, and {exc}") from None
    if not software.startswith("diffier "):
        raise NoRecord(f"{path}: no sidecar {sidecar.name} beside it and no diffier record in its INFO chunk")
    return _parse_record(comment, f"{path}: its INFO comment (ICMT)")


def _png_text(path: Path) -> dict[str, str]:
    """The record chunks of an image, within Pillow's bounds and with its warnings kept off stderr.

    Chunks before the pixel data (where diffier writes them) come with the header, so a diffier
    output is read without decoding its pixels; only a file without them there is decoded, to
    reach chunks after the pixels. Pillow refuses a compressed text chunk that inflates past 1 MB,
    text over 64 MB in all, and an image over MAX_IMAGE_PIXELS (a decompression bomb: an error
    here, not a warning on stderr), each with a ValueError or its own exception type.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                text = _record_chunks(image.info)
                if not text and image.format == "PNG":
                    text = _record_chunks(image.text)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UsageError(f"{path}: refused as a decompression bomb ({first_line(exc)}); {NOT_OURS}") from None
        except ValueError as exc:  # Pillow's bounds on text chunks, and other malformed chunks
            raise UsageError(f"{path}: Pillow refused it ({first_line(exc)}); {NOT_OURS}") from None
        except (OSError, SyntaxError, EOFError) as exc:  # not an image, truncated, a bad checksum
            raise UsageError(f"{path}: not a readable image or WAV ({first_line(exc)})") from None
    return text


def _record_chunks(chunks: dict) -> dict[str, str]:
    """The record chunks among an image's info or text (where other keys hold bytes or tuples)."""
    return {key: chunks[key] for key in RECORD_CHUNKS if isinstance(chunks.get(key), str)}
