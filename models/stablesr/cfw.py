"""StableSR's CFW ("controllable feature wrapping") autoencoder on top of diffusers' `AutoencoderKL`.

StableSR decodes with the SD VAE decoder plus two fusion layers that blend features of the LR
image's encoder pass into the decoder, weighted by `dec_w` (docs/stablesr.md §2.5). The VAE itself is the
stock kl-f8 one, so it stays a diffusers `AutoencoderKL`; only the fusion layers (with the key
names of the official checkpoint) and the encode/decode loops that reach inside it are written
here. Sources: IceClear/StableSR 398ee93, cited as model.py = ldm/modules/diffusionmodules/model.py,
autoencoder.py = ldm/models/autoencoder.py, rrdbnet_arch.py = basicsr/archs/rrdbnet_arch.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from models.errors import ModelUnavailable
from models.checkpoints import describe

# configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml `ddconfig` (ch 128, ch_mult [1,2,4,4], 2 res
# blocks, z 4, no attention outside the middle) as diffusers' create_vae_diffusers_config_from_ldm
# spells it; the scale factor is the diffusion config's 0.18215.
SD_KL_F8_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "latent_channels": 4,
    "layers_per_block": 2,
    "scaling_factor": 0.18215,
}

# The encoder levels whose last ResnetBlock output is kept for the decoder (model.py l.548-550).
# LDM level i is diffusers encoder.down_blocks[i] and decoder.up_blocks[3 - i].
FUSED_LEVELS = (1, 2)

_FUSION_KEY_PREFIX = "decoder.fusion_layer_"
_LDM_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_TRAINING_ONLY_PREFIX = "loss."  # LPIPS + discriminator of the GAN training (autoencoder.py l.490)


def _group_norm(channels: int) -> nn.GroupNorm:
    """LDM's `Normalize`: 32 groups, eps 1e-6, affine (model.py l.76)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class FusionResBlock(nn.Module):
    """The official `ResBlock` of the fusion layer (model.py l.797-820): a pre-norm, time-free
    residual block whose skip gets a 1x1 `conv_out` only when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_out is None else self.conv_out(x)
        return h + skip


class ResidualDenseBlock(nn.Module):
    """ESRGAN's dense block (rrdbnet_arch.py l.9-39): five 3x3 convs, each fed the concatenation of
    the input and all earlier outputs, LeakyReLU 0.2 between them, and a 0.2-scaled residual."""

    def __init__(self, channels: int, grow_channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, grow_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + grow_channels, grow_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * grow_channels, grow_channels, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * grow_channels, grow_channels, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * grow_channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), negative_slope=0.2))
        return self.conv5(torch.cat(features, dim=1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block (rrdbnet_arch.py l.42-64): three dense blocks in a row and
    a 0.2-scaled residual around them."""

    def __init__(self, channels: int, grow_channels: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, grow_channels)
        self.rdb2 = ResidualDenseBlock(channels, grow_channels)
        self.rdb3 = ResidualDenseBlock(channels, grow_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class FuseSftBlockRRDB(nn.Module):
    """The official `Fuse_sft_block_RRDB` (model.py l.822-835) for one decoder level.

    From concat[encoder feature, decoder feature] it computes a correction of the decoder feature
    and adds it with weight w: dec + w·ResBlock(RRDB^n(ResBlock(cat[enc, dec]))). `encode_enc_2`
    is basicsr's `make_layer`, an `nn.Sequential`, hence the keys `encode_enc_2.<i>.rdb<j>.conv<k>`.
    Decoder_Mix builds it with num_fuse_block = 2 (model.py l.681).
    """

    def __init__(self, channels: int, num_block: int = 2, grow_channels: int = 32):
        super().__init__()
        self.encode_enc_1 = FusionResBlock(2 * channels, channels)
        self.encode_enc_2 = nn.Sequential(*(RRDB(channels, grow_channels) for _ in range(num_block)))
        self.encode_enc_3 = FusionResBlock(channels, channels)

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:
        fused = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([enc_feat, dec_feat], dim=1))))
        return dec_feat + w * fused


