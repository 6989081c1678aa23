"""StableSR's time-aware struct encoder (`EncoderUNetModelWT`), with the LDM parameter names.

The encoder is a half UNet over the scaled LR latent that, at every sampling step, turns the LR
latent and the timestep into one 256-channel feature map per UNet width; the SPADE layers of the
UNet read them (docs/stablesr.md §2.4). diffusers has no such module. It is written here with the names of
ldm/modules/diffusionmodules/openaimodel.py (IceClear/StableSR 398ee93, cited below as
openaimodel.py), so the checkpoint's `structcond_stage_model.*` tensors load with strict=True
once that prefix is stripped.

The LDM building blocks it needs (GroupNorm32, ResBlock, AttentionBlock with the legacy head
split, Downsample) live here as well; the UNet's SPADE layer reuses `GroupNorm32`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of shape [N, dim], in fp32 (ldm/modules/diffusionmodules/util.py l.151-171).

    Frequencies are exp(-ln(max_period)·i/half) for i < half; an odd `dim` gets a zero last column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5, affine) evaluated in fp32 and cast back (util.py l.199-216).

    LDM upcasts every ResBlock/attention/SPADE normalisation this way, so fp16 runs keep the
    statistics in fp32. The parameters are upcast too, so a half-precision module still works
    outside autocast.
    """

    def __init__(self, num_channels: int, num_groups: int = 32):
        super().__init__(num_groups, num_channels, eps=1e-5, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return normalized.to(x.dtype)


class ResBlock(nn.Module):
    """LDM `ResBlock` without up/down-sampling or scale-shift norm (openaimodel.py l.218-341, `_forward` l.321).

    out = skip(x) + conv(Dropout(SiLU(GN(conv(SiLU(GN(x))) + Linear(SiLU(emb)))))). The Dropout slot
    (`out_layers.2`, p=0 in the StableSR config) is an Identity so that the zero-initialised conv
    keeps its checkpoint name `out_layers.3`. The skip is a 1×1 conv only when the width changes.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Multi-head attention over a fused [N, heads·3·ch, T] projection, split heads first (openaimodel.py l.531-575).

    `QKVAttentionLegacy` reshapes to [N·heads, 3·ch, T] and only then splits q, k, v, so the
    fused channels are laid out head-major (q_h, k_h, v_h per head). Splitting q/k/v first
    (`QKVAttention`, l.578) reads the same weights differently. Scaled dot product with 1/√ch,
    equal to the reference's ch^-¼ on both q and k; the reference's softmax runs in fp32, which
    SDPA's fused kernels also do for half-precision inputs.
    """
    batch, width, length = qkv.shape
    head_channels = width // (3 * num_heads)
    q, k, v = qkv.reshape(batch * num_heads, 3 * head_channels, length).split(head_channels, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(batch, num_heads * head_channels, length)


class AttentionBlock(nn.Module):
    """LDM spatial self-attention with 1×1 Conv1d projections and a residual (openaimodel.py l.463-509)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(legacy_qkv_attention(self.qkv(self.norm(x)), self.num_heads))
        return (x + h).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 3×3 conv, padding 1 (openaimodel.py l.189-215 with conv_resample=True); named `op` as in LDM."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class TimestepSequential(nn.Sequential):
    """LDM `TimestepEmbedSequential` (openaimodel.py l.122): hands the time embedding to the ResBlocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class TimeAwareEncoder(nn.Module):
    """`EncoderUNetModelWT` (openaimodel.py l.1341-1541): LR latent + timestep → {str(width): [B, out, w, w]}.

    Defaults are the official `structcond_stage_config` (configs/stableSRNew/v2-finetune_text_T_512.yaml;
    the 768v config is the same). `attention_resolutions` are downsampling factors (1 = full width).
    """

    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 256,
        out_channels: int = 256,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (1, 2, 4),
        channel_mult: Sequence[int] = (1, 1, 2, 2),
        num_heads: int = 4,
    ):
        super().__init__()
        self.model_channels = model_channels
        emb_channels = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

        # Same construction order as the reference (l.1396-1450), so that block indices match its keys.
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        feature_channels = []  # channels of each feature handed to fea_tran, in output order
        channels, downsampling = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(channels, emb_channels, mult * model_channels)]
                channels = mult * model_channels
                if downsampling in attention_resolutions:
                    layers.append(AttentionBlock(channels, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(channels)))
                feature_channels.append(channels)
                downsampling *= 2
        self.middle_block = TimestepSequential(
            ResBlock(channels, emb_channels), AttentionBlock(channels, num_heads), ResBlock(channels, emb_channels)
        )
        feature_channels.append(channels)
        self.fea_tran = nn.ModuleList(ResBlock(c, emb_channels, out_channels) for c in feature_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Struct features keyed by width: one per level, taken just before its Downsample, plus the middle output.

        `timesteps` is 1-D (one per batch item) and is the *original* 1000-step index (docs/stablesr.md §1.2
        step 7). The reference records a level output when a block changes the width (l.1527-1532);
        only the Downsample blocks do.
        """
        weight_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(weight_dtype))
        level_outputs = []
        h = x
        for block in self.input_blocks:
            if isinstance(block[0], Downsample):
                level_outputs.append(h)
            h = block(h, emb)
        level_outputs.append(self.middle_block(h, emb))
        return {str(h.shape[-1]): tran(h, emb) for h, tran in zip(level_outputs, self.fea_tran, strict=True)}
