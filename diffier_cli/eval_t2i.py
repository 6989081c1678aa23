"""`diffier eval t2i`: CLIP score of baseline and refined images at each guidance scale ω.

Every prompt of --prompts-file is drawn as the grid of `t2i PROMPT --sweep-cfg` (rows baseline
and refined, one column per ω, all from the prompt's seed) into the -o folder, and every cell is
scored against its own prompt. The table gives, per ω, the mean over prompts of each row and
their difference: with one seed per prompt for both rows, that difference is paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffier_cli.clip_score import load_clip_score
from diffier_cli.errors import UsageError
from diffier_cli.metadata import library_versions
from diffier_cli.outputs import preflight
from diffier_cli.runtime import Reporter, RunOptions, quiet_libraries
from diffier_cli.scores import compared_modes, mean, print_json, print_table, write_csv
from diffier_cli.sweep import cell_paths, draw_sweep
from diffier_cli.t2i import Prompted, T2ISettings, read_prompts, work_items


@dataclass(frozen=True, kw_only=True)
class EvalT2IOptions(T2ISettings, RunOptions):
    """`diffier eval t2i`: Stable Diffusion's settings, the prompts and where the grids go."""

    prompts_file: str


def prompt_items(opts: EvalT2IOptions) -> list[Prompted]:
    """Prompt p (line p + 1) with seed = its .jsonl seed, else --seed + p; every line must be good."""
    items = work_items(read_prompts(None, opts.prompts_file), 1, opts.negative_prompt, opts.seed, "sweep")
    bad = [item.error for item in items if item.error]
    if bad:
        raise UsageError(f"{bad[0]}" + (f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""))
    return items


def run_eval(opts: EvalT2IOptions, omegas: list[float], clip_model: str, clip_revision: str | None, csv_path: str | None) -> None:
    from diffier_cli.runtime import resolve_device
    from diffier_cli.t2i import check_settings, load_backbone

    modes = compared_modes(opts.refiner, "eval t2i")
    check_settings(opts)
    items = prompt_items(opts)
    folder = Path(opts.output or "eval-t2i")
    if folder.suffix.lower() == ".png" or "{" in str(folder):
        raise UsageError(f"-o {folder}: eval writes a grid per prompt; pass a folder")
    grids = [folder / f"{item.index:05d}-{item.seed}-{item.name or item.slug}.png" for item in items]
    planned = [path for grid in grids for path in (grid, *cell_paths(grid, "cfg", omegas, modes).values())]
    preflight(planned + ([Path(csv_path)] if csv_path else []), opts.overwrite)
    reporter = Reporter(opts.quiet)
    quiet_libraries(show_downloads=reporter.interactive)

    scorer, clip_record = load_clip_score(clip_model, clip_revision, opts.offline, opts.cache_dir, resolve_device(opts.device))
    backbone = load_backbone(opts, None, reporter)
    versions = library_versions()
    rows = []
    for item, grid in zip(items, grids):
        images, records = draw_sweep(backbone, opts, "cfg", omegas, item, grid, reporter, versions, opts.overwrite)
        for record in records:
            omega, mode = record["sweep"]["value"], record["mode"]
            row = {"index": item.index, "line": item.line, "prompt": item.prompt, "seed": item.seed,
                   "cfg": omega, "mode": mode, "clip_score": scorer(images[omega, mode], item.prompt),
                   "path": record["path"]}
            rows.append(row)
            if opts.json:
                print_json(row)
            reporter.message(f"{item.index:05d} ω = {omega:g} {mode}: CLIP score {row['clip_score']:.3f}")

    means = {(omega, mode): mean([r["clip_score"] for r in rows if r["cfg"] == omega and r["mode"] == mode])
             for omega in omegas for mode in modes}
    print_table(f"CLIP score ({clip_model}), mean over {len(items)} prompt(s)", ["ω", *modes, f"{modes[1]} − baseline"],
                [[f"{omega:g}", *(f"{means[omega, mode]:.3f}" for mode in modes), f"{means[omega, modes[1]] - means[omega, 'baseline']:+.3f}"]
                 for omega in omegas], opts.quiet)
    if opts.json:
        summary = {"prompts": len(items), "clip_model": clip_record, "refiner": opts.refiner.settings(), "steps": opts.steps,
                   "mean_clip_score": [{"cfg": omega, **{mode: means[omega, mode] for mode in modes}} for omega in omegas]}
        print_json({"summary": summary})
    if csv_path is not None:
        write_csv(rows, Path(csv_path), opts.overwrite)
