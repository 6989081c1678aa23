"""StableSR's schedule, samplers, colour fixes and latent tiler against the official formulas.

Expected timestep lists were produced by running the official `space_timesteps`
(IceClear/StableSR ldm/models/diffusion/ddpm.py l.98) once; the step references below are the
official formulas (ddpm.py register_schedule/p_sample, ddim.py p_sample_ddim_sr_t) written out
independently of the code under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models.stablesr.colorfix import adain_color_fix, wavelet_color_fix
from models.stablesr.schedule import (
    QuirkyDDIM,
    RespacedDDPM,
    linear_alphas_cumprod,
    space_timesteps,
)
from models.stablesr.tiling import gaussian_tile_weights, stitch_tiles, tile_offsets, tile_slices
from tests.tolerance import assert_within

pytestmark = pytest.mark.numerics

OFFICIAL_TIMESTEPS = {
    4: [0, 333, 666, 999],
    20: [0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789, 841, 894, 946, 999],
    21: [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 499, 549, 599, 649, 699, 749, 799, 849, 899, 949, 999],
    23: [0, 45, 91, 136, 182, 227, 272, 318, 363, 409, 454, 499, 545, 590, 636, 681, 727, 772, 817, 863, 908,
         954, 999],
    31: [0, 33, 67, 100, 133, 166, 200, 233, 266, 300, 333, 366, 400, 433, 466, 500, 533, 566, 599, 633, 666,
         699, 733, 766, 799, 832, 866, 899, 932, 966, 999],
}


def accumulated_rounding(num_timesteps: int, count: int) -> list[int]:
    """One section of the official rule: round() of the stride added up `count − 1` times."""
    stride = (num_timesteps - 1) / (count - 1)
    return [round(p) for p in itertools.accumulate([0.0] + [stride] * (count - 1))]


@pytest.mark.parametrize("n", sorted(OFFICIAL_TIMESTEPS))
def test_space_timesteps_matches_the_official_lists(n):
    assert sorted(space_timesteps(1000, [n])) == OFFICIAL_TIMESTEPS[n]


@pytest.mark.parametrize("n", [4, 20, 21, 23, 31, 200, 1000])
def test_space_timesteps_is_the_accumulated_rounding(n):
    assert sorted(space_timesteps(1000, [n])) == accumulated_rounding(1000, n)


def test_space_timesteps_long_lists_and_linspace_differences():
    steps200 = sorted(space_timesteps(1000, [200]))
    assert steps200[:3] == [0, 5, 10] and steps200[-2:] == [994, 999] and steps200[99:102] == [497, 502, 507]
    assert space_timesteps(1000, [1000]) == set(range(1000))
    # Where the accumulated float lands on the other side of .5 than np.linspace's rounding:
    for n, index, official, linspace in [(21, 10, 499, 500), (23, 11, 499, 500), (31, 15, 500, 499)]:
        assert sorted(space_timesteps(1000, [n]))[index] == official
        assert int(np.linspace(0, 999, n).round()[index]) == linspace


def test_space_timesteps_sections_and_strings():
    assert sorted(space_timesteps(300, "10,15,20"))[8:13] == [88, 99, 100, 107, 114]
    assert len(space_timesteps(300, [10, 15, 20])) == 45
    two = sorted(space_timesteps(1000, [50, 30]))
    assert len(two) == 80 and two[48:53] == [489, 499, 500, 517, 534]
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    with pytest.raises(ValueError):
        space_timesteps(10, [11])


def test_linear_schedule_is_float64_sd_linear():
    abar = linear_alphas_cumprod()
    assert abar.dtype == torch.float64 and abar.shape == (1000,)
    # float64: 1 − (1 − β) loses up to an ulp of 1 (2.2e-16), the ratio a few ulp; a float32 table
    # would be 2e-8 (β_0) and 4e-8 (β_999) off.
    assert_within(1 - abar[0], 0.00085, atol=1e-15, what="beta_0")
    assert_within(1 - abar[999] / abar[998], 0.012, atol=1e-12, what="beta_999")
    # 0.06826 is printed to 5 decimals, so ±5e-6 is its own precision (the float64 value is 0.0682649).
    assert_within(math.sqrt(abar[999].item()), 0.06826, atol=5e-6, what="sqrt abar_999")


def official_respaced_tables(n: int) -> dict[str, torch.Tensor]:
    """The DDPM script's respacing loop then register_schedule's posterior tables, in float64."""
    kept = space_timesteps(1000, [n])
    last, betas = 1.0, []
    for t, a in enumerate(linear_alphas_cumprod().tolist()):
        if t in kept:
            betas.append(1 - a / last)
            last = a
    betas = np.array(betas)
    alphas = 1 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    variance = betas * (1 - acp_prev) / (1 - acp)
    tables = {
        "recip": np.sqrt(1 / acp),
        "recipm1": np.sqrt(1 / acp - 1),
        "sqrt": np.sqrt(acp),
        "sqrt1m": np.sqrt(1 - acp),
        "coef1": betas * np.sqrt(acp_prev) / (1 - acp),
        "coef2": (1 - acp_prev) * np.sqrt(alphas) / (1 - acp),
        "log_var": np.log(np.maximum(variance, 1e-20)),
    }
    return {k: torch.from_numpy(v) for k, v in tables.items()}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [4, 21, 200])
def test_respaced_ddpm_step_matches_the_official_posterior(n, prediction_type):
    sampler = RespacedDDPM(n, prediction_type)
    tables = official_respaced_tables(n)
    assert sampler.timesteps.tolist() == sorted(space_timesteps(1000, [n]), reverse=True)
    g = torch.Generator().manual_seed(n)
    for i in range(n - 1, -1, -1):
        t = sampler.timesteps[n - 1 - i]
        x, out, noise = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        if prediction_type == "epsilon":
            x0 = tables["recip"][i] * x - tables["recipm1"][i] * out
        else:
            x0 = tables["sqrt"][i] * x - tables["sqrt1m"][i] * out
        mean = tables["coef1"][i] * x0 + tables["coef2"][i] * x
        expected = mean + (i > 0) * (0.5 * tables["log_var"][i]).exp() * noise
        # float64 on both sides, tables by numpy and by torch: 1.1e-14 apart at worst on |x| ≲ 20;
        # 1e-9 is far above that and far below any wrong coefficient (O(1e-3) and up).
        assert_within(sampler.step(out, t, x, noise), expected, atol=1e-9, what="step")


def test_respaced_ddpm_last_step_adds_no_noise_and_rejects_foreign_timesteps():
    sampler = RespacedDDPM(4)
    x, out = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.equal(sampler.step(out, 0, x, None), sampler.step(out, 0, x, torch.randn(1, 4, 8, 8)))
    with pytest.raises(ValueError):
        sampler.step(out, 333, x, None)
    with pytest.raises(ValueError):
        sampler.step(out, 500, x, torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusers_ddpm_scheduler_agrees_with_the_respaced_step(prediction_type):
    """Design note §4.1: DDPMScheduler with custom timesteps computes the same step (float32 tables)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, variance_type="fixed_small", prediction_type=prediction_type,
    )
    sampler = RespacedDDPM(21, prediction_type)
    scheduler.set_timesteps(timesteps=sampler.timesteps.tolist())
    g = torch.Generator().manual_seed(0)
    for k, t in enumerate(scheduler.timesteps):
        x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        theirs = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(k)).prev_sample
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(k))
        ours = sampler.step(out, t, x, noise)
        # diffusers steps in float32 from float32 tables, ours from float64 ones: 5.4e-7 of max|x_prev|
        # apart at worst. 1e-5 of it is 18× that; diffusers' fixed_large variance is 0.16 away.
        assert_within(theirs, ours, atol=1e-5 * ours.abs().max(), what="step")


