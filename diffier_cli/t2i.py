"""`diffier t2i`: read prompts → plan outputs → load Stable Diffusion once → sample batches → write PNGs.

Item i of a run (prompt p, image j) has its own seed and generators, so which noise an image
gets depends on nothing but its seed: not on --batch-size, the shard or --baseline; with
--batch-invariant (the default) its pixels do not depend on the batch either.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from diffier_cli import __version__
from models import untrusted
from models.errors import NumericalOverflow
from diffier_cli.errors import UsageError, excerpt, numerical_overflow
from diffier_cli.jobs import JobRun, job_id, plan_job, resolve_shard, resume_hint, split_lines
from diffier_cli.limits import MAX_ITEMS
from diffier_cli.metadata import library_versions, png_text
from diffier_cli.outputs import name_problem, png_bytes, slugify, write_atomically
from diffier_cli.refiners import run_mode, summarize
from diffier_cli.refiners import settings as refiner_settings
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
    prompt: str | None
    prompts_file: str | None
    negative_prompt: str | None
    cfg: float
    steps: int
    ddim_eta: float
    num_images: int
    batch_size: int
    batch_invariant: bool
    height: int | None
    width: int | None
    model: str
    revision: str | None
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False


@dataclass(frozen=True)
class PromptLine:
    """One prompt of the input, or why its line could not be read."""

    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    name: str | None = None
    error: str | None = None


def _read_source(source: str) -> tuple[str, str]:
    """(text, label) of a prompts file or stdin."""
    label = "stdin" if source == "-" else source
    try:
        return untrusted.read_text(source), label
    except OSError as exc:
        raise UsageError(f"cannot read --prompts-file {source}: {exc.strerror or exc}") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"--prompts-file {label} {exc}") from None


def _jsonl_line(text: str, where: str) -> PromptLine:
    """One .jsonl line through the bounded reader: JSON that is malformed, too large or too deep
    makes the line a failed item like any other bad line, never a traceback."""
    try:
        entry = untrusted.loads(text)
    except untrusted.Refused as exc:
        return PromptLine(error=f"{where} {exc}")
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        return PromptLine(error=f'{where} has no "prompt" string')
    unknown = set(entry) - {"prompt", "negative_prompt", "seed", "name"}
    if unknown:
        return PromptLine(error=f"{where} has unknown key(s) {', '.join(sorted(unknown))}; use prompt, negative_prompt, seed, name")
    seed, name, negative = entry.get("seed"), entry.get("name"), entry.get("negative_prompt")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
        return PromptLine(error=f"{where}: seed {seed!r} is not an integer in 0..2**32-1")
    if name is not None:
        if not isinstance(name, str):
            why = f"{excerpt(json.dumps(name), 40)} is not a string"
        elif name.startswith("."):
            why = f"{excerpt(name)} would be a hidden file, which folder listings leave out; drop the leading '.'"
        else:
            why = name_problem(name)
        if why:
            return PromptLine(error=f"{where}: name {why}")
    if negative is not None and not isinstance(negative, str):
        return PromptLine(error=f"{where}: negative_prompt must be a string")
    return PromptLine(entry["prompt"], negative, seed, name)


def read_prompts(opts: T2IOptions) -> list[PromptLine]:
    """The prompts of the run, one per line of --prompts-file (.txt, or .jsonl with prompt,
    negative_prompt, seed, name), or the PROMPT argument. A bad line stays in the list as an
    error, so the line numbers, and with them every later item's index, seed and name, stay put."""
    if (opts.prompt is None) == (opts.prompts_file is None):
        raise UsageError("pass a PROMPT or --prompts-file FILE (one of them)")
    if opts.prompt is not None:
        if not opts.prompt.strip():
            raise UsageError("the prompt is empty; say what to draw")
        return [PromptLine(opts.prompt)]
    text, label = _read_source(opts.prompts_file)
    lines = split_lines(text, f"--prompts-file {label}")
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing blank line is the end of the file, not a prompt
    jsonl = opts.prompts_file.lower().endswith((".jsonl", ".ndjson")) or (label == "stdin" and lines and lines[0].lstrip().startswith("{"))
    prompts = []
    for number, line in enumerate(lines, 1):
        where = f"{label} line {number}"
        if not line.strip():
            prompts.append(PromptLine(error=f"{where} is empty"))
        elif jsonl:
            prompts.append(_jsonl_line(line, where))
        else:
            prompts.append(PromptLine(line.strip()))
    if not prompts:
        raise UsageError(f"--prompts-file {label} holds no prompts")
    return prompts