class CFWAutoencoder(nn.Module):
    """`AutoencoderKLResi` (autoencoder.py l.469) as a diffusers VAE plus the two fusion layers.

    `fusion_layer_1` works at LDM level 1 (block_out_channels[1], 256 for SD) and `fusion_layer_2`
    at level 2 (512); the names are those of the checkpoint's `decoder.fusion_layer_{1,2}`.
    `vae_config` (diffusers AutoencoderKL kwargs) defaults to SD's kl-f8; tests pass a tiny one.
    It needs four levels, like the official code, whose encoder hard-codes levels 1 and 2, and
    fused widths divisible by 32 (the fusion layers' GroupNorm).
    """

    def __init__(self, vae_config: Mapping[str, Any] | None = None):
        super().__init__()
        self.vae = AutoencoderKL(**(SD_KL_F8_CONFIG if vae_config is None else vae_config))
        widths = self.vae.config.block_out_channels
        if len(widths) != 4:
            raise ValueError(f"CFW needs a 4-level VAE (got block_out_channels {list(widths)})")
        self.fusion_layer_1 = FuseSftBlockRRDB(widths[1])
        self.fusion_layer_2 = FuseSftBlockRRDB(widths[2])

    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image in [-1, 1] → (posterior sample, unscaled, enc_fea).

        enc_fea = the outputs of the last ResnetBlock of encoder levels 1 and 2, before their
        downsample (model.py Encoder.forward l.534-550, return_fea=True). The latent is a
        *sample* of the posterior, as the official `vq_model.encode` + `get_first_stage_encoding`
        do; multiply it by `vae.config.scaling_factor` for the diffusion model. The noise is drawn
        on the CPU in fp32 and then moved, as distributions.py l.36 does, so `generator` must be a
        CPU generator and a seed gives the same noise on every device.
        """
        encoder = self.vae.encoder
        h = encoder.conv_in(x)
        enc_fea = []
        for level, block in enumerate(encoder.down_blocks):
            for resnet in block.resnets:
                h = resnet(h, temb=None)
            if level in FUSED_LEVELS:
                enc_fea.append(h)
            for downsampler in block.downsamplers or ():
                h = downsampler(h)
        h = encoder.mid_block(h)
        h = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
        posterior = DiagonalGaussianDistribution(self.vae.quant_conv(h))
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(device=posterior.mean.device, dtype=posterior.mean.dtype)  # keep the model's dtype
        return posterior.mean + posterior.std * noise, enc_fea

    def decode(self, z: torch.Tensor, enc_fea: list[torch.Tensor], dec_w: float) -> torch.Tensor:
        """Unscaled latent → image in about [-1, 1], as `Decoder_Mix.forward` (model.py l.758-795).

        After the ResnetBlocks of LDM levels 2 and 1 and before their upsample, the official
        computes h = fusion_layer_i(enc_fea[i-1], h, w), i.e. h + w·fused (l.780-782). With
        dec_w = 0 that adds exactly 0·fused, so the fusion layers are skipped and the result
        is bit-identical to the stock `vae.decode` (no slicing/tiling here).
        """
        decoder = self.vae.decoder
        fusion_by_up_block = {
            len(decoder.up_blocks) - 1 - level: (getattr(self, f"fusion_layer_{level}"), enc_fea[i])
            for i, level in enumerate(FUSED_LEVELS)
        }
        h = decoder.conv_in(self.vae.post_quant_conv(z))
        h = decoder.mid_block(h, None)
        for index, block in enumerate(decoder.up_blocks):
            for resnet in block.resnets:
                h = resnet(h, temb=None)
            if index in fusion_by_up_block and dec_w != 0:
                fusion_layer, enc_feat = fusion_by_up_block[index]
                h = fusion_layer(enc_feat, h, dec_w)
            for upsampler in block.upsamplers or ():
                h = upsampler(h)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))


def load_cfw(state_dict: Mapping[str, torch.Tensor], vae_config: Mapping[str, Any] | None = None) -> CFWAutoencoder:
    """Build a `CFWAutoencoder` from the `state_dict` of vqgan_cfw_00011.ckpt, strictly.

    The checkpoint is un-prefixed (docs/stablesr.md §3.2): `encoder.*`, `decoder.*`, `quant_conv.*`,
    `post_quant_conv.*` go through diffusers' `convert_ldm_vae_checkpoint`, which would silently
    drop anything it does not know, so the key counts are checked; `decoder.fusion_layer_{1,2}.*`
    load by name; the training-only `loss.*` is dropped. Anything else is a `ModelUnavailable`.
    """
    model = CFWAutoencoder(vae_config)
    fusion = {
        key.removeprefix("decoder."): value for key, value in state_dict.items() if key.startswith(_FUSION_KEY_PREFIX)
    }
    if not fusion:
        raise ModelUnavailable(
            f"not a StableSR CFW checkpoint (no {_FUSION_KEY_PREFIX}* tensors); found {describe(dict(state_dict))}"
        )
    ldm_vae = {
        key: value
        for key, value in state_dict.items()
        if not key.startswith((_FUSION_KEY_PREFIX, _TRAINING_ONLY_PREFIX))
    }
    strays = [key for key in ldm_vae if not key.startswith(_LDM_VAE_PREFIXES)]
    if strays:
        raise ModelUnavailable(f"unexpected tensors in the CFW checkpoint: {', '.join(strays[:3])}")
    converted = convert_ldm_vae_checkpoint(ldm_vae, model.vae.config)
    if len(converted) != len(ldm_vae):
        raise ModelUnavailable(
            f"{len(ldm_vae) - len(converted)} VAE tensor(s) of the CFW checkpoint have no diffusers counterpart"
        )
    try:
        result = model.load_state_dict({**{f"vae.{k}": v for k, v in converted.items()}, **fusion}, strict=False)
    except RuntimeError as exc:  # shape mismatches
        mismatch = str(exc).splitlines()[-1].strip()
        raise ModelUnavailable(f"the CFW checkpoint does not fit the VAE config: {mismatch}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelUnavailable(
            "the CFW checkpoint does not fit: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model.eval()
