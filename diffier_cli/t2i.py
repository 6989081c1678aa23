"""`diffier t2i`: prompts → items → load Stable Diffusion once → sample batches → PNGs (the task;
task.run does the rest).

Item i of a run (prompt p, image j) has its own seed and generators, so which noise an image
gets depends on nothing but its seed: not on --batch-size, the shard or --baseline. Its pixels
depend on the batch size only (batches are the job's: jobs.plan_job), and with --batch-invariant
not even on that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from diffier_cli import __version__
from diffier_cli.errors import UsageError, excerpt, numerical_overflow
from diffier_cli.formats import ImageFormat, choose, encode
from diffier_cli.jobs import Item, Plan, Shard, job_id, plan_job, split_lines
from diffier_cli.limits import MAX_ITEMS
from diffier_cli.metadata import a1111_parameters, library_versions
from diffier_cli.outputs import name_problem, slugify
from diffier_cli.refiners import refinement
from diffier_cli.refiners import settings as refiner_settings
from diffier_cli.runtime import (
    REFINE_SEED_MIX,
    BatchOptions,
    Hardware,
    ImageOutputOptions,
    Reporter,
    RunOptions,
    item_generators,
    quiet_libraries,
    require,
    resolve_device,
    resolve_dtype,
)
from diffier_cli.task import Made
from models import schedulers, untrusted
from models.errors import NumericalOverflow

if TYPE_CHECKING:
    from diffier_cli.sampling import Refiner

DEFAULT_NAME = "{index:05d}-{seed}-{mode}-{slug}.png"


@dataclass(frozen=True, kw_only=True)
class T2ISettings(Hardware):
    """What an image's pixels depend on besides its prompt and seed: `t2i`, its sweeps and `eval t2i`."""

    model: str
    revision: str | None
    negative_prompt: str | None
    cfg: float
    steps: int
    ddim_eta: float
    height: int | None
    width: int | None
    refiner: Refiner | None  # None = --baseline (--refiner none)
    scheduler: str = schedulers.DEFAULT  # a models/schedulers.py name
    karras: bool = False
    loras: tuple[tuple[str, float], ...] = ()  # (.safetensors file, scale), applied in order
    config: str | None = None  # a single-file model's component configs: a folder or hub id
    batch_invariant: bool = False  # batches are the job's (jobs.plan_job), so the plain kernels reproduce too
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False
    compile: bool = False  # torch.compile of the UNet and VAE decoder (models/sd.compile_for_speed)


@dataclass(frozen=True, kw_only=True)
class T2IOptions(T2ISettings, RunOptions, BatchOptions, ImageOutputOptions):
    """`diffier t2i`: the settings, the prompts and how the run is batched, named and split."""

    prompt: str | None
    prompts_file: str | None
    num_images: int = 1
    batch_size: int = 1


@dataclass(frozen=True)
class PromptLine:
    """One prompt of the input, or why its line could not be read."""

    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    name: str | None = None
    error: str | None = None


def _read_source(source: str) -> tuple[str, str]:
    """(text, label) of a prompts file or stdin."""
    label = "stdin" if source == "-" else source
    try:
        return untrusted.read_text(source), label
    except OSError as exc:
        raise UsageError(f"cannot read --prompts-file {source}: {exc.strerror or exc}") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"--prompts-file {label} {exc}") from None