def test_q_sample_noises_on_the_original_table():
    sampler = RespacedDDPM(4)
    z, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    a = linear_alphas_cumprod()[999].item()
    assert torch.equal(sampler.q_sample(z, noise), math.sqrt(a) * z + math.sqrt(1 - a) * noise)  # the same operations
    assert_within(math.sqrt(a), 0.06826, atol=5e-6, what="sqrt a")  # 5 printed decimals, as above
    assert torch.equal(QuirkyDDIM(20).q_sample(z, noise), sampler.q_sample(z, noise))


def ddim_reference(out, x, noise, a, a_prev, eta, prediction_type):
    """ddim.py p_sample_ddim_sr_t l.420-463 with util.py l.69's σ."""
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    eps = out if prediction_type == "epsilon" else math.sqrt(a) * out + math.sqrt(1 - a) * x
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_feeds_999_but_updates_with_the_uniform_grid(eta, prediction_type):
    sampler = QuirkyDDIM(20, eta=eta, prediction_type=prediction_type)
    abar = linear_alphas_cumprod()
    assert sampler.timesteps.tolist() == OFFICIAL_TIMESTEPS[20][::-1]
    assert sampler.alpha_grid == list(range(0, 1000, 50))
    assert sampler.alpha_bar(999) == abar[950].item()
    g = torch.Generator().manual_seed(1)
    x, out, noise = (torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    expected = ddim_reference(out, x, noise, abar[950].item(), abar[900].item(), eta, prediction_type)
    # The step and ddim_reference are the same float64 operations in the same order (σ's table too): equal.
    assert torch.equal(sampler.step(out, 999, x, noise), expected)
    # t = 53 is index 1: grid ᾱ_50, and ᾱ_prev is ᾱ_0.
    expected = ddim_reference(out, x, noise, abar[50].item(), abar[0].item(), eta, prediction_type)
    assert torch.equal(sampler.step(out, 53, x, noise), expected)
    # Last step: a_t = a_prev = ᾱ_0 and σ = 0, so x comes back unchanged.
    # x → x̂0 → x is an identity only up to float64 rounding (2.2e-16 seen on |x| ≲ 4); with ᾱ_prev = 1
    # instead of ᾱ_0 the step would move x by √(1 − ᾱ_0)·ε ≈ 0.03·|ε|.
    assert_within(sampler.step(out, 0, x, None), x, atol=1e-12, what="step 0")


def test_ddim_uses_only_the_first_n_grid_points():
    sampler = QuirkyDDIM(30)
    assert sampler.alpha_grid[-1] == 957 and len(sampler.alpha_grid) == 30
    assert sampler.alpha_bar(999) == linear_alphas_cumprod()[957].item()
    with pytest.raises(ValueError):
        QuirkyDDIM(20, eta=1.0).step(torch.zeros(1), 999, torch.zeros(1), None)


def test_adain_matches_source_statistics():
    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 3, 32, 40, generator=g) * 2 - 1
    source = torch.rand(2, 3, 32, 40, generator=g) * 0.6 - 0.1
    fixed = adain_color_fix(target, source)
    flat, ref = fixed.flatten(2), source.flatten(2)
    # float32 means of 1280 values in [−0.1, 0.5]: 3e-8 apart at worst; the target's mean kept would be O(0.1) off.
    assert_within(flat.mean(2), ref.mean(2), atol=1e-5, what="mean")
    # calc_mean_std divides by √(var + 1e-5), so the result's std is std_t·√(var_s + ε)/√(var_t + ε): 1.6e-4
    # (relative) from the source's own std here. With ε in the expectation (float64) only float32 rounding
    # is left, 5.2e-8 relative at worst; 1e-6 still catches ε left out (1.6e-4) or added to the std (1.2e-4).
    t64, s64, eps = target.double().flatten(2), source.double().flatten(2), 1e-5
    expected_std = t64.std(2) * ((s64.var(2) + eps) / (t64.var(2) + eps)).sqrt()
    assert_within(flat.std(2), expected_std, rtol=1e-6, what="std")


