"""What batch-invariant kernels cost, and whether they hold, on a full-size SD 2.1 UNet.

One guided UNet forward (the CFG batch: 2 × images) with and without `batch_invariant`, for 1
and 4 images, on the published SD 2.1 UNet config with random weights; and the largest difference
between an image's output computed in a batch of 4 and alone, in both modes.

    python benchmarks/invariant_cost.py [--device cuda] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.refine_overhead import SD21_UNET, sync  # noqa: E402
from diffier_cli.invariant import batch_invariant  # noqa: E402


def forward(unet, latents: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A guided forward laid out item by item, [uncond₀, cond₀, uncond₁, ...], as models/sd.py does."""
    return unet(latents.repeat_interleave(2, 0), t, encoder_hidden_states=context.repeat_interleave(2, 0)).sample


def cost(unet, side: int, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Median guided-forward times for 1 and 4 images, plain and batch-invariant, and how far an
    image computed in a batch of 4 lands from the same image computed alone, in each mode."""
    latents = torch.randn(4, 4, side, side, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    context = torch.randn(4, 77, unet.config.cross_attention_dim, device=device, dtype=dtype,
                          generator=torch.Generator(device).manual_seed(1))
    t = torch.tensor(500, device=device)
    report = {"forward_s": {}, "batch_of_4_vs_alone_max_abs": {}}
    with torch.no_grad():
        for invariant in (False, True):
            mode = "invariant" if invariant else "plain"
            for images in (1, 4):
                with batch_invariant(images, invariant):
                    forward(unet, latents[:images], context[:images], t)  # warm-up
                    times = []
                    for _ in range(repeats):
                        sync(device)
                        start = time.perf_counter()
                        forward(unet, latents[:images], context[:images], t)
                        sync(device)
                        times.append(time.perf_counter() - start)
                report["forward_s"][f"{mode}, {images} image(s)"] = statistics.median(times)
            with batch_invariant(4, invariant):
                together = forward(unet, latents, context, t)
            with batch_invariant(1, invariant):
                alone = torch.cat([forward(unet, latents[i : i + 1], context[i : i + 1], t) for i in range(4)])
            report["batch_of_4_vs_alone_max_abs"][mode] = (together - alone).abs().max().item()
    f = report["forward_s"]
    report["invariant_over_plain"] = {n: f[f"invariant, {n} image(s)"] / f[f"plain, {n} image(s)"] for n in (1, 4)}
    report["per_image_speedup_of_batch_4"] = {m: 4 * f[f"{m}, 1 image(s)"] / f[f"{m}, 4 image(s)"] for m in ("plain", "invariant")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval()
    report = {"device": str(device), "dtype": str(dtype), "image_px": args.size,
              **cost(unet, args.size // 8, device, dtype, args.repeats)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
