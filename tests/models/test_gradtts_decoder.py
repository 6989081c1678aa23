"""The Grad-TTS port against the reference GradTTS.forward on the same noised weights and noise."""

from __future__ import annotations

import pytest
import torch

from diffier_cli.refine import DiffIER, RefineStats
from diffier_cli.sampling import EpsRefiner
from diffier_cli.sampling import denoise
from models.gradtts.adapter import GradTTSBackbone
from models.gradtts.model import load_gradtts
from tests.gradtts_reference import noised_reference_model, save_official_checkpoint
from tests.tolerance import assert_within

pytestmark = pytest.mark.numerics

IDS = [148, 45, 148, 42, 148, 49, 148, 49, 148, 52, 148, 7, 148, 11, 148, 60, 148, 52, 148, 55, 148, 49, 148, 41, 148]
STEPS = 4
SEED = 11

# Port and reference run the same maths with different code, so they agree to float32 rounding
# only, and the reverse SDE with an untrained score amplifies it: the mels reach |x| ≈ 65-125 and
# differ by up to 8.8e-7 of max|mel| over ATEN_CPU_CAPABILITY ∈ {default, avx2, avx512} ×
# OMP_NUM_THREADS ∈ {1, 2} (1.1e-4 absolute; 2e-4 on an AMD EPYC, issue 13), μ by 1.0e-6 of max|μ|.
# Bounds are 2e-5 of the largest reference value: > 20× the matrix, > 10× the EPYC. Real bugs
# are 1e4× larger: β_t taken at the start of the step instead of its midpoint moves the mel by
# > 50, the ½ dropped from the drift by > 250, the noise scaled by √β_t·h instead of √(β_t·h)
# by > 25 (stochastic runs). The encoder's μ has the bound of test_gradtts_encoder.py.
REL = 2e-5


class IdentityRefiner(EpsRefiner):
    """Converts to ε and back without changing it: the ε-form step must equal the score step."""

    name, mode, stats = "identity", "identity", RefineStats

    def correct(self, eps, generators):
        zeros = torch.zeros(eps.shape[0])
        return eps, RefineStats(zeros.long(), zeros, zeros)

    def settings(self):
        return {"name": "identity"}


@pytest.fixture(scope="module", params=[1, 247], ids=["single-speaker", "libritts"])
def models(request, tmp_path_factory):
    reference = noised_reference_model(n_spks=request.param, seed=3)
    path = save_official_checkpoint(reference, tmp_path_factory.mktemp("ckpt") / "grad-tts.pt")
    port, info = load_gradtts(path, pe_scale=1000.0, device=torch.device("cpu"), dtype=torch.float32)
    assert info["n_spks"] == request.param
    return reference, port


def reference_forward(reference, stochastic: bool, speaker: int | None):
    """reference.forward with its torch.randn_like / torch.randn answered from a seeded generator
    in the order the port draws: the prior noise first, then one ξ per stochastic step."""
    generator = torch.Generator().manual_seed(SEED)
    real_randn = torch.randn

    def randn_like(tensor, **kwargs):
        return real_randn(tensor.shape, generator=generator).to(tensor.dtype)

    def randn(*shape, **kwargs):
        size = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, torch.Size)) else shape
        return real_randn(size, generator=generator)

    x = torch.tensor([IDS])
    spk = torch.tensor([speaker]) if speaker is not None else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randn_like", randn_like)
        patch.setattr(torch, "randn", randn)
        mu_y, mel, _ = reference(x, torch.tensor([len(IDS)]), n_timesteps=STEPS, temperature=1.5,
                                 stoc=stochastic, spk=spk, length_scale=0.91)
    return mu_y, mel