def _jsonl_line(text: str, where: str) -> PromptLine:
    """One .jsonl line through the bounded reader: JSON that is malformed, too large or too deep
    makes the line a failed item like any other bad line, never a traceback."""
    try:
        entry = untrusted.loads(text)
    except untrusted.Refused as exc:
        return PromptLine(error=f"{where} {exc}")
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        return PromptLine(error=f'{where} has no "prompt" string')
    unknown = set(entry) - {"prompt", "negative_prompt", "seed", "name"}
    if unknown:
        return PromptLine(error=f"{where} has unknown key(s) {', '.join(sorted(unknown))}; use prompt, negative_prompt, seed, name")
    seed, name, negative = entry.get("seed"), entry.get("name"), entry.get("negative_prompt")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
        return PromptLine(error=f"{where}: seed {seed!r} is not an integer in 0..2**32-1")
    if name is not None:
        if not isinstance(name, str):
            why = f"{excerpt(json.dumps(name), 40)} is not a string"
        elif name.startswith("."):
            why = f"{excerpt(name)} would be a hidden file, which folder listings leave out; drop the leading '.'"
        else:
            why = name_problem(name)
        if why:
            return PromptLine(error=f"{where}: name {why}")
    if negative is not None and not isinstance(negative, str):
        return PromptLine(error=f"{where}: negative_prompt must be a string")
    return PromptLine(entry["prompt"], negative, seed, name)


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[PromptLine]:
    """The prompts of the run, one per line of --prompts-file (.txt, or .jsonl with prompt,
    negative_prompt, seed, name), or the PROMPT argument. A bad line stays in the list as an
    error, so the line numbers, and with them every later item's index, seed and name, stay put."""
    if (prompt is None) == (prompts_file is None):
        raise UsageError("pass a PROMPT or --prompts-file FILE (one of them)")
    if prompt is not None:
        if not prompt.strip():
            raise UsageError("the prompt is empty; say what to draw")
        return [PromptLine(prompt)]
    text, label = _read_source(prompts_file)
    lines = split_lines(text, f"--prompts-file {label}")
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing blank line is the end of the file, not a prompt
    jsonl = prompts_file.lower().endswith((".jsonl", ".ndjson")) or (label == "stdin" and lines and lines[0].lstrip().startswith("{"))
    prompts = []
    for number, line in enumerate(lines, 1):
        where = f"{label} line {number}"
        if not line.strip():
            prompts.append(PromptLine(error=f"{where} is empty"))
        elif jsonl:
            prompts.append(_jsonl_line(line, where))
        else:
            prompts.append(PromptLine(line.strip()))
    if not prompts:
        raise UsageError(f"--prompts-file {label} holds no prompts")
    return prompts


@dataclass(kw_only=True)
class Prompted(Item):
    """One image to draw: its prompt line's prompt and negative prompt, and the line (1-based)."""

    prompt: str
    negative_prompt: str | None
    line: int


def work_items(prompts: list[PromptLine], num_images: int, negative_prompt: str | None, seed: int, mode: str,
               suffixes: Sequence[str] = (".png",)) -> list[Prompted]:
    """Item p·N + j is image j of prompt p; its seed is the line's seed + j, else seed + index. A
    line's name may end in one of the run's `suffixes` (the first is what it gets otherwise)."""
    if len(prompts) * num_images > MAX_ITEMS:
        raise UsageError(
            f"{len(prompts)} prompt(s) × --num-images {num_images} is over the {MAX_ITEMS} items one run plans; "
            "split the prompts file (every part keeps its own indices with --name) or lower --num-images"
        )
    items = []
    for p, line in enumerate(prompts):
        for j in range(num_images):
            index = p * num_images + j
            slug = slugify(line.prompt) if line.prompt else "invalid"
            item = Prompted(index=index, seed=line.seed + j if line.seed is not None else seed + index, mode=mode,
                            stem=line.name or slug, slug=slug, error=line.error, prompt=line.prompt,
                            negative_prompt=line.negative_prompt if line.negative_prompt is not None else negative_prompt,
                            line=p + 1)
            if line.name:
                given = len(next((suffix for suffix in suffixes if line.name.lower().endswith(suffix)), ""))
                base, extension = line.name[:len(line.name) - given], line.name[len(line.name) - given:]
                item.name = (base if num_images == 1 else f"{base}-{j}") + extension
                problem = name_problem(item.name + ("" if extension else suffixes[0]))
                if problem:  # the line fails alone, in its turn, under the template's name
                    item.error, item.name, item.stem = f"line {p + 1}: name {problem}", None, slug
            items.append(item)
    return items


def model_identity(backbone, keep_paths: bool) -> dict:
    """Which weights made an image: the hub id (and commit) or the local name, the weights' hash,
    and for a single file where its configs came from (they decide its scheduler and sizes)."""
    resolved = backbone.resolved
    identity = {"id": resolved.model_id, "revision": resolved.revision, "sha256": backbone.sha256, "hashed": backbone.hashed}
    if keep_paths and resolved.path is not None:
        identity["path"] = str(resolved.path)
    if resolved.weights is not None:
        identity["single_file"] = {"config": resolved.config, "config_revision": resolved.config_revision,
                                   **({"config_path": str(resolved.folder)} if keep_paths and resolved.config_revision is None else {})}
    return identity


