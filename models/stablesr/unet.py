"""StableSR's UNet as diffusers' SD-2.1 `UNet2DConditionModel` whose 22 resnets carry a SPADE layer.

Official model: `UNetModelDualcondV2` (ldm/modules/diffusionmodules/openaimodel.py l.958 in
IceClear/StableSR 398ee93). It is the SD-2.1 UNet except that every ResBlock is a `ResBlockDual`
that modulates its residual branch with the struct encoder's features (docs/stablesr.md §2.2-2.3). Here
each diffusers `ResnetBlock2D` is swapped for `SpadeResnetBlock2D`, which keeps the child names
(so `convert_ldm_unet_checkpoint` output, `*.spade.*` included, loads with strict=True) and reads
the features from a `StructFeatures` holder that is filled around each UNet call, because
diffusers' blocks pass only (hidden_states, temb) to their resnets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from models.stablesr.struct_encoder import GroupNorm32

# SD-2.1 (512-base) as diffusers' create_unet_diffusers_config_from_ldm derives it from the unet_config
# of configs/stableSRNew/v2-finetune_text_T_512.yaml (docs/stablesr.md §3.3). `attention_head_dim` is diffusers'
# misnomer for the number of heads (64 channels each). Neither StableSR config asks for upcast attention.
SD21_UNET_CONFIG: dict = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": False,
}
# The 768-v model (v2-finetune_text_T_768v.yaml) differs only in its default latent size.
SD21_768_UNET_CONFIG: dict = {**SD21_UNET_CONFIG, "sample_size": 96}

STRUCT_CHANNELS = 256  # `semb_channels` of the official unet_config: the struct features' channel count
SPADE_HIDDEN_CHANNELS = 128  # hard-coded `nhidden` in ldm/modules/spade.py l.80
LDM_UNET_PREFIX = "model.diffusion_model."


class SPADE(nn.Module):
    """Spatially-adaptive modulation of a residual branch by the struct feature (ldm/modules/spade.py l.68-111).

    out = GN32(h)·(1 + γ) + β, [γ, β] = conv3×3(ReLU(conv3×3(feature))). The config string
    "spadeinstance3x3" only picks the 3×3 kernel: the norm is `normalization()`, an affine
    GroupNorm32 (l.77). The feature is used at its own size: the reference's resize to h's size
    is commented out (l.103), so it must already have h's spatial shape.
    """

    def __init__(self, norm_channels: int, label_channels: int = STRUCT_CHANNELS):
        super().__init__()
        self.param_free_norm = GroupNorm32(norm_channels)
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_channels, SPADE_HIDDEN_CHANNELS, 3, padding=1), nn.ReLU()
        )
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN_CHANNELS, norm_channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN_CHANNELS, norm_channels, 3, padding=1)

    def forward(self, h: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        actv = self.mlp_shared(feature.to(h.dtype))
        return self.param_free_norm(h) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class StructFeatures:
    """The struct encoder's output for the UNet call in progress, shared by every SPADE resnet.

    A plain object, not a module, so it adds no state-dict keys. The reference's SPADE picks the
    feature whose width matches h (`segmap_dic[str(x.size(-1))]`, spade.py l.93).
    """

    def __init__(self) -> None:
        self._by_width: Mapping[str, torch.Tensor] | None = None

    @contextmanager
    def provided(self, features: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Make `features` ({str(width): [B, C, w, w]}) visible to the UNet for the duration of the block."""
        previous, self._by_width = self._by_width, features
        try:
            yield
        finally:
            self._by_width = previous

    def for_width(self, h: torch.Tensor) -> torch.Tensor:
        """The feature for a resnet whose output is `h`; a missing width means mismatched input sizes."""
        if self._by_width is None:
            raise RuntimeError(
                "StableSR UNet called without struct features: wrap the call in `with struct.provided(features):`"
            )
        width = str(h.shape[-1])
        if width not in self._by_width:
            known = sorted(self._by_width, key=int)
            raise KeyError(
                f"no struct feature of width {width} (the struct encoder gave widths {known}); "
                "the UNet latent and the struct encoder input must have the same size"
            )
        return self._by_width[width]


