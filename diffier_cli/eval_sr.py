"""`diffier eval sr`: the paper's SR table (PSNR, LPIPS, MUSIQ, CLIP-IQA) on the user's HR images.

Each HR image is cropped to a multiple of --scale and degraded by the blur-downscale protocol:
a Gaussian blur (kornia: a sampled, normalised --blur-kernel² kernel of std --blur-sigma,
reflect-101 borders, as OpenCV's GaussianBlur), 8-bit rounding, then Pillow's antialiased bicubic
downscale by --scale (MATLAB imresize's filter). The LR image is upscaled baseline and refined on
the same seed (seed + image index) and both results are scored against the HR crop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import UsageError
from diffier_cli.iqa import load_scorers
from diffier_cli.jobs import job_id
from diffier_cli.metadata import located
from diffier_cli.outputs import png_bytes, preflight, write_atomically
from diffier_cli.runtime import Reporter, RunOptions, require, resolve_device
from diffier_cli.scores import compared_modes, mean, print_json, print_table, write_csv
from diffier_cli.sr import SRSettings


@dataclass(frozen=True, kw_only=True)
class EvalSROptions(SRSettings, RunOptions):
    """`diffier eval sr`: StableSR's settings, the HR folder and where the results go."""

    hr_dir: str
    recursive: bool = False


