"""The shared loop with a toy backbone, and the SD adapter's v ↔ ε conversions."""

from __future__ import annotations

import pytest
import torch

from diffier_cli.refine import DiffIER
from diffier_cli.sampling import denoise, per_item_stats, summarize


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
        eps, _ = refiner(expected, gens)  # predict → to_eps gives ε = x
        expected = expected - 0.1 * (2.0 * eps)
    assert torch.equal(trajectory.sample, expected)

    stats = per_item_stats(trajectory.steps, 2)
    assert stats[0]["iterations"] == [2, 2, 2]
    summary = summarize(stats[0])
    assert summary["steps"] == 3 and summary["iterations_total"] == 6 and summary["iterations_max"] == 2
    assert summary["loss_mean"] == pytest.approx(sum(stats[0]["loss"]) / 3)


@pytest.fixture(scope="module")
def sd_v(tiny_sd):
    from models.sd import StableDiffusion

    return StableDiffusion.load(str(tiny_sd["v_prediction"]), revision=None, device=torch.device("cpu"), dtype=torch.float32)


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
        torch.testing.assert_close(eps, a.sqrt() * v + (1 - a).sqrt() * x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sd_v.from_eps(eps, x, t, None), v, rtol=1e-4, atol=1e-4)


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
    torch.testing.assert_close(via_eps, direct, rtol=1e-5, atol=1e-5)


def test_nan_decode_is_an_error_with_a_hint(sd_v, monkeypatch):
    from diffier_cli.errors import DiffierError
    from models.sd import SDState

    state = SDState(torch.zeros(1), 1.0, False, 1, 32, 32, 0.0, [torch.Generator()])
    monkeypatch.setattr(sd_v.pipe.vae, "decode", lambda *a, **k: (torch.full((1, 3, 32, 32), float("nan")),))
    with pytest.raises(DiffierError, match="--dtype float32"):
        sd_v.decode(torch.zeros(1, 4, 16, 16), state)