def record(opts: T2ISettings, backbone, item: Prompted, height: int, width: int, per_step: dict, versions: dict, job: dict,
           image_format: ImageFormat = ImageFormat()) -> dict:
    """What made one image, as its file and `--json` carry it (`opts` a run's options: RunOptions
    too; a JPEG's or WebP's record also says how it was encoded)."""
    encoding = image_format.encoding()
    return {
        "tool": "diffier",
        "version": __version__,
        "command": "t2i",
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt or "",
        "index": item.index,
        "seed": item.seed,
        "mode": item.mode,
        "job": {**job, "index": item.index, "line": item.line},
        "model": {
            **model_identity(backbone, opts.record_paths),
            "prediction_type": backbone.prediction_type,
            "pipeline": type(backbone.pipe).__name__,
            "loras": backbone.loras,
        },
        "params": {
            "cfg": opts.cfg,
            "steps": opts.steps,
            "scheduler": backbone.sampler.a1111,
            "karras": opts.karras,
            "scheduler_class": type(backbone.scheduler).__name__,
            "scheduler_config": backbone.scheduler_config(),
            "ddim_eta": opts.ddim_eta,
            "height": height,
            "width": width,
            "device": str(backbone.device),
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "batch_invariant": opts.batch_invariant,
            "compile": opts.compile,
            "memory": backbone.memory.enabled(),
        },
        "rng": {
            "initial_noise": f"cpu torch.Generator seeded {item.seed}",
            "refinement": f"{backbone.device.type} torch.Generator seeded {item.seed ^ REFINE_SEED_MIX}",
        },
        "refiner": refiner_settings(opts.refiner),
        "refinement": refinement(opts.refiner, [per_step]),
        "versions": versions,
        **({"encoding": encoding} if encoding else {}),
    }


def generate(backbone, opts: T2ISettings, items: Sequence[Prompted], height: int, width: int, on_step=None):
    """One batch of items → (PIL images, per-item refinement statistics): prepare → loop → decode."""
    import torch

    from diffier_cli.invariant import batch_invariant
    from diffier_cli.sampling import denoise, per_item_stats

    noise_generators, refine_generators = item_generators([item.seed for item in items], backbone.device)
    with batch_invariant(len(items), opts.batch_invariant), torch.no_grad():
        state = backbone.prepare(
            [item.prompt for item in items],
            negative_prompts=[item.negative_prompt or "" for item in items],
            cfg=opts.cfg,
            height=height,
            width=width,
            steps=opts.steps,
            ddim_eta=opts.ddim_eta,
            noise_generators=noise_generators,
        )
        trajectory = denoise(
            backbone,
            state,
            backbone.init_noise(state),
            refiner=opts.refiner,
            generators=refine_generators,
            on_step=on_step,
        )
        try:
            images = backbone.decode(trajectory.sample, state)
        except NumericalOverflow as exc:
            raise numerical_overflow(exc, "lower --cfg, or the refinement's --eta and --max-iters") from None
    return images, per_item_stats(trajectory.steps, len(items))


