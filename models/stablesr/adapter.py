"""StableSR as a `Backbone` for the shared loop (the official `_canvas_tile` scripts' path).

Per step: the time-aware encoder turns the LR latent into structure features at the original
timestep, the SPADE UNet predicts ε (or v) tile by tile on the latent canvas, and the tiles are
stitched with Gaussian weights (ddpm.py `p_mean_variance_canvas`). The refiner then sees the
whole stitched prediction, never a tile.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from models import untrusted
from models.errors import ModelUnavailable, UnsupportedSetting, first_line
from models.checkpoints import sha256_of
from models.stablesr.cfw import CFWAutoencoder, load_cfw
from models.lightning import read_official_checkpoint
from models.stablesr.checkpoints import PREFIXES, split_by_prefix
from models.stablesr.colorfix import adain_color_fix, wavelet_color_fix
from models.stablesr.schedule import QuirkyDDIM, RespacedDDPM
from models.stablesr.struct_encoder import TimeAwareEncoder
from models.stablesr.text_embedding import empty_prompt_embedding, load_text_model, prompt_embedding
from models.stablesr.tiling import gaussian_tile_weights, stitch_tiles, tile_slices
from models.stablesr.unet import SD21_768_UNET_CONFIG, SD21_UNET_CONFIG, STRUCT_CHANNELS, build_stablesr_unet, convert_official_unet

COLOR_FIXES = {"adain": adain_color_fix, "wavelet": wavelet_color_fix, "none": None}


@dataclass
class SRState:
    z_lr: torch.Tensor  # scaled LR latent: the struct encoder's input
    enc_fea: list[torch.Tensor]  # CFW encoder features for the decoder
    upscaled: torch.Tensor  # the bicubic-upscaled LR image in [-1, 1]: the colour reference
    sampler: RespacedDDPM | QuirkyDDIM
    tile: int
    overlap: int
    noise_generator: torch.Generator  # posterior sample, x_T and the samplers' noise (CPU)
    negative_context: torch.Tensor | None = None  # DDIM scripts' negative prompt, for guidance
    cfg: float = 1.0


CONFIG_SECTIONS = ("unet", "struct_encoder", "vae")  # each a dict of constructor arguments


def read_model_config(checkpoint: Path) -> dict:
    """Module configs from `<checkpoint>.config.json` when present (non-SD-2.1 shapes), else SD-2.1's.
    Read as untrusted (bounded size and depth), and only as a dict of dicts."""
    sidecar = checkpoint.with_name(checkpoint.name + ".config.json")
    if not sidecar.is_file():
        return {}
    try:
        config = untrusted.read_json_file(sidecar)
    except (OSError, untrusted.Refused) as exc:
        raise ModelUnavailable(f"cannot read {sidecar}: {first_line(exc)}") from None
    if not isinstance(config, dict) or any(not isinstance(config.get(key, {}), dict) for key in CONFIG_SECTIONS):
        raise ModelUnavailable(f"{sidecar} is not a StableSR config: expected an object whose "
                               f"{', '.join(CONFIG_SECTIONS)} are objects of module arguments")
    return config


@contextmanager
def _configured(sidecar_of: Path):
    """A module built from a config sidecar's arguments: a wrong name or type there is the file's
    fault, one line naming it, not a traceback from the module's constructor."""
    try:
        yield
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelUnavailable(f"{sidecar_of.name}.config.json does not describe a StableSR module: {first_line(exc)}") from exc


