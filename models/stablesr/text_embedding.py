"""StableSR's text conditioning: the OpenCLIP ViT-H text tower's embedding of the empty prompt.

The official model (ldm/modules/encoders/modules.py `FrozenOpenCLIPEmbedder`, layer
"penultimate") runs all but the last resblock, then `ln_final`; the prompt is always ''. That is
a transformers `CLIPTextModel` with one layer fewer, loaded by diffusers' own
`convert_open_clip_checkpoint`, and since '' always tokenizes to [SOT, EOT, 0 × 75] (open_clip pads
with 0), no tokenizer is needed: the embedding is computed once per load.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

PREFIX = "cond_stage_model.model."
START_OF_TEXT, END_OF_TEXT = 49406, 49407
HEAD_DIM = 64  # ViT-H: width 1024, 16 heads


def _text_config(state: dict[str, torch.Tensor]):
    """The CLIPTextConfig the checkpoint's shapes describe (the full tower minus its last block)."""
    from transformers import CLIPTextConfig

    vocab, width = state[PREFIX + "token_embedding.weight"].shape
    blocks = {int(m.group(1)) for k in state if (m := re.match(re.escape(PREFIX) + r"transformer\.resblocks\.(\d+)\.", k))}
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=state[PREFIX + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_attention_heads=max(1, width // HEAD_DIM),
        num_hidden_layers=len(blocks) - 1,  # "penultimate": the last resblock is never run
        max_position_embeddings=state[PREFIX + "positional_embedding"].shape[0],
        hidden_act="gelu",
        projection_dim=width,
    )


def empty_prompt_ids(length: int) -> torch.Tensor:
    return torch.tensor([[START_OF_TEXT, END_OF_TEXT] + [0] * (length - 2)])


def load_text_model(state: dict[str, torch.Tensor]):
    """The text tower as a transformers CLIPTextModel (eval), from `cond_stage_model.model.*`."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel

    try:
        config = _text_config(state)
    except KeyError as exc:
        from models.errors import ModelUnavailable

        raise ModelUnavailable(f"the checkpoint's text encoder lacks {exc}; not an OpenCLIP text tower") from exc
    last = f"{PREFIX}transformer.resblocks.{config.num_hidden_layers}."
    penultimate = {k: v for k, v in state.items() if not k.startswith(last) and k != PREFIX + "text_projection"}
    model = CLIPTextModel(config)
    converted = convert_open_clip_checkpoint(model, penultimate, prefix=PREFIX)
    converted.pop("text_model.embeddings.position_ids", None)
    if not any(key.startswith("text_model.") for key in model.state_dict()):
        # transformers 5 dropped the `text_model.` level that diffusers' converter still writes
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model.eval()


@torch.no_grad()
def empty_prompt_embedding(model) -> torch.Tensor:
    """The conditioning of every StableSR step: (1, 77, 1024) for the official checkpoints."""
    return model(empty_prompt_ids(model.config.max_position_embeddings)).last_hidden_state


@torch.no_grad()
def prompt_embedding(model, tokenizer, prompt: str) -> torch.Tensor:
    """A prompt as the official DDIM scripts embed their negative prompt: CLIP BPE, SOT … EOT, padded
    with id 0 to 77 (open_clip's layout, which SD 2's tokenizer with pad '!' = 0 reproduces)."""
    ids = tokenizer(prompt, padding="max_length", max_length=model.config.max_position_embeddings,
                    truncation=True, return_tensors="pt").input_ids
    return model(ids).last_hidden_state


def load_tokenizer(source: str, offline: bool, cache_dir: str | None):
    """OpenCLIP's BPE vocabulary, which SD 2.x's hub tokenizer (`<repo>/tokenizer`) carries, or a local folder."""
    from transformers import CLIPTokenizer

    from models.errors import ModelUnavailable, first_line

    try:
        if Path(source).expanduser().is_dir():
            return CLIPTokenizer.from_pretrained(Path(source).expanduser())
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", cache_dir=cache_dir, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means: tokenizer unavailable
        raise ModelUnavailable(
            f"cannot load the CLIP tokenizer from {source} ({first_line(exc)}); pass --tokenizer /path/to/tokenizer/folder"
        ) from exc
