"""The library API: `DiffIERScheduler` in diffusers' own pipelines gives `diffier t2i`'s images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import pixels, run_cli

PROMPT = "a red bicycle"
STEPS = 4
SEED = 7


def pipeline(folder, cls="StableDiffusionPipeline"):
    import diffusers

    checker = {"safety_checker": None, "requires_safety_checker": False} if cls != "StableDiffusionXLPipeline" else {}
    pipe = getattr(diffusers, cls).from_pretrained(folder, **checker)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(count: int, seed: int = SEED) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("cls", "name"), [("DDIMScheduler", "ddim"), ("EulerAncestralDiscreteScheduler", "euler-a"),
                                           ("DPMSolverMultistepScheduler", "dpmpp-2m")])
def test_the_wrapped_pipeline_makes_the_cli_images_and_records(tiny_sd, tmp_path, prediction, cls, name):
    import diffusers

    from diffier_cli import DiffIERScheduler
    from models.schedulers import SAMPLERS

    pipe = pipeline(tiny_sd[prediction])
    pipe.scheduler = DiffIERScheduler(getattr(diffusers, cls).from_config(pipe.scheduler.config, **SAMPLERS[name].config), seed=SEED)
    images = pipe(PROMPT, num_inference_steps=STEPS, generator=generators(4), num_images_per_prompt=4).images
    result = run_cli("t2i", PROMPT, "--model", str(tiny_sd[prediction]), "--steps", str(STEPS), "--seed", str(SEED),
                     "--num-images", "4", "--batch-size", "4", "--no-batch-invariant", "--scheduler", name,
                     "-o", f"{tmp_path}/", "--json")
    assert result.returncode == 0, result.stderr
    for image, record, statistics in zip(images, result.records, pipe.scheduler.statistics(), strict=True):
        assert np.array_equal(np.asarray(image, dtype=np.int16), pixels(tmp_path / record["path"].split("/")[-1]))
        assert statistics == record["refinement"]  # the same numbers as the CLI's record, per image


def test_img2img_runs_unchanged_and_eta_zero_is_the_plain_pipeline(tiny_sd):
    """Img2img sets a begin index and noises the input with add_noise: both reach the wrapped
    scheduler. With η = 0 the refinement changes nothing (an ε model: no conversion at all)."""
    import diffusers

    from diffier_cli import DiffIERScheduler

    text2image = pipeline(tiny_sd["epsilon"])
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**text2image.components)
    pipe.set_progress_bar_config(disable=True)
    start = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def run(scheduler):
        pipe.scheduler = scheduler
        return np.asarray(pipe(PROMPT, image=start, strength=0.6, num_inference_steps=6, generator=generators(1)).images[0],
                          dtype=np.int16)

    plain = run(diffusers.DDIMScheduler.from_config(text2image.scheduler.config))
    still = run(DiffIERScheduler(diffusers.DDIMScheduler.from_config(text2image.scheduler.config), seed=SEED, eta=0.0))
    refined_scheduler = DiffIERScheduler(diffusers.DDIMScheduler.from_config(text2image.scheduler.config), seed=SEED)
    refined = run(refined_scheduler)
    assert np.array_equal(still, plain)
    assert np.abs(refined - plain).max() > 0
    assert len(refined_scheduler.steps) == int(6 * 0.6)  # strength 0.6 of 6 steps: the last 3 run


@pytest.mark.numerics
def test_an_x0_model_round_trips_and_flow_matching_is_refused(tiny_sd):
    import diffusers

    from diffier_cli import DiffIERScheduler

    pipe = pipeline(tiny_sd["epsilon"])
    config = {**pipe.scheduler.config, "prediction_type": "sample"}  # the tiny ε UNet read as an x₀ model: only the maths is tested

    def run(scheduler):
        pipe.scheduler = scheduler
        return np.asarray(pipe(PROMPT, num_inference_steps=STEPS, generator=generators(1)).images[0], dtype=np.int16)

    plain = run(diffusers.DDIMScheduler.from_config(config))
    still = run(DiffIERScheduler(diffusers.DDIMScheduler.from_config(config), seed=SEED, eta=0.0))
    # x₀ → ε → x₀ in float32 rounds by a few ulps of |x| ≲ 5: at most one level of 255 after decoding
    assert np.abs(still - plain).max() <= 1
    with pytest.raises(ValueError, match="flow matching is not supported"):
        DiffIERScheduler(diffusers.FlowMatchEulerDiscreteScheduler(), seed=SEED)


def test_the_public_names_load_on_first_use_and_help_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, diffier_cli; assert 'torch' not in sys.modules; print(sorted(diffier_cli.__all__)); "
            "diffier_cli.DiffIERScheduler; assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['DiffIERScheduler', '__version__', 'refine_eps']"


@pytest.mark.parametrize(("cls", "name"), [("DDIMScheduler", "ddim"), ("EulerDiscreteScheduler", "euler")])
def test_the_wrapped_sdxl_pipeline_makes_the_cli_images(tiny_sdxl, tmp_path, cls, name):
    import diffusers

    from diffier_cli import DiffIERScheduler

    pipe = pipeline(tiny_sdxl, "StableDiffusionXLPipeline")
    pipe.scheduler = DiffIERScheduler(getattr(diffusers, cls).from_config(pipe.scheduler.config), seed=SEED)
    images = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5,  # SDXL's pipeline defaults to 5, diffier to 7.5
                  generator=generators(2), num_images_per_prompt=2).images
    result = run_cli("t2i", PROMPT, "--model", str(tiny_sdxl), "--steps", str(STEPS), "--seed", str(SEED), "--num-images", "2",
                     "--batch-size", "2", "--no-batch-invariant", "--scheduler", name, "-o", f"{tmp_path}/", "--json")
    assert result.returncode == 0, result.stderr
    for image, record in zip(images, result.records, strict=True):
        assert np.array_equal(np.asarray(image, dtype=np.int16), pixels(tmp_path / record["path"].split("/")[-1]))


def test_controlnet_runs_unchanged_and_eta_zero_is_the_plain_pipeline(tiny_sd):
    import diffusers
    from PIL import Image

    from diffier_cli import DiffIERScheduler

    base = pipeline(tiny_sd["epsilon"])
    torch.manual_seed(0)
    controlnet = diffusers.ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(16, 32))
    pipe = diffusers.StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    control = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))

    def run(scheduler):
        pipe.scheduler = scheduler
        image = pipe(PROMPT, image=control, num_inference_steps=STEPS, generator=generators(1)).images[0]
        return np.asarray(image, dtype=np.int16)

    ddim = diffusers.DDIMScheduler.from_config(base.scheduler.config)
    plain = run(ddim)
    assert np.array_equal(run(DiffIERScheduler(diffusers.DDIMScheduler.from_config(ddim.config), seed=SEED, eta=0.0)), plain)
    assert np.abs(run(DiffIERScheduler(diffusers.DDIMScheduler.from_config(ddim.config), seed=SEED)) - plain).max() > 0
