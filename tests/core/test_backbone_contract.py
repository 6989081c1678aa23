"""The contract every backbone adapter signs with the shared loop (diffier_cli/sampling.py `Backbone`,
docs/backbone.md), checked on all four, each in its stochastic setting where it has one and its
deterministic one:

- Stable Diffusion (models/sd.py), ε and v, DDIM with η = 0 and η > 0, on the tiny saved pipeline;
- StableSR (models/stablesr/adapter.py): respaced DDPM (the paper and turbo presets), DDIM η = 1
  on the v model (the 768v preset) and DDIM η = 0, on the tiny official-format checkpoints;
- Grad-TTS (models/gradtts/adapter.py): the ODE step and the --stoc SDE step, on the noised
  reference model saved as an official checkpoint;
- the exact-score mixture (diffier_cli/gap.py `MixtureBackbone` over models/mixture.py): DDIM η = 0,
  deterministic only.

Each state is made as its subcommand makes it (t2i.py `generate`, sr.py `upscale`, tts.py
`synthesize`, gap.py `run_benchmark`: prepare, then init_noise or the benchmark's x_T), from fresh
generators seeded the same way, so two states built from the same seeds start equal.

The checks:
1. `step_noise` then `step(noise=...)` is the plain `step` (which draws its own noise), exactly, and
   leaves the generators where the plain step leaves them: what IEC's frozen step relies on.
2. `step(noise=...)` draws nothing (the state's generators and torch's global one are untouched),
   changes none of its inputs, and called twice gives the same result.
3. `from_eps(to_eps(prediction))` is the prediction: exactly where the conversion is the identity
   (ε models), to float32 rounding otherwise (v and score models).
4. The same seeds give bit-identical x_T, predictions and steps; where the backbone batches items
   with a generator each (SD), another seed for one item changes that item's x_T and step noise
   only. StableSR (one image, or pixel tile, per state) and Grad-TTS (one utterance per state) do
   not batch; the mixture batches its samples but draws x_T for all of them from one generator
   (`gap --seed`), and its sampler draws nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffier_cli.gap import MixtureBackbone
from models.mixture import Mixture, MisfitModel
from tests.tolerance import assert_within

STEPS = 3
SEEDS = [5, 6]  # item b of a batch gets SEEDS[b]; one-item backbones take the first
U = torch.finfo(torch.float32).eps / 2  # the unit roundoff of float32: one rounding is ≤ U relative

# Grad-TTS token ids (an interspersed sentence of the official symbol table, as test_gradtts_decoder.py uses).
TTS_IDS = [148, 45, 148, 42, 148, 49, 148, 49, 148, 52, 148, 7, 148, 11, 148, 60, 148, 52, 148, 55, 148, 49, 148, 41, 148]


# --- how each subcommand prepares its backbone's state ------------------------------------------


class SDCase:
    """t2i.py `generate`: one generator per item, prompts encoded with guidance, DDIM at --ddim-eta."""

    batched = True

    def __init__(self, prediction: str, ddim_eta: float):
        self.prediction, self.ddim_eta = prediction, ddim_eta
        self.conversion = "identity" if prediction == "epsilon" else "v"

    def backbone(self, request):
        return request.getfixturevalue("sd_backbones")[self.prediction]

    def start(self, backbone, seeds):
        state = backbone.prepare(
            ["a red bicycle"] * len(seeds), negative_prompts=[""] * len(seeds), cfg=3.0, height=32, width=32,
            steps=STEPS, ddim_eta=self.ddim_eta, noise_generators=[torch.Generator().manual_seed(s) for s in seeds],
        )
        return state, backbone.init_noise(state)

    def generators(self, state):
        return state.noise_generators

    def alpha_bar(self, backbone, state, t) -> float:
        return float(backbone.scheduler.alphas_cumprod[t.long()])


class StableSRCase:
    """sr.py `upscale`: one padded image per state, its own CPU generator, the latent canvas tiled."""

    batched = False

    def __init__(self, prediction: str, sampler: str, ddim_eta: float):
        self.prediction, self.sampler, self.ddim_eta = prediction, sampler, ddim_eta
        self.conversion = "identity" if prediction == "epsilon" else "v"

    def backbone(self, request):
        return request.getfixturevalue("stablesr_backbones")[self.prediction]

    def start(self, backbone, seeds):
        # 64 × 96 px: an 8 × 12 latent, two 8-px latent tiles overlapping by 4 (tile size 64 px, as SR_SMALL).
        upscaled = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
        state = backbone.prepare(upscaled, sampler=self.sampler, steps=STEPS, ddim_eta=self.ddim_eta,
                                 tile=64 // backbone.latent_scale, overlap=4,
                                 noise_generator=torch.Generator().manual_seed(seeds[0]))
        return state, backbone.init_noise(state)

    def generators(self, state):
        return [state.noise_generator]

    def alpha_bar(self, backbone, state, t) -> float:
        return state.sampler.alpha_bar(t)


class GradTTSCase:
    """tts.py `synthesize`: one utterance per state, the item's CPU generator for the prior and ξ."""

    batched = False
    conversion = "score"

    def __init__(self, stochastic: bool):
        self.stochastic = stochastic

    def backbone(self, request):
        return request.getfixturevalue("gradtts_backbone")

    def start(self, backbone, seeds):
        state = backbone.prepare(TTS_IDS, speaker=None, steps=STEPS, temperature=1.5, length_scale=0.91,
                                 stochastic=self.stochastic, noise_generator=torch.Generator().manual_seed(seeds[0]))
        return state, backbone.init_noise(state)

    def generators(self, state):
        return [state.noise_generator]


