"""Grad-TTS as a `Backbone` for the shared loop: one utterance at a time, mel out.

The official sampler (Grad-TTS/model/diffusion.py `reverse_diffusion`) integrates the reverse
SDE on t ∈ (1, 0] with n midpoint steps, t_i = 1 − (i + ½)/n. Its estimator predicts the score
s ≈ ∇ log p_t, so the loop's ε is ε = −σ_t s (docs/gradtts.md §2), and the baseline step
runs on s exactly as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.gradtts.encoder import regulate_lengths
from models.gradtts.model import GradTTS


@dataclass
class UtteranceState:
    mu_y: torch.Tensor  # [1, 80, T_pad] encoder means aligned to frames
    y_mask: torch.Tensor  # [1, 1, T_pad]
    frames: int  # y_len: frames kept after sampling
    speaker: torch.Tensor | None  # [1, 64] speaker embedding, multi-speaker checkpoints only
    steps: int
    temperature: float
    stochastic: bool
    noise_generator: torch.Generator  # prior noise and the stochastic steps' noise


class GradTTSBackbone:
    def __init__(self, model: GradTTS, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.dtype = dtype

    def prepare(self, ids: list[int], *, speaker: int | None, steps: int, temperature: float,
                length_scale: float, stochastic: bool, noise_generator: torch.Generator) -> UtteranceState:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        mu_x, logw, x_mask = self.model.encoder(x, torch.tensor([len(ids)], device=self.device))
        mu_y, y_mask, y_lengths, _ = regulate_lengths(mu_x, logw, x_mask, length_scale)
        spk = None
        if self.model.n_spks > 1:
            spk = self.model.spk_emb(torch.tensor([speaker or 0], device=self.device))
        return UtteranceState(mu_y, y_mask, int(y_lengths[0]), spk, steps, temperature, stochastic, noise_generator)

    def _randn(self, like: torch.Tensor, state: UtteranceState) -> torch.Tensor:
        noise = torch.randn(like.shape, generator=state.noise_generator, device=state.noise_generator.device)
        return noise.to(device=like.device, dtype=like.dtype)

    def init_noise(self, state: UtteranceState) -> torch.Tensor:
        # tts.py: z = mu_y + N(0, I) / temperature; reverse_diffusion starts from z · mask.
        return (state.mu_y + self._randn(state.mu_y, state) / state.temperature) * state.y_mask

    def timesteps(self, state: UtteranceState) -> list[float]:
        h = 1.0 / state.steps
        return [1.0 - (i + 0.5) * h for i in range(state.steps)]

    def predict(self, x: torch.Tensor, t: float, state: UtteranceState) -> torch.Tensor:
        """The score s(x, μ, t). An IEC re-evaluation passes the candidate x at t − 1/n with the
        current t: the score the estimator would give if that state still sat at time t; the loop
        turns it into ε with the same σ_t as the step's own score."""
        time = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return self.model.decoder.estimator(x, state.y_mask, state.mu_y, time, state.speaker)

    def to_eps(self, score: torch.Tensor, x: torch.Tensor, t: float, state: UtteranceState) -> torch.Tensor:
        return -self.model.decoder.sigma(t) * score.float()  # ε = −σ_t s

    def from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: float, state: UtteranceState) -> torch.Tensor:
        return (-eps.float() / self.model.decoder.sigma(t)).to(x.dtype)  # s = −ε / σ_t

    def step_noise(self, x: torch.Tensor, t: float, state: UtteranceState) -> torch.Tensor | None:
        """ξ of a stochastic step (--stoc), drawn as `step` draws it; None for the deterministic ODE step."""
        return self._randn(x, state) if state.stochastic else None

    def step(self, x: torch.Tensor, score: torch.Tensor, t: float, state: UtteranceState,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        # diffusion.py reverse_diffusion, with h = 1/n and β_t = β0 + (β1 − β0) t:
        #   deterministic: x ← x − ½ (μ − x − s) β_t h
        #   stochastic:    x ← x − [(½ (μ − x) − s) β_t h + √(β_t h) ξ]
        beta_h = self.model.decoder.beta(t) / state.steps
        if state.stochastic:
            drift = (0.5 * (state.mu_y - x) - score) * beta_h
            xi = self._randn(x, state) if noise is None else noise
            dx = drift + xi * beta_h**0.5
        else:
            dx = 0.5 * (state.mu_y - x - score) * beta_h
        return (x - dx) * state.y_mask

    def decode(self, x: torch.Tensor, state: UtteranceState) -> torch.Tensor:
        """The sampled mel [1, 80, y_len], padding frames dropped."""
        return x[:, :, : state.frames]
