"""The Grad-TTS acoustic model (official Grad-TTS/model/tts.py) and its checkpoint loading.

The official checkpoints are raw `model.state_dict()` files (train.py): no prefix, no buffers,
`encoder.*` and `decoder.estimator.*`, plus `spk_emb.weight` for the multi-speaker LibriTTS one.
They are loaded with `weights_only=True`, so a checkpoint can never run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.errors import ModelUnavailable, first_line
from models.checkpoints import describe, load_tensors_only, sha256_of
from models.gradtts.encoder import TextEncoder
from models.gradtts.estimator import Decoder

SPK_EMB_DIM = 64


class GradTTS(nn.Module):
    """Text encoder + duration predictor + score-based decoder; the encoder ignores the speaker,
    as in the official code (GradTTS never passes n_spks to TextEncoder)."""

    def __init__(self, n_spks: int = 1, pe_scale: float = 1000.0):
        super().__init__()
        self.n_spks = n_spks
        if n_spks > 1:
            self.spk_emb = nn.Embedding(n_spks, SPK_EMB_DIM)
        self.encoder = TextEncoder()
        self.decoder = Decoder(n_spks=n_spks, spk_emb_dim=SPK_EMB_DIM, pe_scale=pe_scale)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, refusing anything that is not a Grad-TTS state dict."""
    obj = load_tensors_only(path, "pass --checkpoint /path/to/grad-tts.pt")
    is_grad_tts = (
        isinstance(obj, dict)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
        and any(k.startswith("encoder.") for k in obj)
        and any(k.startswith("decoder.estimator.") for k in obj)
    )
    if not is_grad_tts:
        raise ModelUnavailable(
            f"{path} is not a Grad-TTS checkpoint (a raw state dict with encoder.* and decoder.estimator.* tensors); "
            f"found {describe(obj)}"
        )
    return obj


def load_gradtts(path: Path, *, pe_scale: float, device: torch.device, dtype: torch.dtype) -> tuple[GradTTS, dict]:
    """Build the model the checkpoint describes (speakers from `spk_emb`) and load it strictly.

    pe_scale cannot be read from the file: grad-tts-old.pt needs 1, the others 1000.
    """
    state = read_state_dict(path)
    n_spks = state["spk_emb.weight"].shape[0] if "spk_emb.weight" in state else 1
    model = GradTTS(n_spks=n_spks, pe_scale=pe_scale)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"{path} does not match the Grad-TTS architecture: {first_line(exc)}") from exc
    model.to(device=device, dtype=dtype).eval()
    info = {"path": str(path), "sha256": sha256_of(path), "n_spks": n_spks, "pe_scale": pe_scale}
    return model, info
