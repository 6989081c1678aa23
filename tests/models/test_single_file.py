"""Single-file checkpoints: the test exporter writes the original (LDM) layout exactly, and
models/single_file.py refuses what it cannot load safely and completely, before loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import single_file
from models.errors import ModelUnavailable
from tests.ldm_export import save_single_file

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.mark.parametrize("family, layout", [("sd", "clip"), ("sd", "open_clip"), ("sdxl", "clip")])
def test_the_exporter_round_trips_through_diffusers_single_file_loading(tiny_sd, tiny_sdxl, tmp_path, family, layout):
    """diffusers' converters read the exported file back to every tensor of the folder, bit for bit:
    so the exporter writes the layout the real single files have (SD 2.x's text encoder as OpenCLIP)."""
    import diffusers

    folder = tiny_sdxl if family == "sdxl" else tiny_sd["epsilon"]
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    path = save_single_file(folder, tmp_path / "model.safetensors", layout)
    reference = cls.from_pretrained(folder)
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in COMPONENTS:
        if not hasattr(reference, name):
            continue
        want, got = getattr(reference, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[key], got[key]) for key in want), name


def test_the_layout_is_read_from_the_header_alone(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    layout = single_file.read_layout(path)
    tensors = load_file(path)
    assert {key: value.shape for key, value in tensors.items()} == {key: value.shape for key, value in layout.items()}


class Payload:
    """Pickled by reference: loading it for real would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_ckpt_that_pickles_code_is_refused_before_loading_with_the_convert_hint(tiny_sd, tmp_path):
    tensors = load_file(save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors"))
    marker = tmp_path / "ran"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors, "callbacks": Payload(str(marker))}, path)
    with pytest.raises(ModelUnavailable, match=r"pickles builtins\.getattr, pathlib\.Path.*diffier convert .*model\.ckpt .*model\.safetensors"):
        single_file.read_layout(path)
    assert not marker.exists()


def test_a_tensors_only_ckpt_is_read_weights_only(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.ckpt")
    assert single_file.read_layout(path).keys() == load_file(save_single_file(tiny_sd["epsilon"], tmp_path / "m.safetensors")).keys()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable safetensors file"),
    (b"\xff" * 64, "not a readable safetensors file"),
])
def test_unreadable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelUnavailable, match=message):
        single_file.read_layout(path)


def test_a_pickle_that_is_not_a_torch_file_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelUnavailable, match="not a tensors-only torch checkpoint|holds a"):
        single_file.read_layout(path)


def test_other_suffixes_are_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"")
    with pytest.raises(ModelUnavailable, match=r"not a checkpoint file diffier reads \(\.safetensors"):
        single_file.read_layout(path)


def test_a_model_diffier_does_not_run_is_refused_by_kind(tmp_path):
    """diffusers' own classification: an SD ×4 upscaler's UNet is recognised and named."""
    path = tmp_path / "upscaler.safetensors"
    save_file({"model.diffusion_model.input_blocks.10.0.skip_connection.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelUnavailable, match="is a upscale checkpoint .* runs SD 1.x, SD 2.x, SDXL"):
        single_file.kind_of(path, single_file.read_layout(path))


def test_a_file_without_a_part_is_refused_naming_the_part(tiny_sd, tmp_path):
    """A LoRA or a UNet-only file is no model: diffusers would leave the missing parts uninitialised."""
    tensors = load_file(save_single_file(tiny_sd["epsilon"], tmp_path / "full.safetensors"))
    path = tmp_path / "unet-only.safetensors"
    save_file({key: value for key, value in tensors.items() if key.startswith("model.diffusion_model.")}, path)
    with pytest.raises(ModelUnavailable, match=r"has no VAE and no text encoder \(first_stage_model\.\*, cond_stage_model\.\*"):
        single_file.check_parts(path, single_file.read_layout(path), "StableDiffusionPipeline")


def test_missing_tensors_are_refused_after_loading(tiny_sd, tmp_path):
    import diffusers

    tensors = load_file(save_single_file(tiny_sd["epsilon"], tmp_path / "full.safetensors"))
    dropped = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"
    path = tmp_path / "partial.safetensors"
    save_file({key: value for key, value in tensors.items() if key != dropped}, path)
    with pytest.raises(ModelUnavailable, match=r"lacks 1 tensor\(s\) of the text_encoder \(e\.g\. encoder\.layers\.1\.mlp\.fc1\.weight\)"):
        single_file.load_pipeline(diffusers.StableDiffusionPipeline, path, tiny_sd["epsilon"], torch.float32,
                                  safety_checker=None, requires_safety_checker=False)


def test_an_incomplete_config_folder_names_each_missing_file(tiny_sd, tmp_path):
    import shutil

    folder = tmp_path / "configs"
    shutil.copytree(tiny_sd["epsilon"], folder)
    (folder / "unet" / "config.json").unlink()
    shutil.rmtree(folder / "tokenizer")
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    with pytest.raises(ModelUnavailable, match=r"lacks tokenizer/tokenizer_config\.json, unet/config\.json, which loading model\.safetensors needs"):
        single_file.config_folder(path, "v1", str(folder), None, True, None)


def test_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    """A multi-GB checkpoint is read to hash once, then again only when it changes (size or mtime)."""
    import hashlib

    from models import checkpoints

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights v1")
    assert checkpoints.cached_sha256(path) == hashlib.sha256(b"weights v1").hexdigest()
    real = checkpoints.sha256_of
    monkeypatch.setattr(checkpoints, "sha256_of", lambda *args: pytest.fail("hashed again"))
    assert checkpoints.cached_sha256(path) == hashlib.sha256(b"weights v1").hexdigest()
    monkeypatch.setattr(checkpoints, "sha256_of", real)
    path.write_bytes(b"weights v2, longer")
    assert checkpoints.cached_sha256(path) == hashlib.sha256(b"weights v2, longer").hexdigest()
    checkpoints.hash_cache_file().write_text("[not a cache")  # damaged: recomputed, then rewritten
    assert checkpoints.cached_sha256(path) == hashlib.sha256(b"weights v2, longer").hexdigest()
    assert json.loads(checkpoints.hash_cache_file().read_text())[str(path.resolve())]["size"] == len(b"weights v2, longer")
