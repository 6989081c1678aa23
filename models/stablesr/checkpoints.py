"""How StableSR's official diffusion checkpoint is laid out: its tensors grouped by sub-model.

The files themselves are read safely by `models.lightning` (no unpickling of code)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from models.checkpoints import describe
from models.errors import ModelUnavailable

# Key prefixes of LatentDiffusionSRTextWT's state_dict (docs/stablesr.md §3.1). The groups keep them: the
# diffusers converters key on them (convert_ldm_unet_checkpoint reads only `model.diffusion_model.*`;
# convert_open_clip_checkpoint's ignore list holds prefixed names).
PREFIXES = {
    "unet": "model.diffusion_model.",
    "struct_encoder": "structcond_stage_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.model.",
}

# Buffers the sampling scripts recompute (ldm/models/diffusion/ddpm.py l.229-273, l.1614).
_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "scale_factor", "logvar",
})


def split_by_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a diffusion checkpoint's tensors by sub-model (keys unchanged, see `PREFIXES`).

    The schedule buffers are dropped. A file without UNet or struct-encoder tensors is not a
    StableSR diffusion checkpoint; empty `vae`/`text_encoder` groups are left for the caller to
    judge. Unknown top-level tensors are refused rather than guessed at.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    unknown = []
    for key, value in state_dict.items():
        name = next((name for name, prefix in PREFIXES.items() if key.startswith(prefix)), None)
        if name is not None:
            groups[name][key] = value
        elif key not in _SCHEDULE_BUFFERS:
            unknown.append(key)
    if not groups["unet"] or not groups["struct_encoder"]:
        raise ModelUnavailable(
            "not a StableSR diffusion checkpoint (it needs model.diffusion_model.* and structcond_stage_model.* "
            f"tensors); found {describe(dict(state_dict))}"
        )
    if unknown:
        raise ModelUnavailable(f"unexpected tensors in the StableSR checkpoint: {', '.join(unknown[:3])}")
    return groups


