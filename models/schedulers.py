"""The samplers `diffier t2i --scheduler` offers: diffusers' scheduler classes under AUTOMATIC1111's names.

Each is built with `from_config` from the model's own scheduler config (so v-prediction, betas,
offsets and timestep spacing carry over), exactly as users swap schedulers on a diffusers pipeline
(`S.from_config(pipe.scheduler.config, use_karras_sigmas=...)`). This module is data plus one
builder that imports diffusers when it runs, so the command line can list the names without torch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from models.errors import UnsupportedSetting


@dataclass(frozen=True)
class Sampler:
    """One --scheduler choice."""

    name: str  # the --scheduler value
    cls: str  # the diffusers scheduler class
    a1111: str  # AUTOMATIC1111's name for it (its infotext's `Sampler:`)
    config: dict = field(default_factory=dict)  # set over the model's scheduler config
    karras: bool = True  # the class takes use_karras_sigmas
    requires: tuple[str, ...] = ()  # optional packages the class imports
    # Whether `step` can be applied again to the same step with no side effect (IEC re-applies
    # steps): DDIM derives everything from t and takes its noise as an argument; every other class
    # keeps a step counter, a history of model outputs, or draws its own noise inside `step`.
    reapplicable: bool = False


SAMPLERS = {sampler.name: sampler for sampler in (
    Sampler("ddim", "DDIMScheduler", "DDIM", karras=False, reapplicable=True),
    Sampler("ddpm", "DDPMScheduler", "DDPM", karras=False),
    Sampler("plms", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}, karras=False),
    Sampler("lms", "LMSDiscreteScheduler", "LMS", requires=("scipy",)),
    Sampler("euler", "EulerDiscreteScheduler", "Euler"),
    Sampler("euler-a", "EulerAncestralDiscreteScheduler", "Euler a", karras=False),
    Sampler("heun", "HeunDiscreteScheduler", "Heun"),
    Sampler("dpm2", "KDPM2DiscreteScheduler", "DPM2"),
    Sampler("dpm2-a", "KDPM2AncestralDiscreteScheduler", "DPM2 a"),
    Sampler("dpmpp-2m", "DPMSolverMultistepScheduler", "DPM++ 2M", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    Sampler("dpmpp-2m-sde", "DPMSolverMultistepScheduler", "DPM++ 2M SDE", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    Sampler("dpmpp-sde", "DPMSolverSDEScheduler", "DPM++ SDE", requires=("torchsde",)),
    Sampler("unipc", "UniPCMultistepScheduler", "UniPC"),
    Sampler("deis", "DEISMultistepScheduler", "DEIS"),
)}
DEFAULT = "ddim"  # the paper's sampler


def build(name: str, model_config, karras: bool = False):
    """The scheduler `name` for a model whose scheduler config is `model_config`."""
    import diffusers

    sampler = SAMPLERS[name]
    if karras and not sampler.karras:
        usable = ", ".join(s.name for s in SAMPLERS.values() if s.karras)
        raise UnsupportedSetting(f"--karras: diffusers' {sampler.cls} ({name}) has no Karras sigmas; they exist for {usable}")
    extra = {**sampler.config, **({"use_karras_sigmas": True} if karras else {})}
    return getattr(diffusers, sampler.cls).from_config(model_config, **extra)


_DEVICE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # scheduler → {(name, device): (table, copy)}


def _table_on(scheduler, name: str, device):
    """A float32 copy of one of the scheduler's tables (ᾱ, σ) on `device`, made again only when the
    scheduler replaces the table (σ at every set_timesteps): copying from host memory on every call
    would wait for the device each time."""
    import torch

    table = getattr(scheduler, name)
    copies = _DEVICE_COPIES.setdefault(scheduler, {})
    if (name, device) not in copies or copies[name, device][0] is not table:
        copies[name, device] = (table, table.to(device=device, dtype=torch.float32))
    return copies[name, device][1]


def noise_level(scheduler, x, t):
    """(ᾱ of the current model evaluation, x as the UNet sees it: √ᾱ x₀ + √(1 − ᾱ) ε), in float32:
    what converting a v or x₀ prediction to ε needs.

    DDIM, DDPM and PLMS keep x in that form and index ᾱ by t. The k-diffusion samplers (Euler,
    Heun, LMS, DPM2, DPM++ SDE) keep x = x₀ + σε and scale it by c_in = 1/√(σ² + 1) for the
    UNet, so ᾱ = c_in²; the multistep solvers (DPM++ 2M, UniPC, DEIS) keep the first form but
    step on their own σ grid (Karras's, when asked), whose σ gives ᾱ = 1/(1 + σ²)."""
    import torch

    x = x.float()
    if scheduler.init_noise_sigma != 1:
        c_in = scheduler.scale_model_input(torch.ones((), device=x.device), t).float()
        return c_in.square(), c_in * x
    if not hasattr(scheduler, "sigmas"):
        # Indexed by a one-element tensor: a 0-d index goes through int(t), a host sync on a GPU.
        index = torch.as_tensor(t, device=x.device).long().reshape(1)
        return _table_on(scheduler, "alphas_cumprod", x.device)[index].squeeze(0), x
    index = scheduler.step_index if scheduler.step_index is not None else scheduler.index_for_timestep(t)
    sigma = _table_on(scheduler, "sigmas", x.device)[index]
    return 1 / (1 + sigma.square()), x


def to_eps(prediction_type: str, scheduler, output, x, t):
    """The ε a model output (ε, v or x₀, guidance included) stands for, at this evaluation's noise
    level (`noise_level`); ε passes through untouched."""
    if prediction_type == "epsilon":
        return output
    a, x_t = noise_level(scheduler, x, t)
    if prediction_type == "v_prediction":  # ε = √ᾱ v + √(1 − ᾱ) x_t (Salimans & Ho 2022, §4), in float32
        return a.sqrt() * output.float() + (1 - a).sqrt() * x_t
    return (x_t - a.sqrt() * output.float()) / (1 - a).sqrt()  # x₀ model: x_t = √ᾱ x₀ + √(1 − ᾱ) ε (DDPM Eq. 4)


def from_eps(prediction_type: str, scheduler, eps, x, t):
    """`to_eps` inverted: the model output, in x's dtype, that stands for ε."""
    if prediction_type == "epsilon":
        return eps
    a, x_t = noise_level(scheduler, x, t)
    if prediction_type == "v_prediction":  # v = (ε − √(1 − ᾱ) x_t) / √ᾱ, from x̂₀ = (x_t − √(1 − ᾱ) ε) / √ᾱ
        return ((eps.float() - (1 - a).sqrt() * x_t) / a.sqrt()).to(x.dtype)
    return ((x_t - (1 - a).sqrt() * eps.float()) / a.sqrt()).to(x.dtype)
