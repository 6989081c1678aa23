"""`diffier sr`: read image → bicubic upscale + pad → StableSR (the shared loop) → CFW decode + colour fix → PNG.

The geometry follows the official `_canvas_tile` scripts: the LR image is upscaled by
s = max(scale, tile size / short side), so the latent canvas is at least one tile wide, padded,
sampled tile by tile, and resized back to exactly input size × scale when s > scale.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import DiffierError, ModelUnavailable, UsageError, first_line
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

HUB_REPO = "Iceclear/StableSR"
VAE_FILE = "vqgan_cfw_00011.ckpt"
# The README's settings: the paper's (DDPM 200, CFW 0.5, AdaIN), Turbo's, and the 768-v DDIM ones.
PRESETS = {
    "paper": dict(checkpoint="stablesr_000117.ckpt", prediction="epsilon", sampler="ddpm", steps=200,
                  ddim_eta=0.0, dec_w=0.5, color_fix="adain", tile_size=512, tile_overlap=32),
    "turbo": dict(checkpoint="stablesr_turbo.ckpt", prediction="epsilon", sampler="ddpm", steps=4,
                  ddim_eta=0.0, dec_w=0.5, color_fix="wavelet", tile_size=512, tile_overlap=32),
    "768v": dict(checkpoint="stablesr_768v_000139.ckpt", prediction="v_prediction", sampler="ddim", steps=20,
                 ddim_eta=1.0, dec_w=0.0, color_fix="wavelet", tile_size=768, tile_overlap=48),
}
OFFICIAL_DDIM_CFG = 7.0  # `--scale` of the official DDIM scripts
MAX_OUTPUT_PIXELS = 8192 * 8192  # the whole float image stays in host memory while pixel tiles run
PAD_MULTIPLE = 32  # the official scripts reflect-pad to a multiple of 32 px


@dataclass(frozen=True)
class SROptions(RunOptions):
    input: str
    scale: float
    preset: str
    sampler: str | None
    steps: int | None
    ddim_eta: float | None
    dec_w: float | None
    color_fix: str | None
    tile_size: int | None
    tile_overlap: int | None
    pixel_tile: int
    pixel_stride: int
    negative_prompt: str | None
    cfg: float | None
    tokenizer: str
    checkpoint: str | None
    vae_checkpoint: str | None

    def setting(self, name: str):
        """The user's value, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value