def test_wavelet_keeps_target_detail_on_source_colour():
    size = 96
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((-1.0) ** (yy + xx)).float() * 0.3  # zero mean, removed entirely by every blur level
    target = checker.expand(1, 3, size, size)
    colour = torch.tensor([0.2, -0.5, 0.7]).view(1, 3, 1, 1)
    fixed = wavelet_color_fix(target, colour.expand(1, 3, size, size))
    # Away from the replicate-padded border (dilations 1+2+4+8+16 = 31 px), result = detail + colour.
    core = slice(31, size - 31)
    # float32 blurs (9 products each) and band sums over 5 levels of values ≤ 1: ≤ 2.4e-7 apart at worst
    # (the mean below included); 5e-6 is 20× that, a band from the wrong image is O(0.1) off.
    assert_within(fixed[..., core, core], (target + colour)[..., core, core], atol=5e-6, what="detail + colour")
    low = fixed[..., core, core].mean(dim=(-2, -1), keepdim=True)
    assert_within(low, colour, atol=5e-6, what="low")
    # A picture against itself keeps all of its bands.
    image = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(3))
    assert_within(wavelet_color_fix(image, image), image, atol=5e-6, what="itself")


def test_gaussian_tile_weights_keep_the_midpoint_asymmetry():
    size = 64
    w = gaussian_tile_weights(size)
    assert w.shape == (size, size) and w.dtype == torch.float64
    # Mirrored entries are exp of the same argument ((±d)² is exact for integer or half-integer d), all 64
    # in the vectorised loop (no scalar tail at any vector width), times the same factors: exactly equal.
    assert torch.equal(w, w.flip(1))  # x: symmetric about (T−1)/2
    assert not torch.allclose(w, w.flip(0))  # y: centred on T/2 instead
    assert torch.equal(w[1:], w[1:].flip(0))  # rows 1..T−1 are symmetric about T/2
    assert int(w[:, 0].argmax()) == size // 2
    peak = 1 / (2 * math.pi * 0.01)
    # float64 exp and products around 15.9 (ulp 3.6e-15): 1.8e-15 seen.
    assert_within(w[size // 2, size // 2], peak * math.exp(-0.25 / size**2 / 0.02), atol=1e-12, what="peak")


def test_tile_grid_is_flush_and_covers_the_latent():
    assert tile_offsets(64, 64, 32) == [0]
    # The count assumes unclamped tiles, so a near-duplicate tile can precede the flush one.
    assert tile_offsets(100, 64, 32) == [0, 32, 36]
    assert tile_offsets(200, 64, 32) == [0, 32, 64, 96, 128, 136]
    shape = (1, 4, 100, 200)
    slices = tile_slices(shape, 64, 32)
    assert len(slices) == 18
    starts = [(rows.start, cols.start) for rows, cols in slices[:4]]
    assert starts == [(0, 0), (32, 0), (36, 0), (0, 32)]  # x outer, y inner
    coverage = torch.zeros(shape[-2:])
    for rows, cols in slices:
        coverage[rows, cols] += 1
    assert bool((coverage > 0).all())
    assert max(r.stop for r, _ in slices) == 100 and max(c.stop for _, c in slices) == 200
    for bad in [(1, 4, 63, 200), (1, 4, 100, 40)]:
        with pytest.raises(ValueError):
            tile_slices(bad, 64, 32)
    with pytest.raises(ValueError):
        tile_offsets(100, 64, 64)


def test_stitching_is_a_weighted_average():
    shape = (2, 4, 100, 72)
    slices = tile_slices(shape, 64, 32)
    weights = gaussian_tile_weights(64)
    constant = stitch_tiles([torch.full((2, 4, 64, 64), 0.37)] * len(slices), slices, shape, weights)
    # Products with float64 weights summed in float32 over ≤ 6 tiles, then divided: a few ulp, 9e-8 at 0.37
    # and 5e-8 at 3.1 below. 2e-6 is > 20× that; weights not normalised or misplaced are O(0.1) off.
    assert_within(constant, torch.full(shape, 0.37), atol=2e-6, what="constant")
    # Tile k outputs the value k: an overlapped pixel is Σ k·w_k / Σ w_k.
    outputs = [torch.full((2, 4, 64, 64), float(k)) for k in range(len(slices))]
    stitched = stitch_tiles(outputs, slices, shape, weights)
    y, x = 50, 40
    num = den = 0.0
    for k, (rows, cols) in enumerate(slices):
        if rows.start <= y < rows.stop and cols.start <= x < cols.stop:
            w = weights[y - rows.start, x - cols.start].item()
            num, den = num + k * w, den + w
    assert stitched.dtype == torch.float32
    assert_within(stitched[1, 3, y, x], num / den, atol=2e-6, what="weighted")
