"""Safe reading of original PyTorch-Lightning `.ckpt` files (StableSR's, Stable Diffusion's single
files), and their conversion to safetensors.

The original files are whole Lightning saves: besides `state_dict` they may pickle callbacks,
optimizer states and other objects, which `torch.load(weights_only=True)` refuses. Unpickling
them for real would run code from the file, which this project never does. Instead, each foreign
class or function the pickle names is mapped to `InertStandIn`, a class that swallows whatever
it is given; the weights-only unpickler still builds only tensors and plain containers, and
everything but `state_dict` is thrown away. Globals of the modules torch blocks outright (os,
sys, posix, nt) stay refused, and so does a pickled dict or list subclass: the unpickler fills
only exact dicts and lists, so its items have nowhere to go.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.checkpoints import describe, load_failure_reason, torch_load_weights
from models.errors import ModelUnavailable


class InertStandIn:
    """Stands in for any class or function a checkpoint's pickle names: it accepts any arguments
    and any state and keeps nothing, so loading such an object can run no code."""

    def __new__(cls, *args: object, **kwargs: object) -> InertStandIn:
        return super().__new__(cls)

    def __init__(self, *args: object, **kwargs: object):
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _torch_load(path: Path) -> object:
    """Weights-only load on the CPU, memory-mapped when the file is a zip archive (multi-GB files)."""
    return torch_load_weights(path, mmap=zipfile.is_zipfile(path))


def _load_with_stand_ins(path: Path) -> tuple[object, list[str]]:
    """Weights-only load; if foreign globals make it refuse, retry with each mapped to `InertStandIn`.
    Returns what was loaded and the globals that were neutralised."""
    try:
        return _torch_load(path), []
    except pickle.UnpicklingError as refusal:
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: the first refusal is the answer
            raise refusal from None
        if not foreign:
            raise refusal
        with torch.serialization.safe_globals([(InertStandIn, name) for name in foreign]):
            return _torch_load(path), sorted(foreign)


def _state_dict_of(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """`state_dict` of a Lightning save, or the dict itself when it is already flat tensors
    (the official `init_from_ckpt` accepts both, autoencoder.py l.552-554)."""
    if not isinstance(loaded, Mapping):
        raise ModelUnavailable(f"{path} is not an original checkpoint: found {describe(loaded)}")
    found = loaded.get("state_dict", loaded)
    if not isinstance(found, Mapping) or not found or not all(isinstance(v, torch.Tensor) for v in found.values()):
        raise ModelUnavailable(
            f"{path} is not an original checkpoint (expected a Lightning save with a 'state_dict' of tensors): "
            f"found {describe(loaded)}"
        )
    return dict(found)


@dataclass(frozen=True)
class OfficialCheckpoint:
    """The tensors of a checkpoint file, and the pickled globals that were replaced by
    `InertStandIn` to read it (for the user to see, and for the record)."""

    tensors: dict[str, torch.Tensor]
    neutralised: tuple[str, ...] = ()


def read_official_checkpoint(path: Path) -> OfficialCheckpoint:
    """The tensors of an official `.ckpt` (its `state_dict`) or of a `.safetensors` conversion."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        try:
            return OfficialCheckpoint(load_file(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file means: not a usable checkpoint
            raise ModelUnavailable(f"{path} is not a readable safetensors file ({exc})") from exc
    try:
        loaded, neutralised = _load_with_stand_ins(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: not a usable checkpoint
        raise ModelUnavailable(
            f"{path} is not a tensors-only torch checkpoint (torch.load with weights_only=True: "
            f"{load_failure_reason(exc)})"
        ) from exc
    return OfficialCheckpoint(_state_dict_of(loaded, path), tuple(neutralised))


def neutralised_message(path: Path, neutralised: tuple[str, ...]) -> str:
    """What a user is told when a checkpoint pickles classes or functions besides tensors."""
    shown = ", ".join(neutralised[:4]) + (f" and {len(neutralised) - 4} more" if len(neutralised) > 4 else "")
    return (f"warning: {Path(path).name} pickles {shown}; each was replaced by an inert stand-in (no code ran) "
            "and only its state_dict tensors are used. `diffier convert` writes a .safetensors copy that needs none")


def convert_to_safetensors(src: Path, dst: Path) -> tuple[str, ...]:
    """Write the tensors of `src` to `dst` as safetensors, atomically (a temp file, then a rename),
    so later loads need no unpickling at all and an interrupted run leaves no partial `dst`.
    Returns the pickled globals that were neutralised to read `src`."""
    dst = Path(dst)
    checkpoint = read_official_checkpoint(Path(src))
    tensors = {key: value.contiguous() for key, value in checkpoint.tensors.items()}
    handle, temp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata={"format": "pt"})
        os.replace(temp_name, dst)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return checkpoint.neutralised
