"""DiffIER's correction of a noise prediction, exactly as `docs/refine_eps.md` specifies it, and
`DiffIER`, the refiner that applies it at every step: its name, settings, A1111 pairs and summary.

The paper (DiffIER, Algorithm 1 and Eq. 12) refines the guided prediction ε̂ at every sampling
step by gradient steps on L = ‖ε̂ − n‖² with a fresh n ~ N(0, I) at each iteration. The rule
numbers in the comments below are the rules of docs/refine_eps.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Sequence

from diffier_cli.sampling import EpsRefiner

if TYPE_CHECKING:
    import torch

Direction = Literal["descent", "ascent"]
DIRECTIONS: tuple[Direction, ...] = ("descent", "ascent")


@dataclass(frozen=True)
class RefineStats:
    """What one call did to each batch item; tensors of shape (B,) left on the model's device."""

    iterations: torch.Tensor  # int64: iterations run (≤ max_iters)
    loss: torch.Tensor  # float32: per-element mean of ‖ε̂ − n‖² at the last iteration (rule 2)
    rel_change: torch.Tensor  # float32: ‖ε̂_refined − ε̂‖ / ‖ε̂‖, measured in float32 (rule 8)

    @staticmethod
    def summarize(per_step: dict) -> dict:
        """One item's trajectory in a few numbers (per_step: one list per field, one entry per step).
        A NaN statistic arrives as None (JSON has no NaN); means and maxima are over the finite ones,
        None when there are none."""
        loss = [value for value in per_step["loss"] if value is not None]
        change = [value for value in per_step["rel_change"] if value is not None]
        return {
            "steps": len(per_step["iterations"]),
            "iterations_total": sum(per_step["iterations"]),
            "iterations_max": max(per_step["iterations"]),
            "loss_mean": sum(loss) / len(loss) if loss else None,
            "rel_change_mean": sum(change) / len(change) if change else None,
            "rel_change_max": max(change) if change else None,
        }


def refine_eps(
    eps: torch.Tensor,
    *,
    generators: Sequence[torch.Generator],
    eta: float = 0.05,
    threshold: float = 1e-3,
    max_iters: int = 1,
    direction: Direction = "descent",
) -> tuple[torch.Tensor, RefineStats]:
    """Refine a batch of noise predictions, each item on its own (rule 3).

    `generators[b]` supplies every draw of item b and nothing else, so an item's result depends
    only on its own prediction and generator, never on the batch around it. Generators must live
    on `eps.device` (rule 5), which keeps host-device traffic out of the loop.
    """
    import torch

    with torch.no_grad():  # rule 7: the gradient is closed form
        return _refine_eps(eps, generators, eta, threshold, max_iters, direction)


def _refine_eps(eps, generators, eta, threshold, max_iters, direction):
    import torch

    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    batch = eps.shape[0]
    if len(generators) != batch:
        raise ValueError(f"need one generator per batch item: {len(generators)} for {batch}")

    # Rule 1 and 2: ∇_ε̂ L = 2(ε̂ − n) per element; descent ε̂ ← ε̂ − 2η(ε̂ − n), ascent ε̂ ← ε̂ + 2η(ε̂ − n).
    step = (-2.0 if direction == "descent" else 2.0) * eta
    original = eps.to(torch.float32)  # rule 9: refine in float32 whatever the model's dtype
    refined = original.clone()
    reduce_dims = tuple(range(1, eps.ndim))
    iterations = torch.zeros(batch, dtype=torch.int64, device=eps.device)
    loss = torch.zeros(batch, dtype=torch.float32, device=eps.device)
    previous_loss = torch.zeros_like(loss)
    active = list(range(batch))

    for k in range(1, max_iters + 1):
        # Rule 5: one fresh draw per active item and iteration, from that item's generator.
        noise = torch.stack(
            [
                torch.randn(eps.shape[1:], generator=generators[b], device=eps.device, dtype=torch.float32)
                for b in active
            ]
        )
        whole_batch = len(active) == batch
        current = refined if whole_batch else refined[active]
        residual = current - noise
        current_loss = residual.square().mean(dim=reduce_dims)
        current.add_(residual, alpha=step)
        if whole_batch:
            loss.copy_(current_loss)
            iterations += 1
        else:
            index = torch.tensor(active, device=eps.device)
            refined.index_copy_(0, index, current)
            loss.index_copy_(0, index, current_loss)
            iterations.index_add_(0, index, torch.ones_like(index))
        if k == max_iters:
            break  # rule 7: no host-device sync at all when max_iters == 1
        if k >= 2:
            # Rule 4: stop an item once |L_k − L_{k−1}| / L_{k−1} ≤ threshold (one sync per iteration).
            prior = previous_loss[active]
            relative = (current_loss - prior).abs() / prior.clamp_min(torch.finfo(torch.float32).tiny)
            still = (relative > threshold).tolist()
            active = [b for b, keep in zip(active, still) if keep]
            if not active:
                break
        previous_loss.copy_(loss)

    change = (refined - original).flatten(1).norm(dim=1)
    scale = original.flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    stats = RefineStats(iterations=iterations, loss=loss, rel_change=change / scale)
    return refined.to(eps.dtype), stats


@dataclass(frozen=True)
class DiffIER(EpsRefiner):
    """The refiner switch's `diffier` setting: `refine_eps` with the run's settings bound."""

    eta: float = 0.05
    threshold: float = 1e-3
    max_iters: int = 1
    direction: Direction = "descent"

    name: ClassVar[str] = "diffier"
    mode: ClassVar[str] = "refined"  # names outputs and records
    stats: ClassVar[type] = RefineStats
    reapplies_steps: ClassVar[bool] = False
    # What a sweep may vary (--sweep-eta, --sweep-iters): the sweep's name → this refiner's field.
    sweepable: ClassVar[dict[str, str]] = {"eta": "eta", "iters": "max_iters"}

    def correct(self, eps: torch.Tensor, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, RefineStats]:
        return refine_eps(
            eps,
            generators=generators,
            eta=self.eta,
            threshold=self.threshold,
            max_iters=self.max_iters,
            direction=self.direction,
        )

    def settings(self) -> dict:
        return {"name": self.name, **asdict(self)}

    @staticmethod
    def a1111_pairs(settings: dict, mode: str) -> dict[str, object]:
        """The refinement as A1111 `Key: value` pairs, the headline first (`DiffIER: refined`)."""
        return {"DiffIER": mode, "DiffIER eta": settings["eta"], "DiffIER threshold": settings["threshold"],
                "DiffIER max iters": settings["max_iters"], "DiffIER direction": settings["direction"]}