def work_items(prompts: list[PromptLine], opts: T2IOptions, seed: int, mode: str) -> list[dict]:
    """Item p·N + j is image j of prompt p; its seed is the line's seed + j, else seed + index."""
    if len(prompts) * opts.num_images > MAX_ITEMS:
        raise UsageError(
            f"{len(prompts)} prompt(s) × --num-images {opts.num_images} is over the {MAX_ITEMS} items one run plans; "
            "split the prompts file (every part keeps its own indices with --name) or lower --num-images"
        )
    items = []
    for p, line in enumerate(prompts):
        for j in range(opts.num_images):
            index = p * opts.num_images + j
            item_seed = line.seed + j if line.seed is not None else seed + index
            slug = slugify(line.prompt) if line.prompt else "invalid"
            item = {"index": index, "seed": item_seed, "slug": slug, "stem": line.name or slug, "mode": mode,
                    "prompt": line.prompt, "negative_prompt": line.negative_prompt if line.negative_prompt is not None else opts.negative_prompt,
                    "line": p + 1, "error": line.error}
            if line.name:
                base = line.name[:-4] if line.name.lower().endswith(".png") else line.name
                item["name"] = base if opts.num_images == 1 else f"{base}-{j}"
                problem = name_problem(item["name"] + ".png")
                if problem:  # the line fails alone, in its turn, under the template's name
                    item.update(error=f"line {p + 1}: name {problem}", name=None, stem=slug)
            items.append(item)
    return items


def _record(opts: T2IOptions, backbone, item: dict, height: int, width: int, per_step: dict, versions: dict, job: dict) -> dict:
    return {
        "tool": "diffier",
        "version": __version__,
        "command": "t2i",
        "prompt": item["prompt"],
        "negative_prompt": item["negative_prompt"] or "",
        "index": item["index"],
        "seed": item["seed"],
        "mode": item["mode"],
        "job": {**job, "index": item["index"], "line": item["line"]},
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
            "batch_invariant": opts.batch_invariant,
            "memory": backbone.memory.enabled(),
        },
        "rng": {
            "initial_noise": f"cpu torch.Generator seeded {item['seed']}",
            "refinement": f"{backbone.device.type} torch.Generator seeded {item['seed'] ^ REFINE_SEED_MIX}",
        },
        "refiner": refiner_settings(opts.refiner),
        "refinement": {"summary": summarize(opts.refiner, per_step), "per_step": per_step},
        "versions": versions,
    }


