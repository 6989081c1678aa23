"""Parity of the ported Grad-TTS text encoder and length regulation with the reference code.

Both the single-speaker and the LibriTTS-shaped (n_spks=247) reference models are noised, saved
as an official checkpoint, and their `encoder.*` tensors loaded strictly into the port.
"""

from __future__ import annotations

import pytest
import torch

from models.gradtts.encoder import TextEncoder, regulate_lengths
from tests.gradtts_reference import import_reference, noised_reference_model, save_official_checkpoint
from tests.tolerance import assert_within

pytestmark = pytest.mark.numerics

# The port computes the reference's maths with its own code, so its sums run in another order and
# the two agree to float32 rounding only: 6e-8 relative per operation, grown through the prenet,
# 6 attention layers and the duration predictor to at most 1.9e-6 of the largest |value| over
# ATEN_CPU_CAPABILITY ∈ {default, avx2, avx512} × OMP_NUM_THREADS ∈ {1, 2}. Bounds are 2e-5 of
# the largest reference value (10× that), tight enough to catch even a LayerNorm eps of 1e-5
# instead of 1e-4 (it moves μ by 1.2e-4 = 4e-5 relative, log w by 3.2e-4); a 1% wrong scale
# moves both by 9e-3.
REL = 2e-5

# Text lengths per batch: short ones exercise relative attention below the window (T < 5),
# the last one is a padded batch of two.
BATCHES = [[1], [3], [9], [40], [37, 11]]


def _ids(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # padding id 0, as in the reference collate
    for row, n in enumerate(lengths):
        x[row, :n] = torch.randint(0, 149, (n,), generator=gen)
    return x, torch.tensor(lengths)


@pytest.fixture(scope="module", params=[1, 247], ids=["single", "libritts"])
def models(request, tmp_path_factory):
    reference = noised_reference_model(n_spks=request.param, seed=1234 + request.param)
    path = save_official_checkpoint(reference, tmp_path_factory.mktemp("gradtts") / "grad-tts.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    port = TextEncoder()
    port.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}, strict=True)
    return reference, port.eval()


@pytest.mark.parametrize("lengths", BATCHES, ids=str)
@torch.no_grad()
def test_encoder_matches_reference(models, lengths):
    reference, port = models
    x, x_lengths = _ids(lengths)
    mu_ref, logw_ref, mask_ref = reference.encoder(x, x_lengths)
    mu_x, logw, x_mask = port(x, x_lengths)

    assert mu_x.shape == (len(lengths), 80, max(lengths)) and logw.shape == (len(lengths), 1, max(lengths))
    torch.testing.assert_close(x_mask, mask_ref, rtol=0, atol=0)
    assert_within(mu_x, mu_ref, atol=REL * mu_ref.abs().max(), what="mu_x")
    assert_within(logw, logw_ref, atol=REL * logw_ref.abs().max(), what="logw")


def _reference_lengths(reference, x, x_lengths, length_scale, monkeypatch):
    """Run the reference GradTTS.forward itself and capture what its decoder receives
    (mu_y, y_mask) and the full alignment before it is cropped to y_max_length."""
    seen = {}
    tts = import_reference().tts
    real_generate_path = tts.generate_path

    def recording_generate_path(duration, mask):
        seen["attn"] = real_generate_path(duration, mask).unsqueeze(1)  # as tts.py:93 shapes it
        return seen["attn"].squeeze(1)

    def fake_decoder(z, mask, mu, n_timesteps, stoc=False, spk=None):
        seen["y_mask"], seen["mu_y"] = mask, mu
        return z

    monkeypatch.setattr(tts, "generate_path", recording_generate_path)
    monkeypatch.setattr(reference.decoder, "forward", fake_decoder)
    spk = torch.zeros(len(x), dtype=torch.long) if reference.n_spks > 1 else None
    reference(x, x_lengths, n_timesteps=1, spk=spk, length_scale=length_scale)
    return seen


@pytest.mark.parametrize("length_scale", [1.0, 0.91])
@pytest.mark.parametrize("lengths", BATCHES, ids=str)
@torch.no_grad()
def test_lengths_match_reference(models, lengths, length_scale, monkeypatch):
    reference, port = models
    x, x_lengths = _ids(lengths)
    seen = _reference_lengths(reference, x, x_lengths, length_scale, monkeypatch)

    mu_y, y_mask, y_lengths, attn = regulate_lengths(*port(x, x_lengths), length_scale=length_scale)

    t_pad = seen["mu_y"].shape[-1]
    assert mu_y.shape == (len(lengths), 80, t_pad) and t_pad % 4 == 0
    assert torch.equal(y_lengths, seen["y_mask"].sum((1, 2)).long())
    assert torch.equal(y_mask, seen["y_mask"])
    assert torch.equal(attn, seen["attn"])
    # The durations are ceil(exp(log w)), equal above only because no exp(log w) of these inputs lies
    # within 7e-5 (relative) of an integer: 20× the worst log w difference.
    assert_within(mu_y, seen["mu_y"], atol=REL * seen["mu_y"].abs().max(), what="mu_y")


@torch.no_grad()
def test_noised_durations_vary(models):
    """Guards the fixture: with the init's weights every duration would be the same."""
    _, port = models
    x, x_lengths = _ids([40])
    _, _, _, attn = regulate_lengths(*port(x, x_lengths))
    frames_per_token = attn.sum(-1).flatten()
    assert len(torch.unique(frames_per_token)) > 2
