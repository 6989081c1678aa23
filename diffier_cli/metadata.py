"""Provenance for every output: the full JSON record and its A1111-style `parameters` summary.

The `parameters` text chunk follows AUTOMATIC1111's layout (prompt, `Negative prompt:` line, then
one line of `Key: value` pairs) so existing PNG-info readers show it; the `diffier` chunk holds
the whole record, which is what `--json` prints too.
"""

from __future__ import annotations

import json
import platform

from diffier_cli import __version__


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


def _quote(value: object) -> str:
    """A1111's rule: a value holding ',', ':' or a newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def refiner_pairs(record: dict) -> dict[str, object]:
    """The refinement as A1111 `Key: value` pairs: `DiffIER: baseline|refined` and DiffIER's
    settings, or `Refiner: IEC` and IEC's."""
    refiner = record["refiner"]
    if refiner is not None and refiner["name"] == "iec":
        return {"Refiner": "IEC", "IEC variant": refiner["variant"], "IEC iters": refiner["iters"],
                "IEC gamma": refiner["gamma"], "IEC tol": refiner["tol"], "IEC steps": refiner["steps"]}
    pairs: dict[str, object] = {"DiffIER": record["mode"]}
    if refiner is not None:
        pairs["DiffIER eta"] = refiner["eta"]
        pairs["DiffIER threshold"] = refiner["threshold"]
        pairs["DiffIER max iters"] = refiner["max_iters"]
        pairs["DiffIER direction"] = refiner["direction"]
    return pairs


def a1111_parameters(record: dict) -> str:
    params = record["params"]
    pairs: dict[str, object] = {
        "Steps": params["steps"],
        "Sampler": params["scheduler"],
        "CFG scale": params["cfg"],
        "Seed": record["seed"],
        "Size": f"{params['width']}x{params['height']}",
        "Model": record["model"]["id"],
    }
    if record["model"]["revision"]:
        pairs["Model revision"] = record["model"]["revision"]
    pairs["RNG"] = "CPU"
    pairs["Eta"] = params["ddim_eta"]
    pairs.update(refiner_pairs(record))
    pairs["Version"] = f"diffier {__version__}"
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


def png_text(record: dict) -> dict[str, str]:
    return {
        "parameters": a1111_parameters(record),
        "diffier": json.dumps(record, ensure_ascii=False, separators=(",", ":")),
    }


def read_record(path) -> dict | str:
    """The record stored with an output: a PNG's `diffier` chunk (else its A1111 `parameters`
    text), or a WAV's `<stem>.json` sidecar."""
    from pathlib import Path

    from diffier_cli.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    if path.suffix.lower() == ".wav":
        sidecar = path.with_suffix(".json")
        try:
            return json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} has no readable sidecar {sidecar.name} ({exc})") from exc
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{path} is not a readable image or WAV ({exc})") from exc
    if "diffier" in text:
        try:
            return json.loads(text["diffier"])
        except ValueError as exc:
            raise UsageError(f"{path}: its diffier chunk is not valid JSON ({exc})") from exc
    if "parameters" in text:
        return text["parameters"]
    raise UsageError(f"{path} carries no diffier record and no parameters chunk")