class SpadeResnetBlock2D(ResnetBlock2D):
    """diffusers `ResnetBlock2D` that applies SPADE to its residual branch, as `ResBlockDual` does.

    ResBlockDual._forward (openaimodel.py l.440-461): h = out_layers(in_layers(x) + emb), where
    out_layers ends with the zero-initialised conv (diffusers' norm2 → SiLU → dropout → conv2);
    then h = SPADE(h, F[width]) and out = skip(x) + h. Only the configuration SD-2.1 uses is
    supported (no up/down-sampling, additive time embedding, output_scale_factor 1).
    """

    def __init__(self, *, struct: StructFeatures, struct_channels: int = STRUCT_CHANNELS, **resnet_kwargs):
        super().__init__(**resnet_kwargs)
        if self.upsample is not None or self.downsample is not None or self.time_emb_proj is None:
            raise ValueError("SPADE resnets are only defined for plain resnets with a time embedding")
        if self.time_embedding_norm != "default" or self.output_scale_factor != 1.0 or self.skip_time_act:
            raise ValueError("SPADE resnets follow SD-2.1's resnets: additive time embedding, output_scale_factor 1")
        self.spade = SPADE(self.out_channels, struct_channels)
        self.struct = struct

    @classmethod
    def replacing(cls, resnet: ResnetBlock2D, struct: StructFeatures, struct_channels: int) -> SpadeResnetBlock2D:
        """A SPADE resnet with the hyper-parameters and weights of `resnet` (its SPADE freshly initialised)."""
        if not isinstance(resnet.nonlinearity, nn.SiLU) or resnet.conv2.out_channels != resnet.out_channels:
            raise ValueError("SPADE resnets follow SD-2.1's resnets: SiLU, conv2 keeping the width")
        block = cls(
            struct=struct,
            struct_channels=struct_channels,
            in_channels=resnet.in_channels,
            out_channels=resnet.out_channels,
            temb_channels=resnet.time_emb_proj.in_features,
            groups=resnet.norm1.num_groups,
            groups_out=resnet.norm2.num_groups,
            eps=resnet.norm1.eps,
            dropout=resnet.dropout.p,
            use_in_shortcut=resnet.use_in_shortcut,
        )
        missing, unexpected = block.load_state_dict(resnet.state_dict(), strict=False)
        assert not unexpected and all(key.startswith("spade.") for key in missing), (missing, unexpected)
        return block.to(device=resnet.conv1.weight.device, dtype=resnet.conv1.weight.dtype)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        h = self.spade(h, self.struct.for_width(h))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return shortcut + h


def add_spade(unet: UNet2DConditionModel, struct_channels: int = STRUCT_CHANNELS) -> StructFeatures:
    """Swap every resnet of `unet` (down, mid, up blocks; 22 for SD-2.1) for a SPADE resnet, in place.

    The backbone weights are kept, so this also turns a stock SD-2.1 UNet into StableSR's
    architecture. Returns the holder through which the struct features reach the resnets.
    """
    struct = StructFeatures()
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        for index, resnet in enumerate(block.resnets):
            block.resnets[index] = SpadeResnetBlock2D.replacing(resnet, struct, struct_channels)
    return struct


def build_stablesr_unet(
    config: Mapping = SD21_UNET_CONFIG, struct_channels: int = STRUCT_CHANNELS
) -> tuple[UNet2DConditionModel, StructFeatures]:
    """A randomly initialised StableSR UNet for `config` (SD-2.1 by default; tests pass tiny ones) and its holder.

    Call it as `with struct.provided(encoder(z_lr, t)): unet(x, t, context).sample`.
    """
    unet = UNet2DConditionModel(**config)
    return unet, add_spade(unet, struct_channels)


def convert_official_unet(state_dict: Mapping[str, torch.Tensor], config: Mapping = SD21_UNET_CONFIG) -> dict:
    """`model.diffusion_model.*` of an official StableSR checkpoint → the state dict of `build_stablesr_unet(config)`.

    diffusers' own LDM converter does the renaming; it moves every key under a ResBlock's prefix,
    so `input_blocks.1.0.spade.*` becomes `down_blocks.0.resnets.0.spade.*` (docs/stablesr.md §3.3). Other
    prefixes (struct encoder, VAE, text encoder, schedule buffers) are left out here. Only the
    config's `layers_per_block` (and the absence of class/addition embeddings) matter to it.
    """
    unet_keys = {key: value for key, value in state_dict.items() if key.startswith(LDM_UNET_PREFIX)}
    if not unet_keys:
        raise ValueError(f"no {LDM_UNET_PREFIX}* keys: pass the checkpoint's whole state_dict")
    return convert_ldm_unet_checkpoint(unet_keys, dict(config))
