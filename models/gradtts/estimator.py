"""Grad-TTS's score network and its SDE schedule (official Grad-TTS/model/diffusion.py).

Module names follow the official `decoder.estimator.*` state-dict keys, so the published
checkpoints load strictly; the arithmetic follows the same file, operation for operation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    """Conv 3×3 → GroupNorm → Mish on the masked input (diffusion.py `Block`)."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock(nn.Module):
    """Two Blocks with the time embedding added in between, plus a 1×1 residual (diffusion.py)."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask)
        h = h + self.mlp(time_emb)[:, :, None, None]
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class LinearAttention(nn.Module):
    """Linear attention with the softmax over keys only (diffusion.py `LinearAttention`)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(x).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Rezero(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.g = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) * self.g


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def attention(dim: int) -> Residual:
    return Residual(Rezero(LinearAttention(dim)))


class Resample(nn.Module):
    """Holds the conv under the name `conv`, as the official Downsample/Upsample do."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """[B] times → [B, dim] (diffusion.py `SinusoidalPosEmb`, with pe_scale as `scale`)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angle = scale * t[:, None] * freq[None, :]
    return torch.cat((angle.sin(), angle.cos()), dim=-1)


class ScoreEstimator(nn.Module):
    """U-Net on the mel 'image' [mu, x(, speaker)] that predicts the score ∇ log p_t(x_t | mu).

    `GradLogPEstimator2d` in the official code: channels dim·(1, 2, 4), two ResnetBlocks and a
    linear attention per level, the mask halved along time with [..., ::2] at each down step.
    """

    def __init__(self, dim: int = 64, dim_mults=(1, 2, 4), n_spks: int = 1, spk_emb_dim: int = 64,
                 n_feats: int = 80, pe_scale: float = 1000.0):
        super().__init__()
        self.dim = dim
        self.n_spks = n_spks
        self.pe_scale = pe_scale
        if n_spks > 1:
            self.spk_mlp = nn.Sequential(nn.Linear(spk_emb_dim, spk_emb_dim * 4), nn.Mish(), nn.Linear(spk_emb_dim * 4, n_feats))
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))

        dims = [2 + (1 if n_spks > 1 else 0), *(dim * m for m in dim_mults)]
        levels = list(zip(dims[:-1], dims[1:]))
        self.downs = nn.ModuleList(
            nn.ModuleList([
                ResnetBlock(d_in, d_out, dim),
                ResnetBlock(d_out, d_out, dim),
                attention(d_out),
                Resample(nn.Conv2d(d_out, d_out, 3, 2, 1)) if i < len(levels) - 1 else nn.Identity(),
            ])
            for i, (d_in, d_out) in enumerate(levels)
        )
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, dim)
        self.mid_attn = attention(mid)
        self.mid_block2 = ResnetBlock(mid, mid, dim)
        self.ups = nn.ModuleList(
            nn.ModuleList([
                ResnetBlock(d_out * 2, d_in, dim),
                ResnetBlock(d_in, d_in, dim),
                attention(d_in),
                Resample(nn.ConvTranspose2d(d_in, d_in, 4, 2, 1)),
            ])
            for d_in, d_out in reversed(levels[1:])
        )
        self.final_block = Block(dim, dim)
        self.final_conv = nn.Conv2d(dim, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spk: torch.Tensor | None = None) -> torch.Tensor:
        """x, mu: [B, 80, T]; mask: [B, 1, T]; t: [B]; spk: [B, spk_emb_dim] → score [B, 80, T]."""
        time_emb = self.mlp(sinusoidal_embedding(t, self.dim, self.pe_scale))
        channels = [mu, x]
        if self.n_spks > 1:
            channels.append(self.spk_mlp(spk)[:, :, None].expand(-1, -1, x.shape[-1]))
        h = torch.stack(channels, 1)
        mask = mask[:, None]  # [B, 1, 1, T]

        skips, masks = [], [mask]
        for resnet1, resnet2, attn, down in self.downs:
            level_mask = masks[-1]
            h = attn(resnet2(resnet1(h, level_mask, time_emb), level_mask, time_emb))
            skips.append(h)
            h = down(h * level_mask)
            masks.append(level_mask[..., ::2])
        masks.pop()
        h = self.mid_block1(h, masks[-1], time_emb)
        h = self.mid_attn(h)
        h = self.mid_block2(h, masks[-1], time_emb)
        for resnet1, resnet2, attn, up in self.ups:
            level_mask = masks.pop()
            h = torch.cat((h, skips.pop()), dim=1)
            h = attn(resnet2(resnet1(h, level_mask, time_emb), level_mask, time_emb))
            h = up(h * level_mask)
        h = self.final_block(h, mask)
        return (self.final_conv(h * mask) * mask).squeeze(1)


class Decoder(nn.Module):
    """The score estimator with the VP-type SDE of Grad-TTS (Popov et al. 2021, Eqs. 1-4).

    β_t = β0 + (β1 − β0) t;  Γ_t = ∫β = β0 t + ½(β1 − β0) t²;  σ_t = √(1 − e^{−Γ_t})
    (diffusion.py `get_noise` and `forward_diffusion`).
    """

    def __init__(self, n_feats: int = 80, dim: int = 64, n_spks: int = 1, spk_emb_dim: int = 64,
                 beta_min: float = 0.05, beta_max: float = 20.0, pe_scale: float = 1000.0):
        super().__init__()
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.estimator = ScoreEstimator(dim, n_spks=n_spks, spk_emb_dim=spk_emb_dim, n_feats=n_feats, pe_scale=pe_scale)

    def beta(self, t: float) -> float:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def sigma(self, t: float) -> float:
        gamma = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return math.sqrt(1.0 - math.exp(-gamma))
