"""`diffier sr`: list images → plan outputs → load StableSR once → per image: bicubic upscale + pad →
StableSR (the shared loop) → CFW decode + colour fix → PNG, JPEG or WebP.

The geometry follows the official `_canvas_tile` scripts: the LR image is upscaled by
s = max(scale, tile size / short side), so the latent canvas is at least one tile wide, padded,
sampled tile by tile, and resized back to exactly input size × scale when s > scale.

Item i of a run is the i-th image of the inputs (arguments in order, a folder's files sorted by
relative path); it uses seed + i, so a shard or a resumed run makes the same pixels as one run.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from diffier_cli import __version__
from diffier_cli.errors import UsageError, first_line, numerical_overflow
from diffier_cli.formats import ImageFormat, choose, encode, has_alpha, size_problem
from diffier_cli.jobs import Item, Plan, Shard, job_id, plan_job
from diffier_cli.metadata import located
from diffier_cli.limits import MAX_ITEMS
from diffier_cli.outputs import slugify
from diffier_cli.refiners import a1111_pairs, refinement
from diffier_cli.refiners import settings as refiner_settings
from diffier_cli.runtime import (
    REFINE_SEED_MIX,
    BatchOptions,
    Hardware,
    ImageOutputOptions,
    Reporter,
    RunOptions,
    item_generators,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)
from diffier_cli.task import Made
from models.errors import ModelUnavailable, NumericalOverflow

if TYPE_CHECKING:
    from diffier_cli.sampling import Refiner

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
SAMPLING_SETTINGS = ("sampler", "steps", "ddim_eta", "dec_w", "color_fix", "tile_size", "tile_overlap")
SAMPLERS = ("ddpm", "ddim")  # StableSR.prepare's: respaced ancestral DDPM, or the official DDIM grid
COLOR_FIXES = ("adain", "wavelet", "none")  # models/stablesr/adapter.COLOR_FIXES
OFFICIAL_DDIM_CFG = 7.0  # `--scale` of the official DDIM scripts
MAX_OUTPUT_PIXELS = 8192 * 8192  # the whole float image stays in host memory while pixel tiles run
PAD_MULTIPLE = 32  # the official scripts reflect-pad to a multiple of 32 px
LATENT_SCALE = 8  # pixels per latent pixel of the SD VAE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_NAME = "{stem}-x{scale}-{mode}.png"


@dataclass(frozen=True, kw_only=True)
class SRSettings(Hardware):
    """What an upscaled image's pixels depend on besides the input and its seed: `sr`, `sr
    --compare` and `eval sr`. A sampling setting left None takes the preset's."""

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
    refiner: Refiner | None  # None = --baseline (--refiner none)

    def setting(self, name: str):
        """The user's value, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value


@dataclass(frozen=True, kw_only=True)
class SROptions(SRSettings, RunOptions, BatchOptions, ImageOutputOptions):
    """`diffier sr`: the settings, the inputs and how the run is named and split."""

    inputs: list[str]
    recursive: bool = False


def check_settings(opts: SRSettings) -> None:
    """Settings that contradict each other or the preset, refused before any image is read."""
    tile, overlap = opts.setting("tile_size"), opts.setting("tile_overlap")
    if overlap >= tile // LATENT_SCALE:
        raise UsageError(f"--tile-overlap {overlap} must be under the {tile} px tile's {tile // LATENT_SCALE} latent px; "
                         "it is counted in latent pixels, as the official --tile_overlap")
    if opts.cfg is not None and opts.negative_prompt is None:
        raise UsageError("--cfg scales the negative-prompt guidance; pass --negative-prompt too")
    if opts.negative_prompt is not None and opts.setting("sampler") != "ddim":
        raise UsageError("negative-prompt guidance exists only in the official DDIM path; add --sampler ddim")


def list_images(inputs: list[str], recursive: bool) -> list[tuple[Path, str]]:
    """(image, its sub-folder) for every input: a file as given; a folder's image files sorted by
    relative path, with --recursive those of its sub-folders too (hidden files and folders left out)."""
    found = []
    for name in inputs:
        path = Path(name)
        if not path.is_dir():
            if not path.exists():
                raise UsageError(f"no such image or folder: {path}")
            found.append((path, ""))
            if len(found) > MAX_ITEMS:
                raise UsageError(f"over {MAX_ITEMS} input images, the most one run plans; run them in several calls")
            continue
        try:
            files = []
            for file in path.rglob("*") if recursive else path.iterdir():
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    files.append(file.relative_to(path))
                    if len(found) + len(files) > MAX_ITEMS:
                        raise UsageError(f"the inputs hold over {MAX_ITEMS} images, the most one run plans; "
                                         "run their folders in several calls")
        except OSError as exc:
            raise UsageError(f"cannot read the folder {path}: {exc.strerror or exc}") from exc
        images = sorted((file for file in files if not any(part.startswith(".") for part in file.parts)), key=lambda file: file.parts)
        if not images:
            hint = "; add --recursive for its sub-folders" if not recursive and any(p.is_dir() for p in path.iterdir()) else ""
            raise UsageError(f"{path} holds no images ({' '.join(IMAGE_SUFFIXES)}){hint}")
        found += [(path / file, "" if file.parent == Path() else str(file.parent)) for file in images]
    return found


def refuse_outputs_among_inputs(inputs: list[str], recursive: bool, outputs: list[Path]) -> None:
    """Outputs written where the inputs are listed from would be read as inputs by the next run
    (a --skip-existing resume), shifting every later item's index, seed and name."""
    folders = [Path(name).resolve() for name in inputs if Path(name).is_dir()]
    for output in outputs:
        parent = output.absolute().resolve().parent
        for folder in folders:
            if parent == folder or (recursive and folder in parent.parents):
                raise UsageError(f"{output} would be written among the inputs in {folder}; pass -o with a folder outside it")


@dataclass(kw_only=True)
class Picture(Item):
    """One image to upscale: the input file."""

    input: str


def work_items(images: list[tuple[Path, str]], seed: int, mode: str) -> list[Picture]:
    """Item i is image i of the inputs, with seed + i."""
    return [Picture(index=i, seed=seed + i, mode=mode, stem=path.stem, slug=slugify(path.stem), subdir=subdir, input=str(path))
            for i, (path, subdir) in enumerate(images)]


@contextmanager
def _readable() -> Iterator[None]:
    """PIL's many failures to read an image as one-line usage errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except FileNotFoundError as exc:
        raise UsageError("no such image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(
            f"{first_line(exc).split(',')[0]}: over Pillow's decompression-bomb limit; downscale or split it first"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "unknown format or a damaged file" if isinstance(exc, UnidentifiedImageError) else first_line(exc)
        raise UsageError(f"not a readable image ({reason}); pass a PNG, JPEG or WebP file") from exc


@contextmanager
def open_input(path) -> Iterator:
    """Image.open for an sr input: Pillow's decompression-bomb warning (89 MP) as an error, not
    a raw warning on stderr, and an animated image refused rather than silently cut to its first frame."""
    import warnings

    from PIL import Image

    with _readable(), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if getattr(image, "is_animated", False):
                raise UsageError("the image is animated; sr upscales still images: extract a frame first "
                                 "(e.g. ffmpeg -i in.gif -frames:v 1 frame.png)")
            yield image


# EXIF orientations (TIFF tag 274) that turn the stored picture by 90° or 270°, so a viewer shows
# its width as the height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(image) -> int:
    """The EXIF orientation every viewer applies (1: as stored), read without decoding pixels
    (a PNG's eXIf chunk after its pixels is seen only once they are loaded)."""
    from PIL import ExifTags

    if image.format == "PNG" and "exif" not in image.info and not getattr(image, "_exif", None):
        return 1
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def shown_size(image) -> tuple[int, int]:
    """(width, height) as viewers show the image: swapped for a 90° or 270° EXIF orientation."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in TRANSPOSING_ORIENTATIONS else (width, height)


@dataclass(frozen=True)
class SourceImage:
    """An sr input as viewers show it: EXIF orientation applied, colour mode and text kept."""

    rgb: object  # PIL RGB image, oriented
    alpha: object | None  # its alpha channel, oriented, or None
    mode: str  # the file's colour mode, so grayscale comes back grayscale
    text: dict  # the file's text chunks, carried through to the output
    orientation: int  # the EXIF orientation applied (1: none)


def read_image(path: Path) -> SourceImage:
    """The input, oriented as every viewer shows it, with one-line errors."""
    from PIL import Image, ImageOps

    with open_input(path) as opened:
        opened.load()
        orientation = exif_orientation(opened)
        image = ImageOps.exif_transpose(opened)
        text = dict(getattr(opened, "text", {}) or {})
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's convert('RGB') would clip at 255; scale the 16-bit range to 8 bits.
        import numpy as np

        scaled = np.clip(np.asarray(image, dtype=np.float64) / 65535 * 255, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    return SourceImage(image.convert("RGB"), alpha, mode, text, orientation)


def geometry(width: int, height: int, opts: SRSettings) -> tuple[tuple[int, int], tuple[int, int]]:
    """(output size, working size): official canvas_tile geometry upscales so the short side covers
    at least one tile."""
    if width == 0 or height == 0:
        raise UsageError(f"the image has zero size ({width}×{height})")
    out_w, out_h = round(width * opts.scale), round(height * opts.scale)
    if out_w < 1 or out_h < 1:
        raise UsageError(f"--scale {opts.scale} makes a {out_w}×{out_h} image; use a larger scale")
    s = max(1.0, opts.setting("tile_size") / min(out_w, out_h))
    work_w, work_h = math.ceil(out_w * s), math.ceil(out_h * s)
    if work_w * work_h > MAX_OUTPUT_PIXELS:
        raise UsageError(
            f"a {out_w}×{out_h} output needs a {work_w}×{work_h} working image, over the "
            f"{MAX_OUTPUT_PIXELS // 10**6} MP budget for the image held in memory; use a smaller --scale, "
            "a smaller --tile-size, or split the image"
        )
    return (out_w, out_h), (work_w, work_h)


def problem_with(path: str, opts: SRSettings, image_format: ImageFormat = ImageFormat()) -> str | None:
    """Why an image cannot be upscaled, or written in the run's format (a side too long for it,
    alpha for JPEG), from its header alone (no pixels decoded), or None."""
    try:
        with open_input(path) as image:
            (out_w, out_h), _ = geometry(*shown_size(image), opts)
            return size_problem(image_format, out_w, out_h, has_alpha(image))
    except UsageError as exc:
        return str(exc)


def fetch_checkpoint(explicit: str | None, filename: str, offline: bool, cache_dir: str | None) -> Path:
    """The user's checkpoint file, else `filename` from the hub repo (cached; --offline: cache only)."""
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


def load_model(opts: SRSettings, local_rank: int | None, reporter: Reporter):
    """(StableSR on its device, the negative-prompt guidance (tokenizer, prompt, cfg) or None)."""
    quiet_libraries(show_downloads=reporter.interactive)
    from models.stablesr.adapter import StableSR
    from models.lightning import neutralised_message

    preset = PRESETS[opts.preset]
    device = resolve_device(opts.device, local_rank)
    dtype = resolve_dtype(opts.dtype, device)
    checkpoint = fetch_checkpoint(opts.checkpoint, preset["checkpoint"], opts.offline, opts.cache_dir)
    vae_checkpoint = fetch_checkpoint(opts.vae_checkpoint, VAE_FILE, opts.offline, opts.cache_dir)
    reporter.message(f"loading {checkpoint.name} and {vae_checkpoint.name} on {device}")
    model = StableSR.load(checkpoint, vae_checkpoint, prediction_type=preset["prediction"], device=device, dtype=dtype)
    for path, kind in ((checkpoint, "checkpoint"), (vae_checkpoint, "vae_checkpoint")):
        if model.info[kind]["neutralised_globals"]:
            reporter.message(neutralised_message(path, tuple(model.info[kind]["neutralised_globals"])))
    if opts.negative_prompt is None:
        return model, None
    from models.stablesr.text_embedding import load_tokenizer

    cfg = OFFICIAL_DDIM_CFG if opts.cfg is None else opts.cfg
    return model, (load_tokenizer(opts.tokenizer, opts.offline, opts.cache_dir), opts.negative_prompt, cfg)


def pixel_patches(height: int, width: int, size: int, stride: int) -> list[tuple[slice, slice]]:
    """The pixel tiles of the official `_tile` scripts (ImageSpliterTh: `size` patches every `stride`
    px, the last flush with the edge); a side shorter than `size` is one patch of its own length."""
    from models.stablesr.tiling import tile_offsets

    def spans(length: int) -> list[slice]:
        patch = min(size, length)
        return [slice(start, start + patch) for start in tile_offsets(length, patch, patch - min(stride, patch))]

    return [(rows, cols) for rows in spans(height) for cols in spans(width)]


def upscale(model, image, alpha, color_mode: str, seed: int, negative, opts: SRSettings, reporter: Reporter, description: str):
    """One image → (the PIL output, exactly size × scale, grey and alpha kept; what the record keeps):
    bicubic upscale + reflect pad → StableSR per pixel tile, each re-seeded → stitch → crop → resize."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from diffier_cli.sampling import denoise, per_item_stats
    from models.stablesr.tiling import gaussian_tile_weights, stitch_tiles

    (out_w, out_h), (work_w, work_h) = geometry(image.width, image.height, opts)
    lr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    upscaled = F.interpolate(lr, size=(work_h, work_w), mode="bicubic", align_corners=False).clamp(-1, 1)
    pad_h, pad_w = -work_h % PAD_MULTIPLE, -work_w % PAD_MULTIPLE
    padded = F.pad(upscaled, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else upscaled

    steps = opts.setting("steps")
    patches = pixel_patches(padded.shape[-2], padded.shape[-1], opts.pixel_tile, opts.pixel_stride)
    if len(patches) > 1:
        reporter.message(f"{len(patches)} pixel tiles of up to {opts.pixel_tile} px")
    outputs, per_patch = [], []
    with reporter.progress(total=steps * len(patches), description=description), torch.no_grad():
        for rows, cols in patches:
            # Each pixel tile is a whole StableSR run, re-seeded as the official `_tile` scripts
            # re-run seed_everything(seed) per tile; only the tile moves to the device.
            noise_generators, refine_generators = item_generators([seed], model.device)
            state = model.prepare(
                padded[..., rows, cols], sampler=opts.setting("sampler"), steps=steps, ddim_eta=opts.setting("ddim_eta"),
                tile=opts.setting("tile_size") // model.latent_scale, overlap=opts.setting("tile_overlap"),
                noise_generator=noise_generators[0], negative=negative,
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
    if not torch.isfinite(result).all():
        raise numerical_overflow(NumericalOverflow("output", str(model.dtype).removeprefix("torch.")),
                                 "lower --cfg, or the refinement's --eta and --max-iters")
    # Clamp before resizing, as the official save path does; the padding is cropped first (the
    # official resizes the padded image and then crops, which shifts the crop when s > scale).
    result = result.clamp(-1, 1)[..., :work_h, :work_w]
    if (work_w, work_h) != (out_w, out_h):
        result = F.interpolate(result, size=(out_h, out_w), mode="bicubic", align_corners=False)
    # The official save: clamp((x + 1) / 2) · 255, then a truncating uint8 cast.
    pixels = ((result[0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    output = Image.fromarray(pixels, "RGB")
    if color_mode in ("L", "LA", "I", "I;16", "F"):
        output = output.convert("L")
    if alpha is not None:
        output.putalpha(alpha.resize((out_w, out_h), Image.Resampling.BICUBIC))
    return output, {"working_size": [work_w, work_h], "pixel_tiles": len(patches), "per_patch": per_patch}


def record(opts: SRSettings, model, negative, item: Picture, input_size: tuple[int, int], output_size: tuple[int, int],
           details: dict, job: dict, orientation: int = 1, image_format: ImageFormat = ImageFormat()) -> dict:
    """What made one upscaled image, as its file and `--json` carry it (`opts` a run's options:
    RunOptions too; a JPEG's or WebP's record also says how it was encoded)."""
    import torch

    seed, per_patch, encoding = item.seed, details["per_patch"], image_format.encoding()
    return {
        "tool": "diffier",
        "version": __version__,
        "command": "sr",
        "input": item.input,
        "input_size": list(input_size),  # as viewers show it, after the EXIF orientation
        "input_exif_orientation": orientation,
        "output_size": list(output_size),
        "scale": opts.scale,
        "index": item.index,
        "seed": seed,
        "mode": item.mode,
        "preset": opts.preset,
        "job": {**job, "index": item.index},
        "params": {**{name: opts.setting(name) for name in SAMPLING_SETTINGS}, "pixel_tile": opts.pixel_tile,
                   "pixel_stride": opts.pixel_stride, "pixel_tiles": details["pixel_tiles"],
                   "negative_prompt": opts.negative_prompt, "cfg": None if negative is None else negative[2],
                   "working_size": details["working_size"], "device": str(model.device),
                   "dtype": str(model.dtype).removeprefix("torch.")},
        "model": located(model.info, opts.record_paths),
        "rng": {"posterior_x_T_and_sampler_noise": f"cpu torch.Generator seeded {seed}",
                "refinement": f"{model.device.type} torch.Generator seeded {seed ^ REFINE_SEED_MIX}"},
        "refiner": refiner_settings(opts.refiner),
        "refinement": {**refinement(opts.refiner, per_patch), **({"per_pixel_tile": per_patch} if len(per_patch) > 1 else {})},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        **({"encoding": encoding} if encoding else {}),
    }


def output_bytes(output, text: dict, record: dict, image_format: ImageFormat = ImageFormat()) -> bytes:
    """The output with the input's text chunks, an A1111 `postprocessing` line and the record.

    A JPEG or WebP keeps one infotext, in its EXIF UserComment: the input's A1111 `parameters`
    when it has them (as a PNG output carries them through), else the `postprocessing` line (what
    AUTOMATIC1111's extras tab writes into a JPEG)."""
    params = record["params"]
    refinement, mode = next(iter(a1111_pairs(record["refiner"], record["mode"]).items()))  # the headline: "DiffIER: refined", "Refiner: IEC"
    postprocessing = (
        f"StableSR upscale: {record['scale']:g}, preset: {record['preset']}, sampler: {params['sampler']}, "
        f"steps: {params['steps']}, CFW dec_w: {params['dec_w']}, color fix: {params['color_fix']}, "
        f"seed: {record['seed']}, {refinement}: {mode}, Version: diffier {__version__}"
    )
    infotext = text.get("parameters") if isinstance(text.get("parameters"), str) else postprocessing
    return encode(output, image_format, record, {**text, "postprocessing": postprocessing}, infotext)


class Upscale:
    """`diffier sr` as a task: input images → upscaled PNGs, one at a time (each in pixel tiles)."""

    batch_size = 1
    name_single_item = True

    def __init__(self, options: SROptions):
        self.options = options
        check_settings(options)
        self.image_format = choose(options.output, options.name, options.image_format, options.quality, options.lossless)
        self.images = list_images(options.inputs, options.recursive)

    def read(self, seed: int, mode: str) -> list[Picture]:
        self.seed, self.mode = seed, mode
        return work_items(self.images, seed, mode)

    def plan(self, items: list[Picture], shard: Shard) -> Plan:
        opts = self.options
        default_name = DEFAULT_NAME.replace("{scale}", f"{opts.scale:g}").removesuffix(".png") + self.image_format.suffix
        plan = plan_job(items, output=opts.output, name=opts.name, default_name=default_name, shard=shard,
                        skip_existing=opts.skip_existing, overwrite=opts.overwrite, seed_given=opts.seed is not None,
                        suffixes=self.image_format.suffixes)
        refuse_outputs_among_inputs(opts.inputs, opts.recursive, [planned.paths[0] for planned in plan.pending])
        self.position = {planned.item.index: place for place, planned in enumerate(plan.pending, 1)}  # for "refined 2/3"
        return plan

    def check(self, item: Picture, reporter: Reporter, several: bool) -> None:
        item.error = problem_with(item.input, self.options, self.image_format)

    def load(self, local_rank: int | None, reporter: Reporter) -> None:
        opts = self.options
        self.model, self.negative = load_model(opts, local_rank, reporter)
        settings = {"seed": self.seed, "mode": self.mode, "scale": opts.scale, "preset": opts.preset,
                    **{name: opts.setting(name) for name in SAMPLING_SETTINGS}, "pixel_tile": opts.pixel_tile,
                    "pixel_stride": opts.pixel_stride, "negative_prompt": opts.negative_prompt,
                    "cfg": None if self.negative is None else self.negative[2],
                    "checkpoints": [self.model.info["checkpoint"]["sha256"], self.model.info["vae_checkpoint"]["sha256"]],
                    "refiner": refiner_settings(opts.refiner), **self.image_format.encoding()}
        self.job = {"id": job_id("sr", [str(image) for image, _ in self.images], settings), "count": len(self.images)}

    def progress(self, reporter: Reporter, pending: list, mode: str):
        return nullcontext()  # each image shows its own bar: its pixel tiles are known once it is read

    def make(self, items: Sequence[Picture], reporter: Reporter, plan: Plan) -> list[Made]:
        (item,) = items
        description = self.mode if len(plan.pending) == 1 else f"{self.mode} {self.position[item.index]}/{len(plan.pending)}"
        source = read_image(Path(item.input))
        output, details = upscale(self.model, source.rgb, source.alpha, source.mode, item.seed, self.negative,
                                  self.options, reporter, description)
        image_record = record(self.options, self.model, self.negative, item, source.rgb.size, output.size, details,
                              self.job, source.orientation, self.image_format)
        return [Made(image_record, lambda: [output_bytes(output, source.text, image_record, self.image_format)],
                     detail=f"{output.width}×{output.height}")]

    def label(self, item: Picture) -> str:
        return item.input
