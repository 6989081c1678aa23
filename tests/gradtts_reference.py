"""Helpers for parity tests against the reference Grad-TTS (PyPI grad-tts 0.0.4, the official code).

Importing the reference needs two shims: its compiled `monotonic_align` wants NumPy 1.x (it is
only used for training, so a stub that refuses to run is enough), and its cmudict module imports
`pkg_resources`, which recent setuptools no longer ships.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
import types
from pathlib import Path

import torch

# Official hyper-parameters (grad_tts/model/params.py); n_vocab = len(symbols) + 1.
REFERENCE_HPARAMS = dict(
    n_vocab=149, spk_emb_dim=64, n_enc_channels=192, filter_channels=768, filter_channels_dp=256,
    n_heads=2, n_enc_layers=6, enc_kernel=3, enc_dropout=0.1, window_size=4, n_feats=80,
    dec_dim=64, beta_min=0.05, beta_max=20.0, pe_scale=1000,
)  # fmt: skip


def _refuse(*args, **kwargs):
    raise RuntimeError("monotonic_align is stubbed out for tests (training only)")


def import_reference() -> types.ModuleType:
    """Return `grad_tts.model` (installed by the test extras: a missing reference is a failure)."""
    if "grad_tts.model.monotonic_align" not in sys.modules:
        stub = types.ModuleType("grad_tts.model.monotonic_align")
        stub.maximum_path = _refuse
        sys.modules[stub.__name__] = stub
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
        sys.modules["pkg_resources"] = shim
    import grad_tts.model

    return grad_tts.model


@torch.no_grad()
def noised_reference_model(n_spks: int, seed: int) -> torch.nn.Module:
    """The reference GradTTS (eval mode) with every state-dict tensor replaced by seeded noise.

    Noise instead of the init, because the init zeroes some tensors (the prenet projection,
    Rezero's g) and would hide bugs behind them. Weights get std 1/√fan_in to keep activations
    O(1); 1-d norm gains (gamma/weight) 1 + 0.1·randn; biases, betas and Rezero's g 0.1·randn
    (a g near 1 lets the unnormalised linear attention, quadratic in its input, overflow through
    the U-Net's residual stack); for the same reason the attention's to_qkv weights get 0.1× that,
    since the reverse SDE with an untrained score grows x by (1 + ½β_t h) per step.
    The duration bias is then set so that logw ≈ 1.5 on average (exp ≈ 4.5 frames) and the
    durations vary instead of all rounding up to 1.
    """
    ref = import_reference()
    with torch.random.fork_rng():  # construction draws from the global RNG; leave it untouched
        model = ref.GradTTS(n_spks=n_spks, **REFERENCE_HPARAMS)
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=gen)
        if tensor.dim() > 1:
            noise /= tensor[0].numel() ** 0.5
            if name.endswith("to_qkv.weight"):
                noise *= 0.1  # keep the quadratic linear attention contractive (see docstring)
        else:
            noise *= 0.1
            if name.endswith(("gamma", "weight")):
                noise += 1.0
        tensor.copy_(noise)
    model.eval()
    # Centre the durations: with a fixed bias the noise alone moves mean log-durations by ±1.5
    # from seed to seed, so pick the bias that gives mean logw 1.5 over all token ids.
    bias = model.encoder.proj_w.proj.bias
    bias.zero_()
    ids = torch.arange(REFERENCE_HPARAMS["n_vocab"]).unsqueeze(0)
    _, logw, _ = model.encoder(ids, torch.tensor([ids.shape[1]]))
    bias.fill_(1.5 - logw.mean().item())
    return model


def save_official_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save as train.py does (a raw `state_dict()`, no wrapper), the format of grad-tts*.pt."""
    torch.save(model.state_dict(), path)
    return Path(path)
