"""The shared loop with a toy backbone, and the SD adapter's v ↔ ε conversions."""

from __future__ import annotations

import pytest
import torch

from diffier_cli.refine import DiffIER, RefineStats
from diffier_cli.sampling import denoise, per_item_stats
from tests.tolerance import assert_within


class ToyBackbone:
    """x_{t−1} = x_t − 0.1·prediction over three steps; the prediction is a 'v' = 2·ε."""

    def __init__(self):
        self.calls: list[str] = []

    def timesteps(self, state):
        return [torch.tensor(t) for t in (30, 20, 10)]

    def predict(self, x, t, state):
        self.calls.append("predict")
        return 2.0 * x

    def to_eps(self, prediction, x, t, state):
        self.calls.append("to_eps")
        return prediction / 2.0

    def from_eps(self, eps, x, t, state):
        self.calls.append("from_eps")
        return eps * 2.0

    def step(self, x, prediction, t, state):
        self.calls.append("step")
        return x - 0.1 * prediction


def test_baseline_runs_the_backbone_alone():
    toy = ToyBackbone()
    x = torch.ones(2, 3)
    trajectory = denoise(toy, None, x, refiner=None, generators=[])
    assert toy.calls == ["predict", "step"] * 3  # never converts, never refines
    expected = x
    for _ in range(3):
        expected = expected - 0.1 * (2.0 * expected)
    assert torch.equal(trajectory.sample, expected)
    assert trajectory.steps == []
    assert per_item_stats(trajectory.steps, 2) == [{}, {}]


@pytest.mark.numerics
def test_refined_loop_converts_refines_and_converts_back():
    toy = ToyBackbone()
    x = torch.ones(2, 3)
    refiner = DiffIER(eta=0.05, max_iters=2, threshold=1e-12)
    ticks = []
    trajectory = denoise(
        toy, None, x, refiner=refiner, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
        on_step=lambda: ticks.append(1),
    )
    assert toy.calls == ["predict", "to_eps", "from_eps", "step"] * 3
    assert len(ticks) == 3 and len(trajectory.steps) == 3

    # the same arithmetic by hand, with the same generators
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    expected = x.clone()
    for _ in range(3):
        eps, _ = refiner.correct(expected, gens)  # predict → to_eps gives ε = x
        expected = expected - 0.1 * (2.0 * eps)
    assert torch.equal(trajectory.sample, expected)

    stats = per_item_stats(trajectory.steps, 2)
    assert stats[0]["iterations"] == [2, 2, 2]
    summary = RefineStats.summarize(stats[0])
    assert summary["steps"] == 3 and summary["iterations_total"] == 6 and summary["iterations_max"] == 2
    assert summary["loss_mean"] == sum(stats[0]["loss"]) / 3  # the same float64 sum and division


@pytest.fixture(scope="module")
def sd_v(tiny_sd):
    from models.sd import StableDiffusion

    return StableDiffusion.load(str(tiny_sd["v_prediction"]), revision=None, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.numerics
def test_v_to_eps_matches_ddim_and_round_trips(sd_v):
    assert sd_v.prediction_type == "v_prediction"
    sd_v.scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    v = torch.randn(2, 4, 16, 16, generator=g)
    for t in sd_v.scheduler.timesteps:
        a = sd_v.scheduler.alphas_cumprod[t]
        eps = sd_v.to_eps(v, x, t, None)
        # diffusers' DDIM step forms pred_epsilon = √ᾱ v + √(1−ᾱ) x for v-prediction
        assert torch.equal(eps, a.sqrt() * v + (1 - a).sqrt() * x)  # to_eps is this expression, on the same float32 ᾱ
        # v = (ε − √(1−ᾱ)·x)/√ᾱ: ε's rounding (½ ulp of |ε| ≤ 8, 2.4e-7) divided by √ᾱ ≥ 0.1 gives ≲ 1e-5 in
        # theory, 1.1e-6 seen; a wrong conversion (ᾱ and 1 − ᾱ swapped) is off by O(1).
        assert_within(sd_v.from_eps(eps, x, t, None), v, rtol=1e-4, atol=1e-4, what="round trip")


@pytest.mark.numerics
def test_v_step_from_converted_eps_equals_step_from_v(sd_v):
    """Converting v → ε → v around an identity refiner leaves the DDIM step unchanged (to float error)."""
    from models.sd import SDState

    sd_v.scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=g)
    v = torch.randn(1, 4, 16, 16, generator=g)
    state = SDState(torch.zeros(1), 1.0, False, 1, 32, 32, 0.0, [torch.Generator()])
    t = sd_v.scheduler.timesteps[3]
    direct = sd_v.step(x, v, t, state)
    via_eps = sd_v.step(x, sd_v.from_eps(sd_v.to_eps(v, x, t, state), x, t, state), t, state)
    # The round trip's rounding (≤ 1e-5, above) scaled by the DDIM step's coefficient of v (< 1): 3.6e-7 seen.
    assert_within(via_eps, direct, rtol=1e-5, atol=1e-5, what="step")


