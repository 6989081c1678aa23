"""`diffier gap`: the training-inference gap against an exact score, baseline and refined, over ω."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffier_cli.commands.options import (
    DIFFIER_FLAGS, DIFFIER_OPTIONS, IEC_FLAGS, IEC_OPTIONS, Overwrite, Quiet, REFINER, RefinerName, between, choices,
    given, iec_refiner, takes,
)
from diffier_cli.errors import EXIT_CODES_HELP
from diffier_cli.limits import MAX_CFG, MAX_GAP_ELEMENTS, TRAINING_TIMESTEPS
from models.mixture import MISFITS

EPILOG = ("Example: diffier gap --misfit over-sharp --json > sharp.json ; diffier gap --plot gap.png ; "
          "diffier gap --refiner diffier --refiner iec . " + EXIT_CODES_HELP)
Misfit = choices("Misfit", MISFITS)


@takes({name: DIFFIER_OPTIONS[name] for name in ("eta", "threshold", "max_iters")}, IEC_OPTIONS, after="refiner_choices")
def gap(
    ctx: typer.Context,
    misfit: Annotated[Misfit, typer.Option("--misfit", help="The model's error: components too broad (over-dispersed) or too sharp, means shifted, ε scaled, or none (exact).")] = Misfit("over-dispersed"),
    misfit_size: Annotated[float, typer.Option("--misfit-size", callback=between(0, 10), help="How large: σ × (1 + size) or ÷ (1 + size), shift by size along a random unit direction, ε × (1 + size).")] = 0.5,
    omegas: Annotated[str, typer.Option("--omegas", help="Guidance scales ω to sweep, comma-separated.")] = "1,2,3,5,7.5,10",
    dim: Annotated[int, typer.Option("--dim", min=1, max=4096, help="Data dimension d.")] = 8,
    classes: Annotated[int, typer.Option("--classes", min=2, max=1000, help="Classes K (the conditions; with one, guidance has nothing to do).")] = 4,
    components: Annotated[int, typer.Option("--components", min=1, max=1000, help="Gaussian components M per class.")] = 3,
    sigma: Annotated[float, typer.Option("--sigma", callback=between(0, 100, above=True), help="Standard deviation σ of every component.")] = 0.3,
    spread: Annotated[float, typer.Option("--spread", callback=between(0, 100, above=True), help="Standard deviation of the component means.")] = 1.0,
    n_samples: Annotated[int, typer.Option("--n-samples", min=2, max=20000, help="Samples per run (class i mod K); the energy distance holds n²/K² distances per class in memory.")] = 1000,
    steps: Annotated[int, typer.Option("--steps", min=1, max=TRAINING_TIMESTEPS - 1, help="DDIM steps on SD 2.1's schedule (T = 1000; its steps_offset of 1 leaves room for 999).")] = 50,
    refiner_choices: Annotated[list[RefinerName], typer.Option("--refiner", help="Rows besides the baseline: diffier (descent and ascent) or iec; repeat the option for both (none: the baseline alone).", rich_help_panel=REFINER)] = [RefinerName.diffier],  # noqa: B006 - typer copies it
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the problem, x_T and the refinement draws.")] = 0,
    plot_path: Annotated[Optional[str], typer.Option("--plot", help="Also write gap and log-likelihood against ω as a PNG (needs matplotlib, the package's plot extra).")] = None,
    overwrite: Overwrite = False,
    json_lines: Annotated[bool, typer.Option("--json", help="Print the whole result as one JSON object on stdout.")] = False,
    quiet: Quiet = False,
    **shared,
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
        stray = given(ctx, flags)
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

    params = {**locals(), **shared}
    opts = bench.GapOptions(misfit=misfit.value, misfit_size=misfit_size, omegas=parse_numbers(omegas, "--omegas", MAX_CFG),
                            dim=dim, classes=classes, components=components, sigma=sigma, spread=spread,
                            n_samples=n_samples, steps=steps, eta=shared["eta"], threshold=shared["threshold"], max_iters=shared["max_iters"], seed=seed,
                            diffier=RefinerName.diffier in refiner_choices,
                            iec=iec_refiner(params) if RefinerName.iec in refiner_choices else None)
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
