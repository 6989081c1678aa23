"""Tiny StableSR checkpoints with random weights, saved in the OFFICIAL formats.

The diffusion checkpoint is a Lightning-style `{'state_dict': ...}` with the official prefixes
(model.diffusion_model / structcond_stage_model / cond_stage_model.model), the CFW checkpoint the
un-prefixed AutoencoderKLResi state dict; `<file>.config.json` beside each gives the tiny shapes,
so `diffier sr --ckpt ... --vae-ckpt ...` loads them through the same code as the real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.stablesr.struct_encoder import TimeAwareEncoder
from models.stablesr.text_embedding import PREFIX as TEXT_PREFIX
from tests.models.test_stablesr_cfw import TINY_CONFIG, _official_cfw_state_dict
from tests.models.test_stablesr_unet import PREFIX, TINY_ENCODER, TINY_STRUCT_CHANNELS, TINY_UNET, TINY_UNET_LDM, _randomize, official_unet_shapes

TEXT_WIDTH = TINY_UNET["cross_attention_dim"]


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
    _randomize(encoder, seed=7)
    state.update({f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()})
    state.update(text_tower_state())
    checkpoint = folder / "stablesr_tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 117}, checkpoint)
    config = {"unet": TINY_UNET, "struct_channels": TINY_STRUCT_CHANNELS, "struct_encoder": TINY_ENCODER}
    checkpoint.with_name(checkpoint.name + ".config.json").write_text(json.dumps(config))

    vae = folder / "vqgan_cfw_tiny.ckpt"
    torch.save({"state_dict": _moderate(_official_cfw_state_dict())}, vae)
    vae.with_name(vae.name + ".config.json").write_text(json.dumps({"vae": TINY_CONFIG}))
    return {"ckpt": checkpoint, "vae": vae, "tokenizer": save_tiny_tokenizer(folder / "tokenizer")}
