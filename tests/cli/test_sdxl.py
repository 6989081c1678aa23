"""`diffier t2i` on SDXL: the family read from model_index.json, both text encoders, the pooled
embedding and the size/crop conditioning as StableDiffusionXLPipeline computes them."""

from __future__ import annotations

import numpy as np
import pytest

from models.schedulers import SAMPLERS
from tests.helpers import pixels, run_cli

PROMPT = "a red bicycle"
STEPS = 4


def pipeline_image(folder, name: str, negative: str | None, seed: int = 5) -> np.ndarray:
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, SAMPLERS[name].cls).from_config(pipe.scheduler.config, **SAMPLERS[name].config)
    if hasattr(pipe.scheduler, "noise_sampler_seed"):
        pipe.scheduler.noise_sampler_seed = [seed]
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=7.5,
                 generator=[torch.Generator().manual_seed(seed)]).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("negative", [None, "blurry"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_baseline_equals_the_sdxl_pipeline(tiny_sdxl, tmp_path, name, negative):
    extra = ("--negative-prompt", negative) if negative else ()
    result = run_cli("t2i", PROMPT, "--model", str(tiny_sdxl), "--steps", str(STEPS), "--seed", "5", "--baseline",
                     "--no-batch-invariant", "--scheduler", name, "-o", str(tmp_path / "x.png"), "--json", *extra)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(tmp_path / "x.png") - pipeline_image(tiny_sdxl, name, negative)).max() == 0
    (record,) = result.records
    assert record["model"]["pipeline"] == "StableDiffusionXLPipeline" and record["params"]["width"] == 32  # native size


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp-2m", "heun"])
def test_a_v_prediction_sdxl_equals_the_pipeline_and_refines(tiny_sdxl_v, tmp_path, name):
    common = ("t2i", PROMPT, "--model", str(tiny_sdxl_v), "--steps", str(STEPS), "--seed", "5", "--no-batch-invariant",
              "--scheduler", name, "--json")
    base = run_cli(*common, "--baseline", "-o", str(tmp_path / "base.png"))
    refined = run_cli(*common, "-o", str(tmp_path / "refined.png"))
    assert base.returncode == 0 and refined.returncode == 0, base.stderr + refined.stderr
    assert np.abs(pixels(tmp_path / "base.png") - pipeline_image(tiny_sdxl_v, name, None)).max() == 0
    assert base.records[0]["model"]["prediction_type"] == "v_prediction"
    assert np.abs(pixels(tmp_path / "refined.png") - pixels(tmp_path / "base.png")).max() > 0


def test_refiners_run_and_an_item_does_not_depend_on_its_batch(tiny_sdxl, tmp_path):
    """Different prompts, one with and one without a negative prompt: encoded item by item, so an
    absent negative prompt is zeros (force_zeros_for_empty_prompt) whatever else is in the batch."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red bicycle"}\n{"prompt": "a blue door", "negative_prompt": "blurry"}\n')
    common = ("t2i", "--prompts-file", str(prompts), "--model", str(tiny_sdxl), "--steps", str(STEPS), "--seed", "5",
              "--batch-invariant")
    one = run_cli(*common, "--batch-size", "1", "-o", f"{tmp_path}/one/")
    two = run_cli(*common, "--batch-size", "2", "-o", f"{tmp_path}/two/")
    iec = run_cli(*common, "--refiner", "iec", "-o", f"{tmp_path}/iec/")
    base = run_cli(*common, "--baseline", "-o", f"{tmp_path}/base/")
    for result in (one, two, iec, base):
        assert result.returncode == 0, result.stderr
    for name in sorted(p.name for p in (tmp_path / "one").iterdir()):
        assert np.array_equal(pixels(tmp_path / "one" / name), pixels(tmp_path / "two" / name)), name
    refined = [pixels(path) for path in sorted((tmp_path / "one").iterdir())]
    plain = [pixels(path) for path in sorted((tmp_path / "base").iterdir())]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(refined, plain))
