"""Write a diffusers SD or SDXL pipeline as one original-format (LDM) single file, the layout of the
checkpoints people download (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`).

It inverts diffusers' own single-file converters (diffusers/loaders/single_file_utils.py:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
convert_open_clip_checkpoint), using their mapping tables where they have them, so the tests can
load a tiny model back through `from_single_file` as users load the real ones.
`tests/models/test_single_file.py` checks that the round trip gives every tensor back exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# convert_ldm_unet_checkpoint's update_unet_resnet_ldm_to_diffusers, read right to left.
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
# update_vae_attentions_ldm_to_diffusers, read right to left.
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def _renamed(rest: str, pairs) -> str:
    for new, old in pairs:
        rest = rest.replace(new, old)
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    per_block = config["layers_per_block"] + 1
    top = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":
        top.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    with_attention = {int(key.split(".")[1]) for key in state if key.startswith("up_blocks.") and ".attentions." in key}
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            index = 1 + block * per_block + layer
            out[f"input_blocks.{index}.0.{_renamed(rest, _UNET_RESNET)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"] = value
        elif match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            out[f"input_blocks.{1 + int(match[1]) * per_block + per_block - 1}.0.op.{match[2]}"] = value
        elif match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            out[f"middle_block.{2 * int(match[1])}.{_renamed(match[2], _UNET_RESNET)}"] = value
        elif match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            out[f"middle_block.1.{match[1]}"] = value
        elif match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            index = block * per_block + layer
            out[f"output_blocks.{index}.0.{_renamed(rest, _UNET_RESNET)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"] = value
        elif match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            block = int(match[1])
            out[f"output_blocks.{block * per_block + per_block - 1}.{2 if block in with_attention else 1}.conv.{match[2]}"] = value
        else:
            raise KeyError(f"no LDM name for UNet tensor {key}")
    return {"model.diffusion_model." + key: value for key, value in out.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    ups = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{ups - 1 - int(m[1])}.block.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{ups - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
        if "mid_block.attentions.0." in name:
            name = _renamed(name.replace("mid_block.attentions.0.", "mid.attn_1."), _VAE_ATTENTION)
            if value.ndim == 2:  # the original's 1×1 convolutions (conv_attn_to_linear, read backwards)
                value = value[:, :, None, None]
        if name == key and "mid." not in name:
            raise KeyError(f"no LDM name for VAE tensor {key}")
        out[name.replace("conv_shortcut", "nin_shortcut")] = value
    return {"first_stage_model." + key: value for key, value in out.items()}


def _text_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ≥ 5.6 flattened CLIPTextModel; the original files keep the `text_model.` level."""
    return {key if key.startswith(("text_model.", "text_projection")) else "text_model." + key: value
            for key, value in state.items()}


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP text encoder as SD 1.x (`cond_stage_model.transformer.`) and SDXL's first
    encoder (`conditioner.embedders.0.transformer.`) store it: transformers' names, one prefix."""
    return {prefix + key: value for key, value in _text_model_keys(state).items()
            if not key.endswith("position_ids")}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A text encoder as OpenCLIP stores it (SD 2.x's `cond_stage_model.model.`, SDXL's
    `conditioner.embedders.1.model.`): q, k and v fused into in_proj, text_projection transposed."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    layer_names = (("text_model.encoder.layers.", "resblocks."), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                   (".fc1.", ".c_fc."), (".fc2.", ".c_proj."), (".self_attn", ".attn"))
    state = _text_model_keys(state)
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif match := re.match(r"(text_model\.encoder\.layers\.\d+\.self_attn\.)q_proj\.(weight|bias)", key):
            fused = torch.cat([state[f"{match[1]}{part}_proj.{match[2]}"] for part in "qkv"])
            out["transformer." + _renamed(match[1], layer_names) + f"in_proj_{match[2]}"] = fused
        elif re.search(r"\.self_attn\.[kv]_proj\.", key) or key.endswith("position_ids"):
            continue
        elif key.startswith("text_model.encoder.layers."):
            out["transformer." + _renamed(key, layer_names)] = value
        else:
            raise KeyError(f"no OpenCLIP name for text-encoder tensor {key}")
    return {prefix + key: value for key, value in out.items()}


def save_single_file(folder: Path, path: Path, text_encoder_layout: str = "clip") -> Path:
    """The pipeline in `folder` as one .safetensors (or, for `.ckpt`/`.pt`, a Lightning-style
    {"state_dict": ...} torch save). `text_encoder_layout`: "clip" (SD 1.x) or "open_clip" (SD 2.x);
    SDXL files always hold CLIP then OpenCLIP, as sd_xl_base_1.0 does."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(folder)
    tensors = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config), **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)}
    if hasattr(pipe, "text_encoder_2"):
        tensors |= clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer.")
        tensors |= open_clip_to_ldm(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model.")
    elif text_encoder_layout == "open_clip":
        tensors |= open_clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.model.")
    else:
        tensors |= clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer.")
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, path)
    else:
        torch.save({"state_dict": tensors, "global_step": 0}, path)
    return path