def check_settings(opts: T2ISettings) -> None:
    """Before any model loads: the scheduler's settings agree with each other, the refiner and the
    installed packages, and every LoRA is a safetensors file."""
    sampler = schedulers.SAMPLERS[opts.scheduler]
    if opts.ddim_eta and sampler.name != "ddim":
        raise UsageError("--ddim-eta is DDIM's η; drop it, or use --scheduler ddim (the ancestral samplers euler-a, "
                         "dpm2-a and the SDE ones add their own noise)")
    if opts.karras and not sampler.karras:
        usable = ", ".join(s.name for s in schedulers.SAMPLERS.values() if s.karras)
        raise UsageError(f"--karras: diffusers' {sampler.cls} ({sampler.name}) has no Karras sigmas; use one of {usable}")
    if opts.refiner is not None and opts.refiner.reapplies_steps and not sampler.reapplicable:
        usable = ", ".join(s.name for s in schedulers.SAMPLERS.values() if s.reapplicable)
        raise UsageError(f"--refiner {opts.refiner.name} applies each step again, which {sampler.name}'s scheduler does not "
                         f"allow (it keeps a step counter, a history of outputs or draws its own noise); use --scheduler {usable}")
    require(*sampler.requires, purpose=f"--scheduler {sampler.name}", extra="samplers")
    if opts.compile:
        check_compile(opts)
    if opts.config is not None and not Path(opts.model).expanduser().is_file():
        raise UsageError(f"--config gives a single-file checkpoint's configs; --model {excerpt(opts.model)} is not a file "
                         "(a diffusers folder or hub id carries its own)")
    for path, _ in opts.loras:
        if Path(path).suffix != ".safetensors" or not Path(path).is_file():
            raise UsageError(f"--lora {excerpt(path)}: no .safetensors file there (LoRAs load from safetensors only, "
                             "never unpickling; pass PATH or PATH:SCALE)")
    if opts.loras:
        require("peft", purpose="--lora", extra="lora")


def check_compile(opts: T2ISettings) -> None:
    """--compile with what it cannot work with, refused before loading: the kernels --batch-invariant
    splits, accelerate's offload hooks (which move weights inside the traced forward), and a
    PyTorch without Module.compile or Inductor's deterministic mode."""
    import torch

    if opts.batch_invariant:
        raise UsageError("--compile fuses the kernels that --batch-invariant runs one image at a time; "
                         "drop one of them (--compile: fast, the same bytes for the same --batch-size)")
    if opts.cpu_offload:
        raise UsageError("--compile cannot trace through --cpu-offload's hooks, which move weights during the forward; "
                         "drop one of them")
    import torch._inductor.config

    if not hasattr(torch.nn.Module, "compile") or not hasattr(torch._inductor.config, "deterministic"):
        raise UsageError(f"--compile needs a PyTorch with Module.compile and Inductor's deterministic mode; "
                         f"torch {torch.__version__} has not: upgrade torch, or drop --compile")


LORA_SCALE = 10.0  # beyond ±10 a LoRA's delta swamps the model it adapts


def parse_lora(text: str) -> tuple[str, float]:
    """--lora PATH[:SCALE] → (PATH, SCALE); the scale is 1 unless the text after the last ':' is a number."""
    path, _, tail = text.rpartition(":")
    try:
        scale = float(tail) if path else 1.0
    except ValueError:
        return text, 1.0
    if not math.isfinite(scale) or abs(scale) > LORA_SCALE:
        raise UsageError(f"--lora {excerpt(text)}: the scale {tail} is outside [-{LORA_SCALE:g}, {LORA_SCALE:g}]")
    return (path, scale) if path else (text, 1.0)

def load_backbone(opts: T2ISettings, local_rank: int | None, reporter: Reporter):
    """Stable Diffusion on the process's device, with the memory knobs applied (check_settings first)."""
    quiet_libraries(show_downloads=reporter.interactive)
    from models.sd import MemoryOptions, StableDiffusion, most_steps

    device = resolve_device(opts.device, local_rank)
    dtype = resolve_dtype(opts.dtype, device)
    reporter.message(f"loading {opts.model} on {device} ({str(dtype).removeprefix('torch.')})")
    backbone = StableDiffusion.load(
        opts.model,
        revision=opts.revision,
        device=device,
        dtype=dtype,
        offline=opts.offline,
        cache_dir=opts.cache_dir,
        memory=MemoryOptions(opts.cpu_offload, opts.vae_slicing, opts.vae_tiling, opts.attention_slicing),
        sampler=opts.scheduler,
        karras=opts.karras,
        loras=tuple((Path(path), scale) for path, scale in opts.loras),
        config=opts.config,
        compile=opts.compile,
    )
    usable = most_steps(backbone.scheduler, opts.steps)
    if usable < opts.steps:
        trained = backbone.scheduler.config.num_train_timesteps
        raise UsageError(f"--steps {opts.steps} leaves the {trained} timesteps {opts.model} was trained on; use at most {usable}")
    return backbone