@dataclass(frozen=True)
class Degradation:
    scale: int
    blur_kernel: int
    blur_sigma: float

    def check(self) -> None:
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise UsageError(f"--blur-kernel {self.blur_kernel} must be odd and >= 1 (a centred kernel)")
        if self.blur_sigma < 0:
            raise UsageError(f"--blur-sigma {self.blur_sigma} must be >= 0 (0: no blur)")

    def hr_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The HR crop: each side cut down to a multiple of the scale (BasicSR's mod crop)."""
        width, height = size[0] - size[0] % self.scale, size[1] - size[1] % self.scale
        if width == 0 or height == 0:
            raise UsageError(f"a {size[0]}×{size[1]} image is smaller than --scale {self.scale}")
        return width, height

    @property
    def blurs(self) -> bool:
        return self.blur_sigma > 0 and self.blur_kernel > 1

    def record(self) -> dict:
        return {"scale": self.scale, "blur_kernel": self.blur_kernel, "blur_sigma": self.blur_sigma,
                "downscale": "Pillow bicubic (antialiased)"}

    def apply(self, hr):
        """HR PIL RGB → (the HR crop the scores compare against, the LR image)."""
        import numpy as np
        import torch
        from PIL import Image

        width, height = self.hr_size(hr.size)
        hr = hr.crop((0, 0, width, height))
        blurred = hr
        if self.blurs:
            from kornia.filters import gaussian_blur2d

            x = torch.from_numpy(np.asarray(hr, dtype=np.float64)).permute(2, 0, 1)[None] / 255
            x = gaussian_blur2d(x, (self.blur_kernel, self.blur_kernel), (self.blur_sigma, self.blur_sigma), border_type="reflect")
            blurred = Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "RGB")
        return hr, blurred.resize((width // self.scale, height // self.scale), Image.Resampling.BICUBIC)


def as_tensor(image, device):
    """PIL RGB → float (1, 3, H, W) in [0, 1], what torchmetrics and pyiqa take."""
    import numpy as np
    import torch

    return (torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None] / 255).to(device)


def check_headers(images: list[tuple[Path, str]], degradation: Degradation, opts) -> None:
    """Every HR image readable, RGB and of a workable size, from its header: a bad one fails
    before any model loads, not halfway through the table."""
    from diffier_cli.sr import open_input, geometry, shown_size

    for source, _ in images:
        try:
            with open_input(source) as opened:
                if opened.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in opened.info:
                    raise UsageError("has an alpha channel; the metrics score RGB, so flatten it first")
                width, height = degradation.hr_size(shown_size(opened))
                geometry(width // degradation.scale, height // degradation.scale, opts)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None


def metric_versions(metrics) -> dict:
    from importlib.metadata import version

    return {m.name: "diffier (float64)" if m.name == "psnr" else f"pyiqa {version('pyiqa')}" for m in metrics}


def run_eval(opts: EvalSROptions, degradation: Degradation, metrics, csv_path: str | None) -> None:
    import torch

    from diffier_cli.sr import Picture, check_settings, list_images, load_model, output_bytes, read_image, record, refuse_outputs_among_inputs, upscale

    modes = compared_modes(opts.refiner, "eval sr")
    hr_dir = Path(opts.hr_dir)
    check_settings(opts)
    degradation.check()
    if degradation.blurs:
        require("kornia", purpose="eval sr's blur", extra="eval")
    images = list_images([str(hr_dir)], opts.recursive)
    stems = [str(Path(subdir) / path.stem) for path, subdir in images]
    if len(set(stems)) != len(stems):
        twice = next(stem for stem in stems if stems.count(stem) > 1)
        raise UsageError(f"two HR images in {hr_dir} are named {twice} (besides their suffix); rename one")
    folder = Path(opts.output or "eval-sr")
    if folder.suffix.lower() == ".png":
        raise UsageError(f"-o {folder}: eval writes three images per HR image; pass a folder")
    paths = [{kind: folder / f"{stem}-{kind}.png" for kind in ("lr", *modes)} for stem in stems]
    refuse_outputs_among_inputs([str(hr_dir)], True, [path for entry in paths for path in entry.values()])
    preflight([path for entry in paths for path in entry.values()] + ([Path(csv_path)] if csv_path else []), opts.overwrite)
    check_headers(images, degradation, opts)
    reporter = Reporter(opts.quiet)
    device = resolve_device(opts.device)
    scorers = load_scorers(metrics, device, opts.offline)
    model, negative = load_model(opts, None, reporter)
    settings = {"seed": opts.seed, **degradation.record(), "preset": opts.preset, "refiner": opts.refiner.settings()}
    job = {"id": job_id("eval-sr", [str(path) for path, _ in images], settings), "count": 2 * len(images)}
    rows = []
    for index, ((source, _), stem, out) in enumerate(zip(images, stems, paths)):
        hr, lr = degradation.apply(read_image(source).rgb)
        lr_record = {"tool": "diffier", "version": __version__, "command": "eval sr", "hr": str(source), "degradation": degradation.record()}
        write_atomically({out["lr"]: png_bytes(lr, {"diffier": json.dumps(lr_record, ensure_ascii=False)})}, opts.overwrite)
        reference = as_tensor(hr, device)
        for mode in modes:
            run = replace(opts, refiner=None if mode == "baseline" else opts.refiner)
            item = Picture(index=index, seed=opts.seed + index, mode=mode, stem=stem, slug=stem, input=str(out["lr"]))
            output, details = upscale(model, lr, None, "RGB", item.seed, negative, run, reporter, f"{stem} {mode}")
            made = record(run, model, negative, item, lr.size, output.size, details, job)
            made["eval"] = {"hr": str(source), **degradation.record()}
            write_atomically({out[mode]: output_bytes(output, {}, made)}, opts.overwrite)
            with torch.no_grad():
                candidate = as_tensor(output, device)
                scores = {m.name: scorers[m.name](candidate, reference) if m.full_reference else scorers[m.name](candidate)
                          for m in metrics}
            row = {"image": stem, "hr": str(source), "seed": item.seed, "mode": mode, **scores, "path": str(out[mode])}
            rows.append(row)
            if opts.json:
                print_json(row)
            reporter.message(f"{stem} {mode}: " + ", ".join(f"{m.label} {scores[m.name]:.4g}" for m in metrics))

    means = {mode: {m.name: mean([r[m.name] for r in rows if r["mode"] == mode]) for m in metrics} for mode in modes}
    table = [[f"{row['image']} ({row['mode']})", *(f"{row[m.name]:.4f}" for m in metrics)] for row in rows]
    table += [[f"mean ({mode})", *(f"{means[mode][m.name]:.4f}" for m in metrics)] for mode in modes]
    print_table(f"{len(images)} image(s), ×{degradation.scale}, blur σ {degradation.blur_sigma:g}", ["image", *(m.heading for m in metrics)],
                table, opts.quiet)
    if opts.json:
        print_json({"summary": {"images": len(images), "seed": opts.seed, "mean": means, "degradation": degradation.record(),
                                "metrics": metric_versions(metrics), "preset": opts.preset, "model": located(model.info, opts.record_paths),
                                "refiner": opts.refiner.settings(), "job": job["id"]}})
    if csv_path is not None:
        mean_rows = [{"image": "mean", "hr": "", "seed": "", "mode": mode, **means[mode], "path": ""} for mode in modes]
        write_csv(rows + mean_rows, Path(csv_path), opts.overwrite)
