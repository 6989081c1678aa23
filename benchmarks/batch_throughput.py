"""Batch jobs: items per second against --batch-size, the tool's own share of the wall time, and
two processes against one, all on the tests' tiny Stable Diffusion model (or --model FOLDER).

1. items/s for --batch-size 1, 2, 4, 8, with and without --batch-invariant, in one process with the
   model loaded once (`diffier_cli.task.run` of the t2i task, outputs written as the CLI writes them);
2. the tool's overhead per item: wall time of the item loop minus the time inside the model
   forwards (text encoder, UNet, VAE decoder; measured with forward hooks), as a share of it;
3. 16 items as one `diffier` process against `torchrun --nproc-per-node 2` (one thread each), and
   against one process with one thread.

    python benchmarks/batch_throughput.py [--model FOLDER] [--items 16] [--steps 20] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def options(model: Path, prompts: Path, out: Path, steps: int, size: int, batch_size: int, invariant: bool):
    from diffier_cli.refine import DiffIER
    from diffier_cli.t2i import T2IOptions

    return T2IOptions(
        prompt=None, prompts_file=str(prompts), negative_prompt=None, cfg=7.5, steps=steps, ddim_eta=0.0,
        num_images=1, batch_size=batch_size, batch_invariant=invariant, height=size, width=size,
        model=str(model), revision=None, seed=0, output=f"{out}/", overwrite=True, offline=True,
        device="cpu", dtype="float32", refiner=DiffIER(eta=0.05, threshold=1e-3, max_iters=1, direction="descent"),
        quiet=True,
    )


class ForwardClock:
    """Seconds spent inside the top-level forwards of the given modules."""

    def __init__(self, modules):
        self.seconds = 0.0
        self._start = 0.0
        for module in modules:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start


def in_process(model: Path, prompts: Path, items: int, steps: int, size: int, repeats: int) -> dict:
    """Items/s per batch size and mode, and the overhead share, with the model loaded once."""
    import torch

    from diffier_cli import task
    from diffier_cli.t2i import TextToImage
    from models.sd import StableDiffusion

    loaded = StableDiffusion.load(str(model), revision=None, device=torch.device("cpu"), dtype=torch.float32)
    components = (loaded.pipe.text_encoder, loaded.pipe.unet, loaded.pipe.vae.decoder)
    clock = ForwardClock(components)
    original_load = StableDiffusion.load
    StableDiffusion.load = classmethod(lambda cls, *a, **k: loaded)  # time the item loop, not loading
    results = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for invariant in (True, False):
                for batch_size in (1, 2, 4, 8):
                    opts = options(model, prompts, Path(scratch), steps, size, batch_size, invariant)
                    task.run(TextToImage(opts))  # warm-up
                    walls, forwards = [], []
                    for _ in range(repeats):
                        clock.seconds = 0.0
                        start = time.perf_counter()
                        task.run(TextToImage(opts))
                        walls.append(time.perf_counter() - start)
                        forwards.append(clock.seconds)
                    wall, forward = statistics.median(walls), statistics.median(forwards)
                    results[f"{'invariant' if invariant else 'plain'} b{batch_size}"] = {
                        "items_per_s": items / wall, "wall_s": wall, "forward_s": forward,
                        "overhead_share": 1 - forward / wall,
                    }
    finally:
        StableDiffusion.load = original_load
    return results


def wall(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def processes(model: Path, prompts: Path, steps: int, size: int) -> dict:
    bin_dir = Path(sys.executable).parent
    args = ["t2i", "--prompts-file", str(prompts), "--model", str(model), "--steps", str(steps), "--height", str(size),
            "--width", str(size), "--seed", "0", "-q", "--overwrite"]
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    timings = {}
    with tempfile.TemporaryDirectory() as scratch:
        timings["one process, 2 threads"] = wall([str(bin_dir / "diffier"), *args, "-o", f"{scratch}/a/"], base_env)
        timings["one process, 1 thread"] = wall([str(bin_dir / "diffier"), *args, "-o", f"{scratch}/b/"],
                                                {**base_env, "OMP_NUM_THREADS": "1"})
        timings["torchrun, 2 processes x 1 thread"] = wall(
            [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "diffier_cli", *args, "-o", f"{scratch}/c/"],
            {**base_env, "OMP_NUM_THREADS": "1"})
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from tests.tiny_sd import save_tiny_sd

            model = save_tiny_sd(Path(scratch))["epsilon"]
        prompts = Path(scratch) / "prompts.txt"
        prompts.write_text("".join(f"prompt {i}: a small red house by a lake\n" for i in range(args.items)))
        report = {"in_process": in_process(model, prompts, args.items, args.steps, args.size, args.repeats),
                  "processes_s": processes(model, prompts, args.steps, args.size)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
