"""Provenance for every output: the full JSON record and its A1111-style `parameters` summary.

The `parameters` text chunk follows AUTOMATIC1111's layout (prompt, `Negative prompt:` line, then
one line of `Key: value` pairs) so existing PNG-info readers show it; the `diffier` chunk holds
the whole record, which is what `--json` prints too. JPEG and WebP carry the same two in EXIF
(formats.py); embedded.py reads them back.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.refiners import a1111_pairs


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