def encode_image(image, image_format, image_record: dict) -> list[bytes]:
    """The image's file, with A1111's infotext where its format keeps it (on the writer thread)."""
    infotext = a1111_parameters(image_record)
    return [encode(image, image_format, image_record, {"parameters": infotext}, infotext)]


class TextToImage:
    """`diffier t2i` as a task: prompt lines → images, `batch_size` at a time."""

    name_single_item = False

    def __init__(self, options: T2IOptions):
        self.options = options
        self.batch_size = options.batch_size
        check_settings(options)
        self.image_format = choose(options.output, options.name, options.image_format, options.quality, options.lossless)
        self.prompts = read_prompts(options.prompt, options.prompts_file)

    def read(self, seed: int, mode: str) -> list[Prompted]:
        opts = self.options
        self.seed, self.mode = seed, mode
        return work_items(self.prompts, opts.num_images, opts.negative_prompt, seed, mode, self.image_format.suffixes)

    def plan(self, items: list[Prompted], shard: Shard) -> Plan:
        opts = self.options
        return plan_job(items, output=opts.output, name=opts.name, default_name=DEFAULT_NAME.removesuffix(".png") + self.image_format.suffix,
                        shard=shard, skip_existing=opts.skip_existing, overwrite=opts.overwrite, seed_given=opts.seed is not None,
                        batch_size=opts.batch_size, suffixes=self.image_format.suffixes)

    def check(self, item: Prompted, reporter: Reporter, several: bool) -> None:
        """A prompt line's problems are known when it is read."""

    def load(self, local_rank: int | None, reporter: Reporter) -> None:
        opts = self.options
        self.backbone = load_backbone(opts, local_rank, reporter)
        self.height = opts.height or self.backbone.native_size
        self.width = opts.width or self.backbone.native_size
        self.versions = library_versions()
        settings = {"seed": self.seed, "mode": self.mode, **model_identity(self.backbone, keep_paths=False), "cfg": opts.cfg, "steps": opts.steps,
                    "ddim_eta": opts.ddim_eta, "num_images": opts.num_images, "size": [self.width, self.height],
                    "negative_prompt": opts.negative_prompt, "batch_invariant": opts.batch_invariant,
                    "batch_size": opts.batch_size,  # the batched kernels round by batch: shards and resumes share it
                    "memory": self.backbone.memory.enabled(), "refiner": refiner_settings(opts.refiner),
                    **({"scheduler": opts.scheduler, "karras": opts.karras} if opts.scheduler != schedulers.DEFAULT or opts.karras else {}),
                    **({"compile": True} if opts.compile else {}),  # fused kernels round unlike eager ones
                    **({"loras": [(lora["sha256"], lora["scale"]) for lora in self.backbone.loras]} if self.backbone.loras else {}),
                    **self.image_format.encoding()}
        inputs = [(line.prompt, line.negative_prompt, line.seed, line.name) for line in self.prompts]
        self.job = {"id": job_id("t2i", inputs, settings), "count": len(self.prompts) * opts.num_images,
                    "batch_size": opts.batch_size}

    def progress(self, reporter: Reporter, pending: list, mode: str):
        return reporter.progress(total=len(pending) * self.options.steps, description=mode)

    def make(self, items: Sequence[Prompted], reporter: Reporter, plan: Plan) -> list[Made]:
        for item in items:
            dropped = self.backbone.dropped_prompt_text(item.prompt)
            if dropped:
                where = f"{self.label(item)}: " if plan.total > 1 else ""
                reporter.message(f"warning: {where}the prompt is too long for the text encoder; "
                                 f"{len(dropped)} characters ignored: {excerpt(dropped)}")
        images, stats = generate(self.backbone, self.options, items, self.height, self.width,
                                 on_step=lambda n=len(items): reporter.advance(n))
        made = []
        for item, image, per_step in zip(items, images, stats):
            image_record = record(self.options, self.backbone, item, self.height, self.width, per_step, self.versions, self.job,
                                  self.image_format)
            made.append(Made(image_record, partial(encode_image, image, self.image_format, image_record)))
        return made

    def label(self, item: Prompted) -> str:
        return f"item {item.index} (line {item.line})"
