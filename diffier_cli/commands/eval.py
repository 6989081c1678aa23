"""`diffier eval t2i|sr|tts`: the paper's metrics of baseline against refined on the user's data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffier_cli.commands import sr as sr_options
from diffier_cli.commands import tts as tts_options
from diffier_cli.commands.options import (
    SCHEDULER_DEFAULT, T2IKarras, T2ILora, T2IScheduler, parse_loras,
    DIFFIER_OPTIONS, DType, Device, EVAL_REFINER_SWITCH, HalfOnCuda, HubCacheDir, IEC_OPTIONS, MODEL, OUTPUT, Offline,
    Overwrite, RecordPaths, Quiet, SAMPLING, T2IDDIMEta, T2IHeight, T2IConfig, T2IModel, T2INegativePrompt, T2IRevision, T2ISteps, T2IWidth,
    T2I_MODEL, between, fill, refiner, takes,
)
from diffier_cli.errors import EXIT_CODES_HELP
from diffier_cli.limits import MAX_SR_SCALE

app = typer.Typer(
    help="Score baseline against refined with the paper's metrics on your own data.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def seed_option(help: str) -> typer.models.OptionInfo:
    return typer.Option("--seed", min=0, max=2**32 - 1, help=help, rich_help_panel=SAMPLING)


def json_option(what: str) -> typer.models.OptionInfo:
    return typer.Option("--json", help=f"One JSON line per {what}, then a summary line, on stdout.", rich_help_panel=OUTPUT)


def csv_option(what: str) -> typer.models.OptionInfo:
    return typer.Option("--csv", help=f"Also write the per-{what} scores as CSV.", rich_help_panel=OUTPUT)


TTSSeed = Annotated[int, seed_option("Line i is synthesised with seed + i, baseline and refined alike.")]
T2ISeed = Annotated[int, seed_option("Prompt p is drawn with seed + p (or its .jsonl seed), in every cell of its grid.")]
SRSeed = Annotated[int, seed_option("Image i is upscaled with seed + i, baseline and refined alike.")]


@takes(EVAL_REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="seed")
@app.command(
    "tts",
    epilog="Example: diffier eval tts --text-file LJSpeech-1.1/metadata.csv --reference-dir LJSpeech-1.1/wavs --csv pesq.csv . " + EXIT_CODES_HELP,
)
def eval_tts(
    ctx: typer.Context,
    text_file: Annotated[str, typer.Option("--text-file", help="id|text lines (LJSpeech's metadata.csv layout; the last field is spoken).")],
    reference_dir: Annotated[str, typer.Option("--reference-dir", help="The recordings, <id>.wav at any rate (resampled to 16 kHz for PESQ).")],
    csv_path: Annotated[Optional[str], csv_option("utterance")] = None,
    steps: tts_options.Steps = tts_options.STEPS,
    temperature: tts_options.Temperature = tts_options.TEMPERATURE,
    length_scale: tts_options.LengthScale = tts_options.LENGTH_SCALE,
    stochastic: tts_options.Stochastic = False,
    speaker: tts_options.Speaker = None,
    pause: tts_options.Pause = tts_options.PAUSE,
    seed: TTSSeed = 0,
    checkpoint: tts_options.Checkpoint = None,
    pe_scale: tts_options.PEScale = tts_options.PE_SCALE,
    vocoder: tts_options.Vocoder = tts_options.VOCODER,
    offline: Offline = False,
    cache_dir: tts_options.CacheDir = None,
    device: Device = "auto",
    dtype: tts_options.FullPrecision = DType.auto,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    json_lines: Annotated[bool, json_option("utterance")] = False,
    quiet: Quiet = False,
    **shared,
) -> None:
    """Wideband PESQ of Grad-TTS speech against reference recordings, baseline and refined on the same seeds."""
    from pathlib import Path

    from diffier_cli.errors import UsageError
    from diffier_cli.eval_tts import EvalTTSOptions, run_eval

    if not Path(reference_dir).is_dir():
        raise UsageError(f"--reference-dir {reference_dir} is not a folder")
    params = {**locals(), **shared}
    run_eval(fill(EvalTTSOptions, params, refiner=refiner(ctx, params), json=json_lines), csv_path)


@takes(EVAL_REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="seed")
@app.command(
    "t2i",
    epilog="Example: diffier eval t2i --prompts-file prompts.txt --sweep-cfg 3,5,7.5,10 -o eval/ --csv clip.csv . " + EXIT_CODES_HELP,
)
def eval_t2i(
    ctx: typer.Context,
    prompts_file: Annotated[str, typer.Option("--prompts-file", help="The prompts: .txt (one a line) or .jsonl (prompt, and optional negative_prompt, seed, name); - for stdin.")],
    sweep_cfg: Annotated[str, typer.Option("--sweep-cfg", "--omegas", help="Guidance scales ω: one grid column each.")] = "3,5,7.5,10",
    clip_model: Annotated[str, typer.Option("--clip-model", help="The CLIP that scores: a hub id or a local transformers folder (safetensors weights).", rich_help_panel=MODEL)] = "openai/clip-vit-large-patch14",
    clip_revision: Annotated[Optional[str], typer.Option("--clip-revision", help="Hub branch, tag or commit of --clip-model (default: main).", rich_help_panel=MODEL)] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Folder for the grids and their cells (default: ./eval-t2i/).", rich_help_panel=OUTPUT)] = None,
    csv_path: Annotated[Optional[str], csv_option("image")] = None,
    negative_prompt: T2INegativePrompt = None,
    steps: T2ISteps = 50,
    scheduler: T2IScheduler = SCHEDULER_DEFAULT,
    karras: T2IKarras = False,
    lora: T2ILora = None,
    ddim_eta: T2IDDIMEta = 0.0,
    height: T2IHeight = None,
    width: T2IWidth = None,
    seed: T2ISeed = 0,
    model: T2IModel = T2I_MODEL,
    revision: T2IRevision = None,
    config: T2IConfig = None,
    offline: Offline = False,
    cache_dir: HubCacheDir = None,
    device: Device = "auto",
    dtype: HalfOnCuda = DType.auto,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    json_lines: Annotated[bool, json_option("image")] = False,
    quiet: Quiet = False,
    **shared,
) -> None:
    """CLIP score of baseline and refined Stable Diffusion images per ω, with each prompt's ω-sweep grid."""
    from diffier_cli.eval_t2i import EvalT2IOptions, run_eval
    from diffier_cli.sweep import parse_values

    params = {**locals(), **shared}
    chosen = refiner(ctx, params)
    omegas = parse_values("cfg", sweep_cfg)
    options = fill(EvalT2IOptions, params, cfg=omegas[0], refiner=chosen, loras=parse_loras(lora), json=json_lines)  # each grid column sets its own ω
    run_eval(options, omegas, clip_model, clip_revision, csv_path)


