"""IEC, iterative error correction ("Test-Time Iterative Error Correction for Efficient Diffusion
Models", ICLR 2026), reimplemented from the formulas in docs/iec.md.

IEC solves the implicit step x_{t−1} = Φ_t(x_t, ε̂(x_{t−1}, t)) by damped fixed-point iteration,
paying K − 1 extra model evaluations on every step it corrects. "L l.N" and "D l.N" below cite
the official code (zysxmu/IEC @ 11308f0) as docs/iec.md reads it: L = mainldm/ldm/models/diffusion/
ddim.py (the LDM variant), D = mainddpm/ddpm/functions/deepcache_denoising.py (the DDPM variant).

Where this differs from the official code, on purpose:
- Convergence is tested per sample; the official test is one norm over the whole batch
  (L l.355-358), so there one item's residual decides when every other item stops. Here an
  item that has converged is frozen: the model is still called on the whole batch while other
  items iterate (slicing each backbone's conditioning per item would be per-modality code), but
  the frozen item's values are not updated, so its result is what it would be alone.
- A stochastic step's noise is drawn once per step and reused by every Φ (`Step.frozen`);
  the official code draws fresh noise per correction when η > 0 (L l.346, D l.257), which moves
  the fixed point between iterations. Every official script runs η = 0, where the two agree.
- The step's ε, reported to the loop (and measured by `diffier gap`), is the relaxed ε̄ with
  x_{t−1} = Φ_t(x_t, ε̄) (Φ is affine in ε); the official code builds pred_x0 from the last
  re-evaluation e_k instead (L l.352), which is not the ε the returned x_{t−1} was made from.
- Which steps are corrected is a user choice (--iec-steps, default all); the official step sets
  are CacheQuant's cache-refresh steps (docs/iec.md §2), which have no counterpart without a cache.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

from diffier_cli.sampling import Refined, Step

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Variant:
    """One of the two in-repo configurations (docs/iec.md §2)."""

    iters: int  # K: the plain step plus K − 1 corrections
    tol: float
    first_power: int  # the first correction's weight is γ^first_power, the k-th's γ^(k + first_power)


VARIANTS = {
    # L l.257-260 (call site): max_iter 3, tol 1e-6; weight γ^k from k = 0 (l.360), so a full first replacement.
    "ldm": Variant(iters=3, tol=1e-6, first_power=0),
    # D l.217-221, l.261-266: 2 iterations on IEC steps, tol 1e-3; its loop counter starts at 1, so weight γ¹.
    "ddpm": Variant(iters=2, tol=1e-3, first_power=1),
}
GAMMA = 0.5  # L l.260, D l.266: the same in both variants
STEP_SETS = ("all", "first:A", "last:A", "first-last:A", "every:k")
_STEP_SET = re.compile(r"(first|last|first-last|every):([0-9]{1,4})")  # A, k <= 9999: more than any step count
NORM_FLOOR = 1e-6  # ‖y − x̂‖ / (‖x̂‖ + 1e−6), L l.355


def parse_steps(spec: str) -> tuple[str, int]:
    """(kind, A) of a step-set value; a one-line ValueError, naming the forms, for anything else."""
    if spec == "all":
        return "all", 0
    match = _STEP_SET.fullmatch(spec)
    if match is None or int(match[2]) < 1:
        shown = spec if len(spec) <= 40 else f"{spec[:37]}..."
        raise ValueError(f"{shown!r}: use one of {', '.join(STEP_SETS)} with A, k in 1..9999")
    return match[1], int(match[2])


@dataclass(frozen=True)
class IECStats:
    """What IEC did on one step to each batch item; tensors of shape (B,) on the model's device."""

    corrections: torch.Tensor  # int64: relaxation updates applied (0 .. K − 1)
    evaluations: torch.Tensor  # int64: guided model evaluations this item's result needed here (1 .. K)
    residual: torch.Tensor  # float32: ‖y − x̂‖ / (‖x̂‖ + 1e−6) at the last check; NaN on a step not corrected

    @staticmethod
    def summarize(per_step: dict) -> dict:
        """One item's trajectory in a few numbers; `model_evaluations` is N + (K − 1)·|S| when no
        step stops early (every guided ε̂ counts once, whatever CFG costs inside it)."""
        residuals = [r for r in per_step["residual"] if r is not None]
        return {
            "steps": len(per_step["evaluations"]),
            "corrected_steps": sum(1 for n in per_step["evaluations"] if n > 1),
            "corrections_total": sum(per_step["corrections"]),
            "model_evaluations": sum(per_step["evaluations"]),
            "residual_mean": sum(residuals) / len(residuals) if residuals else None,
            "residual_max": max(residuals) if residuals else None,
        }