class MixtureCase:
    """gap.py `run_benchmark`: labels and ω in the state, x_T for every sample from one generator."""

    batched = False  # batched, but x_T is one draw for all samples and the sampler draws nothing
    conversion = "identity"

    def backbone(self, request):
        return request.getfixturevalue("mixture_backbone")

    def start(self, backbone, seeds):
        state = backbone.prepare(torch.arange(8) % 3, 3.0)
        x_t = torch.randn(8, 3, generator=torch.Generator().manual_seed(seeds[0] + 1), dtype=torch.float64)
        return state, x_t

    def generators(self, state):
        return []


CASES = {
    "sd-eps-ddim": SDCase("epsilon", 0.0),
    "sd-eps-ddim-eta0.8": SDCase("epsilon", 0.8),
    "sd-v-ddim": SDCase("v_prediction", 0.0),
    "sd-v-ddim-eta0.8": SDCase("v_prediction", 0.8),
    "stablesr-eps-ddpm": StableSRCase("epsilon", "ddpm", 0.0),
    "stablesr-eps-ddim": StableSRCase("epsilon", "ddim", 0.0),
    "stablesr-v-ddim-eta1": StableSRCase("v_prediction", "ddim", 1.0),
    "gradtts-ode": GradTTSCase(stochastic=False),
    "gradtts-stoc": GradTTSCase(stochastic=True),
    "mixture-ddim": MixtureCase(),
}
BATCHED = [name for name, case in CASES.items() if case.batched]


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    return CASES[request.param]


@pytest.fixture
def backbone(case, request):
    return case.backbone(request)


