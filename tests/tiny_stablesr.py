"""Tiny StableSR checkpoints with random weights, saved in the OFFICIAL formats.

The diffusion checkpoint is a Lightning-style `{'state_dict': ...}` with the official prefixes
(model.diffusion_model / structcond_stage_model / cond_stage_model.model), the CFW checkpoint the
un-prefixed AutoencoderKLResi state dict; `<file>.config.json` beside each gives the tiny shapes,
so `diffier sr --ckpt ... --vae-ckpt ...` loads them through the same code as the real files.

The tiny configurations and the official key layouts they are saved in (enumerated from the
official constructors) live here too, for the port's own tests (tests/models/test_stablesr_*.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.stablesr.cfw import FuseSftBlockRRDB
from models.stablesr.struct_encoder import TimeAwareEncoder
from models.stablesr.text_embedding import PREFIX as TEXT_PREFIX

# --- the tiny CFW VAE: SD's kl-f8 scaled down -------------------------------------------------

TINY_WIDTHS = [32, 32, 64, 64]
TINY_LATENT = 4
TINY_BLOCKS = 1
TINY_VAE = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": TINY_WIDTHS,
    "latent_channels": TINY_LATENT,
    "layers_per_block": TINY_BLOCKS,
    "norm_num_groups": 32,
}

# --- the tiny SPADE UNet and time-aware struct encoder ----------------------------------------

PREFIX = "model.diffusion_model."
TINY_STRUCT_CHANNELS = 32
# A 2-level SD-like UNet: attention at full width only, 2 resnets per level, as SD's layout scaled down.
TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=2,
    attention_head_dim=(2, 4),
    cross_attention_dim=32,
    use_linear_projection=True,
)
# The same UNet in LDM terms: (model_channels, channel_mult, num_res_blocks, attention ds, context_dim).
TINY_UNET_LDM = (32, (1, 2), 2, {1}, 32)
# Struct encoder: 3 levels (widths W, W/2, W/4 + middle), attention except at the last level as in the official config.
# 64 base channels, not 32: with one channel per GroupNorm group the norm would cancel the added time embedding.
TINY_ENCODER = dict(
    model_channels=64,
    out_channels=TINY_STRUCT_CHANNELS,
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    channel_mult=(1, 1, 2),
    num_heads=2,
)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (the official init zeroes several convs, which would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


TEXT_WIDTH = TINY_UNET["cross_attention_dim"]


# --- the official checkpoint layouts (IceClear/StableSR 398ee93) ------------------------------


def official_unet_shapes(
    model_channels, channel_mult, num_res_blocks, attention_ds, context_dim, struct_channels
) -> dict[str, tuple]:
    """Key → shape of an official `UNetModelDualcondV2` (openaimodel.py l.958-1296), without the ckpt prefix."""
    shapes: dict[str, tuple] = {}
    temb = 4 * model_channels

    def conv(prefix, cin, cout, k):
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (cout, cin, k, k) if k else (cout, cin), (cout,)

    def norm(prefix, c):
        shapes[f"{prefix}.weight"] = shapes[f"{prefix}.bias"] = (c,)

    def res_block_dual(prefix, cin, cout):  # l.343-438
        norm(f"{prefix}.in_layers.0", cin)
        conv(f"{prefix}.in_layers.2", cin, cout, 3)
        conv(f"{prefix}.emb_layers.1", temb, cout, 0)
        norm(f"{prefix}.out_layers.0", cout)
        conv(f"{prefix}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.skip_connection", cin, cout, 1)
        norm(f"{prefix}.spade.param_free_norm", cout)  # spade.py l.77-87
        conv(f"{prefix}.spade.mlp_shared.0", struct_channels, 128, 3)
        conv(f"{prefix}.spade.mlp_gamma", 128, cout, 3)
        conv(f"{prefix}.spade.mlp_beta", 128, cout, 3)

    def spatial_transformer_v2(prefix, c):  # ldm/modules/attention.py l.350, use_linear, depth 1, GEGLU ff
        block = f"{prefix}.transformer_blocks.0"
        norm(f"{prefix}.norm", c)
        conv(f"{prefix}.proj_in", c, c, 0)
        for attn, kv_dim in (("attn1", c), ("attn2", context_dim)):
            shapes[f"{block}.{attn}.to_q.weight"] = (c, c)
            shapes[f"{block}.{attn}.to_k.weight"] = shapes[f"{block}.{attn}.to_v.weight"] = (c, kv_dim)
            conv(f"{block}.{attn}.to_out.0", c, c, 0)
        conv(f"{block}.ff.net.0.proj", c, 8 * c, 0)
        conv(f"{block}.ff.net.2", 4 * c, c, 0)
        for name in ("norm1", "norm2", "norm3"):
            norm(f"{block}.{name}", c)
        conv(f"{prefix}.proj_out", c, c, 0)

    conv("time_embed.0", model_channels, temb, 0)
    conv("time_embed.2", temb, temb, 0)
    conv("input_blocks.0.0", 4, model_channels, 3)
    skip_channels, ch, ds, index = [model_channels], model_channels, 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            res_block_dual(f"input_blocks.{index}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if ds in attention_ds:
                spatial_transformer_v2(f"input_blocks.{index}.1", ch)
            skip_channels.append(ch)
            index += 1
        if level != len(channel_mult) - 1:
            conv(f"input_blocks.{index}.0.op", ch, ch, 3)
            skip_channels.append(ch)
            index, ds = index + 1, ds * 2
    res_block_dual("middle_block.0", ch, ch)
    spatial_transformer_v2("middle_block.1", ch)
    res_block_dual("middle_block.2", ch, ch)
    index = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            res_block_dual(f"output_blocks.{index}.0", ch + skip_channels.pop(), mult * model_channels)
            ch, layer = mult * model_channels, 1
            if ds in attention_ds:
                spatial_transformer_v2(f"output_blocks.{index}.1", ch)
                layer = 2
            if level and i == num_res_blocks:
                conv(f"output_blocks.{index}.{layer}.conv", ch, ch, 3)
                ds //= 2
            index += 1
    norm("out.0", model_channels)
    conv("out.2", model_channels, 4, 3)
    return shapes


def ldm_vae_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the LDM AutoencoderKL (model.py Encoder/Decoder) for TINY_VAE, by name."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, c_in, c_out, k=3):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        shapes[f"{name}.bias"] = (c_out,)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resnet(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, k=1)

    def middle(name, c):
        resnet(f"{name}.mid.block_1", c, c)
        norm(f"{name}.mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.mid.attn_1.{proj}", c, c, k=1)
        resnet(f"{name}.mid.block_2", c, c)

    levels = len(TINY_WIDTHS)
    conv("encoder.conv_in", 3, TINY_WIDTHS[0])
    c_in = TINY_WIDTHS[0]
    for level, width in enumerate(TINY_WIDTHS):
        for block in range(TINY_BLOCKS):
            resnet(f"encoder.down.{level}.block.{block}", c_in, width)
            c_in = width
        if level != levels - 1:
            conv(f"encoder.down.{level}.downsample.conv", width, width)
    middle("encoder", c_in)
    norm("encoder.norm_out", c_in)
    conv("encoder.conv_out", c_in, 2 * TINY_LATENT)

    conv("decoder.conv_in", TINY_LATENT, TINY_WIDTHS[-1])
    middle("decoder", TINY_WIDTHS[-1])
    c_in = TINY_WIDTHS[-1]
    for level in reversed(range(levels)):
        for block in range(TINY_BLOCKS + 1):
            resnet(f"decoder.up.{level}.block.{block}", c_in, TINY_WIDTHS[level])
            c_in = TINY_WIDTHS[level]
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", c_in, c_in)
    norm("decoder.norm_out", c_in)
    conv("decoder.conv_out", c_in, 3)
    conv("quant_conv", 2 * TINY_LATENT, 2 * TINY_LATENT, k=1)
    conv("post_quant_conv", TINY_LATENT, TINY_LATENT, k=1)
    return shapes


def official_cfw_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    state = {key: torch.randn(shape, generator=generator) for key, shape in ldm_vae_shapes().items()}
    for level in (1, 2):
        for key, value in FuseSftBlockRRDB(TINY_WIDTHS[level]).state_dict().items():
            state[f"decoder.fusion_layer_{level}.{key}"] = torch.randn(value.shape, generator=generator)
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=generator)
    return state


class HarmlessCallback:
    """A custom class pickled into the checkpoint, as Lightning pickles its callbacks."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score = torch.tensor(0.25)