@takes(EVAL_REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="seed")
@app.command(
    "sr",
    epilog="Example: diffier eval sr --hr-dir DIV2K_valid_HR --scale 4 --blur-sigma 1.6 -o eval-sr/ --csv sr.csv . " + sr_options.LICENSE + " " + EXIT_CODES_HELP,
)
def eval_sr(
    ctx: typer.Context,
    hr_dir: Annotated[str, typer.Option("--hr-dir", help="A folder of high-resolution images (PNG, JPEG, WebP, BMP, TIFF), sorted by path; image i uses seed + i.")],
    scale: Annotated[int, typer.Option("--scale", min=1, max=int(MAX_SR_SCALE), help="Downscale factor of the degradation, and the upscale factor.", rich_help_panel=SAMPLING)] = 4,
    blur_kernel: Annotated[int, typer.Option("--blur-kernel", max=99, help="Gaussian kernel size (odd, at most 99) applied before downscaling.", rich_help_panel=SAMPLING)] = 7,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma", callback=between(0, 100), help="Gaussian std in HR pixels (0: no blur, the bicubic-only protocol).", rich_help_panel=SAMPLING)] = 1.6,
    metrics: Annotated[str, typer.Option("--metrics", help="Which scores: psnr, lpips, musiq, clipiqa (pyiqa, the iqa extra).")] = "psnr,lpips,musiq,clipiqa",
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Folder for each image's LR input and both results (default: ./eval-sr/).", rich_help_panel=OUTPUT)] = None,
    csv_path: Annotated[Optional[str], csv_option("image")] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Take the images of --hr-dir's sub-folders too.")] = False,
    preset: sr_options.PresetOption = sr_options.Preset.paper,
    sampler: sr_options.SamplerOption = None,
    steps: sr_options.Steps = None,
    ddim_eta: sr_options.DDIMEta = None,
    dec_w: sr_options.DecW = None,
    color_fix: sr_options.ColorFixOption = None,
    tile_size: sr_options.TileSize = None,
    tile_overlap: sr_options.TileOverlap = None,
    pixel_tile: sr_options.PixelTile = sr_options.PIXEL_TILE,
    pixel_stride: sr_options.PixelStride = sr_options.PIXEL_STRIDE,
    negative_prompt: sr_options.NegativePrompt = None,
    cfg: sr_options.Cfg = None,
    seed: SRSeed = 0,
    ckpt: sr_options.Ckpt = None,
    vae_ckpt: sr_options.VaeCkpt = None,
    tokenizer: sr_options.Tokenizer = sr_options.TOKENIZER,
    offline: Offline = False,
    cache_dir: HubCacheDir = None,
    device: Device = "auto",
    dtype: HalfOnCuda = DType.auto,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    json_lines: Annotated[bool, json_option("result")] = False,
    quiet: Quiet = False,
    **shared,
) -> None:
    """PSNR, LPIPS, MUSIQ and CLIP-IQA of baseline and refined StableSR on degraded copies of your HR images."""
    from pathlib import Path

    from diffier_cli.errors import UsageError
    from diffier_cli.eval_sr import Degradation, EvalSROptions, run_eval
    from diffier_cli.iqa import parse_metrics

    if not Path(hr_dir).is_dir():
        raise UsageError(f"--hr-dir {hr_dir} is not a folder")
    params = {**locals(), **shared}
    options = fill(EvalSROptions, params, **sr_options.settings(params), scale=float(scale), refiner=refiner(ctx, params), json=json_lines)
    run_eval(options, Degradation(scale, blur_kernel, blur_sigma), parse_metrics(metrics), csv_path)
