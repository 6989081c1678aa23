"""IEC (diffier_cli/iec.py): the update rule against hand computation, its fixed points, per-sample
independence, the count of model evaluations, the frozen noise of stochastic steps (IEC through the
commands: tests/cli/test_iec_cli.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffier_cli.iec import IEC, VARIANTS, IECStats
from diffier_cli.sampling import Step, denoise, per_item_stats
from tests.tolerance import assert_within

STEPS = 4


class Linear:
    """ε̂(x) = c_b·x per item b (the state holds c), and the step x_{t−1} = 0.9·x_t − 0.3·ε + 0.2·z,
    z drawn at each step from `state.generator` when `state.stochastic`: an affine Φ with a known
    fixed point, and items that converge at different rates."""

    def __init__(self):
        self.predictions = 0

    def timesteps(self, state):
        return list(range(STEPS, 0, -1))

    def predict(self, x, t, state):
        self.predictions += 1
        return state.c.view(-1, *([1] * (x.ndim - 1))) * x

    def to_eps(self, prediction, x, t, state):
        return prediction

    def from_eps(self, eps, x, t, state):
        return eps

    def step_noise(self, x, t, state):
        return torch.randn(x.shape, generator=state.generator, dtype=x.dtype) if state.stochastic else None

    def step(self, x, prediction, t, state, noise=None):
        x_prev = 0.9 * x - 0.3 * prediction
        if state.stochastic:
            x_prev = x_prev + 0.2 * (self.step_noise(x, t, state) if noise is None else noise)
        return x_prev


def linear_state(c, stochastic=False, seed=0):
    return SimpleNamespace(c=torch.tensor(c, dtype=torch.float64), stochastic=stochastic,
                           generator=torch.Generator().manual_seed(seed))


def start(batch, seed=1):
    return torch.randn(batch, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", ["all", "first:1", "last:2", "first-last:1", "every:3"])
def test_which_steps_are_corrected(steps):
    expected = {"all": [0, 1, 2, 3, 4], "first:1": [0], "last:2": [3, 4], "first-last:1": [0, 4], "every:3": [0, 3]}
    assert [i for i in range(5) if IEC(steps=steps).corrects(i, 5)] == expected[steps]


def test_variant_defaults_follow_the_official_code():
    ldm, ddpm = IEC.from_variant("ldm"), IEC.from_variant("ddpm")
    assert (ldm.iters, ldm.gamma, ldm.tol, ldm.weights) == (3, 0.5, 1e-6, [1.0, 0.5])
    assert (ddpm.iters, ddpm.gamma, ddpm.tol, ddpm.weights) == (2, 0.5, 1e-3, [0.5])
    assert IEC.from_variant("ddpm", iters=3).weights == [0.5, 0.25]
    assert ldm.settings() == {"name": "iec", "variant": "ldm", "iters": 3, "gamma": 0.5, "tol": 1e-6, "steps": "all",
                              "weights": [1.0, 0.5]}
    assert set(VARIANTS) == {"ldm", "ddpm"}


def ddim_by_hand(backbone, t, x, eps):
    """DDIM η = 0 written out (Song et al. 2021, Eq. 12) with the tiny pipeline's ᾱ."""
    scheduler = backbone.scheduler
    s = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t, a_s = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[s]
    return a_s.sqrt() * (x - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_s).sqrt() * eps


@pytest.fixture(scope="module")
def sd_models(tiny_sd):
    from models.sd import StableDiffusion

    return {p: StableDiffusion.load(str(tiny_sd[p]), revision=None, device=torch.device("cpu"), dtype=torch.float32)
            for p in ("epsilon", "v_prediction")}


def sd_state(backbone, batch=1, ddim_eta=0.0, seed=0):
    return backbone.prepare(["a red bicycle"] * batch, negative_prompts=[""] * batch, cfg=3.0, height=32, width=32,
                            steps=STEPS, ddim_eta=ddim_eta,
                            noise_generators=[torch.Generator().manual_seed(seed + b) for b in range(batch)])


