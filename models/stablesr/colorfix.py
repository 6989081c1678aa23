"""The colour corrections StableSR applies to the decoded image (scripts/wavelet_color_fix.py).

Diffusion SR drifts in colour; the official scripts pull the result's colour back to the
upscaled LR input with either AdaIN statistics or the LR's wavelet low-frequency band.

The scripts call the tensor functions of that file (`adaptive_instance_normalization`,
`wavelet_reconstruction`) on [B, 3, H, W] tensors in [−1, 1], the decoded image against the
upscaled LR, both before any clamping (sr_val_ddpm_text_T_vqganfin_old.py l.325-328). The
same file also has PIL wrappers named `adain_color_fix`/`wavelet_color_fix` that work in
[0, 1] and clamp the result; no script uses them. The functions below are the tensor versions:
they neither clamp nor rescale, so pass [−1, 1] tensors to match the scripts. Wavelet is linear
and so range-agnostic; AdaIN is not quite, because of the 1e-5 added to the variance.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_VARIANCE_EPS = 1e-5  # calc_mean_std, eps
_WAVELET_LEVELS = 5  # wavelet_decomposition, levels


def _mean_std(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and √(unbiased var + 1e-5), shaped [B, C, 1, 1] (calc_mean_std)."""
    b, c = image.shape[:2]
    flat = image.reshape(b, c, -1)
    std = (flat.var(dim=2) + _VARIANCE_EPS).sqrt().reshape(b, c, 1, 1)
    return flat.mean(dim=2).reshape(b, c, 1, 1), std


def adain_color_fix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`target` renormalised to `source`'s per-channel mean and std (adaptive_instance_normalization)."""
    target_mean, target_std = _mean_std(target)
    source_mean, source_std = _mean_std(source)
    return (target - target_mean) / target_std * source_std + source_mean


def _wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise 3×3 [1,2,1]⊗[1,2,1]/16 blur with the given dilation, replicate-padded (wavelet_blur)."""
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    kernel = torch.outer(kernel_1d, kernel_1d)[None, None].repeat(image.shape[1], 1, 1, 1)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)


def _wavelet_bands(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) bands (wavelet_decomposition).

    `low` is the image after 5 cascaded blurs of dilation 1, 2, 4, 8, 16; `high` sums what
    each blur removed, accumulated level by level as the official loop does.
    """
    high = torch.zeros_like(image)
    for level in range(_WAVELET_LEVELS):
        low = _wavelet_blur(image, 2**level)
        high += image - low
        image = low
    return high, low


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`target`'s high-frequency bands on `source`'s low-frequency band (wavelet_reconstruction)."""
    target_high, _ = _wavelet_bands(target)
    _, source_low = _wavelet_bands(source)
    return target_high + source_low
