"""`diffier t2i`: Stable Diffusion text to image, one image, a batch job, or a sweep grid."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffier_cli.commands.options import (
    SCHEDULER_DEFAULT, T2IKarras, T2ILora, T2IScheduler, parse_loras,
    BATCH, BATCH_OPTIONS, DIFFIER_OPTIONS, DType, Device, HalfOnCuda, HubCacheDir, IEC_OPTIONS, IMAGE_OPTIONS, MEMORY, MODEL, Name, OUTPUT,
    Offline, Overwrite, RecordPaths, REFINER_SWITCH, SAMPLING, SWEEP, T2IDDIMEta, T2IHeight, T2IConfig, T2IModel, T2INegativePrompt,
    T2IRevision, T2ISteps, T2IWidth, T2I_MODEL, between, fill, refiner, takes,
)
from diffier_cli.errors import EXIT_CODES_HELP
from diffier_cli.limits import MAX_BATCH, MAX_CFG, MAX_ITEMS

EPILOG = (
    "Examples: diffier t2i \"a puppy eating a cheeseburger\" --cfg 7.5 -o puppy.png ; "
    "diffier t2i \"a red bicycle\" --seed 7 --num-images 4 --baseline -o out/ ; "
    "diffier t2i --prompts-file prompts.jsonl -o out/ --batch-size 4 --skip-existing --keep-going ; "
    "diffier t2i \"a red bicycle\" -o bike.jpg --quality 90 . "
    + EXIT_CODES_HELP
)


@takes(BATCH_OPTIONS, after="overwrite")
@takes(IMAGE_OPTIONS, after="output")
@takes(REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="width")
def t2i(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw (or --prompts-file).", show_default=False)] = None,
    prompts_file: Annotated[Optional[str], typer.Option("--prompts-file", help="Many prompts: a .txt file (one a line) or .jsonl (prompt, and optional negative_prompt, seed, name a line); - for stdin.", rich_help_panel=BATCH)] = None,
    cfg: Annotated[float, typer.Option("--cfg", "--cfg-scale", callback=between(0, MAX_CFG), help="Classifier-free guidance scale ω, in [0, 100].", rich_help_panel=SAMPLING)] = 7.5,
    negative_prompt: T2INegativePrompt = None,
    steps: T2ISteps = 50,
    scheduler: T2IScheduler = SCHEDULER_DEFAULT,
    karras: T2IKarras = False,
    lora: T2ILora = None,
    ddim_eta: T2IDDIMEta = 0.0,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of item 0; item i uses seed+i (a .jsonl line's own seed s gives its images s, s+1, ...). Random when unset; always printed and stored.", rich_help_panel=SAMPLING)] = None,
    num_images: Annotated[int, typer.Option("--num-images", min=1, max=MAX_ITEMS, help="Images per prompt (item index = prompt line × this + image).", rich_help_panel=SAMPLING)] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH, help="Images per forward pass: faster per image on most devices. It never changes an image's noise; its pixels round by batch size (the same --batch-size gives the same bytes), unless --batch-invariant.", rich_help_panel=BATCH)] = 1,
    sweep_cfg: Annotated[Optional[str], typer.Option("--sweep-cfg", help="A grid instead of one image: rows baseline and refined, one column per ω (e.g. 3,5,7.5,10), same seed; -o names the grid (a PNG), the cells are written beside it as PNGs.", rich_help_panel=SWEEP)] = None,
    sweep_eta: Annotated[Optional[str], typer.Option("--sweep-eta", help="The same grid over the method's η (e.g. 0.01,0.05,0.1).", rich_help_panel=SWEEP)] = None,
    sweep_iters: Annotated[Optional[str], typer.Option("--sweep-iters", help="The same grid over --max-iters (e.g. 1,3,10).", rich_help_panel=SWEEP)] = None,
    batch_invariant: Annotated[bool, typer.Option("--batch-invariant/--no-batch-invariant", help="Run every batch-dependent kernel at one image's shape, so even a different --batch-size never changes a pixel (and batching gains nothing). Off, batches run the batched kernels: the same --batch-size gives the same bytes plain, sharded or resumed, and another batch size rounds differently (about 1/255).", rich_help_panel=BATCH)] = False,
    height: T2IHeight = None,
    width: T2IWidth = None,
    model: T2IModel = T2I_MODEL,
    revision: T2IRevision = None,
    config: T2IConfig = None,
    offline: Offline = False,
    cache_dir: HubCacheDir = None,
    device: Device = "auto",
    dtype: HalfOnCuda = DType.auto,
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="Keep one model component on the GPU at a time (diffusers' model CPU offload).", rich_help_panel=MEMORY)] = False,
    vae_slicing: Annotated[bool, typer.Option("--vae-slicing", help="Decode the images of a batch one at a time.", rich_help_panel=MEMORY)] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Decode large images in overlapping tiles (blended seams change pixels slightly).", rich_help_panel=MEMORY)] = False,
    attention_slicing: Annotated[bool, typer.Option("--attention-slicing", help="Compute attention in slices.", rich_help_panel=MEMORY)] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the UNet and VAE decoder (channels-last): each batch size compiles once (about a minute), then steps run faster; pixels round unlike eager ones but repeat run to run. Pays off on long jobs; see benchmarks/README.md.", rich_help_panel=MODEL)] = False,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="A .png, .jpg/.jpeg or .webp file for one image, or a folder (existing or ending in /) for many (default: the current folder, named {index:05d}-{seed}-{mode}-{slug}.png, or the --format's extension). A sweep writes a .png grid.", rich_help_panel=OUTPUT)] = None,
    name: Name = None,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    **shared,
) -> None:
    """Text to image on Stable Diffusion 2.1, refined by DiffIER at every step (or IEC with --refiner iec, or --baseline)."""
    from diffier_cli import task
    from diffier_cli.t2i import T2IOptions, TextToImage

    params = {**locals(), **shared}
    options = fill(T2IOptions, params, refiner=refiner(ctx, params), loras=parse_loras(lora), json=shared["json_lines"])
    sweeps = {name: value for name, value in (("cfg", sweep_cfg), ("eta", sweep_eta), ("iters", sweep_iters)) if value is not None}
    if len(sweeps) > 1:
        raise typer.BadParameter("sweep one thing at a time", param_hint="--sweep-cfg/--sweep-eta/--sweep-iters")
    if sweeps:
        from diffier_cli.sweep import parse_values, run_sweep

        ((parameter, values),) = sweeps.items()
        run_sweep(options, parameter, parse_values(parameter, values))
    else:
        task.run(TextToImage(options))
