"""DiffIER inside any diffusers pipeline: a scheduler wrapper that refines the model output before
every `step`, with the same `refine_eps` and the same per-item refinement generators as `diffier t2i`.

    from diffier_cli import DiffIERScheduler
    pipe.scheduler = DiffIERScheduler(pipe.scheduler, seed=7)
    images = pipe(prompt, generator=[torch.Generator().manual_seed(7 + i) for i in range(4)],
                  num_images_per_prompt=4).images

Pipelines inspect `step` and `set_timesteps` for the arguments they take (eta, generator, timesteps,
sigmas) and read `config`, `order`, `init_noise_sigma`, `timesteps`; the wrapper shows them the
wrapped scheduler's, so it drops into text-to-image, img2img and the rest unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from diffier_cli.refine import DiffIER, Direction
from diffier_cli.refiners import refinement
from diffier_cli.runtime import REFINE_SEED_MIX
from diffier_cli.sampling import StepStats, per_item_stats
from models.schedulers import from_eps, to_eps


class DiffIERScheduler:
    """Wraps a diffusers scheduler: before each step the model output (ε, v or x₀, guidance
    included) goes to ε, through `refine_eps` (docs/refine_eps.md), and back.

    Image b of a call draws its refinement noise from a generator on the model's device seeded
    (seed + b) XOR REFINE_SEED_MIX: what `diffier t2i --seed seed` gives item b, so a pipeline call
    with generators seeded seed + b makes `diffier t2i`'s images. `steps` holds what each step did;
    `statistics()` gives it per image, as the CLI's records do. Every `set_timesteps` (each pipeline
    call) starts the generators and the statistics afresh.
    """

    def __init__(self, scheduler, *, seed: int, eta: float = DiffIER.eta, threshold: float = DiffIER.threshold,
                 max_iters: int = DiffIER.max_iters, direction: Direction = DiffIER.direction):
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction", "sample") or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(scheduler).__name__} ({prediction!r}) is not a DDPM-family scheduler with an ε, v or "
                             "x₀ model; DiffIER's ε conversion is defined for those only (flow matching is not supported)")
        self.__dict__.update(scheduler=scheduler, refiner=DiffIER(eta, threshold, max_iters, direction), seed=seed,
                             prediction=prediction, steps=[], _generators=None)
        # Pipelines read these signatures to decide what to pass (eta, generator, timesteps, sigmas):
        # functions that carry the wrapped methods' (functools.wraps sets __wrapped__, which inspect follows).
        for name, ours in (("step", self._step), ("set_timesteps", self._set_timesteps)):
            self.__dict__[name] = functools.wraps(getattr(scheduler, name))(lambda *args, _ours=ours, **kwargs: _ours(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.scheduler, name, value)  # pipelines set e.g. the begin index on the scheduler

    def _set_timesteps(self, *args, **kwargs):
        self.steps.clear()
        self.__dict__["_generators"] = None
        return self.scheduler.set_timesteps(*args, **kwargs)

    def _step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        if self._generators is None or len(self._generators) != model_output.shape[0]:
            self.__dict__["_generators"] = [torch.Generator(model_output.device).manual_seed((self.seed + b) ^ REFINE_SEED_MIX)
                                            for b in range(model_output.shape[0])]
        eps = to_eps(self.prediction, self.scheduler, model_output, sample, timestep)
        refined, stats = self.refiner.correct(eps, self._generators)
        self.steps.append(stats)
        output = from_eps(self.prediction, self.scheduler, refined, sample, timestep)
        return self.scheduler.step(output, timestep, sample, *args, **kwargs)

    def statistics(self) -> list[dict]:
        """Per image of the last call, the record's `refinement`: its `summary` and `per_step`."""
        steps: list[StepStats] = self.steps
        batch = len(self._generators or [])
        return [refinement(self.refiner, [per_step]) for per_step in per_item_stats(steps, batch)]
