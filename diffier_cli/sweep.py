"""`diffier t2i --sweep-cfg/--sweep-eta/--sweep-iters`: the paper's Fig. 3 layout, one labelled grid.

Rows are baseline and refined, columns the swept values, every cell from the same seed, so a
column differs only by the refinement and a row only by the swept value. Each cell is also
written as its own PNG with its own record; the grid's record lists them.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import UsageError, excerpt
from diffier_cli.formats import refuse_other_than_png
from diffier_cli.grid import compose
from diffier_cli.jobs import job_id, refuse_batch_options
from diffier_cli.metadata import a1111_parameters, library_versions, png_text
from diffier_cli.refiners import a1111_pairs
from diffier_cli.outputs import png_bytes, preflight, slugify, write_atomically
from diffier_cli.limits import MAX_CFG, MAX_ETA, MAX_REFINE_ITERS, MAX_SWEEP_VALUES
from diffier_cli.runtime import Reporter, choose_seed
from diffier_cli.scores import compared_modes

SWEPT = {"cfg": "ω", "eta": "η", "iters": "max-iters"}


def parse_numbers(text: str, option: str, high: float) -> list[float]:
    """A comma-separated list of at most MAX_SWEEP_VALUES distinct finite numbers in [0, high],
    or a one-line usage error."""
    parts = text.split(",")
    if len(parts) > MAX_SWEEP_VALUES:
        raise UsageError(f"{option} lists {len(parts)} values; at most {MAX_SWEEP_VALUES} values (grid columns) fit one run")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise UsageError(f"{option} {excerpt(text)} is not a comma-separated list of numbers, e.g. 1,2,3,5,7.5,10") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise UsageError(f"{option} {excerpt(text)}: values must be finite and >= 0")
    if max(values) > high:
        raise UsageError(f"{option} {excerpt(text)}: {max(values):g} is too large; values are at most {high:g}")
    if len(set(values)) != len(values):
        raise UsageError(f"{option} {excerpt(text)} repeats a value")
    return values


# The largest value each sweep takes: the bound of the option it sweeps.
SWEEP_BOUNDS = {"cfg": MAX_CFG, "eta": MAX_ETA, "iters": MAX_REFINE_ITERS}


def parse_values(parameter: str, text: str) -> list[float]:
    values = parse_numbers(text, f"--sweep-{parameter}", SWEEP_BOUNDS[parameter])
    if parameter == "iters" and any(v < 1 or v != int(v) for v in values):
        raise UsageError(f"--sweep-iters {excerpt(text)}: iterations are whole numbers >= 1")
    if len({f"{v:g}" for v in values}) != len(values):
        raise UsageError(f"--sweep-{parameter} {excerpt(text)}: values too close to tell apart in file names")
    return values


def _cell_options(opts, parameter: str, value: float, refined: bool):
    """The run options of one cell: the swept value set, the refiner on or off."""
    refiner = opts.refiner if refined else None
    if parameter == "cfg":
        return replace(opts, cfg=value, refiner=refiner)
    if not refined:
        return replace(opts, refiner=None)
    field = opts.refiner.sweepable[parameter]
    return replace(opts, refiner=replace(opts.refiner, **{field: int(value) if parameter == "iters" else value}))


def grid_axes(refined: dict, parameter: str, values: list[float], modes: tuple[str, str]) -> dict[str, str]:
    """A grid's axes as AUTOMATIC1111's X/Y/Z plot script writes them into its grid's infotext
    (scripts/xyz_grid.py: Script, X Type, X Values, Y Type, Y Values); the rest of the text is the
    first refined cell's, so a reader shows the grid's prompt, seed and model."""
    refiner = next(iter(a1111_pairs(refined["refiner"], refined["mode"])))  # the headline key: DiffIER, IEC
    label = {"cfg": "CFG Scale", "eta": f"{refiner} eta", "iters": f"{refiner} max iters"}[parameter]
    return {"Script": "X/Y/Z plot", "X Type": label, "X Values": ", ".join(f"{value:g}" for value in values),
            "Y Type": refiner, "Y Values": ", ".join(modes)}


def cell_paths(grid_path: Path, parameter: str, values: list[float], modes: tuple[str, str]) -> dict[tuple[float | None, str], Path]:
    """Where each cell of a grid is written, beside the grid. The baseline depends on ω but not
    on the refiner's η or iterations, so an η or iterations sweep has one baseline cell (value None)."""
    baseline_values = values if parameter == "cfg" else [None]
    cells = [(value, modes[0]) for value in baseline_values] + [(value, modes[1]) for value in values]
    return {
        (value, mode): grid_path.with_name(f"{grid_path.stem}-{mode}.png" if value is None else f"{grid_path.stem}-{parameter}{value:g}-{mode}.png")
        for value, mode in cells
    }