def generate(backbone, opts: T2IOptions, items: list[dict], height: int, width: int, on_step=None):
    """One batch of items → (PIL images, per-item refinement statistics): prepare → loop → decode."""
    from diffier_cli.invariant import batch_invariant
    from diffier_cli.sampling import denoise, per_item_stats

    noise_generators, refine_generators = item_generators([item["seed"] for item in items], backbone.device)
    with batch_invariant(len(items), opts.batch_invariant):
        state = backbone.prepare(
            [item["prompt"] for item in items],
            negative_prompts=[item["negative_prompt"] or "" for item in items],
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
        try:
            images = backbone.decode(trajectory.sample, state)
        except NumericalOverflow as exc:
            raise numerical_overflow(exc, "lower --cfg, or the refinement's --eta and --max-iters") from None
    return images, per_item_stats(trajectory.steps, len(items))


def load_backbone(opts: T2IOptions, local_rank: int | None, reporter: Reporter):
    """Stable Diffusion on the process's device, with the memory knobs applied."""
    quiet_libraries(show_downloads=reporter.interactive)
    from models.sd import MemoryOptions, StableDiffusion, most_steps

    device = resolve_device(opts.device, local_rank)
    dtype = resolve_dtype(opts.dtype, device)
    reporter.message(f"loading {opts.model} on {device} ({str(dtype).removeprefix('torch.')})")
    backbone = StableDiffusion.load(
        opts.model,
        revision=opts.revision,
        device=device,
        dtype=dtype,
        offline=opts.offline,
        cache_dir=opts.cache_dir,
        memory=MemoryOptions(opts.cpu_offload, opts.vae_slicing, opts.vae_tiling, opts.attention_slicing),
    )
    usable = most_steps(backbone.scheduler, opts.steps)
    if usable < opts.steps:
        trained = backbone.scheduler.config.num_train_timesteps
        raise UsageError(f"--steps {opts.steps} leaves the {trained} timesteps {opts.model} was trained on; use at most {usable}")
    return backbone


def _label(item: dict) -> str:
    return f"item {item['index']} (line {item['line']})"


def run(opts: T2IOptions) -> None:
    reporter = Reporter(opts.quiet)
    prompts = read_prompts(opts)
    seed = choose_seed(opts.seed)
    mode = run_mode(opts.refiner)
    items = work_items(prompts, opts, seed, mode)
    shard = resolve_shard(opts.shard)
    plan = plan_job(items, output=opts.output, name=opts.name, default_name=DEFAULT_NAME, shard=shard,
                    skip_existing=opts.skip_existing, overwrite=opts.overwrite, seed_given=opts.seed is not None)
    job = JobRun(plan, reporter, opts.json, opts.keep_going, resume=resume_hint(opts.seed is not None, seed))
    reporter.message(f"seed {seed}")
    job.announce()
    if all(planned.item["error"] for planned in plan.pending):  # nothing to draw: fail or finish without a model
        for planned in plan.pending:
            with job.attempt([planned], _label):
                raise UsageError(planned.item["error"])
        job.finish(_label)
        return

    import torch

    backbone = load_backbone(opts, shard.local_rank, reporter)
    height = opts.height or backbone.native_size
    width = opts.width or backbone.native_size
    versions = library_versions()
    settings = {"seed": seed, "mode": mode, "model": backbone.resolved.model_id, "revision": backbone.resolved.revision,
                "cfg": opts.cfg, "steps": opts.steps, "ddim_eta": opts.ddim_eta, "num_images": opts.num_images,
                "size": [width, height], "negative_prompt": opts.negative_prompt,
                "batch_invariant": opts.batch_invariant, "memory": backbone.memory.enabled(),
                "refiner": refiner_settings(opts.refiner)}
    job_fields = {"id": job_id("t2i", [(line.prompt, line.negative_prompt, line.seed, line.name) for line in prompts], settings),
                  "count": len(items)}

    with job.running(), reporter.progress(total=len(plan.pending) * opts.steps, description=mode), torch.no_grad():
        for batch in job.batches(opts.batch_size, alone=lambda item: bool(item["error"])):
            images = None
            with job.attempt(batch, _label):
                if batch[0].item["error"]:
                    raise UsageError(batch[0].item["error"])
                for planned in batch:
                    dropped = backbone.dropped_prompt_text(planned.item["prompt"])
                    if dropped:
                        where = f"{_label(planned.item)}: " if plan.total > 1 else ""
                        reporter.message(f"warning: {where}the prompt is too long for the text encoder; "
                                         f"{len(dropped)} characters ignored: {excerpt(dropped)}")
                started = time.perf_counter()
                images, stats = generate(
                    backbone, opts, [planned.item for planned in batch], height, width,
                    on_step=lambda n=len(batch): reporter.advance(n),
                )
                seconds = (time.perf_counter() - started) / len(batch)
            if images is None:
                continue
            for planned, image, per_step in zip(batch, images, stats):
                with job.attempt([planned], _label):  # each write on its own: one full disk fails one item
                    (path,) = planned.paths
                    record = _record(opts, backbone, planned.item, height, width, per_step, versions, job_fields)
                    write_atomically({path: png_bytes(image, png_text(record))}, planned.replace)
                    job.wrote()
                    if opts.json:
                        line = {"path": str(path), "wall_time_s": round(seconds, 3), **record}
                        print(json.dumps(line, ensure_ascii=False), file=sys.stdout, flush=True)
                    reporter.message(f"wrote {path} (seed {planned.item['seed']}, {mode}, {seconds:.1f} s)")
    job.finish(_label)
