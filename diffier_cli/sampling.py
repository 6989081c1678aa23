"""The one denoising loop every subcommand runs, whatever the backbone.

A backbone adapter supplies its prediction in its own parameterisation (ε, v or a score), the
conversions to and from ε, and its sampler step. The loop converts to ε only when a refiner is
on (spec rule 6), so a `--baseline` run executes exactly the backbone's own arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from diffier_cli.refine import RefineStats


class Backbone(Protocol):
    """What the loop needs from a model; `state` is the adapter's own per-batch data."""

    def timesteps(self, state: Any) -> Sequence[torch.Tensor]: ...

    def predict(self, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor:
        """The model's prediction at (x, t), guidance included, in the model's parameterisation."""

    def to_eps(self, prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor: ...

    def from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor: ...

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor:
        """x_t → x_{t−1} from a prediction in the model's parameterisation."""


class Refiner(Protocol):
    def __call__(
        self, eps: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, RefineStats]: ...

    def settings(self) -> dict: ...


@dataclass
class Trajectory:
    """The loop's result: the final sample and one RefineStats per step (empty for a baseline)."""

    sample: torch.Tensor
    steps: list[RefineStats]


def denoise(
    backbone: Backbone,
    state: Any,
    x: torch.Tensor,
    *,
    refiner: Refiner | None,
    generators: Sequence[torch.Generator],
    on_step: Callable[[], None] | None = None,
) -> Trajectory:
    """Run the sampler from x_T; `generators[b]` feeds the refiner's draws for batch item b."""
    steps: list[RefineStats] = []
    with torch.no_grad():
        for t in backbone.timesteps(state):
            prediction = backbone.predict(x, t, state)
            if refiner is not None:
                eps, stats = refiner(backbone.to_eps(prediction, x, t, state), generators)
                prediction = backbone.from_eps(eps, x, t, state)
                steps.append(stats)
            x = backbone.step(x, prediction, t, state)
            if on_step is not None:
                on_step()
    return Trajectory(sample=x, steps=steps)


def per_item_stats(steps: Sequence[RefineStats], batch: int) -> list[dict]:
    """Per-step statistics of each batch item as plain numbers: the loop's only host sync."""
    if not steps:
        return [{} for _ in range(batch)]
    iterations = torch.stack([s.iterations for s in steps], dim=1).cpu()
    loss = torch.stack([s.loss for s in steps], dim=1).cpu()
    change = torch.stack([s.rel_change for s in steps], dim=1).cpu()
    return [
        {
            "iterations": iterations[b].tolist(),
            "loss": loss[b].tolist(),
            "rel_change": change[b].tolist(),
        }
        for b in range(batch)
    ]


def summarize(per_step: dict) -> dict:
    """The few numbers a user reads first: what the refinement did over the whole trajectory."""
    if not per_step:
        return {}
    n = len(per_step["iterations"])
    return {
        "steps": n,
        "iterations_total": sum(per_step["iterations"]),
        "iterations_max": max(per_step["iterations"]),
        "loss_mean": sum(per_step["loss"]) / n,
        "rel_change_mean": sum(per_step["rel_change"]) / n,
        "rel_change_max": max(per_step["rel_change"]),
    }
