"""Class-conditional Gaussian mixtures, whose noise predictions are known exactly at every t.

Data: K classes, each a uniform mixture of M isotropic Gaussians N(μ_km, σ²I) in d dimensions.
Under the forward process x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (DDPM, Ho et al. 2020, Eq. 4) a component
stays Gaussian, N(√ᾱ_t μ, s_t² I) with s_t² = ᾱ_t σ² + 1 − ᾱ_t, so the score of the noised
mixture is the responsibility-weighted sum of the components' scores, and the ideal noise
prediction is ε*(x_t) = −√(1 − ᾱ_t) ∇ log p_t(x_t) (Song et al. 2021, the ε–score relation)
= √(1 − ᾱ_t) Σ_k w_k(x_t) (x_t − √ᾱ_t μ_k) / s_t².

A "model" is the same formula on deliberately wrong parameters (broader or sharper components,
shifted means) or the true ε* scaled, so its error is controlled and exactly known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The model errors `diffier gap --misfit` offers; torch is imported inside the methods, so that the
# command line can list these without loading it.
MISFITS = ("none", "over-dispersed", "over-sharp", "mean-shift", "eps-scale")


@dataclass(frozen=True)
class Mixture:
    """Component means [K, M, d] and their common standard deviation σ."""

    means: torch.Tensor
    sigma: float

    @classmethod
    def random(cls, classes: int, components: int, dim: int, sigma: float, spread: float, generator: torch.Generator) -> "Mixture":
        import torch

        means = spread * torch.randn(classes, components, dim, generator=generator, dtype=torch.float64)
        return cls(means, sigma)

    @property
    def classes(self) -> int:
        return self.means.shape[0]

    def _components(self, labels: torch.Tensor | None) -> torch.Tensor:
        """[N, C, d]: each sample's candidate components, its class's (labels) or all (None)."""
        if labels is None:
            return self.means.reshape(1, -1, self.means.shape[-1])
        return self.means[labels]

    def _noised(self, x: torch.Tensor, alpha_bar: float, labels: torch.Tensor | None):
        """(component log-densities at x under the noised mixture [N, C], means [N, C, d], s²)."""
        means = math.sqrt(alpha_bar) * self._components(labels)
        var = alpha_bar * self.sigma**2 + 1 - alpha_bar
        sq = ((x[:, None, :] - means) ** 2).sum(-1)
        d = x.shape[-1]
        log_density = -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)
        return log_density, means, var

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p_t(x | class) (or of the whole mixture with labels None), per sample."""
        import torch

        log_density, _, _ = self._noised(x, alpha_bar, labels)
        return torch.logsumexp(log_density, dim=1) - math.log(log_density.shape[1])

    def eps(self, x: torch.Tensor, alpha_bar: float, labels: torch.Tensor | None) -> torch.Tensor:
        """The exact ε*(x_t): √(1 − ᾱ) Σ_k w_k (x − √ᾱ μ_k) / s²."""
        import torch

        log_density, means, var = self._noised(x, alpha_bar, labels)
        weights = torch.softmax(log_density, dim=1)
        return math.sqrt(1 - alpha_bar) * (weights[..., None] * (x[:, None, :] - means)).sum(1) / var

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x₀ for each label: a uniformly chosen component of its class, plus σ·N(0, I)."""
        import torch

        m = self.means.shape[1]
        pick = torch.randint(m, labels.shape, generator=generator)
        noise = torch.randn(labels.shape[0], self.means.shape[-1], generator=generator, dtype=torch.float64)
        return self.means[labels, pick] + self.sigma * noise


@dataclass(frozen=True)
class MisfitModel:
    """A noise predictor with a known, controlled error against the true mixture."""

    truth: Mixture
    misfit: str
    size: float
    direction: torch.Tensor  # unit vector for mean-shift

    def __post_init__(self):
        if self.misfit not in MISFITS:
            raise ValueError(f"misfit must be one of {MISFITS}")

    @property
    def believed(self) -> Mixture:
        """The mixture the model's predictions are exact for (eps-scale: the truth, rescaled after)."""
        if self.misfit == "over-dispersed":
            return replace(self.truth, sigma=self.truth.sigma * (1 + self.size))
        if self.misfit == "over-sharp":
            return replace(self.truth, sigma=self.truth.sigma / (1 + self.size))
        if self.misfit == "mean-shift":
            return replace(self.truth, means=self.truth.means + self.size * self.direction)
        return self.truth

    def eps(self, x: torch.Tensor, alpha_bar: float, labels: torch.Tensor | None) -> torch.Tensor:
        eps = self.believed.eps(x, alpha_bar, labels)
        return eps * (1 + self.size) if self.misfit == "eps-scale" else eps