@pytest.mark.numerics
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("variant", ["ldm", "ddpm"])
def test_update_equals_the_hand_computed_iteration_on_the_tiny_sd(sd_models, prediction, variant):
    """LDM: x⁽¹⁾ = Φ(x_t, ε̂(x⁽⁰⁾, t)), x⁽²⁾ = ½x⁽¹⁾ + ½Φ(x_t, ε̂(x⁽¹⁾, t)); DDPM: x⁽¹⁾ = ½x⁽⁰⁾ + ½Φ(x_t, ε̂(x⁽⁰⁾, t))
    (docs/iec.md §1), with Φ the DDIM step by hand and ε̂ the guided UNet at the candidate and the current t."""
    backbone = sd_models[prediction]
    state = sd_state(backbone)
    x = backbone.init_noise(state)
    t = backbone.scheduler.timesteps[1]
    a_t = backbone.scheduler.alphas_cumprod[t]

    def eps_at(candidate):  # the v → ε conversion uses the candidate the UNet saw
        out = backbone.predict(candidate, t, state)
        return out if prediction == "epsilon" else a_t.sqrt() * out + (1 - a_t).sqrt() * candidate

    iec = IEC.from_variant(variant)
    with torch.no_grad():
        result = iec.refine(Step(backbone, state, x, t, backbone.predict(x, t, state), 1, STEPS), [])
        eps_bar = eps_at(x)
        x_hat = ddim_by_hand(backbone, t, x, eps_bar)
        for weight in {"ldm": [1.0, 0.5], "ddpm": [0.5]}[variant]:
            e = eps_at(x_hat)
            x_hat = x_hat + weight * (ddim_by_hand(backbone, t, x, e) - x_hat)
            eps_bar = eps_bar + weight * (e - eps_bar)
    # diffusers' DDIM against the step written out, and the UNet re-evaluated at candidates that already
    # differ by that rounding: float32, up to 3e-7 of max|x| ≈ 6 and 2.3e-6 of max|ε̄| ≈ 1 over the
    # capability × thread matrix. 5e-5 of the largest value is > 20× that; a relaxation weight of 1
    # instead of ½ moves the sample by ≥ 0.045, the whole correction is 0.2-0.4.
    assert_within(result.sample, x_hat, atol=5e-5 * x_hat.abs().max(), what="sample")
    assert_within(result.eps, eps_bar, atol=5e-5 * eps_bar.abs().max(), what="eps")  # x⁽ᵏ⁾ = Φ(x_t, ε̄_k): the gap's ε
    corrections = {"ldm": 2, "ddpm": 1}[variant]
    assert result.stats.corrections.tolist() == [corrections] and result.stats.evaluations.tolist() == [corrections + 1]


def test_an_x_independent_eps_returns_the_plain_step_exactly():
    backbone = Linear()
    state = linear_state([0.0, 0.0])  # ε̂ = 0·x: no dependence on x, so Φ(x_t, ε̂(x⁽⁰⁾)) = x⁽⁰⁾
    x = start(2)
    plain = denoise(backbone, state, x, refiner=None, generators=[]).sample
    for tol in (1e-6, 0.0):  # converged at the first check, or run to K with zero-size updates
        refined = denoise(backbone, state, x, refiner=IEC(iters=4, tol=tol), generators=[])
        assert torch.equal(refined.sample, plain)
    assert per_item_stats(refined.steps, 2)[0]["corrections"] == [3] * STEPS


@pytest.mark.numerics
def test_the_fixed_point_solves_the_implicit_step():
    """Many undamped corrections converge to x = Φ(x_t, ε̂(x)): here x = (0.9 x_t) / (1 + 0.3c)."""
    backbone = Linear()
    state = linear_state([0.5, 1.0])
    x = start(2)
    step = Step(backbone, state, x, STEPS, backbone.predict(x, STEPS, state), 0, STEPS)
    result = IEC(iters=60, gamma=1.0, tol=0.0).refine(step, [])
    expected = 0.9 * x / (1 + 0.3 * state.c.view(-1, 1, 1))
    # 60 undamped corrections contract the error by (0.3c)^60 ≤ 0.3^60, down to float64 rounding
    # (2e-16 seen, |x| ≲ 3); the plain step (0.9 − 0.3c)·x_t is 0.03-0.09·|x_t| away.
    assert_within(result.sample, expected, rtol=1e-12, atol=1e-12, what="fixed point")


def test_items_converge_on_their_own_and_match_their_runs_alone():
    backbone = Linear()
    c = [0.05, 0.8, 2.0]  # contraction 0.3c per correction: converge after different counts
    iec = IEC(iters=8, gamma=1.0, tol=1e-4)
    x = start(3, seed=5)
    batch = denoise(backbone, linear_state(c), x, refiner=iec, generators=[])
    stats = per_item_stats(batch.steps, 3)
    assert len({s["corrections"][0] for s in stats}) == 3  # the three items stopped at different checks
    for b in range(3):
        alone = denoise(backbone, linear_state([c[b]]), x[b:b + 1], refiner=iec, generators=[])
        assert torch.equal(alone.sample[0], batch.sample[b])
        assert per_item_stats(alone.steps, 1)[0] == stats[b]
    again = denoise(backbone, linear_state(c), x, refiner=iec, generators=[])
    assert torch.equal(again.sample, batch.sample)