def read_image(path: Path):
    """(RGB PIL image, alpha channel or None, original mode, text chunks) with one-line errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
            text = dict(getattr(opened, "text", {}) or {})
    except FileNotFoundError as exc:
        raise UsageError(f"no such image: {path}") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable image ({exc}); pass a PNG, JPEG or WebP file") from exc
    if image.width == 0 or image.height == 0:
        raise UsageError(f"{path} has zero size ({image.width}×{image.height})")
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's convert('RGB') would clip at 255; scale the 16-bit range to 8 bits.
        import numpy as np

        scaled = np.clip(np.asarray(image, dtype=np.float64) / 65535 * 255, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    return image.convert("RGB"), alpha, mode, text


def fetch_checkpoint(explicit: str | None, filename: str, offline: bool, cache_dir: str | None) -> Path:
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"no checkpoint file at {path}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HUB_REPO, filename, cache_dir=cache_dir, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means: weights unavailable
        raise ModelUnavailable(
            f"cannot get {HUB_REPO}/{filename} ({first_line(exc)}); download it with `hf download {HUB_REPO} {filename}` "
            "or pass --ckpt/--vae-ckpt with local paths"
        ) from exc


def pixel_patches(height: int, width: int, size: int, stride: int) -> list[tuple[slice, slice]]:
    """The pixel tiles of the official `_tile` scripts (ImageSpliterTh: `size` patches every `stride`
    px, the last flush with the edge); a side shorter than `size` is one patch of its own length."""
    from models.stablesr.tiling import tile_offsets

    def spans(length: int) -> list[slice]:
        patch = min(size, length)
        return [slice(start, start + patch) for start in tile_offsets(length, patch, patch - min(stride, patch))]

    return [(rows, cols) for rows in spans(height) for cols in spans(width)]


def run(opts: SROptions) -> None:
    reporter = Reporter(opts.quiet)
    source = Path(opts.input)
    image, alpha, mode, text = read_image(source)
    out_w, out_h = round(image.width * opts.scale), round(image.height * opts.scale)
    if out_w < 1 or out_h < 1:
        raise UsageError(f"--scale {opts.scale} makes a {out_w}×{out_h} image; use a larger scale")
    # Official canvas_tile geometry: upscale so the short side covers at least one tile.
    tile_px = opts.setting("tile_size")
    s = max(1.0, tile_px / min(out_w, out_h))
    work_w, work_h = math.ceil(out_w * s), math.ceil(out_h * s)
    if work_w * work_h > MAX_OUTPUT_PIXELS:
        raise UsageError(
            f"a {out_w}×{out_h} output needs a {work_w}×{work_h} working image, over the "
            f"{MAX_OUTPUT_PIXELS // 10**6} MP budget for the image held in memory; use a smaller --scale, "
            "a smaller --tile-size, or split the image"
        )
    if opts.cfg is not None and opts.negative_prompt is None:
        raise UsageError("--cfg scales the negative-prompt guidance; pass --negative-prompt too")
    if opts.negative_prompt is not None and opts.setting("sampler") != "ddim":
        raise UsageError("negative-prompt guidance exists only in the official DDIM path; add --sampler ddim")
    seed = choose_seed(opts.seed)
    mode_name = "baseline" if opts.refiner is None else "refined"
    item = {"index": 0, "seed": seed, "slug": slugify(source.stem), "stem": source.stem, "mode": mode_name}
    (path,) = plan_outputs(opts.output, [item], "{stem}-x{scale}-{mode}.png".replace("{scale}", f"{opts.scale:g}"))
    preflight([path], opts.overwrite)
    reporter.message(f"seed {seed}")

    quiet_libraries(show_downloads=reporter.interactive)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from diffier_cli.sampling import denoise, per_item_stats, summarize
    from models.stablesr.adapter import StableSR
    from models.stablesr.tiling import gaussian_tile_weights, stitch_tiles

    preset = PRESETS[opts.preset]
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    checkpoint = fetch_checkpoint(opts.checkpoint, preset["checkpoint"], opts.offline, opts.cache_dir)
    vae_checkpoint = fetch_checkpoint(opts.vae_checkpoint, VAE_FILE, opts.offline, opts.cache_dir)
    reporter.message(f"loading {checkpoint.name} and {vae_checkpoint.name} on {device}")
    model = StableSR.load(checkpoint, vae_checkpoint, prediction_type=preset["prediction"], device=device, dtype=dtype)
    negative = None
    if opts.negative_prompt is not None:
        from models.stablesr.text_embedding import load_tokenizer

        cfg = OFFICIAL_DDIM_CFG if opts.cfg is None else opts.cfg
        negative = (load_tokenizer(opts.tokenizer, opts.offline, opts.cache_dir), opts.negative_prompt, cfg)

    factor = model.latent_scale
    lr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    upscaled = F.interpolate(lr, size=(work_h, work_w), mode="bicubic", align_corners=False).clamp(-1, 1)
    pad_h, pad_w = -work_h % PAD_MULTIPLE, -work_w % PAD_MULTIPLE
    padded = F.pad(upscaled, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else upscaled

    started = time.perf_counter()
    steps = opts.setting("steps")
    patches = pixel_patches(padded.shape[-2], padded.shape[-1], opts.pixel_tile, opts.pixel_stride)
    if len(patches) > 1:
        reporter.message(f"{len(patches)} pixel tiles of up to {opts.pixel_tile} px")
    outputs, per_patch = [], []
    with reporter.progress(total=steps * len(patches), description=mode_name), torch.no_grad():
        for rows, cols in patches:
            # Each pixel tile is a whole StableSR run, re-seeded as the official `_tile` scripts
            # re-run seed_everything(seed) per tile; only the tile moves to the device.
            noise_generators, refine_generators = item_generators([seed], device)
            state = model.prepare(
                padded[..., rows, cols], sampler=opts.setting("sampler"), steps=steps, ddim_eta=opts.setting("ddim_eta"),
                tile=tile_px // factor, overlap=opts.setting("tile_overlap"), noise_generator=noise_generators[0],
                negative=negative,
            )
            trajectory = denoise(model, state, model.init_noise(state), refiner=opts.refiner,
                                 generators=refine_generators, on_step=reporter.advance)
            decoded = model.decode(trajectory.sample, state, dec_w=opts.setting("dec_w"), color_fix=opts.setting("color_fix"))
            outputs.append(decoded.cpu())
            per_patch.append(per_item_stats(trajectory.steps, 1)[0])
    if len(patches) == 1:
        result = outputs[0]
    else:
        (rows, cols) = patches[0]
        weights = gaussian_tile_weights(rows.stop - rows.start, width=cols.stop - cols.start)
        result = stitch_tiles(outputs, patches, padded.shape, weights)
    if torch.isnan(result).any():
        raise DiffierError("the output is NaN (numerical overflow); rerun with --dtype float32")
    # Clamp before resizing, as the official save path does; the padding is cropped first (the
    # official resizes the padded image and then crops, which shifts the crop when s > scale).
    result = result.clamp(-1, 1)[..., :work_h, :work_w]
    if (work_w, work_h) != (out_w, out_h):
        result = F.interpolate(result, size=(out_h, out_w), mode="bicubic", align_corners=False)
    # The official save: clamp((x + 1) / 2) · 255, then a truncating uint8 cast.
    pixels = ((result[0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    output = Image.fromarray(pixels, "RGB")
    if mode in ("L", "LA", "I", "I;16", "F"):
        output = output.convert("L")
    if alpha is not None:
        output.putalpha(alpha.resize((out_w, out_h), Image.Resampling.BICUBIC))
    seconds = time.perf_counter() - started

    per_step = per_patch[0]
    settings = {name: opts.setting(name) for name in ("sampler", "steps", "ddim_eta", "dec_w", "color_fix", "tile_size", "tile_overlap")}
    record = {
        "tool": "diffier",
        "version": __version__,
        "command": "sr",
        "input": str(source),
        "input_size": [image.width, image.height],
        "output_size": [out_w, out_h],
        "scale": opts.scale,
        "seed": seed,
        "mode": mode_name,
        "preset": opts.preset,
        "params": {**settings, "pixel_tile": opts.pixel_tile, "pixel_stride": opts.pixel_stride,
                   "pixel_tiles": len(patches), "negative_prompt": opts.negative_prompt,
                   "cfg": None if negative is None else negative[2], "working_size": [work_w, work_h], "device": str(device),
                   "dtype": str(dtype).removeprefix("torch.")},
        "model": model.info,
        "rng": {"posterior_x_T_and_sampler_noise": f"cpu torch.Generator seeded {seed}",
                "refinement": f"{device.type} torch.Generator seeded {seed ^ REFINE_SEED_MIX}"},
        "refiner": None if opts.refiner is None else opts.refiner.settings(),
        "refinement": {"summary": summarize(per_step), "per_step": per_step,
                       **({"per_pixel_tile": per_patch} if len(per_patch) > 1 else {})},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    postprocessing = (
        f"StableSR upscale: {opts.scale:g}, preset: {opts.preset}, sampler: {settings['sampler']}, steps: {settings['steps']}, "
        f"CFW dec_w: {settings['dec_w']}, color fix: {settings['color_fix']}, seed: {seed}, DiffIER: {mode_name}, "
        f"Version: diffier {__version__}"
    )
    chunks = {**text, "postprocessing": postprocessing, "diffier": json.dumps(record, ensure_ascii=False, separators=(",", ":"))}
    write_atomically({path: png_bytes(output, chunks)}, opts.overwrite)
    if opts.json:
        print(json.dumps({"path": str(path), "wall_time_s": round(seconds, 3), **record}, ensure_ascii=False), flush=True)
    reporter.message(f"wrote {path} ({out_w}×{out_h}, seed {seed}, {mode_name}, {seconds:.1f} s)")
