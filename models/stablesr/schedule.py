"""The noise schedule and the two samplers of the official StableSR inference scripts.

StableSR (IceClear/StableSR) samples with SD's "linear" schedule, respaced by
`space_timesteps`, either by ancestral DDPM (sr_val_ddpm_*.py) or by a DDIM variant
(sr_val_ddim_*.py) whose α grid differs from the timesteps it feeds the network. Both are
written out here from the official formulas instead of through diffusers' schedulers:

- diffusers' `DDPMScheduler` with custom timesteps computes the same respaced step (checked in
  tests/models/test_stablesr_schedule.py), but it draws its noise from a generator inside `step` and
  keeps the timesteps as mutable state. The steps below take the noise explicitly and keep no
  state, so a caller can run them per sample with its own generators.
- diffusers' `DDIMScheduler` cannot express the grid mismatch at all (docs/stablesr.md §1.3).

The schedule tables are float64 here. The official code builds the betas in float64 too
(util.py l.21-24), but stores every table as float32 (ddpm.py l.251) and respaces from those
float32 values, so its ᾱ carry float32 rounding (≤ 1.5e-7 relative) and its respaced small β
(1 − ᾱ_τ/ᾱ_τ' in float32) up to ~1e-4 relative error at N = 1000. One step on unit-scale
inputs differs from the official float32 chain by at most ~3e-5; that rounding is not copied.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.00085  # configs/stableSRNew/v2-finetune_text_T_512.yaml, linear_start
LINEAR_END = 0.0120  # ... linear_end
NOISING_TIMESTEP = 999  # the scripts noise the LR latent to t = 999 for x_T

PredictionType = Literal["epsilon", "v_prediction"]


def space_timesteps(num_timesteps: int, section_counts: list[int] | str) -> set[int]:
    """The original timesteps kept by a respaced sampler (ddpm.py l.98-151, the guided-diffusion rule).

    The original range is cut into len(section_counts) near-equal sections; section i keeps
    section_counts[i] steps at a fractional stride, each rounded with Python's round() of a
    float *accumulated* by repeated addition. That accumulation is why this differs from
    np.linspace(0, T-1, N).round() for some N (21, 23, 31, ...), so the loop is kept as is.
    A string is either comma-separated counts or "ddimN" (the integer stride giving N steps).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps from {num_timesteps} with an integer stride")
        section_counts = [int(count) for count in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept: set[int] = set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def linear_alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ᾱ_t of SD's "linear" schedule in float64.

    β = linspace(√start, √end)² (util.py l.22-24), ᾱ = cumprod(1 − β) (ddpm.py l.241-242).
    """
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")


class _RespacedSampler:
    """What both samplers share: the 1000-step table, the kept timesteps and q_sample."""

    def __init__(self, num_steps: int, prediction_type: PredictionType):
        _check_prediction_type(prediction_type)
        if not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"num_steps must be in 1..{NUM_TRAIN_TIMESTEPS}, not {num_steps}")
        self.prediction_type = prediction_type
        self.alphas_cumprod = linear_alphas_cumprod()
        ascending = sorted(space_timesteps(NUM_TRAIN_TIMESTEPS, [num_steps]))
        self._ascending = ascending
        self._position = {t: i for i, t in enumerate(ascending)}
        self.timesteps = torch.tensor(ascending[::-1], dtype=torch.long)  # original τ, descending

    def position(self, t: int | torch.Tensor) -> int:
        """Index i of an original timestep τ_i in the ascending respaced list (the official loop's i / index)."""
        key = int(t)
        if key not in self._position:
            raise ValueError(f"timestep {key} is not one of this sampler's timesteps")
        return self._position[key]

    def q_sample(self, z: torch.Tensor, noise: torch.Tensor, t: int = NOISING_TIMESTEP) -> torch.Tensor:
        """x_t = √ᾱ_t·z + √(1−ᾱ_t)·n on the original 1000-step table (ddpm.py l.397-405).

        The scripts that start from the noised LR latent use t = 999 (√ᾱ_999 ≈ 0.06826).
        """
        a = float(self.alphas_cumprod[t])
        return math.sqrt(a) * z + math.sqrt(1.0 - a) * noise


class RespacedDDPM(_RespacedSampler):
    """Ancestral DDPM on the respaced schedule (sr_val_ddpm_text_T_vqganfin_old.py l.252-271).

    Kept timesteps τ_0 < … < τ_{N−1}; respaced β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} with ᾱ_{τ_{−1}} = 1.
    The network is fed τ_i itself (ddpm.py l.2886-2891); x̂0 is not clipped (clip_denoised False, l.1619).
    """

    def __init__(self, num_steps: int, prediction_type: PredictionType = "epsilon"):
        super().__init__(num_steps, prediction_type)
        abar = self.alphas_cumprod[self._ascending]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        self._abar = abar
        # Posterior q(x_{i−1} | x_i, x̂0) of the respaced chain (ddpm.py l.264-274, v_posterior = 0).
        self._coef_x0 = betas * abar_prev.sqrt() / (1.0 - abar)
        self._coef_xt = (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar)
        variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self._sigma = (0.5 * variance.clamp(min=1e-20).log()).exp()  # l.270 clip, p_sample exp(½·log)

    def alpha_bar(self, t: int | torch.Tensor) -> float:
        """ᾱ at original timestep t: the value for converting between v and ε at that step."""
        return float(self.alphas_cumprod[int(t)])

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x: torch.Tensor,
             noise: torch.Tensor | None) -> torch.Tensor:
        """x_{i−1} from x_i at original timestep t = τ_i; `noise` is ignored (may be None) at the last step."""
        i = self.position(t)
        a = float(self._abar[i])
        if self.prediction_type == "epsilon":
            # predict_start_from_noise, ddpm.py l.337-341
            x0 = math.sqrt(1.0 / a) * x - math.sqrt(1.0 / a - 1.0) * model_output
        else:
            # predict_start_from_z_and_v, ddpm.py l.413-417
            x0 = math.sqrt(a) * x - math.sqrt(1.0 - a) * model_output
        mean = float(self._coef_x0[i]) * x0 + float(self._coef_xt[i]) * x
        if i == 0:  # no noise when t == 0 (p_sample l.2754)
            return mean
        if noise is None:
            raise ValueError("noise is required before the last step")
        return mean + float(self._sigma[i]) * noise


class QuirkyDDIM(_RespacedSampler):
    """The official StableSR DDIM (ddim.py `ddim_sampling_sr_t` l.366, `p_sample_ddim_sr_t` l.420).

    Two grids are kept apart on purpose: the network sees τ_i from space_timesteps(1000, [N])
    (sr_val_ddim_text_T_negativeprompt.py l.326), while the update takes ᾱ from the uniform
    grid k·⌊1000/N⌋ (make_ddim_timesteps, util.py l.46-49) at the same index i. For N=20 the
    first step feeds t=999 and uses ᾱ_950. If 1000 % N ≠ 0 that grid has more than N points and
    only the first N are reached. ᾱ_prev at i = 0 is ᾱ_0, not 1 (util.py l.66), and the grid
    starts at 0, so at the last step a_t = a_prev = ᾱ_0 and σ = 0: that step returns x up to
    rounding, one network call spent for nothing. Reproduced, not dropped.
    """

    def __init__(self, num_steps: int, eta: float = 0.0, prediction_type: PredictionType = "epsilon"):
        super().__init__(num_steps, prediction_type)
        stride = NUM_TRAIN_TIMESTEPS // num_steps
        self.alpha_grid = list(range(0, NUM_TRAIN_TIMESTEPS, stride))[:num_steps]
        a = self.alphas_cumprod[self.alpha_grid]
        a_prev = torch.cat([self.alphas_cumprod[:1], a[:-1]])
        self.eta = eta
        self._a = a
        self._a_prev = a_prev
        # make_ddim_sampling_parameters, util.py l.69
        self._sigma = eta * ((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)).sqrt()

    def alpha_bar(self, t: int | torch.Tensor) -> float:
        """The a_t the official step uses at original timestep t (from the uniform grid, not ᾱ_t)."""
        return float(self._a[self.position(t)])

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x: torch.Tensor,
             noise: torch.Tensor | None) -> torch.Tensor:
        """x_prev from x at original timestep t; `noise` may be None wherever σ = 0 (η = 0, last step)."""
        i = self.position(t)
        a, a_prev, sigma = float(self._a[i]), float(self._a_prev[i]), float(self._sigma[i])
        if self.prediction_type == "epsilon":
            eps = model_output
        else:
            eps = math.sqrt(a) * model_output + math.sqrt(1.0 - a) * x  # ddim.py l.446, with the grid's a_t
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)  # l.454
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev - sigma**2) * eps  # l.458-462
        if sigma == 0.0:
            return x_prev
        if noise is None:
            raise ValueError("noise is required when eta > 0")
        return x_prev + sigma * noise