class StableSR:
    def __init__(self, unet, struct, encoder: TimeAwareEncoder, cfw: CFWAutoencoder, text_model,
                 context: torch.Tensor, prediction_type: str, info: dict, device: torch.device, dtype: torch.dtype):
        self.unet, self.struct, self.encoder, self.cfw = unet, struct, encoder, cfw
        self.text_model = text_model
        self.context = context
        self.prediction_type = prediction_type
        self.info = info
        self.device, self.dtype = device, dtype

    @classmethod
    def load(cls, checkpoint: Path, vae_checkpoint: Path, *, prediction_type: str,
             device: torch.device, dtype: torch.dtype) -> "StableSR":
        config = read_model_config(checkpoint)
        diffusion = read_official_checkpoint(checkpoint)
        parts = split_by_prefix(diffusion.tensors)
        base = SD21_768_UNET_CONFIG if prediction_type == "v_prediction" else SD21_UNET_CONFIG
        unet_config = {**base, **config.get("unet", {})}
        with _configured(checkpoint):
            unet, struct = build_stablesr_unet(unet_config, config.get("struct_channels", STRUCT_CHANNELS))
            encoder = TimeAwareEncoder(**config.get("struct_encoder", {}))
        prefix = PREFIXES["struct_encoder"]
        try:
            unet.load_state_dict(convert_official_unet(parts["unet"], unet_config), strict=True)
            encoder.load_state_dict({k.removeprefix(prefix): v for k, v in parts["struct_encoder"].items()}, strict=True)
        except RuntimeError as exc:
            raise ModelUnavailable(f"{checkpoint} does not fit the StableSR architecture: {first_line(exc)}") from exc
        if not parts["text_encoder"]:
            raise ModelUnavailable(f"{checkpoint} has no text encoder (cond_stage_model.model.*): not a full StableSR checkpoint")
        text_model = load_text_model(parts["text_encoder"])
        context = empty_prompt_embedding(text_model)
        vae_config = read_model_config(vae_checkpoint).get("vae")
        autoencoder = read_official_checkpoint(vae_checkpoint)
        with _configured(vae_checkpoint):
            cfw = load_cfw(autoencoder.tensors, vae_config)
        info = {
            "checkpoint": {"path": str(checkpoint), "sha256": sha256_of(checkpoint),
                           "neutralised_globals": list(diffusion.neutralised)},
            "vae_checkpoint": {"path": str(vae_checkpoint), "sha256": sha256_of(vae_checkpoint),
                               "neutralised_globals": list(autoencoder.neutralised)},
            "prediction_type": prediction_type,
        }
        for module in (unet, encoder, cfw):
            module.to(device=device, dtype=dtype).eval()
        return cls(unet, struct, encoder, cfw, text_model, context.to(device=device, dtype=dtype),
                   prediction_type, info, device, dtype)

    @property
    def latent_scale(self) -> int:
        return 2 ** (len(self.cfw.vae.config.block_out_channels) - 1)

    def prepare(self, upscaled: torch.Tensor, *, sampler: str, steps: int, ddim_eta: float, tile: int,
                overlap: int, noise_generator: torch.Generator, negative: tuple | None = None) -> SRState:
        """`upscaled`: the LR image resized to the working size and padded, [1, 3, H, W] in [-1, 1];
        `negative`: (tokenizer, prompt, cfg) for the DDIM scripts' negative-prompt guidance."""
        image = upscaled.to(device=self.device, dtype=self.dtype)
        latent, enc_fea = self.cfw.encode(image, noise_generator)
        z_lr = latent * self.cfw.vae.config.scaling_factor
        if sampler == "ddpm":
            schedule = RespacedDDPM(steps, prediction_type=self.prediction_type)
        else:
            schedule = QuirkyDDIM(steps, eta=ddim_eta, prediction_type=self.prediction_type)
        tile = min(tile, *z_lr.shape[-2:])
        if overlap >= tile:
            raise UnsupportedSetting(f"--tile-overlap {overlap} (latent px) must be smaller than the {tile}-px latent tile")
        state = SRState(z_lr, enc_fea, image, schedule, tile, overlap, noise_generator)
        if negative is not None:
            tokenizer, prompt, state.cfg = negative
            state.negative_context = prompt_embedding(self.text_model, tokenizer, prompt).to(self.device, self.dtype)
        return state

    def _randn(self, like: torch.Tensor, state: SRState) -> torch.Tensor:
        noise = torch.randn(like.shape, generator=state.noise_generator, dtype=torch.float32)
        return noise.to(device=like.device, dtype=like.dtype)

    def init_noise(self, state: SRState) -> torch.Tensor:
        # canvas_tile scripts: DDPM starts from the LR latent noised to t = 999, DDIM from pure noise.
        noise = self._randn(state.z_lr, state)
        if isinstance(state.sampler, RespacedDDPM):
            return state.sampler.q_sample(state.z_lr, noise)
        return noise

    def timesteps(self, state: SRState) -> list[int]:
        return [int(t) for t in state.sampler.timesteps]

    def predict(self, x: torch.Tensor, t: int, state: SRState) -> torch.Tensor:
        """The stitched UNet output at (x, t). The struct encoder sees the LR latent at t too, so an
        IEC re-evaluation at a candidate x_{t−1} with the current t changes only the UNet's input x."""
        slices = tile_slices(x.shape, state.tile, state.overlap)
        time = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        batch = x.shape[0]
        guided = state.negative_context is not None
        context = self.context.expand(batch, -1, -1)
        if guided:  # ddim.py l.440: the batch doubled, [negative; positive], struct features for both
            context = torch.cat([state.negative_context.expand(batch, -1, -1), context])
            time = torch.cat([time, time])
        outputs = []
        for rows, cols in slices:
            x_tile, z_tile = x[..., rows, cols], state.z_lr[..., rows, cols]
            if guided:
                x_tile, z_tile = torch.cat([x_tile, x_tile]), torch.cat([z_tile, z_tile])
            with self.struct.provided(self.encoder(z_tile, time)):
                out = self.unet(x_tile, time, encoder_hidden_states=context).sample
            if guided:
                negative, positive = out.chunk(2)
                out = negative + state.cfg * (positive - negative)  # ε = ε(neg) + scale (ε(cond) − ε(neg))
            outputs.append(out)
        weights = gaussian_tile_weights(state.tile, device=x.device)
        return stitch_tiles(outputs, slices, x.shape, weights).to(x.dtype)

    def to_eps(self, prediction: torch.Tensor, x: torch.Tensor, t: int, state: SRState) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return prediction
        a = state.sampler.alpha_bar(t)  # ε = √ᾱ v + √(1 − ᾱ) x (ddpm.py predict_eps_from_z_and_v)
        return a**0.5 * prediction.float() + (1 - a) ** 0.5 * x.float()

    def from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: int, state: SRState) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return eps
        a = state.sampler.alpha_bar(t)  # v = (ε − √(1 − ᾱ) x) / √ᾱ
        return ((eps.float() - (1 - a) ** 0.5 * x.float()) / a**0.5).to(x.dtype)

    def step_noise(self, x: torch.Tensor, t: int, state: SRState) -> torch.Tensor:
        """Both samplers draw a noise tensor at every step, used or not (σ = 0), as `step` does."""
        return self._randn(x, state)

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: int, state: SRState,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        return state.sampler.step(prediction, t, x, self._randn(x, state) if noise is None else noise)

    def decode(self, latents: torch.Tensor, state: SRState, *, dec_w: float, color_fix: str) -> torch.Tensor:
        """Latent → image in [-1, 1] (CFW decoder), colour-corrected against the upscaled LR."""
        image = self.cfw.decode((latents / self.cfw.vae.config.scaling_factor).to(self.dtype), state.enc_fea, dec_w)
        fix = COLOR_FIXES[color_fix]
        return fix(image.float(), state.upscaled.float()) if fix is not None else image.float()
