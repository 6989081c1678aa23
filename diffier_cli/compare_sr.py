"""`diffier sr IMAGE --compare`: the bicubic input, the baseline and the refined result side by side.

Both runs use the same seed (the same LR posterior sample, x_T and sampler noise), so the panels
differ only by the refinement. `--crop X,Y,W,H` adds a row with that region of each panel
enlarged (nearest neighbour, so the pixels are shown as they are).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import UsageError, excerpt
from diffier_cli.formats import refuse_other_than_png
from diffier_cli.grid import compose
from diffier_cli.jobs import job_id, refuse_batch_options
from diffier_cli.outputs import png_bytes, preflight, write_atomically
from diffier_cli.runtime import Reporter, choose_seed
from diffier_cli.scores import compared_modes

ZOOM_WIDTH = 256


def parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--crop {excerpt(text)} is not X,Y,W,H in output pixels (e.g. --crop 100,80,64,64)") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise UsageError(f"--crop {excerpt(text)}: need X, Y >= 0 and W, H >= 1")
    return x, y, w, h


def run_compare(opts, crop: tuple[int, int, int, int] | None) -> None:
    from PIL import Image

    from diffier_cli.sr import Picture, check_settings, geometry, load_model, output_bytes, read_image, record, upscale

    if len(opts.inputs) != 1 or Path(opts.inputs[0]).is_dir():
        raise UsageError("--compare upscales one image file; pass exactly one")
    baseline, refined = compared_modes(opts.refiner, "--compare")
    refuse_batch_options(opts, "--compare")
    refuse_other_than_png(opts, "--compare")
    check_settings(opts)
    if opts.output is not None and not (opts.output.endswith("/") or Path(opts.output).is_dir()):
        raise UsageError(f"-o {opts.output}: --compare writes three files; pass a folder (ending in /)")
    reporter = Reporter(opts.quiet)
    source = Path(opts.inputs[0])
    image = read_image(source)
    (out_w, out_h), _ = geometry(*image.rgb.size, opts)
    if crop is not None and (crop[0] + crop[2] > out_w or crop[1] + crop[3] > out_h):
        raise UsageError(f"--crop {','.join(map(str, crop))} leaves the {out_w}×{out_h} output")
    seed = choose_seed(opts.seed)
    folder = Path(opts.output or ".")
    stem = f"{source.stem}-x{opts.scale:g}"
    paths = {mode: folder / f"{stem}-{mode}.png" for mode in (baseline, refined, "compare")}
    preflight(list(paths.values()), opts.overwrite)
    reporter.message(f"seed {seed}")

    model, negative = load_model(opts, None, reporter)
    settings = {"seed": seed, "scale": opts.scale, "preset": opts.preset, "refiner": opts.refiner.settings()}
    job = {"id": job_id("sr-compare", [str(source)], settings), "count": 2}
    outputs = {}
    for index, mode in enumerate((baseline, refined)):
        run = replace(opts, refiner=None if mode == baseline else opts.refiner)
        item = Picture(index=index, seed=seed, mode=mode, stem=source.stem, slug=source.stem, input=str(source))
        output, details = upscale(model, image.rgb, image.alpha, image.mode, seed, negative, run, reporter, mode)
        made = record(run, model, negative, item, image.rgb.size, output.size, details, job, image.orientation)
        write_atomically({paths[mode]: output_bytes(output, image.text, made)}, opts.overwrite)
        outputs[mode] = output
        if opts.json:
            print(json.dumps({"path": str(paths[mode]), **made}, ensure_ascii=False), flush=True)
        reporter.message(f"wrote {paths[mode]}")

    panels = [image.rgb.resize((out_w, out_h), Image.Resampling.BICUBIC), outputs[baseline], outputs[refined]]
    rows, row_labels = [panels], [""]
    if crop is not None:
        x, y, w, h = crop
        zoom = (ZOOM_WIDTH, max(1, round(ZOOM_WIDTH * h / w)))
        rows.append([panel.crop((x, y, x + w, y + h)).resize(zoom, Image.Resampling.NEAREST) for panel in panels])
        row_labels.append("zoom")
    grid = compose(rows, ["input (bicubic)", baseline, refined], row_labels)
    grid_record = {"tool": "diffier", "version": __version__, "command": "sr", "compare": {
        "input": str(source), baseline: str(paths[baseline]), refined: str(paths[refined]),
        "seed": seed, "crop": crop, "refiner": opts.refiner.settings()}}
    write_atomically({paths["compare"]: png_bytes(grid, {"diffier": json.dumps(grid_record, ensure_ascii=False)})}, opts.overwrite)
    reporter.message(f"wrote {paths['compare']}")