@pytest.mark.parametrize(("steps", "corrected"), [("all", 4), ("first:1", 1), ("last:3", 3), ("every:2", 2)])
def test_model_evaluations_are_n_plus_k_minus_1_times_the_corrected_steps(steps, corrected):
    backbone = Linear()
    iec = IEC(iters=3, tol=0.0, steps=steps)
    trajectory = denoise(backbone, linear_state([0.5, 0.7]), start(2), refiner=iec, generators=[])
    expected = STEPS + (iec.iters - 1) * corrected
    assert backbone.predictions == expected  # batch calls, each one ε̂ for every item
    for item in per_item_stats(trajectory.steps, 2):
        summary = IECStats.summarize(item)
        assert summary["model_evaluations"] == expected and summary["corrected_steps"] == corrected
        assert summary["corrections_total"] == (iec.iters - 1) * corrected
        assert [r is None for r in item["residual"]] == [n == 1 for n in item["evaluations"]]


def test_early_convergence_counts_evaluations_per_item():
    backbone = Linear()
    trajectory = denoise(backbone, linear_state([0.0, 1.0]), start(2), refiner=IEC(iters=3, tol=1e-6), generators=[])
    constant, moving = (IECStats.summarize(item) for item in per_item_stats(trajectory.steps, 2))
    assert constant["model_evaluations"] == STEPS + 1 * STEPS  # one check per step, then frozen
    assert moving["model_evaluations"] == STEPS + 2 * STEPS
    assert backbone.predictions == STEPS + 2 * STEPS  # the batch ran until its last item stopped


@pytest.mark.numerics
def test_a_stochastic_step_keeps_its_noise_across_the_corrections():
    backbone = Linear()
    x = start(2)
    plain = denoise(backbone, linear_state([0.0, 0.0], stochastic=True, seed=9), x, refiner=None, generators=[]).sample
    refined = denoise(backbone, linear_state([0.0, 0.0], stochastic=True, seed=9), x, refiner=IEC(tol=0.0), generators=[])
    assert torch.equal(refined.sample, plain)  # fresh noise per correction would move every step
    # with ε depending on x, the fixed point of each step is the one of its own noise z
    state = linear_state([0.5, 1.0], stochastic=True, seed=9)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    step = Step(backbone, state, x, STEPS, backbone.predict(x, STEPS, state), 0, STEPS)
    result = IEC(iters=60, gamma=1.0, tol=0.0).refine(step, [])
    # float64, converged as above (4e-16 seen); fresh noise per correction would move it by ~0.2·|z|.
    assert_within(result.sample, (0.9 * x + 0.2 * z) / (1 + 0.3 * state.c.view(-1, 1, 1)), rtol=1e-12, atol=1e-12, what="fixed point")


def test_each_adapters_step_with_its_drawn_noise_equals_its_plain_step(sd_models):
    """The contract IEC relies on: step_noise draws what step would draw, from the same generator."""
    from models.gradtts.adapter import GradTTSBackbone
    from models.stablesr.adapter import StableSR
    from models.stablesr.schedule import QuirkyDDIM, RespacedDDPM

    x = start(2).float()
    prediction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sd = sd_models["epsilon"]
    sd_x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    sd_state(sd)  # sets the scheduler's timesteps
    sr = object.__new__(StableSR)  # its step and step_noise read only the state
    sr_t = int(RespacedDDPM(5).timesteps[1])
    tts = GradTTSBackbone(SimpleNamespace(decoder=SimpleNamespace(beta=lambda t: 0.05 + 19.95 * t)), torch.device("cpu"), torch.float32)
    cases = [
        (sd, lambda: sd_state(sd, batch=2, ddim_eta=0.7), sd_x, torch.randn_like(sd_x), sd.scheduler.timesteps[1]),
        (sr, lambda: SimpleNamespace(sampler=RespacedDDPM(5), noise_generator=torch.Generator().manual_seed(4)), x, prediction, sr_t),
        (sr, lambda: SimpleNamespace(sampler=QuirkyDDIM(5, eta=1.0), noise_generator=torch.Generator().manual_seed(4)), x, prediction, sr_t),
        (tts, lambda: SimpleNamespace(mu_y=torch.zeros_like(x), y_mask=torch.ones_like(x), steps=5, stochastic=True,
                                      noise_generator=torch.Generator().manual_seed(4)), x, prediction, 0.5),
    ]
    for backbone, make_state, x_t, out, time in cases:
        plain_state, frozen_state = make_state(), make_state()
        plain = backbone.step(x_t, out, time, plain_state)
        noise = backbone.step_noise(x_t, time, frozen_state)
        first = backbone.step(x_t, out, time, frozen_state, noise=noise)
        second = backbone.step(x_t, out, time, frozen_state, noise=noise)
        assert noise is not None and torch.equal(first, plain) and torch.equal(second, plain)
        assert torch.equal(backbone.step_noise(x_t, time, plain_state), backbone.step_noise(x_t, time, frozen_state))