@dataclass(frozen=True)
class IEC:
    """The refiner switch's `iec` setting. Build it with `from_variant` to get a variant's defaults."""

    variant: str = "ldm"
    iters: int = VARIANTS["ldm"].iters
    gamma: float = GAMMA
    tol: float = VARIANTS["ldm"].tol
    steps: str = "all"

    name: ClassVar[str] = "iec"
    mode: ClassVar[str] = "iec"  # names outputs and records
    stats: ClassVar[type] = IECStats
    reapplies_steps: ClassVar[bool] = True
    sweepable: ClassVar[dict[str, str]] = {}  # its sweeps: ω only

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {self.variant!r}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        parse_steps(self.steps)

    @classmethod
    def from_variant(cls, variant: str = "ldm", *, iters: int | None = None, gamma: float | None = None,
                     tol: float | None = None, steps: str = "all") -> "IEC":
        """The variant's K and tol wherever the caller gives none."""
        defaults = VARIANTS[variant]
        return cls(variant, defaults.iters if iters is None else iters, GAMMA if gamma is None else gamma,
                   defaults.tol if tol is None else tol, steps)

    @property
    def weights(self) -> list[float]:
        """γ^(k + first_power) for the corrections k = 0 .. K − 2."""
        first = VARIANTS[self.variant].first_power
        return [self.gamma ** (k + first) for k in range(self.iters - 1)]

    def corrects(self, index: int, count: int) -> bool:
        """Whether step `index` (0 = the first, noisiest) of `count` is in the set S."""
        kind, a = parse_steps(self.steps)
        if kind == "all":
            return True
        if kind == "every":  # cur_i ∈ interval_seq = 0, k, 2k, … (D l.215, docs/iec.md §2)
            return index % a == 0
        first, last = index < a, index >= count - a
        return {"first": first, "last": last, "first-last": first or last}[kind]

    def refine(self, step: Step, generators: Sequence[torch.Generator]) -> Refined:
        """x_{t−1} by damped fixed-point iteration; `generators` are unused (IEC draws nothing).

        The re-evaluation ε̂(x⁽ᵏ⁾, t) keeps the current t although x⁽ᵏ⁾ is a candidate x_{t−1}
        (L l.327-334, D l.246-250); what that means per backbone is in its `predict` docstring.
        """
        import torch

        batch, device = step.x.shape[0], step.x.device
        corrections = torch.zeros(batch, dtype=torch.int64, device=device)
        evaluations = torch.ones(batch, dtype=torch.int64, device=device)  # ε̂(x_t, t), the plain step's
        residual = torch.full((batch,), math.nan, dtype=torch.float32, device=device)
        if self.iters == 1 or not self.corrects(step.index, step.count):
            return Refined(step.take_prediction(), step.eps, IECStats(corrections, evaluations, residual))

        x_hat, phi = step.frozen()  # x⁽⁰⁾ = Φ_t(x_t, ε̂(x_t, t), z): the plain step (L l.296-304)
        work = torch.promote_types(step.x.dtype, torch.float32)  # at least float32; float64 stays (diffier gap)
        eps_bar = step.eps.to(work)  # ε̄_0; x⁽ᵏ⁾ = Φ_t(x_t, ε̄_k) since Φ is affine in ε (docs/iec.md §1)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        broadcast = (batch,) + (1,) * (step.x.ndim - 1)
        for k, weight in enumerate(self.weights):
            e = step.predict_eps(x_hat)  # e_k = ε̂(x⁽ᵏ⁾, t) (L l.327-334)
            y = phi(e)  # y_k = Φ_t(x_t, e_k, z), always from the original x_t (L l.342-350)
            evaluations += active.long()  # counted per item: only while its own result needs it
            here, target = x_hat.to(work), y.to(work)
            relative = (target - here).flatten(1).norm(dim=1) / (here.flatten(1).norm(dim=1) + NORM_FLOOR)  # L l.355, per item
            residual = torch.where(active, relative.float(), residual)
            active = active & ~(relative < self.tol)  # converged: keep x⁽ᵏ⁾ (L l.356-358)
            # x⁽ᵏ⁺¹⁾ = x⁽ᵏ⁾ + w_k (y_k − x⁽ᵏ⁾), w_k = γ^(k + first_power) (L l.360; D l.266)
            relaxed = (here + weight * (target - here)).to(x_hat.dtype)
            x_hat = torch.where(active.view(broadcast), relaxed, x_hat)
            eps_bar = torch.where(active.view(broadcast), eps_bar + weight * (e.to(work) - eps_bar), eps_bar)
            corrections += active.long()
            if k < len(self.weights) - 1 and not bool(active.any()):  # one host sync per correction
                break
        return Refined(x_hat, eps_bar.to(step.eps.dtype), IECStats(corrections, evaluations, residual))

    def settings(self) -> dict:
        return {"name": self.name, "variant": self.variant, "iters": self.iters, "gamma": self.gamma,
                "tol": self.tol, "steps": self.steps, "weights": self.weights}

    @staticmethod
    def a1111_pairs(settings: dict, mode: str) -> dict[str, object]:
        """The refinement as A1111 `Key: value` pairs, the headline first (`Refiner: IEC`)."""
        return {"Refiner": "IEC", "IEC variant": settings["variant"], "IEC iters": settings["iters"],
                "IEC gamma": settings["gamma"], "IEC tol": settings["tol"], "IEC steps": settings["steps"]}
