"""`diffier sr`: peak memory and time of a 4× upscale of a 512×512 input, tiled vs untiled, and
the refinement's share of a step. Tiny StableSR checkpoints (the tests' official-format ones), CPU.

Each setting runs the real CLI in its own process under GNU time (peak resident memory, wall).
    python benchmarks/sr_tiling.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffier_cli.refine import DiffIER  # noqa: E402
from models.stablesr.adapter import StableSR  # noqa: E402
from tests.tiny_stablesr import save_tiny_stablesr  # noqa: E402

DIFFIER = str(Path(sys.executable).with_name("diffier"))


def timed_cli(args: list[str]) -> dict:
    done = subprocess.run(["/usr/bin/time", "-f", "TIME %M %e", DIFFIER, *args], capture_output=True, text=True, check=False)
    peak_kib, wall = re.search(r"TIME (\d+) ([\d.]+)", done.stderr).groups()
    errors = [line for line in done.stderr.splitlines() if line.startswith("diffier: error")]
    return {"exit_code": done.returncode, "error": errors[0] if errors else None,
            "peak_rss_gib": int(peak_kib) / 2**20, "wall_s": float(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = save_tiny_stablesr(folder / "models")
        source = folder / "in.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), "RGB").save(source)
        common = ["sr", str(source), "--ckpt", str(files["ckpt"]), "--vae-ckpt", str(files["vae"]), "--steps", str(args.steps),
                  "--seed", "0", "-q", "--overwrite", "--device", "cpu"]
        runs = {
            "tiled (512-px tiles, 32 latent-px overlap: the defaults)": timed_cli(common + ["-o", str(folder / "t.png")]),
            "latent-untiled (one latent tile per 1280-px pixel tile)": timed_cli(common + ["--tile-size", "2048", "-o", str(folder / "u.png")]),
            "untiled (one 2048-px tile, no pixel tiles)": timed_cli(
                common + ["--tile-size", "2048", "--pixel-tile", "2048", "--pixel-stride", "2048", "-o", str(folder / "n.png")]
            ),
        }

        model = StableSR.load(files["ckpt"], files["vae"], prediction_type="epsilon", device=torch.device("cpu"), dtype=torch.float32)
        image = torch.rand(1, 3, 2048, 2048) * 2 - 1
        with torch.no_grad():
            state = model.prepare(image, sampler="ddpm", steps=args.steps, ddim_eta=0.0, tile=64, overlap=32,
                                  noise_generator=torch.Generator().manual_seed(0))
            x = model.init_noise(state)
            t = model.timesteps(state)[0]
            predict_s = []
            for _ in range(3):
                start = time.perf_counter()
                prediction = model.predict(x, t, state)
                predict_s.append(time.perf_counter() - start)
            refiner, generators = DiffIER(), [torch.Generator().manual_seed(1)]
            refine_s = []
            for _ in range(20):
                start = time.perf_counter()
                refiner.correct(prediction, generators)
                refine_s.append(time.perf_counter() - start)
    step = statistics.median(predict_s)
    refine = statistics.median(refine_s)
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "input": "512x512", "output": "2048x2048",
        "steps": args.steps, "runs": runs,
        "tiled_predict_s_per_step": step, "refine_s_per_step": refine, "refine_share_of_predict": refine / step,
    }, indent=2))


if __name__ == "__main__":
    main()
