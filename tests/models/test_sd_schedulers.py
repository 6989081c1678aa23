"""The SD adapter's ε conversion under every scheduler agrees with the scheduler's own arithmetic.

A v-prediction model's ε depends on the noise level ᾱ of the current evaluation and on x in the
form the UNet sees; each scheduler family keeps x and its noise level differently (docstring of
models.schedulers.noise_level). The clean estimate x̂₀ = (x_t − √(1 − ᾱ) ε) / √ᾱ implied by our ε
must then be the scheduler's own x̂₀ at every evaluation: `pred_original_sample` where `step`
returns it, `convert_model_output` for the multistep solvers (which work on x̂₀, or for DEIS on ε).
"""

from __future__ import annotations

import pytest
import torch

from models.schedulers import SAMPLERS, noise_level
from tests.tolerance import assert_within

STEPS = 4


def evaluations(folder, name: str, karras: bool = False):
    """(our ε, our x̂₀, the scheduler's x̂₀ or ε, which) at every model evaluation of a v-model run."""
    from models.sd import StableDiffusion

    backbone = StableDiffusion.load(str(folder), revision=None, device=torch.device("cpu"), dtype=torch.float32,
                                    sampler=name, karras=karras)
    generators = [torch.Generator().manual_seed(3)]
    state = backbone.prepare(["a red bicycle"], negative_prompts=[""], cfg=7.5, height=32, width=32, steps=STEPS,
                             ddim_eta=0.0, noise_generators=generators)
    scheduler = backbone.scheduler
    x = backbone.init_noise(state)
    with torch.no_grad():
        for t in backbone.timesteps(state):
            v = backbone.predict(x, t, state)
            eps = backbone.to_eps(v, x, t, state)
            alpha_bar, x_t = noise_level(scheduler, x, t)
            ours = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
            if hasattr(scheduler, "convert_model_output"):
                if scheduler.step_index is None:
                    scheduler._init_step_index(t)
                theirs = scheduler.convert_model_output(v, sample=x)
                yield (eps, theirs) if scheduler.config.get("algorithm_type") == "deis" else (ours, theirs)
                x = backbone.step(x, v, t, state)
            else:
                extra = {"generator": generators} if "generator" in backbone._step_takes else {}
                out = scheduler.step(v, t, x, **extra)
                yield ours, out.pred_original_sample
                x = out.prev_sample


@pytest.mark.numerics
@pytest.mark.parametrize(("name", "karras"), [(name, False) for name in SAMPLERS if name != "plms"]
                         + [("euler", True), ("dpmpp-2m", True), ("dpm2", True)])
def test_v_to_eps_agrees_with_the_schedulers_own_clean_estimate(tiny_sd, name, karras):
    compared = list(evaluations(tiny_sd["v_prediction"], name, karras))
    assert len(compared) >= STEPS
    for ours, theirs in compared:
        # Both sides are a handful of float32 products and sums of the same tensors (|x̂₀| ≤ 5.4 here)
        # with ᾱ computed two ways (1/(1 + σ²) or c_in², against the scheduler's own σ terms): the
        # worst difference seen over the default, AVX2 and AVX-512 kernels is 5.7e-6, 11× inside this
        # bound. A wrong noise level is caught: ᾱ of t instead of the Karras σ (DPM++ 2M) is off by
        # 5.7e-4, DDIM's formula under Euler by 2.7.
        assert_within(ours, theirs, atol=1e-5, rtol=1e-5, what=f"{name} x̂₀")


def test_plms_uses_ddims_noise_levels(tiny_sd):
    """PLMS (PNDM) returns no x̂₀; like DDIM it keeps x as the UNet sees it and ᾱ indexed by t."""
    from models.sd import StableDiffusion

    backbone = StableDiffusion.load(str(tiny_sd["v_prediction"]), revision=None, device=torch.device("cpu"),
                                    dtype=torch.float32, sampler="plms")
    backbone.scheduler.set_timesteps(STEPS)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    for t in backbone.scheduler.timesteps:
        alpha_bar, x_t = noise_level(backbone.scheduler, x, t)
        assert torch.equal(alpha_bar, backbone.scheduler.alphas_cumprod[t]) and torch.equal(x_t, x)
