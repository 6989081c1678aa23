"""`diffier t2i`: plan outputs → load Stable Diffusion → sample each batch → write PNGs.

Item i of a run has seed + i and its own generators, so which noise an image gets depends on
nothing but its seed: not on --num-images, --batch-size or --baseline.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.metadata import library_versions, png_text
from diffier_cli.outputs import plan_outputs, png_bytes, preflight, slugify, write_atomically
from diffier_cli.runtime import (
    RunOptions,
    REFINE_SEED_MIX,
    Reporter,
    choose_seed,
    item_generators,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)

DEFAULT_NAME = "{index:05d}-{seed}-{mode}-{slug}.png"


@dataclass(frozen=True)
class T2IOptions(RunOptions):
    prompt: str
    negative_prompt: str | None
    cfg: float
    steps: int
    ddim_eta: float
    num_images: int
    batch_size: int
    height: int | None
    width: int | None
    model: str
    revision: str | None


def _record(opts: T2IOptions, backbone, item: dict, height: int, width: int, per_step: dict, versions: dict) -> dict:
    from diffier_cli.sampling import summarize

    return {
        "tool": "diffier",
        "version": __version__,
        "command": "t2i",
        "prompt": opts.prompt,
        "negative_prompt": opts.negative_prompt or "",
        "index": item["index"],
        "seed": item["seed"],
        "mode": item["mode"],
        "model": {
            "id": backbone.resolved.model_id,
            "revision": backbone.resolved.revision,
            "prediction_type": backbone.prediction_type,
        },
        "params": {
            "cfg": opts.cfg,
            "steps": opts.steps,
            "scheduler": "DDIM",
            "ddim_eta": opts.ddim_eta,
            "height": height,
            "width": width,
            "device": str(backbone.device),
            "dtype": str(backbone.dtype).removeprefix("torch."),
        },
        "rng": {
            "initial_noise": f"cpu torch.Generator seeded {item['seed']}",
            "refinement": f"{backbone.device.type} torch.Generator seeded {item['seed'] ^ REFINE_SEED_MIX}",
        },
        "refiner": None if opts.refiner is None else opts.refiner.settings(),
        "refinement": {"summary": summarize(per_step), "per_step": per_step},
        "versions": versions,
    }


def generate(backbone, opts: T2IOptions, seeds: list[int], height: int, width: int, on_step=None):
    """One batch, seeds → (PIL images, per-item refinement statistics): prepare → loop → decode."""
    from diffier_cli.sampling import denoise, per_item_stats

    noise_generators, refine_generators = item_generators(seeds, backbone.device)
    state = backbone.prepare(
        opts.prompt,
        negative_prompt=opts.negative_prompt,
        cfg=opts.cfg,
        height=height,
        width=width,
        steps=opts.steps,
        ddim_eta=opts.ddim_eta,
        noise_generators=noise_generators,
    )
    trajectory = denoise(
        backbone,
        state,
        backbone.init_noise(state),
        refiner=opts.refiner,
        generators=refine_generators,
        on_step=on_step,
    )
    images = backbone.decode(trajectory.sample, state)
    return images, per_item_stats(trajectory.steps, len(seeds))


def run(opts: T2IOptions) -> None:
    reporter = Reporter(opts.quiet)
    seed = choose_seed(opts.seed)
    mode = "baseline" if opts.refiner is None else "refined"
    slug = slugify(opts.prompt)
    items = [{"index": i, "seed": seed + i, "slug": slug, "stem": slug, "mode": mode} for i in range(opts.num_images)]
    paths = plan_outputs(opts.output, items, DEFAULT_NAME)
    preflight(paths, opts.overwrite)
    reporter.message(f"seed {seed}")

    quiet_libraries(show_downloads=reporter.interactive)
    import torch

    from models.sd import StableDiffusion

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    reporter.message(f"loading {opts.model} on {device} ({str(dtype).removeprefix('torch.')})")
    backbone = StableDiffusion.load(
        opts.model,
        revision=opts.revision,
        device=device,
        dtype=dtype,
        offline=opts.offline,
        cache_dir=opts.cache_dir,
    )
    height = opts.height or backbone.native_size
    width = opts.width or backbone.native_size
    versions = library_versions()
    dropped = backbone.dropped_prompt_text(opts.prompt)
    if dropped:
        reporter.message(f"warning: the prompt is too long for the text encoder; ignored: {dropped!r}")

    with reporter.progress(total=opts.num_images * opts.steps, description=mode), torch.no_grad():
        for start in range(0, len(items), opts.batch_size):
            batch = items[start : start + opts.batch_size]
            started = time.perf_counter()
            images, stats = generate(
                backbone, opts, [item["seed"] for item in batch], height, width,
                on_step=lambda n=len(batch): reporter.advance(n),
            )
            seconds = (time.perf_counter() - started) / len(batch)
            for item, image, per_step in zip(batch, images, stats):
                path: Path = paths[item["index"]]
                record = _record(opts, backbone, item, height, width, per_step, versions)
                write_atomically({path: png_bytes(image, png_text(record))}, opts.overwrite)
                if opts.json:
                    line = {"path": str(path), "wall_time_s": round(seconds, 3), **record}
                    print(json.dumps(line, ensure_ascii=False), file=sys.stdout, flush=True)
                reporter.message(f"wrote {path} (seed {item['seed']}, {mode}, {seconds:.1f} s)")