@pytest.fixture(scope="module")
def sd_backbones(tiny_sd):
    from models.sd import StableDiffusion

    return {p: StableDiffusion.load(str(tiny_sd[p]), revision=None, device=torch.device("cpu"), dtype=torch.float32)
            for p in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def stablesr_backbones(tiny):
    from models.stablesr.adapter import StableSR

    return {p: StableSR.load(tiny["ckpt"], tiny["vae"], prediction_type=p, device=torch.device("cpu"), dtype=torch.float32)
            for p in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def gradtts_backbone(tmp_path_factory):
    from models.gradtts.adapter import GradTTSBackbone
    from models.gradtts.model import load_gradtts
    from tests.gradtts_reference import noised_reference_model, save_official_checkpoint

    path = save_official_checkpoint(noised_reference_model(n_spks=1, seed=3), tmp_path_factory.mktemp("gradtts") / "grad-tts.pt")
    model, _ = load_gradtts(path, pe_scale=1000.0, device=torch.device("cpu"), dtype=torch.float32)
    return GradTTSBackbone(model, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def mixture_backbone():
    generator = torch.Generator().manual_seed(3)
    truth = Mixture.random(classes=3, components=2, dim=3, sigma=0.3, spread=1.0, generator=generator)
    direction = torch.randn(3, generator=generator, dtype=torch.float64)
    return MixtureBackbone(MisfitModel(truth, "over-dispersed", 0.5, direction / direction.norm()), steps=STEPS)


def generator_states(case, state) -> list[torch.Tensor]:
    """Where the state's generators stand, and torch's global one (a step must not draw from it either)."""
    return [g.get_state() for g in case.generators(state)] + [torch.random.get_rng_state()]


def same_states(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --- 1. step_noise, then step(noise=...): the plain step ------------------------------------------


@torch.no_grad()
def test_step_with_the_drawn_noise_is_the_plain_step(case, backbone):
    plain_state, x = case.start(backbone, SEEDS)
    frozen_state, x_frozen = case.start(backbone, SEEDS)
    assert torch.equal(x, x_frozen)
    for index, t in enumerate(backbone.timesteps(plain_state)):
        prediction = backbone.predict(x, t, plain_state)
        plain = backbone.step(x, prediction, t, plain_state)
        noise = backbone.step_noise(x, t, frozen_state)
        frozen = backbone.step(x, prediction, t, frozen_state, noise=noise)
        assert torch.equal(frozen, plain), f"step {index}"
        # the same draws from the same generators: the next step's noise is the baseline's too
        assert same_states(generator_states(case, frozen_state), generator_states(case, plain_state)), f"step {index}"
        x = plain


# --- 2. step(noise=...) draws nothing and can be called again -------------------------------------


@torch.no_grad()
def test_step_with_given_noise_draws_nothing_and_repeats(case, backbone):
    state, x = case.start(backbone, SEEDS)
    for index, t in enumerate(backbone.timesteps(state)):
        prediction = backbone.predict(x, t, state)
        noise = backbone.step_noise(x, t, state)
        inputs = [v for v in (x, prediction, noise) if v is not None]
        copies = [v.clone() for v in inputs]
        before = generator_states(case, state)
        first = backbone.step(x, prediction, t, state, noise=noise)
        second = backbone.step(x, prediction, t, state, noise=noise)
        assert torch.equal(first, second), f"step {index}"
        assert same_states(generator_states(case, state), before), f"step {index} drew from a generator"
        assert all(torch.equal(v, c) for v, c in zip(inputs, copies)), f"step {index} changed its inputs"
        x = first


# --- 3. to_eps, then from_eps: the prediction back --------------------------------------------------


@pytest.mark.numerics
@torch.no_grad()
def test_to_eps_then_from_eps_gives_the_prediction_back(case, backbone):
    state, x = case.start(backbone, SEEDS)
    for index, t in enumerate(backbone.timesteps(state)):
        prediction = backbone.predict(x, t, state)
        eps = backbone.to_eps(prediction, x, t, state)
        back = backbone.from_eps(eps, x, t, state)
        what = f"round trip at step {index}"
        assert back.dtype == prediction.dtype and back.shape == prediction.shape
        if case.conversion == "identity":  # ε models: both conversions are the identity
            assert torch.equal(eps, prediction) and torch.equal(back, prediction), what
        elif case.conversion == "score":
            # Grad-TTS: ε = −σ_t·s and back s = −ε/σ_t in float32: two roundings, three if the division
            # is done as a product with 1/σ_t, each ≤ U relative (σ_t ∈ [0.49, 1] here: no under- or
            # overflow), so ≤ 3U ≈ 1.8e-7 of |s| per element; 8U is 2.7× that (2U used, as expected,
            # over the capability × thread matrix). A pair that does not invert (σ_t² in one of them, or
            # another t) is off by ≥ 4.7e-4 of |s| at the first step (σ_t = 0.99953), 1000× the bound.
            assert_within(back, prediction, rtol=8 * U, what=what)
        else:
            # v models: ε = √ā·v + √(1−ā)·x_t (three float32 roundings), back v = (ε − √(1−ā)·x_t)/√ā (two,
            # three if divided as a product with 1/√ā; √ā and √(1−ā) are the same float32 numbers both
            # ways). The rounding of ε, ≤ U·|ε|, comes back divided by √ā (≥ 0.32 on these 3-step grids);
            # the others are relative to v: |v' − v| ≤ 4U·|v| + U·max|ε|/√ā. The bound is twice that
            # (≤ 0.37 of it used over the capability × thread matrix). A pair that does not invert (ā and
            # 1 − ā swapped, ā of another timestep or of another grid in one of them) is off by O(|v|).
            a = case.alpha_bar(backbone, state, t)
            assert_within(back, prediction, rtol=8 * U, atol=2 * U * float(eps.abs().max()) / math.sqrt(a), what=what)
        x = backbone.step(x, prediction, t, state)


# --- 4. the same seeds, the same numbers; one item's seed, that item's numbers -------------------


@torch.no_grad()
def test_the_same_seeds_give_bit_identical_predictions_and_steps(case, backbone):
    first_state, first = case.start(backbone, SEEDS)
    second_state, second = case.start(backbone, SEEDS)
    assert torch.equal(first, second), "x_T"
    for index, t in enumerate(backbone.timesteps(first_state)):
        prediction = backbone.predict(first, t, first_state)
        assert torch.equal(backbone.predict(second, t, second_state), prediction), f"prediction at step {index}"
        first = backbone.step(first, prediction, t, first_state)
        second = backbone.step(second, prediction, t, second_state)
        assert torch.equal(first, second), f"step {index}"


@pytest.mark.parametrize("name", BATCHED)
@torch.no_grad()
def test_another_seed_for_one_item_changes_only_that_items_noise(name, request):
    case = CASES[name]
    backbone = case.backbone(request)
    state, x = case.start(backbone, SEEDS)
    other_state, other_x = case.start(backbone, [SEEDS[0], SEEDS[1] + 100])
    assert torch.equal(other_x[0], x[0]) and not torch.equal(other_x[1], x[1]), "x_T"
    for index, t in enumerate(backbone.timesteps(state)):
        noise, other_noise = backbone.step_noise(x, t, state), backbone.step_noise(x, t, other_state)
        if noise is None:  # a deterministic step draws nothing, for any seed
            assert other_noise is None
            continue
        assert torch.equal(other_noise[0], noise[0]), f"item 0's noise at step {index}"
        assert not torch.equal(other_noise[1], noise[1]), f"item 1's noise at step {index}"