def draw_sweep(backbone, opts, parameter: str, values: list[float], prompt, grid_path: Path, reporter, versions: dict,
               overwrite: bool) -> tuple[dict, list[dict]]:
    """Draw every cell of one prompt's grid (a t2i.Prompted) from its seed, write the cells and the
    grid; return the images by (value, mode) and the cells' records."""
    import torch

    from diffier_cli.t2i import generate, model_identity, record

    modes = compared_modes(opts.refiner, f"--sweep-{parameter}")
    paths = cell_paths(grid_path, parameter, values, modes)
    height, width = opts.height or backbone.native_size, opts.width or backbone.native_size
    settings = {"seed": prompt.seed, "prompt": prompt.prompt, "negative_prompt": prompt.negative_prompt,
                "parameter": parameter, "values": values, **({} if parameter == "cfg" else {"cfg": opts.cfg}),
                "steps": opts.steps, **model_identity(backbone, keep_paths=False),
                "refiner": opts.refiner.settings()}
    job = {"id": job_id("t2i-sweep", [prompt.prompt], settings), "count": len(paths)}
    images, records = {}, []
    with torch.no_grad():
        for index, (value, mode) in enumerate(paths):
            cell = _cell_options(opts, parameter, value, mode != "baseline")
            item = replace(prompt, index=index, mode=mode)
            (image,), (per_step,) = generate(backbone, cell, [item], height, width)
            cell_record = record(cell, backbone, item, height, width, per_step, versions, job)
            cell_record["sweep"] = {"parameter": parameter, "value": value}
            write_atomically({paths[value, mode]: png_bytes(image, png_text(cell_record))}, overwrite)
            images[value, mode] = image
            records.append({"path": str(paths[value, mode]), **cell_record})
            shown = "" if value is None else f"{SWEPT[parameter]} = {value:g}, "
            reporter.message(f"wrote {paths[value, mode]} ({shown}{mode})")
    rows = [[images[value if parameter == "cfg" else None, modes[0]] for value in values],
            [images[value, modes[1]] for value in values]]
    grid = compose(rows, [f"{parameter} {value:g}" for value in values], list(modes))  # ASCII: Pillow's built-in font has no Greek
    grid_record = {"tool": "diffier", "version": __version__, "command": "t2i", "sweep": settings,
                   "cells": [{"mode": mode, "value": value, "file": path.name} for (value, mode), path in paths.items()]}
    first_refined = next(cell for cell in records if cell["mode"] == modes[1])
    text = {"parameters": a1111_parameters(first_refined, grid_axes(first_refined, parameter, values, modes)),
            "diffier": json.dumps(grid_record, ensure_ascii=False)}
    write_atomically({grid_path: png_bytes(grid, text)}, overwrite)
    reporter.message(f"wrote {grid_path} (2 rows × {len(values)} columns)")
    return images, records


def run_sweep(opts, parameter: str, values: list[float]) -> None:
    from diffier_cli.t2i import Prompted, check_settings, load_backbone

    if opts.prompt is None or opts.num_images != 1:
        raise UsageError(f"--sweep-{parameter} draws one PROMPT; drop --prompts-file and --num-images")
    modes = compared_modes(opts.refiner, f"--sweep-{parameter}")
    if parameter != "cfg" and parameter not in opts.refiner.sweepable:
        raise UsageError(f"--sweep-{parameter} sweeps a DiffIER setting; with --refiner {opts.refiner.name} sweep ω (--sweep-cfg)")
    refuse_batch_options(opts, f"--sweep-{parameter}")
    refuse_other_than_png(opts, f"--sweep-{parameter}")
    check_settings(opts)
    reporter = Reporter(opts.quiet)
    seed = choose_seed(opts.seed)
    grid_path = Path(opts.output or f"sweep-{parameter}-{seed}-{slugify(opts.prompt)}.png")
    if grid_path.suffix.lower() != ".png" or "{" in str(grid_path):
        raise UsageError(f"-o {grid_path}: a sweep writes one grid; pass a .png file name")
    preflight([grid_path, *cell_paths(grid_path, parameter, values, modes).values()], opts.overwrite)
    reporter.message(f"seed {seed}")
    backbone = load_backbone(opts, None, reporter)
    slug = slugify(opts.prompt)
    prompt = Prompted(index=0, seed=seed, mode="sweep", stem=slug, slug=slug, prompt=opts.prompt,
                      negative_prompt=opts.negative_prompt, line=1)
    _, records = draw_sweep(backbone, opts, parameter, values, prompt, grid_path, reporter, library_versions(), opts.overwrite)
    if opts.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False), flush=True)