def port_forward(port, stochastic: bool, speaker: int | None, refiner=None):
    backbone = GradTTSBackbone(port, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        state = backbone.prepare(IDS, speaker=speaker, steps=STEPS, temperature=1.5, length_scale=0.91,
                                 stochastic=stochastic, noise_generator=torch.Generator().manual_seed(SEED))
        trajectory = denoise(backbone, state, backbone.init_noise(state), refiner=refiner,
                             generators=[torch.Generator().manual_seed(SEED + 1)])
    return state.mu_y[:, :, : state.frames], backbone.decode(trajectory.sample, state)


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
def test_baseline_matches_reference(models, stochastic):
    reference, port = models
    speaker = 5 if port.n_spks > 1 else None
    ref_mu, ref_mel = reference_forward(reference, stochastic, speaker)
    mu, mel = port_forward(port, stochastic, speaker)
    assert mel.shape == ref_mel.shape and mel.shape[-1] > 20
    assert_within(mu, ref_mu, atol=REL * ref_mu.abs().max(), what="mu")
    assert_within(mel, ref_mel, atol=REL * ref_mel.abs().max(), what="mel")


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
def test_zero_correction_in_eps_form_matches_reference(models, stochastic):
    reference, port = models
    speaker = 0 if port.n_spks > 1 else None
    _, ref_mel = reference_forward(reference, stochastic, speaker)
    _, mel = port_forward(port, stochastic, speaker, refiner=IdentityRefiner())
    # ε = −σ_t·s and back adds two roundings per step to the baseline's: same bound.
    assert_within(mel, ref_mel, atol=REL * ref_mel.abs().max(), what="mel")


def test_refinement_changes_the_mel_reproducibly(models):
    _, port = models
    speaker = 0 if port.n_spks > 1 else None
    _, base = port_forward(port, False, speaker)
    _, refined = port_forward(port, False, speaker, refiner=DiffIER(max_iters=2, threshold=1e-9))
    _, again = port_forward(port, False, speaker, refiner=DiffIER(max_iters=2, threshold=1e-9))
    assert (refined - base).abs().max() > 1e-3
    assert torch.equal(refined, again)


def test_sigma_and_beta_match_the_design_note_values(models):
    _, port = models
    decoder = port.decoder
    # docs/gradtts.md §2, n = 10: t = .95, .45, .05. The note prints 6 decimals (±5e-7) and σ, β are
    # float64 Python math (exact to 1e-15), so 1e-6 is the printed precision; the ½ missing from
    # ∫β would move σ(.05) by 0.06, β0 and β1 swapped by 0.6.
    assert_within(decoder.sigma(0.95), 0.999941, atol=1e-6, what="sigma(.95)")
    assert_within(decoder.sigma(0.45), 0.932892, atol=1e-6, what="sigma(.45)")
    assert_within(decoder.sigma(0.05), 0.164513, atol=1e-6, what="sigma(.05)")
    assert_within(decoder.beta(0.05), 1.0475, atol=1e-12, what="beta(.05)")  # β0 + (β1 − β0)·t: two float64 roundings


def test_refined_run_equals_an_independent_eps_form_loop(models):
    """ε = −σ_t·s with σ_t from the reference's own `get_noise(cumulative=True)`, refined, turned back
    into a score and stepped with the reference's formula: must equal the port's refined run."""
    from grad_tts.model.diffusion import get_noise

    reference, port = models
    speaker = 2 if port.n_spks > 1 else None
    refiner = DiffIER(max_iters=2, threshold=1e-9)
    _, ours = port_forward(port, False, speaker, refiner=refiner)

    backbone = GradTTSBackbone(port, torch.device("cpu"), torch.float32)
    refine_generators = [torch.Generator().manual_seed(SEED + 1)]
    estimator = reference.decoder.estimator
    with torch.no_grad():
        state = backbone.prepare(IDS, speaker=speaker, steps=STEPS, temperature=1.5, length_scale=0.91,
                                 stochastic=False, noise_generator=torch.Generator().manual_seed(SEED))
        spk = reference.spk_emb(torch.tensor([speaker])) if speaker is not None else None
        x = backbone.init_noise(state)
        h = 1.0 / STEPS
        for i in range(STEPS):
            t = torch.full((1,), 1.0 - (i + 0.5) * h)
            score = estimator(x, state.y_mask, state.mu_y, t, spk)
            sigma = torch.sqrt(1.0 - torch.exp(-get_noise(t, 0.05, 20.0, cumulative=True)))
            eps, _ = refiner.correct(-sigma * score, refine_generators)
            score = -eps / sigma
            beta = get_noise(t, 0.05, 20.0, cumulative=False)
            x = (x - 0.5 * (state.mu_y - x - score) * beta * h) * state.y_mask
    expected = x[:, :, : state.frames]
    assert_within(ours, expected, atol=REL * expected.abs().max(), what="mel")  # 4.9e-7 of max|mel| at worst
