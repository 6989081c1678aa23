"""`diffier t2i --baseline` against diffusers' StableDiffusionPipeline on the same model, one run.

Two ratios (ours / theirs, median over alternating repeats):
- end to end: the `diffier` command vs a Python process that imports diffusers, loads the
  pipeline, generates and saves a PNG (interpreter start, imports, loading, sampling, writing);
- sampling only, in one process: `diffier_cli.t2i.generate` vs `pipe(...)`, models loaded once.
On the tests' tiny model the UNet is cheap, so any per-step overhead of ours shows at its largest.

    python benchmarks/t2i_vs_pipeline.py [--model FOLDER] [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a puppy eating a cheeseburger"
PIPELINE_SCRIPT = """
import sys, torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
folder, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
image = pipe(%r, num_inference_steps=steps, guidance_scale=7.5, generator=[torch.Generator().manual_seed(0)]).images[0]
image.save(out)
""" % PROMPT


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def end_to_end(folder: Path, steps: int, repeats: int, scratch: Path) -> dict:
    diffier = str(Path(sys.executable).with_name("diffier"))
    ours, theirs = [], []
    for i in range(repeats):
        ours.append(wall([diffier, "t2i", PROMPT, "--model", str(folder), "--steps", str(steps), "--seed", "0",
                          "--baseline", "-q", "--overwrite", "-o", str(scratch / "ours.png")]))
        theirs.append(wall([sys.executable, "-c", PIPELINE_SCRIPT, str(folder), str(steps), str(scratch / "theirs.png")]))
    return {"diffier_s": statistics.median(ours), "pipeline_s": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs)}


def sampling_only(folder: Path, steps: int, repeats: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from diffier_cli.t2i import Prompted, T2ISettings, generate
    from models.sd import StableDiffusion

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    backbone = StableDiffusion.load(str(folder), revision=None, device=device, dtype=dtype)
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = backbone.native_size
    item = Prompted(index=0, seed=0, mode="baseline", stem="", slug="", prompt=PROMPT, negative_prompt=None, line=1)

    def options(batch_invariant: bool):
        return T2ISettings(negative_prompt=None, cfg=7.5, steps=steps, ddim_eta=0.0, batch_invariant=batch_invariant,
                           height=None, width=None, model=str(folder), revision=None, offline=True, device=str(device),
                           dtype="auto", refiner=None)

    def run_ours(opts):
        with torch.no_grad():
            return generate(backbone, opts, [item], size, size)[0][0]

    plain, invariant = options(False), options(True)
    ours = lambda: run_ours(plain)  # noqa: E731 - the pipeline's own kernels
    ours_invariant = lambda: run_ours(invariant)  # noqa: E731 - the CLI default

    def theirs():
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5,
                    generator=[torch.Generator().manual_seed(0)]).images[0]

    ours(), ours_invariant(), theirs()  # warm-up
    times = {"ours": [], "ours_invariant": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("ours_invariant", ours_invariant), ("theirs", theirs)):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    import numpy as np

    same = bool(np.array_equal(np.asarray(ours()), np.asarray(theirs())))
    return {"device": str(device), "diffier_s": statistics.median(times["ours"]),
            "pipeline_s": statistics.median(times["theirs"]),
            "ratio": statistics.median(times["ours"]) / statistics.median(times["theirs"]), "identical_pixels": same,
            "batch_invariant_s": statistics.median(times["ours_invariant"]),
            "batch_invariant_ratio": statistics.median(times["ours_invariant"]) / statistics.median(times["theirs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a diffusers SD folder (default: the tests' tiny model)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.model is None:
            from tests.tiny_sd import save_tiny_sd

            folder = save_tiny_sd(scratch / "models")["v_prediction"]
        else:
            folder = args.model
        result = {
            "model": str(args.model or "tiny (tests), v-prediction"),
            "steps": args.steps,
            "repeats": args.repeats,
            "sampling_only": sampling_only(folder, args.steps, args.repeats),
            "end_to_end": end_to_end(folder, args.steps, args.repeats, scratch),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
