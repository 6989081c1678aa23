"""Model evaluations and wall time of IEC against DiffIER and the baseline, in one process.

The same model (the tests' tiny ε-prediction SD unless --model), prompt, seed and steps for every
refiner; `diffier_cli.t2i.generate` as `diffier t2i` runs it. UNet forwards are counted by
wrapping the UNet (with CFG one guided ε̂ is one forward on the doubled batch), and compared with
the count IEC's record reports. Times are taken over alternating repeats, ratios to the baseline:
the CPU time of this thread (torch on one thread by default, so all of the work runs on it), which a
busy shared machine disturbs far less than wall time, and the wall time beside it; min over repeats.

    python benchmarks/refiner_cost.py [--model FOLDER] [--steps 50] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a red bicycle"  # fits the tiny tokenizer's 16 tokens


def refiners() -> dict:
    from diffier_cli.iec import IEC
    from diffier_cli.refine import DiffIER

    return {
        "baseline": None,
        "diffier (defaults)": DiffIER(),
        "iec ldm (K 3, tol 1e-6)": IEC.from_variant("ldm"),
        "iec ldm, tol 0 (no early stop)": IEC.from_variant("ldm", tol=0.0),
        "iec ddpm (K 2, tol 1e-3)": IEC.from_variant("ddpm"),
        "iec ldm, first-last:5": IEC.from_variant("ldm", steps="first-last:5"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers SD folder (default: the tests' tiny ε model, built in a temp folder)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: thread CPU time is all the work)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from diffier_cli.refiners import summarize
    from diffier_cli.t2i import Prompted, T2ISettings, generate
    from models.sd import StableDiffusion

    with tempfile.TemporaryDirectory() as scratch:
        if args.model is None:
            from tests.tiny_sd import save_tiny_sd

            folder = save_tiny_sd(Path(scratch))["epsilon"]
        else:
            folder = Path(args.model)
        backbone = StableDiffusion.load(str(folder), revision=None, device=torch.device("cpu"), dtype=torch.float32)
    forwards = []
    unet_forward = backbone.pipe.unet.forward
    backbone.pipe.unet.forward = lambda *a, **k: forwards.append(1) or unet_forward(*a, **k)
    size = backbone.native_size
    item = Prompted(index=0, seed=0, mode="baseline", stem="", slug="", prompt=PROMPT, negative_prompt=None, line=1)
    base = T2ISettings(negative_prompt=None, cfg=7.5, steps=args.steps, ddim_eta=0.0, batch_invariant=True, height=None,
                       width=None, model=str(folder), revision=None, offline=True, device="cpu", dtype="auto", refiner=None)

    settings = refiners()
    cpu = {name: [] for name in settings}
    wall = {name: [] for name in settings}
    counts, reported = {}, {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
        for name, refiner in settings.items():
            forwards.clear()
            start, start_cpu = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                _, (per_step,) = generate(backbone, replace(base, refiner=refiner), [item], size, size)
            if repeat:
                cpu[name].append(time.thread_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
            counts[name] = len(forwards)
            reported[name] = summarize(refiner, per_step).get("model_evaluations")
    rows = [{"refiner": name, "unet_forwards": counts[name], "record_model_evaluations": reported[name],
             "evaluations_ratio": counts[name] / counts["baseline"],
             "cpu_s": min(cpu[name]), "cpu_ratio": min(cpu[name]) / min(cpu["baseline"]),
             "wall_s": min(wall[name]), "wall_ratio": min(wall[name]) / min(wall["baseline"])} for name in settings]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
                      "repeats": args.repeats, "model": str(args.model or "tiny ε (tests)"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
