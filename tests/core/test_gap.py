"""The exact-score benchmark behind `diffier gap` (diffier_cli/gap.py, models/mixture.py): its mathematics
and its runs (the command itself: tests/cli/test_gap_cli.py)."""

from __future__ import annotations

import math

import pytest
import torch

from diffier_cli.gap import GapOptions, MixtureBackbone, one_step_omega_star, run_benchmark, run_one
from models.mixture import MISFITS, Mixture, MisfitModel
from tests.tolerance import assert_within


def problem(misfit: str = "over-dispersed", size: float = 0.5, dim: int = 3):
    generator = torch.Generator().manual_seed(3)
    truth = Mixture.random(classes=3, components=2, dim=dim, sigma=0.3, spread=1.0, generator=generator)
    direction = torch.randn(dim, generator=generator, dtype=torch.float64)
    return MisfitModel(truth, misfit, size, direction / direction.norm())


@pytest.mark.numerics
@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.01])
@pytest.mark.parametrize("conditional", [True, False])
def test_closed_form_eps_is_minus_sigma_times_the_autograd_score(alpha_bar, conditional):
    truth = problem().truth
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels = torch.arange(16) % 3 if conditional else None
    (score,) = torch.autograd.grad(truth.log_prob(x, labels, alpha_bar).sum(), x)
    expected = -math.sqrt(1 - alpha_bar) * score
    # float64, softmax-weighted sum against autograd through logsumexp: 1.2e-14 apart at worst (|ε| ≤ 1.5);
    # a wrong √(1 − ᾱ) or s² moves ε by far more than 1e-10 relative.
    assert_within(truth.eps(x.detach(), alpha_bar, labels), expected, rtol=1e-10, atol=1e-12, what="eps")


@pytest.mark.numerics
def test_with_a_perfect_model_the_gap_is_zero_and_omega_star_is_one():
    model = problem("none")
    backbone = MixtureBackbone(model, steps=10)
    labels = torch.arange(32) % 3
    x_t = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    truth_samples = model.truth.sample(labels, torch.Generator().manual_seed(4))
    run = run_one(backbone, labels, x_t, truth_samples, 1.0, None, seed=0, setting="baseline")
    # ε̂ = ε_∅ + 1·(ε_c − ε_∅) is ε* up to one float64 rounding (≲ 1e-15 per element), so the gap is a
    # sum of squares of those, ≲ 1e-28 (4e-33 seen); any model error gives > 1e-3 (the guided run below).
    assert_within(run.gap, 0.0, atol=1e-24, what="gap")
    # ε* and ε_c come from the same function on the same input, so ⟨ε* − ε_∅, Δ⟩ and ‖Δ‖² are the same
    # float64 sums: ω* is exactly 1.
    assert run.omega_star == 1.0
    guided = run_one(backbone, labels, x_t, truth_samples, 4.0, None, seed=0, setting="baseline")
    assert guided.gap > 1e-3 and guided.omega_star == 1.0  # ω* does not move with ω


@pytest.mark.numerics
@pytest.mark.parametrize("misfit", [m for m in MISFITS if m != "none"])
def test_eq9_omega_star_is_the_argmin_of_the_one_step_loss(misfit):
    model = problem(misfit)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(64) % 3
    alpha_bar = 0.3
    cond, uncond = model.eps(x, alpha_bar, labels), model.eps(x, alpha_bar, None)
    true = model.truth.eps(x, alpha_bar, labels)
    grid = torch.linspace(-5, 15, 200001, dtype=torch.float64)
    losses = torch.stack([((uncond + w * (cond - uncond) - true) ** 2).sum() for w in grid[::100]])
    coarse = float(grid[::100][losses.argmin()])
    fine = grid[(grid - coarse).abs() <= 0.01]
    fine_losses = torch.stack([((uncond + w * (cond - uncond) - true) ** 2).sum() for w in fine])
    # The loss is a parabola in ω, so the best point of the 1e-4 grid is the one nearest the exact
    # minimiser: within 5e-5 of it (4.8e-5 seen), whatever the rounding (float64).
    assert_within(one_step_omega_star(model, x, labels, alpha_bar), float(fine[fine_losses.argmin()]), atol=1e-4, what="omega*")


def test_refined_and_baseline_runs_start_from_the_same_noise(monkeypatch):
    seen = []

    class Recording(MixtureBackbone):
        def predict(self, x, t, state):
            if not state.gap.any():  # the first step
                seen.append(x.clone())
            return super().predict(x, t, state)

    opts = GapOptions(misfit="over-dispersed", misfit_size=0.5, omegas=[2.0], dim=3, classes=2, components=2, sigma=0.3,
                      spread=1.0, n_samples=8, steps=4, eta=0.05, threshold=1e-3, max_iters=1, seed=7)
    monkeypatch.setattr("diffier_cli.gap.MixtureBackbone", Recording)
    result = run_benchmark(opts)
    assert [r.setting for r in result["runs"]] == ["baseline", "descent", "ascent"]
    assert len(seen) == 3 and all(torch.equal(seen[0], x) for x in seen)
    gaps = [r.gap for r in result["runs"]]
    assert len(set(gaps)) == 3  # the refinement did change the trajectories


@pytest.mark.numerics
@pytest.mark.parametrize("variant", ["ldm", "ddpm"])
def test_the_eps_the_gap_measures_under_iec_is_the_one_its_step_took(variant):
    """x_{t−1} = Φ_t(x_t, ε̄) for the ε̄ handed to `observe`: the relaxed ε, not the last re-evaluation."""
    from diffier_cli.iec import IEC
    from diffier_cli.sampling import denoise

    backbone = MixtureBackbone(problem("over-sharp"), steps=6)
    labels = torch.arange(8) % 3
    state = backbone.prepare(labels, 3.0)
    seen = []
    trajectory = denoise(backbone, state, torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)),
                         refiner=IEC.from_variant(variant, iters=None, gamma=0.5, tol=0.0, steps="all"),
                         generators=[torch.Generator() for _ in range(8)], observe=lambda x, t, eps: seen.append((x, t, eps)))
    after = [x for x, _, _ in seen[1:]] + [trajectory.sample]
    for (x, t, eps), following in zip(seen, after):
        stepped = backbone.step(x, backbone.from_eps(eps, x, t, state), t, state)
        # IEC relaxes x̂ + w·(Φ(ε) − x̂) while this applies Φ to the relaxed ε̄: equal up to float64
        # rounding of |x| ≲ 2 (5.6e-16 seen); stepping from the model's own ε instead is off by ≥ 1e-4.
        assert_within(stepped, following, atol=1e-12, what="step")
        assert not torch.allclose(eps, backbone.to_eps(backbone.predict(x, t, state), x, t, state))  # IEC moved it