def test_nan_decode_is_an_error_naming_the_precision(sd_v, monkeypatch):
    from models.errors import NumericalOverflow
    from models.sd import SDState

    state = SDState(torch.zeros(1), 1.0, False, 1, 32, 32, 0.0, [torch.Generator()])
    monkeypatch.setattr(sd_v.pipe.vae, "decode", lambda *a, **k: (torch.full((1, 3, 32, 32), float("nan")),))
    with pytest.raises(NumericalOverflow, match=r"^the decoded image is NaN or infinite \(numerical overflow in float32\)$"):
        sd_v.decode(torch.zeros(1, 4, 16, 16), state)
    monkeypatch.setattr(sd_v, "dtype", torch.float16)  # the usual cause: half precision, which the CLI then names
    with pytest.raises(NumericalOverflow, match=r"in float16\)$"):
        sd_v.decode(torch.zeros(1, 4, 16, 16), state)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_refined_t2i_equals_diffusers_pipeline_with_refinement_injected(tiny_sd, prediction):
    """An independent path: StableDiffusionPipeline whose DDIM step first refines the guided
    prediction, converting v ↔ ε with diffusers' own formulas (DDIM's pred_epsilon and
    `get_velocity`), must give our refined image."""
    import numpy as np
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from diffier_cli.refine import refine_eps
    from diffier_cli.runtime import REFINE_SEED_MIX
    from diffier_cli.t2i import Prompted, T2ISettings, generate
    from models.sd import StableDiffusion

    seed, steps = 21, 6
    refiner = DiffIER(eta=0.05, threshold=1e-9, max_iters=2)
    backbone = StableDiffusion.load(str(tiny_sd[prediction]), revision=None, device=torch.device("cpu"), dtype=torch.float32)
    opts = T2ISettings(model="", revision=None, negative_prompt=None, cfg=7.5, steps=steps, ddim_eta=0.0, height=None,
                       width=None, batch_invariant=False, refiner=refiner)
    item = Prompted(index=0, seed=seed, mode="refined", stem="", slug="", prompt="a red bicycle", negative_prompt=None, line=1)
    (ours,), _ = generate(backbone, opts, [item], 32, 32)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd[prediction], safety_checker=None, requires_safety_checker=False)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    refine_generator = [torch.Generator().manual_seed(seed ^ REFINE_SEED_MIX)]
    plain_step = scheduler.step

    def refined_step(model_output, timestep, sample, **kwargs):
        a = scheduler.alphas_cumprod[timestep]
        if prediction == "v_prediction":
            eps = a.sqrt() * model_output + (1 - a).sqrt() * sample
        else:
            eps = model_output
        eps, _ = refine_eps(eps, generators=refine_generator, eta=0.05, threshold=1e-9, max_iters=2)
        if prediction == "v_prediction":
            x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
            model_output = scheduler.get_velocity(x0, eps, torch.tensor([timestep]))
        else:
            model_output = eps
        return plain_step(model_output, timestep, sample, **kwargs)

    scheduler.step = refined_step
    theirs = pipe("a red bicycle", num_inference_steps=steps, guidance_scale=7.5,
                  generator=[torch.Generator().manual_seed(seed)]).images[0]
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max()
    assert difference <= 1  # the same arithmetic up to float rounding of the conversions
