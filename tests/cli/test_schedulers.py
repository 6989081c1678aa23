"""`diffier t2i --scheduler`: every sampler against StableDiffusionPipeline with that scheduler, the
refinement at every model evaluation, and the refusals (IEC, --karras, --ddim-eta)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models.schedulers import SAMPLERS
from tests.helpers import assert_one_line_error, pixels, run_cli

STEPS = 4
SEED = 7
PROMPT = "a red bicycle"


def t2i(model, out, *extra):
    return run_cli("t2i", PROMPT, "--model", str(model), "--steps", str(STEPS), "--seed", str(SEED), "-o", str(out),
                   "--json", *extra)


def pipeline_image(folder, name: str, karras: bool) -> np.ndarray:
    """StableDiffusionPipeline with the scheduler swapped as users swap it: S.from_config(pipe.scheduler.config)."""
    import diffusers
    import torch

    sampler = SAMPLERS[name]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    extra = {**sampler.config, **({"use_karras_sigmas": True} if karras else {})}
    pipe.scheduler = getattr(diffusers, sampler.cls).from_config(pipe.scheduler.config, **extra)
    if hasattr(pipe.scheduler, "noise_sampler_seed"):
        pipe.scheduler.noise_sampler_seed = [SEED]  # what diffier seeds DPM++ SDE's Brownian tree with
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5,
                 generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]
    return np.asarray(image, dtype=np.int16)


CASES = [(name, False) for name in SAMPLERS] + [(name, True) for name in ("euler", "dpmpp-2m", "dpmpp-sde", "dpm2-a")]


@pytest.mark.numerics
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("name", "karras"), CASES, ids=[f"{n}{'-karras' if k else ''}" for n, k in CASES])
def test_baseline_equals_the_pipeline_with_that_scheduler(tiny_sd, tmp_path, prediction, name, karras):
    extra = ("--scheduler", name, *(("--karras",) if karras else ()))
    plain = t2i(tiny_sd[prediction], tmp_path / "plain.png", "--baseline", "--no-batch-invariant", *extra)
    invariant = t2i(tiny_sd[prediction], tmp_path / "invariant.png", "--baseline", "--batch-invariant", *extra)
    assert plain.returncode == 0 and invariant.returncode == 0, plain.stderr + invariant.stderr
    theirs = pipeline_image(tiny_sd[prediction], name, karras)
    assert np.abs(pixels(tmp_path / "plain.png") - theirs).max() == 0
    # batch-invariant kernels run the same maths on contiguous copies: rounding may move a pixel by one
    # level (seen: 0 for ε models, 1 for five samplers on the v model)
    assert np.abs(pixels(tmp_path / "invariant.png") - theirs).max() <= 1
    (record,) = plain.records
    assert record["params"]["scheduler"] == SAMPLERS[name].a1111 and record["params"]["karras"] is karras
    assert record["params"]["scheduler_class"] == SAMPLERS[name].cls
    assert record["params"]["scheduler_config"]["prediction_type"] == prediction
    json.dumps(record, allow_nan=False)  # the full config is strict JSON (DPM++'s -inf is written as text)


@pytest.mark.numerics
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_refinement_runs_at_every_model_evaluation(tiny_sd, tmp_path, prediction, name):
    """η = 0 changes nothing but the ε round trip (to ε, back to the model's parameterisation), so it
    equals the baseline to a level; the default η changes the image and is reproducible; the record
    counts one refinement per model evaluation (two per step for Heun and DPM2)."""
    model = tiny_sd[prediction]
    base = t2i(model, tmp_path / "base.png", "--scheduler", name, "--baseline", "--no-batch-invariant")
    still = t2i(model, tmp_path / "still.png", "--scheduler", name, "--eta", "0", "--no-batch-invariant")
    refined = t2i(model, tmp_path / "refined.png", "--scheduler", name, "--no-batch-invariant")
    again = t2i(model, tmp_path / "again.png", "--scheduler", name, "--no-batch-invariant")
    for result in (base, still, refined, again):
        assert result.returncode == 0, result.stderr
    # η = 0: v → ε → v in float32 rounds by a few ulps of |x| ≲ 5, at most one level after decoding
    assert np.abs(pixels(tmp_path / "still.png") - pixels(tmp_path / "base.png")).max() <= 1
    assert np.abs(pixels(tmp_path / "refined.png") - pixels(tmp_path / "base.png")).max() > 0
    assert np.array_equal(pixels(tmp_path / "refined.png"), pixels(tmp_path / "again.png"))
    # the pipeline evaluates the model once per entry of the scheduler's timesteps: twice a step for
    # the two-stage samplers (Heun, DPM2, DPM++ SDE), one more for PLMS's warm-up
    assert refined.records[0]["refinement"]["summary"]["steps"] == len(scheduler_timesteps(model, name))
    assert {"heun": 2 * STEPS - 1, "plms": STEPS + 1, "ddim": STEPS}.get(name, len(scheduler_timesteps(model, name))) == \
        len(scheduler_timesteps(model, name))


def scheduler_timesteps(folder, name: str):
    import diffusers

    from models.schedulers import build

    scheduler = build(name, diffusers.DDIMScheduler.load_config(folder, subfolder="scheduler"))
    scheduler.set_timesteps(STEPS)
    return scheduler.timesteps


def test_infotext_names_the_sampler_and_the_karras_schedule(tiny_sd, tmp_path):
    result = t2i(tiny_sd["epsilon"], tmp_path / "k.png", "--scheduler", "dpmpp-2m", "--karras", "--baseline")
    assert result.returncode == 0, result.stderr
    text = Image.open(tmp_path / "k.png").text["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5" in text


@pytest.mark.parametrize(("extra", "message"), [
    (("--scheduler", "euler", "--refiner", "iec"),
     "--refiner iec applies each step again, which euler's scheduler does not allow (it keeps a step counter, a history "
     "of outputs or draws its own noise); use --scheduler ddim"),
    (("--scheduler", "euler-a", "--karras"),
     "--karras: diffusers' EulerAncestralDiscreteScheduler (euler-a) has no Karras sigmas; use one of lms, euler, heun, "
     "dpm2, dpm2-a, dpmpp-2m, dpmpp-2m-sde, dpmpp-sde, unipc, deis"),
    (("--karras",), "--karras: diffusers' DDIMScheduler (ddim) has no Karras sigmas"),
    (("--scheduler", "euler", "--ddim-eta", "0.5"), "--ddim-eta is DDIM's η; drop it, or use --scheduler ddim"),
])
def test_settings_a_scheduler_cannot_honour_are_refused_before_loading(tmp_path, extra, message):
    result = run_cli("t2i", PROMPT, "--model", str(tmp_path / "absent"), "-o", str(tmp_path / "x.png"), *extra)
    assert_one_line_error(result, 2, message)
    assert not (tmp_path / "x.png").exists()


def test_a_sampler_needing_a_missing_package_says_which(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchsde" else real(name, *a))
    result = run_cli("t2i", PROMPT, "--model", str(tmp_path / "absent"), "--scheduler", "dpmpp-sde", "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, 2, "--scheduler dpmpp-sde needs torchsde; pip install 'diffier[samplers]'")
