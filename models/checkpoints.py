"""Safe reading of original checkpoint files, shared by every backbone.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers, so a checkpoint can
never run code; anything else it refuses becomes a one-line `ModelUnavailable` (exit code 3).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

from models.errors import ModelUnavailable


# What a Hugging Face hub repository id looks like (owner/name), as opposed to a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def sha256_of(path: Path, start: int = 0) -> str:
    """Streamed, so multi-GB checkpoints never sit in memory twice; from byte `start` on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffier" / "sha256.json"


def cached_sha256(path: Path) -> str:
    """sha256_of, remembered by the file's absolute path, size and modification time, as
    AUTOMATIC1111 keeps its checkpoint hashes (cache.json by mtime): a multi-GB checkpoint is read
    once to hash, not on every run. An unreadable cache is recomputed; writes are atomic, so
    processes started together (torchrun ranks) at worst hash twice."""
    from models import untrusted

    stat, key, cache_file = path.stat(), str(path.resolve()), hash_cache_file()
    try:
        cache = untrusted.read_json_file(cache_file)
    except (OSError, untrusted.Refused):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    known = cache.get(key)
    if isinstance(known, dict) and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return str(known.get("sha256"))
    digest = sha256_of(path)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=cache_file.parent, prefix=".sha256.", suffix=".tmp")
    except OSError:  # a read-only home: the hash is still right, only not remembered
        return digest
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(cache, stream)
        os.replace(temp, cache_file)
    except OSError:
        Path(temp).unlink(missing_ok=True)
    return digest


def describe(found: object) -> str:
    """A short account of what a file held, for errors that say what was found instead."""
    if isinstance(found, dict):
        keys = [str(key) for key in found]
        shown = ", ".join(repr(key) for key in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"a dict with {len(keys)} key(s): {shown}"
    return f"a {type(found).__name__}"


def load_failure_reason(exc: Exception) -> str:
    """The sentence of a torch.load error that names the problem: the global it would not load
    when there is one, not torch's generic preamble about weights_only."""
    text = str(exc)
    detail = text.partition("WeightsUnpickler error:")[2] or text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(exc).__name__)
    reason = reason.split(". ")[0].rstrip(".")
    if reason.startswith("Unsupported operand"):  # e.g. 149, FRAME: written at pickle protocol 4 or 5
        reason += ", a pickle instruction it does not read (the file was saved at pickle protocol 4 or 5; re-save it with torch.save's default)"
    return reason


def torch_load_weights(path: Path, mmap: bool = False) -> object:
    """torch.load with weights_only=True onto the CPU. Its warning about a pickle protocol other
    than 2 (common in Lightning files) is dropped: the weights-only unpickler either reads the
    file or refuses it, and a refusal becomes our own one-line error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_tensors_only(path: Path, missing_hint: str) -> object:
    """torch.load with weights_only=True onto the CPU; `missing_hint` says how to pass another file."""
    if not path.is_file():
        raise ModelUnavailable(f"no checkpoint at {path}; {missing_hint}")
    try:
        return torch_load_weights(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: not a usable checkpoint
        raise ModelUnavailable(
            f"{path} is not a tensors-only torch checkpoint (torch.load with weights_only=True: "
            f"{load_failure_reason(exc)})"
        ) from exc