def text_tower_state(width: int = TEXT_WIDTH, blocks: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (`cond_stage_model.model.*`), the real vocabulary and 77 positions."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    state = {
        TEXT_PREFIX + "token_embedding.weight": r(49408, width),
        TEXT_PREFIX + "positional_embedding": r(77, width),
        TEXT_PREFIX + "ln_final.weight": 1 + r(width),
        TEXT_PREFIX + "ln_final.bias": r(width),
        TEXT_PREFIX + "text_projection": r(width, width),
        TEXT_PREFIX + "logit_scale": torch.tensor(4.6),
    }
    for i in range(blocks):
        p = f"{TEXT_PREFIX}transformer.resblocks.{i}."
        state.update({
            p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
            p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
            p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
            p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width),
            p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width),
            p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width),
        })
    return state


def _moderate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unit-variance noise weights overflow a 4-level VAE; scale them like an initialisation would."""
    moderated = {}
    for key, value in state.items():
        if value.dim() > 1:
            moderated[key] = value / value[0].numel() ** 0.5
        elif "norm" in key and key.endswith("weight"):
            moderated[key] = 1 + 0.1 * value
        else:
            moderated[key] = 0.1 * value
    return moderated


def save_tiny_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE tokenizer with the real special-token ids (49406, 49407) and pad 0."""
    from transformers import CLIPTokenizer

    from tests.tiny_sd import _bytes_to_unicode

    symbols = _bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_stablesr(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(6)
    state = {PREFIX + k: torch.randn(s, generator=g) * 0.2 for k, s in official_unet_shapes(*TINY_UNET_LDM, TINY_STRUCT_CHANNELS).items()}
    encoder = TimeAwareEncoder(**TINY_ENCODER)
    randomize(encoder, seed=7)
    state.update({f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()})
    state.update(text_tower_state())
    checkpoint = folder / "stablesr_tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 117}, checkpoint)
    config = {"unet": TINY_UNET, "struct_channels": TINY_STRUCT_CHANNELS, "struct_encoder": TINY_ENCODER}
    checkpoint.with_name(checkpoint.name + ".config.json").write_text(json.dumps(config))

    vae = folder / "vqgan_cfw_tiny.ckpt"
    torch.save({"state_dict": _moderate(official_cfw_state_dict())}, vae)
    vae.with_name(vae.name + ".config.json").write_text(json.dumps({"vae": TINY_VAE}))
    return {"ckpt": checkpoint, "vae": vae, "tokenizer": save_tiny_tokenizer(folder / "tokenizer")}
