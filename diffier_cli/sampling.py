"""The one denoising loop every subcommand runs, whatever the backbone.

A backbone adapter supplies its prediction in its own parameterisation (ε, v or a score), the
conversions to and from ε, and its sampler step. The loop converts to ε only when a refiner is
on (docs/refine_eps.md rule 6), so a `--baseline` run executes exactly the backbone's own arithmetic.

Every refiner gets the whole step as a `Step`: x_t, t, the model's prediction there, the model's
ε̂ at another x with the same t, and the step Φ_t(x_t, ε) with the step's noise drawn once
(`Backbone.step_noise`), so that Φ can be applied again to another ε without drawing or advancing
anything (IEC). A refiner that only corrects ε̂(x_t, t) (DiffIER) derives from `EpsRefiner`, which
takes the one plain step from the corrected ε. The loop knows no refiner by name; the registry
(refiners.py) does.

torch is imported inside the functions that run, so the refiners' settings, which the command
line reads for its defaults and choices, load without it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

if TYPE_CHECKING:
    import torch


class Backbone(Protocol):
    """What the loop needs from a model; `state` is the adapter's own per-batch data."""

    def timesteps(self, state: Any) -> Sequence[torch.Tensor]: ...

    def predict(self, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor:
        """The model's prediction at (x, t), guidance included, in the model's parameterisation."""

    def to_eps(self, prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor: ...

    def from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor: ...

    def step_noise(self, x: torch.Tensor, t: torch.Tensor, state: Any) -> torch.Tensor | None:
        """The noise `step` would draw at (x, t), drawn now from the same generator in the same
        order; None for a deterministic step. Only refiners that re-apply the step call it."""

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor, state: Any,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t → x_{t−1} from a prediction in the model's parameterisation. With `noise` from
        `step_noise` it draws nothing and keeps no state, so it can be called again; without, a
        stochastic step draws its own noise (the plain loop)."""


@dataclass
class Step:
    """One sampling step x_t → x_{t−1} as a refiner sees it: position `index` of `count`."""

    backbone: Backbone
    state: Any
    x: torch.Tensor  # x_t
    t: Any
    prediction: torch.Tensor  # the model's, at (x_t, t)
    index: int
    count: int

    @cached_property
    def eps(self) -> torch.Tensor:
        """ε̂(x_t, t), converted from the model's parameterisation (docs/refine_eps.md rule 6)."""
        return self.backbone.to_eps(self.prediction, self.x, self.t, self.state)

    def take(self, eps: torch.Tensor) -> torch.Tensor:
        """The plain step from ε, drawing its noise as a baseline run does."""
        return self.backbone.step(self.x, self.backbone.from_eps(eps, self.x, self.t, self.state), self.t, self.state)

    def take_prediction(self) -> torch.Tensor:
        """The plain step from the model's own prediction: a baseline step, no conversion."""
        return self.backbone.step(self.x, self.prediction, self.t, self.state)

    def predict_eps(self, x: torch.Tensor) -> torch.Tensor:
        """ε̂(x, t): one more model evaluation, at another x but the current t (docs/iec.md §1, §3)."""
        return self.backbone.to_eps(self.backbone.predict(x, self.t, self.state), x, self.t, self.state)

    def frozen(self) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(the plain step's x_{t−1}, Φ_t(x_t, ·)), both with the step's noise drawn now, once.

        The first is the step from the model's own prediction, exactly a baseline step; Φ maps any
        ε to x_{t−1} with that same noise and no side effect. Φ is affine in ε for every sampler
        here (DDIM, respaced DDPM, the Grad-TTS Euler step), so relaxing x⁽ᵏ⁾ equals relaxing the ε
        it is made from (docs/iec.md §1, last line)."""
        noise = self.backbone.step_noise(self.x, self.t, self.state)

        def phi(eps: torch.Tensor) -> torch.Tensor:
            prediction = self.backbone.from_eps(eps, self.x, self.t, self.state)
            return self.backbone.step(self.x, prediction, self.t, self.state, noise=noise)

        return self.backbone.step(self.x, self.prediction, self.t, self.state, noise=noise), phi


class StepStats(Protocol):
    """What a refiner did on one step: a dataclass of per-item tensors of shape (B,), one field
    per statistic, which `per_item_stats` turns into one list per field and item."""

    @staticmethod
    def summarize(per_step: dict) -> dict:
        """One item's trajectory (one list per field, one entry per step) in a few numbers."""


@dataclass(frozen=True)
class Refined:
    """A refiner's answer for one step: x_{t−1}, the ε the step used, and what it did per item."""

    sample: torch.Tensor
    eps: torch.Tensor
    stats: StepStats


class Refiner(Protocol):
    """Makes x_{t−1} from the whole step, re-evaluating the model as it needs; `generators[b]`
    feeds every draw of batch item b. `name` selects it (--refiner), `mode` names its outputs."""

    name: ClassVar[str]
    mode: ClassVar[str]
    stats: ClassVar[type[StepStats]]
    reapplies_steps: ClassVar[bool]  # calls Step.frozen(): needs a backbone whose step can be applied again

    def refine(self, step: Step, generators: Sequence[torch.Generator]) -> Refined: ...

    def settings(self) -> dict:
        """What a record keeps of the refiner: its name and every setting that changes a sample."""


class EpsRefiner:
    """The base of refiners that correct ε̂(x_t, t) alone: to ε, correct, back, one plain step
    (docs/refine_eps.md rule 6), with no extra model call."""

    def correct(self, eps: torch.Tensor, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, StepStats]:
        """ε̂(x_t, t) corrected, and what the correction did per item; `generators[b]` feeds item b."""
        raise NotImplementedError

    def refine(self, step: Step, generators: Sequence[torch.Generator]) -> Refined:
        eps, stats = self.correct(step.eps, generators)
        return Refined(step.take(eps), eps, stats)


@dataclass
class Trajectory:
    """The loop's result: the final sample and the refiner's stats per step (empty for a baseline)."""

    sample: torch.Tensor
    steps: list[StepStats]


def denoise(
    backbone: Backbone,
    state: Any,
    x: torch.Tensor,
    *,
    refiner: Refiner | None,
    generators: Sequence[torch.Generator],
    on_step: Callable[[], None] | None = None,
    observe: Callable[[torch.Tensor, Any, torch.Tensor], None] | None = None,
) -> Trajectory:
    """Run the sampler from x_T; `generators[b]` feeds the refiner's draws for batch item b.

    `observe(x_t, t, ε)`, when given, sees once per step the ε the step finally used (refined,
    or for IEC the relaxed ε̄): the exact-gap benchmark measures it against the true ε*.
    """
    import torch

    steps: list[StepStats] = []
    timesteps = backbone.timesteps(state)
    with torch.no_grad():
        for index, t in enumerate(timesteps):
            prediction = backbone.predict(x, t, state)
            if refiner is None:
                if observe is not None:
                    observe(x, t, backbone.to_eps(prediction, x, t, state))
                x = backbone.step(x, prediction, t, state)
            else:
                refined = refiner.refine(Step(backbone, state, x, t, prediction, index, len(timesteps)), generators)
                if observe is not None:
                    observe(x, t, refined.eps)
                x = refined.sample
                steps.append(refined.stats)
            if on_step is not None:
                on_step()
    return Trajectory(sample=x, steps=steps)


def per_item_stats(steps: Sequence[StepStats], batch: int) -> list[dict]:
    """Per-step statistics of each batch item as plain numbers: the loop's only host sync.

    One list per field of the stats (DiffIER: iterations, loss, rel_change; IEC: corrections,
    evaluations, residual); a NaN (IEC's residual on a step it did not correct) becomes None.
    """
    import torch

    if not steps:
        return [{} for _ in range(batch)]
    names = [field.name for field in fields(steps[0])]
    columns = {name: torch.stack([getattr(s, name) for s in steps], dim=1).cpu() for name in names}
    return [
        {name: [None if value != value else value for value in columns[name][b].tolist()] for name in names}
        for b in range(batch)
    ]
