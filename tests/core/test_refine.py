"""One test per numbered rule of docs/refine_eps.md."""

from __future__ import annotations

import pytest
import torch

from diffier_cli.refine import DiffIER, refine_eps
from tests.tolerance import assert_within

pytestmark = pytest.mark.numerics

SHAPE = (4, 8, 8)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def draws(seed: int, count: int) -> list[torch.Tensor]:
    """The draws an item's generator yields, in order, as refine_eps consumes them."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(count)]


def reference(eps: torch.Tensor, seed: int, eta: float, threshold: float, max_iters: int, sign: float):
    """The spec written out for one item, step by step, in float64: (result, iterations, last loss)."""
    g = torch.Generator().manual_seed(seed)
    e = eps.double()
    previous = None
    for k in range(1, max_iters + 1):
        n = torch.randn(SHAPE, generator=g).double()
        loss = ((e - n) ** 2).mean().item()
        e = e + sign * 2 * eta * (e - n)
        if k >= 2 and abs(loss - previous) / previous <= threshold:
            return e, k, loss
        previous = loss
    return e, max_iters, loss


@pytest.fixture
def eps() -> torch.Tensor:
    return torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(100)) * 1.7


@pytest.mark.parametrize(("direction", "sign"), [("descent", -1.0), ("ascent", 1.0)])
def test_rule1_direction_closed_form(eps, direction, sign):
    eta = 0.05
    out, _ = refine_eps(eps, generators=gens(1, 2, 3), eta=eta, direction=direction)
    noise = torch.stack([draws(s, 1)[0] for s in (1, 2, 3)])
    # descent: (1 − 2η)ε̂ + 2η n ; ascent: (1 + 2η)ε̂ − 2η n
    expected = (1 + sign * 2 * eta) * eps - sign * 2 * eta * noise
    # Two float32 expressions of one value (refine_eps computes ε̂ + step·(ε̂ − n), which the vectorised
    # add may fuse into one FMA): a few ulp of |ε̂| ≤ 5.5 apart, 4.8e-7 (1 ulp) at worst over the capability ×
    # thread matrix. 2e-6·max|ε̂| ≈ 23× that; η in place of 2η would move values by up to 0.3.
    assert_within(out, expected, atol=2e-6 * eps.abs().max(), what="closed form")


def test_rule1_directions_move_opposite_ways(eps):
    down, _ = refine_eps(eps, generators=gens(1, 2, 3), direction="descent")
    up, _ = refine_eps(eps, generators=gens(1, 2, 3), direction="ascent")
    # The differences are small (~0.1·|ε̂ − n|) but each carries ε̂'s rounding (ulp(5.4) = 4.8e-7):
    # 2.4e-7 at worst; bounded like the closed form, relative to max|ε̂|.
    assert_within(down - eps, -(up - eps), atol=2e-6 * eps.abs().max(), what="opposite")


def test_rule2_scale_is_per_element(eps):
    """The loss is a per-element mean, so it does not grow with resolution."""
    _, stats = refine_eps(eps, generators=gens(1, 2, 3))
    noise = torch.stack([draws(s, 1)[0] for s in (1, 2, 3)])
    # The same operations in the same order (square, then mean over the same dims): bit-identical.
    assert torch.equal(stats.loss, ((eps - noise) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("max_iters", [1, 6])
def test_rule3_result_independent_of_batch_size_and_contents(eps, max_iters):
    kwargs = dict(eta=0.05, threshold=0.05, max_iters=max_iters)
    batched, batched_stats = refine_eps(eps, generators=gens(1, 2, 3), **kwargs)
    for b, seed in enumerate((1, 2, 3)):
        alone, alone_stats = refine_eps(eps[b : b + 1], generators=gens(seed), **kwargs)
        assert torch.equal(batched[b], alone[0])
        assert batched_stats.iterations[b] == alone_stats.iterations[0]
    other = eps.clone()
    other[1:] = -5.0 * other[1:] + 3.0  # different neighbours
    with_others, _ = refine_eps(other, generators=gens(1, 7, 8), **kwargs)
    assert torch.equal(with_others[0], batched[0])


def test_rule4_convergence_matches_the_spec_per_item(eps):
    eta, threshold, max_iters = 0.05, 0.05, 12
    out, stats = refine_eps(eps, generators=gens(1, 2, 3), eta=eta, threshold=threshold, max_iters=max_iters)
    iterations = []
    for b, seed in enumerate((1, 2, 3)):
        expected, k, loss = reference(eps[b], seed, eta, threshold, max_iters, sign=-1.0)
        # float32 against the float64 spec: ≤ ½ ulp(|ε̂| ≤ 5.5) = 2.4e-7 per iteration, damped by
        # (1 − 2η) = 0.9, over ≤ 12 iterations: ≤ 3e-6 in theory, 4e-7 seen (the loss: 1.4e-7
        # relative). 1e-5 and 1e-5 relative; one iteration more or less moves ε̂ by up to 0.6.
        assert_within(out[b], expected, atol=1e-5, what="eps")
        assert stats.iterations[b].item() == k  # every |L_k − L_{k−1}|/L_{k−1} here is ≥ 30% away from the threshold
        assert_within(stats.loss[b], loss, rtol=1e-5, what="loss")
        iterations.append(k)
    assert 2 <= min(iterations) < max_iters  # the rule fired, and not only at the cap


def test_rule4_loose_threshold_stops_at_the_second_iteration(eps):
    _, stats = refine_eps(eps, generators=gens(1, 2, 3), threshold=1e9, max_iters=10)
    assert stats.iterations.tolist() == [2, 2, 2]


@pytest.mark.parametrize("max_iters", [1, 2, 5])
def test_max_iters_caps_the_loop(eps, max_iters):
    out, stats = refine_eps(eps, generators=gens(1, 2, 3), threshold=1e-12, max_iters=max_iters)
    assert stats.iterations.tolist() == [max_iters] * 3
    for b, seed in enumerate((1, 2, 3)):
        expected, k, _ = reference(eps[b], seed, 0.05, 1e-12, max_iters, sign=-1.0)
        assert k == max_iters
        assert_within(out[b], expected, atol=1e-5, what="eps")  # as in rule 4: 3.6e-7 seen


def test_rule5_seeded_reproducibility(eps):
    first, _ = refine_eps(eps, generators=gens(1, 2, 3), max_iters=4, threshold=1e-12)
    again, _ = refine_eps(eps, generators=gens(1, 2, 3), max_iters=4, threshold=1e-12)
    other, _ = refine_eps(eps, generators=gens(1, 2, 4), max_iters=4, threshold=1e-12)
    assert torch.equal(first, again)
    assert torch.equal(first[:2], other[:2]) and not torch.equal(first[2], other[2])


def test_rule7_no_autograd_and_input_untouched(eps):
    eps = eps.clone().requires_grad_(True)
    before = eps.detach().clone()
    out, stats = refine_eps(eps, generators=gens(1, 2, 3), max_iters=3)
    assert torch.equal(eps.detach(), before)
    assert not out.requires_grad and out.grad_fn is None and stats.loss.grad_fn is None


def test_rule4_descent_converges_within_tens_of_iterations_ascent_never():
    """What the README's Method section states, on an SD-latent-sized ε: the rule fires for
    descent after tens of iterations, never for ascent."""
    eps = torch.randn((3, 4, 64, 64), generator=torch.Generator().manual_seed(100)) * 1.7
    _, down = refine_eps(eps, generators=gens(1, 2, 3), max_iters=200, direction="descent")
    _, up = refine_eps(eps, generators=gens(1, 2, 3), max_iters=200, direction="ascent")
    assert all(10 <= k <= 100 for k in down.iterations.tolist())
    assert up.iterations.tolist() == [200] * 3


def test_rule8_statistics(eps):
    out, stats = refine_eps(eps, generators=gens(1, 2, 3), max_iters=3, threshold=1e-12)
    assert stats.iterations.dtype == torch.int64 and stats.iterations.shape == (3,)
    change = (out - eps).flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1)
    assert torch.equal(stats.rel_change, change)  # the same float32 operations in the same order
    # the reported loss is the one of the last iteration
    for b, seed in enumerate((1, 2, 3)):
        _, _, last = reference(eps[b], seed, 0.05, 1e-12, 3, sign=-1.0)
        assert_within(stats.loss[b], last, rtol=1e-5, what="loss")  # as in rule 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rule9_refines_in_float32_under_low_precision(eps, dtype):
    low = eps.to(dtype)
    out, _ = refine_eps(low, generators=gens(1, 2, 3), max_iters=3, threshold=1e-12)
    in_float32, _ = refine_eps(low.float(), generators=gens(1, 2, 3), max_iters=3, threshold=1e-12)
    assert out.dtype == dtype
    assert torch.equal(out, in_float32.to(dtype))


@pytest.mark.parametrize(
    "kwargs",
    [dict(eta=-0.1), dict(threshold=0.0), dict(threshold=-1.0), dict(max_iters=0), dict(direction="sideways")],
)
def test_invalid_settings_are_refused(eps, kwargs):
    with pytest.raises(ValueError):
        refine_eps(eps, generators=gens(1, 2, 3), **kwargs)


def test_one_generator_per_item_is_required(eps):
    with pytest.raises(ValueError, match="one generator per batch item"):
        refine_eps(eps, generators=gens(1, 2))


def test_refiner_object_binds_the_settings(eps):
    refiner = DiffIER(eta=0.1, threshold=1e-12, max_iters=2, direction="ascent")
    out, _ = refiner.correct(eps, gens(1, 2, 3))
    direct, _ = refine_eps(eps, generators=gens(1, 2, 3), eta=0.1, threshold=1e-12, max_iters=2, direction="ascent")
    assert torch.equal(out, direct)
    assert refiner.settings() == {"name": "diffier", "eta": 0.1, "threshold": 1e-12, "max_iters": 2, "direction": "ascent"}
