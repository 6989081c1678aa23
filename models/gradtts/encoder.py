"""Grad-TTS text encoder, duration predictor and length regulation, for inference.

A port of grad_tts/model/text_encoder.py (itself from Glow-TTS) and of the length computation
in GradTTS.forward (tts.py:84-97). Module and parameter names are the reference's, so the
`encoder.*` tensors of an official checkpoint load into `TextEncoder` with strict=True.
Dropout is left out: the port only runs inference, where the reference's dropout is inactive.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.gradtts.text import N_VOCAB


def sequence_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """[B] lengths → [B, max_length] bool, True before each length (utils.py:6-10).

    The comparison happens in the lengths' dtype, which matters for `generate_path`, where the
    "lengths" are fractional cumulative durations.
    """
    return torch.arange(max_length, dtype=lengths.dtype, device=lengths.device) < lengths.unsqueeze(1)


def fix_len_compatibility(length: int, num_downsamplings: int = 2) -> int:
    """Round up to a multiple of 2**num_downsamplings so the decoder U-Net's halvings divide evenly (utils.py:13-17)."""
    factor = 2**num_downsamplings
    return -(-length // factor) * factor


def generate_path(durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard monotonic alignment [B, T_text, T_frames] from durations [B, T_text] (utils.py:26-39).

    path[b, i, j] = 1 iff cum[i-1] <= j < cum[i], with cum the running sum of the durations;
    durations may be fractional, so a token can also get no frame at all.
    """
    before_end = sequence_mask(torch.cumsum(durations, 1).flatten(), mask.shape[2])
    before_end = before_end.view(mask.shape).to(mask.dtype)  # j < cum[i]
    before_start = F.pad(before_end, (0, 0, 1, 0))[:, :-1]  # j < cum[i-1]
    return (before_end - before_start) * mask


def regulate_lengths(
    mu_x: torch.Tensor, logw: torch.Tensor, x_mask: torch.Tensor, length_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expand token means to frames by the predicted durations, as GradTTS.forward does (tts.py:84-97).

    Reference quirks kept on purpose: the durations are ceil(exp(logw)) *then* scaled by
    `length_scale`, so they are fractional; y_length is the truncated sum (at least 1); frames are
    padded up to a multiple of 4 for the U-Net. The decoder runs on the padded `mu_y` and `y_mask`;
    the output is cropped to y_lengths afterwards.

    Returns mu_y [B, n_feats, T_pad], y_mask [B, 1, T_pad], y_lengths [B] (long) and the
    alignment attn [B, 1, T_text, T_pad] (the reference's full, uncropped `attn`).
    """
    w_ceil = torch.ceil(torch.exp(logw) * x_mask) * length_scale
    y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
    t_pad = fix_len_compatibility(int(y_lengths.max()))
    y_mask = sequence_mask(y_lengths, t_pad).unsqueeze(1).to(x_mask.dtype)
    attn_mask = x_mask.unsqueeze(-1) * y_mask.unsqueeze(2)  # [B, 1, T_text, T_pad]
    attn = generate_path(w_ceil.squeeze(1), attn_mask.squeeze(1)).unsqueeze(1)
    # The reference's (attn^T @ mu_x^T)^T; each frame column of attn holds at most one 1, so
    # mu_x @ attn gives bit-identical values, already contiguous.
    mu_y = mu_x @ attn.squeeze(1)
    return mu_y, y_mask, y_lengths, attn


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of [B, C, T], eps 1e-4 (text_encoder.py:11-29).

    A module of its own only to keep the reference's `gamma`/`beta` parameter names.
    """

    def __init__(self, channels: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), self.gamma.shape, self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def _conv(c_in: int, c_out: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)


class ConvReluNorm(nn.Module):
    """Prenet: n × (masked conv → LayerNorm → ReLU), added back through a 1×1 projection
    (text_encoder.py:32-64). The projection is zero at init, so an untrained prenet is the identity."""

    def __init__(self, channels: int, kernel_size: int = 5, n_layers: int = 3):
        super().__init__()
        self.conv_layers = nn.ModuleList(_conv(channels, channels, kernel_size) for _ in range(n_layers))
        self.norm_layers = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, norm in zip(self.conv_layers, self.norm_layers):
            h = torch.relu(norm(conv(h * x_mask)))
        return (x + self.proj(h)) * x_mask


class DurationPredictor(nn.Module):
    """log-duration per token: 2 × (masked conv → ReLU → LayerNorm), then a 1×1 projection
    (text_encoder.py:67-93; note ReLU comes before the norm here, unlike in the prenet)."""

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = _conv(in_channels, filter_channels, kernel_size)
        self.norm_1 = LayerNorm(filter_channels)
        self.conv_2 = _conv(filter_channels, filter_channels, kernel_size)
        self.norm_2 = LayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm_1(torch.relu(self.conv_1(x * x_mask)))
        x = self.norm_2(torch.relu(self.conv_2(x * x_mask)))
        return self.proj(x * x_mask) * x_mask


class MultiHeadAttention(nn.Module):
    """Self-attention with Shaw-style relative positions clipped to ±window_size, one table of
    relative keys/values shared by all heads (text_encoder.py:96-210).

    The reference converts between relative and absolute positions with a pad-and-reshape trick;
    here the same band is read with `gather`: distances beyond the window get no relative term.
    """

    def __init__(self, channels: int, n_heads: int, window_size: int):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        # [1 shared head, relative distance -w..w, k_channels]
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * self.k_channels**-0.5)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * self.k_channels**-0.5)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        w = self.window_size

        def split_heads(conv: nn.Conv1d) -> torch.Tensor:  # [B, C, T] → [B, H, T, d]
            return conv(x).view(b, self.n_heads, self.k_channels, t).transpose(2, 3)

        q, k, v = split_heads(self.conv_q), split_heads(self.conv_k), split_heads(self.conv_v)
        pos = torch.arange(t, device=x.device)

        # Relative logits q_i · E_k[j - i], zero where |j - i| > w.
        dist = pos.unsqueeze(0) - pos.unsqueeze(1)  # [i, j] → j - i
        in_window = (dist.abs() <= w).to(q.dtype)
        rel_logits = q @ self.emb_rel_k.transpose(1, 2)  # [B, H, T, 2w+1]
        rel_logits = rel_logits.gather(-1, (dist.clamp(-w, w) + w).expand(b, self.n_heads, t, t)) * in_window

        # Both terms scaled by 1/√d and padding masked with -1e4 (not -inf), as in text_encoder.py:151-163.
        scale = math.sqrt(self.k_channels)
        scores = (q @ k.transpose(-2, -1)) / scale + rel_logits / scale
        p_attn = torch.softmax(scores.masked_fill(attn_mask == 0, -1e4), dim=-1)

        # Relative values: the weight p[i, i + r] of each in-window offset r times E_v[r].
        offset = torch.arange(-w, w + 1, device=x.device)
        cols = pos.unsqueeze(1) + offset  # [i, r] → i + r
        in_range = ((cols >= 0) & (cols < t)).to(p_attn.dtype)
        rel_weights = p_attn.gather(-1, cols.clamp(0, t - 1).expand(b, self.n_heads, t, 2 * w + 1)) * in_range
        out = p_attn @ v + rel_weights @ self.emb_rel_v  # [B, H, T, d]

        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class FFN(nn.Module):
    """Masked conv → ReLU → masked conv (text_encoder.py:218-239)."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = _conv(channels, filter_channels, kernel_size)
        self.conv_2 = _conv(filter_channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(x * x_mask))
        return self.conv_2(x * x_mask) * x_mask


class Encoder(nn.Module):
    """Post-norm transformer: x = LN(x + MHA(x)); x = LN(x + FFN(x)) per layer (text_encoder.py:242-278)."""

    def __init__(
        self, channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int, window_size: int
    ):
        super().__init__()
        self.attn_layers = nn.ModuleList(MultiHeadAttention(channels, n_heads, window_size) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FFN(channels, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = x * x_mask
            x = norm_1(x + attn(x, attn_mask))
            x = norm_2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """Token ids → frame-space means mu_x and log-durations logw (text_encoder.py:281-324).

    Defaults are the official hyper-parameters (grad_tts/model/params.py). There is no speaker
    input: GradTTS builds its TextEncoder without n_spks (tts.py:52-54), so even the multi-speaker
    LibriTTS checkpoint has a speaker-independent encoder.
    """

    def __init__(
        self,
        n_vocab: int = N_VOCAB,
        n_feats: int = 80,
        n_channels: int = 192,
        filter_channels: int = 768,
        filter_channels_dp: int = 256,
        n_heads: int = 2,
        n_layers: int = 6,
        kernel_size: int = 3,
        window_size: int = 4,
    ):
        super().__init__()
        self.n_channels = n_channels
        self.emb = nn.Embedding(n_vocab, n_channels)
        self.prenet = ConvReluNorm(n_channels, kernel_size=5, n_layers=3)
        self.encoder = Encoder(n_channels, filter_channels, n_heads, n_layers, kernel_size, window_size)
        self.proj_m = nn.Conv1d(n_channels, n_feats, 1)
        self.proj_w = DurationPredictor(n_channels, filter_channels_dp, kernel_size)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T] long, x_lengths [B] → mu_x [B, n_feats, T], logw [B, 1, T], x_mask [B, 1, T]."""
        h = self.emb(x).transpose(1, 2) * math.sqrt(self.n_channels)
        x_mask = sequence_mask(x_lengths, x.shape[1]).unsqueeze(1).to(h.dtype)
        h = self.encoder(self.prenet(h, x_mask), x_mask)
        mu_x = self.proj_m(h) * x_mask
        logw = self.proj_w(h.detach(), x_mask)  # detached as in the reference: durations train apart
        return mu_x, logw, x_mask
