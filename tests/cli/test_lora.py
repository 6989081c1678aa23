"""`diffier t2i --lora PATH[:SCALE]`: diffusers' LoRA loading, the same pixels as the pipeline with
the same LoRAs, and every LoRA's file, hashes and scale in the outputs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, pixels, run_cli

PROMPT = "a red bicycle"


@pytest.fixture(scope="module")
def loras(tiny_sd, tmp_path_factory):
    """Two LoRAs for the tiny ε model in diffusers' own format (save_lora_weights), random non-zero."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    files = []
    for number, targets in enumerate((["to_q", "to_k", "to_v", "to_out.0"], ["to_v", "ff.net.2"])):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd["epsilon"], safety_checker=None, requires_safety_checker=False)
        torch.manual_seed(number)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
        folder = tmp_path_factory.mktemp(f"lora{number}")
        diffusers.StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
        files.append((folder / "pytorch_lora_weights.safetensors").rename(folder / f"style{number}.safetensors"))
    return files


def pipeline_image(folder, loras: list, scales: list[float]) -> np.ndarray:
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for number, path in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{number}")
    if loras:
        pipe.set_adapters([f"l{number}" for number in range(len(loras))], adapter_weights=scales)
    image = pipe(PROMPT, num_inference_steps=4, generator=[torch.Generator().manual_seed(3)]).images[0]
    return np.asarray(image, dtype=np.int16)


def t2i(model, out, *extra):
    return run_cli("t2i", PROMPT, "--model", str(model), "--steps", "4", "--seed", "3", "-o", str(out), "--json", *extra)


def test_loras_give_the_pipelines_pixels_and_are_recorded(tiny_sd, loras, tmp_path):
    result = t2i(tiny_sd["epsilon"], tmp_path / "x.png", "--baseline", "--no-batch-invariant",
                 "--lora", f"{loras[0]}:0.8", "--lora", str(loras[1]))
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(tmp_path / "x.png") - pipeline_image(tiny_sd["epsilon"], loras, [0.8, 1.0])).max() == 0
    assert np.abs(pixels(tmp_path / "x.png") - pipeline_image(tiny_sd["epsilon"], [], [])).max() > 0
    (record,) = result.records
    first, second = record["model"]["loras"]
    assert (first["file"], first["scale"], second["file"], second["scale"]) == ("style0.safetensors", 0.8, "style1.safetensors", 1.0)
    data = loras[0].read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["addnet_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    text = Image.open(tmp_path / "x.png").text["parameters"]
    assert f'Lora hashes: "style0: {first["addnet_hash"][:12]}, style1: {second["addnet_hash"][:12]}"' in text


def test_scale_zero_is_the_model_without_it(tiny_sd, loras, tmp_path):
    without = t2i(tiny_sd["epsilon"], tmp_path / "a.png")
    zero = t2i(tiny_sd["epsilon"], tmp_path / "b.png", "--lora", f"{loras[0]}:0")
    assert without.returncode == 0 and zero.returncode == 0, without.stderr + zero.stderr
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


@pytest.mark.parametrize(("value", "message"), [
    ("missing.safetensors", "--lora 'missing.safetensors': no .safetensors file there"),
    ("style.ckpt", "--lora 'style.ckpt': no .safetensors file there (LoRAs load from safetensors only, never unpickling"),
    ("x.safetensors:inf", "--lora 'x.safetensors:inf': the scale inf is outside [-10, 10]"),
])
def test_bad_loras_are_refused_before_loading(tmp_path, value, message):
    (tmp_path / "style.ckpt").write_bytes(b"not a pickle")
    result = run_cli("t2i", PROMPT, "--model", str(tmp_path / "absent"), "--lora", value, "-o", str(tmp_path / "x.png"),
                     cwd=tmp_path)
    assert_one_line_error(result, 2, message)


def test_a_lora_for_another_model_exits_3(tiny_sd, tmp_path):
    from safetensors.torch import save_file
    import torch

    wrong = tmp_path / "wrong.safetensors"
    save_file({"unet.down_blocks.9.attentions.0.to_q.lora_A.weight": torch.zeros(4, 999)}, str(wrong))
    result = t2i(tiny_sd["epsilon"], tmp_path / "x.png", "--lora", str(wrong), "-q")
    assert_one_line_error(result, 3, f"--lora {wrong} does not fit this model")
    assert not (tmp_path / "x.png").exists()


def test_without_peft_the_lora_extra_is_named(loras, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    result = run_cli("t2i", PROMPT, "--model", str(tmp_path / "absent"), "--lora", str(loras[0]), "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, 2, "--lora needs peft; pip install 'diffier[lora]'")
