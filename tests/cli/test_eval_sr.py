"""`diffier eval sr`: degradation, PSNR, the pyiqa metrics' wiring and failures, end to end on tiny StableSR."""

from __future__ import annotations

import csv
import math
import socket
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from diffier_cli.eval_sr import Degradation, as_tensor
from diffier_cli.iqa import psnr
from tests.helpers import SR_SMALL, assert_one_line_error, run_cli
from tests.tolerance import assert_within


@pytest.mark.numerics
def test_psnr_of_identical_images_is_inf_and_of_a_known_shift_exact():
    image = torch.full((1, 3, 8, 8), 100 / 255, dtype=torch.float64)
    assert psnr(image, image) == math.inf
    shifted = torch.full((1, 3, 8, 8), 110 / 255, dtype=torch.float64)
    # float64 all the way: 3.6e-15 dB apart; 20 log10 in place of 10 log10 of the MSE would double it.
    assert_within(psnr(shifted, image), 20 * math.log10(255 / 10), atol=1e-9, what="psnr")  # MSE = (10/255)²


def gaussian_reference(hr: Image.Image, kernel: int, sigma: float) -> np.ndarray:
    """The blur written out: a sampled, normalised separable Gaussian over reflect-101 padding."""
    x = np.asarray(hr, dtype=np.float64) / 255
    offsets = np.arange(kernel) - kernel // 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    pad = kernel // 2
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = sum(w * padded[i : i + x.shape[0], :, :] for i, w in enumerate(weights))
    both = sum(w * rows[:, j : j + x.shape[1], :] for j, w in enumerate(weights))
    return (np.clip(both, 0, 1) * 255).round().astype(np.uint8)


def test_degradation_crops_to_the_scale_blurs_then_downscales_bicubic():
    rng = np.random.default_rng(1)
    hr = Image.fromarray(rng.integers(0, 256, (18, 21, 3), dtype=np.uint8), "RGB")
    crop, lr = Degradation(scale=4, blur_kernel=7, blur_sigma=1.6).apply(hr)
    assert crop.size == (20, 16) and np.array_equal(np.asarray(crop), np.asarray(hr)[:16, :20])
    blurred = Image.fromarray(gaussian_reference(crop, 7, 1.6), "RGB")
    assert np.array_equal(np.asarray(lr), np.asarray(blurred.resize((5, 4), Image.Resampling.BICUBIC)))
    _, plain = Degradation(scale=2, blur_kernel=7, blur_sigma=0).apply(hr)
    assert np.array_equal(np.asarray(plain), np.asarray(hr.crop((0, 0, 20, 18)).resize((10, 9), Image.Resampling.BICUBIC)))


@pytest.fixture()
def hr_dir(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    y, x = np.mgrid[0:34, 0:26]
    smooth = np.stack([x * 9, y * 7, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth, "RGB").save(folder / "a.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(folder / "b.png")
    return folder


def eval_sr(tiny, hr_dir, out, *extra):
    return run_cli("eval", "sr", "--hr-dir", str(hr_dir), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                   "--seed", "3", "-o", str(out), "--json", *extra)


@pytest.mark.numerics
def test_psnr_end_to_end_scores_the_written_results_which_are_plain_sr_runs(tiny, hr_dir, tmp_path):
    out = tmp_path / "eval"
    result = eval_sr(tiny, hr_dir, out, "--metrics", "psnr", "--csv", str(tmp_path / "sr.csv"))
    assert result.returncode == 0, result.stderr
    *rows, summary = result.records
    assert [(r["image"], r["mode"], r["seed"]) for r in rows] == [
        ("a", "baseline", 3), ("a", "refined", 3), ("b", "baseline", 4), ("b", "refined", 4)]
    for row in rows:
        source = Image.open(row["hr"]).convert("RGB")
        crop = source.crop((0, 0, source.width - source.width % 4, source.height - source.height % 4))
        produced = Image.open(row["path"])
        assert produced.size == crop.size
        assert row["psnr"] == psnr(as_tensor(produced, "cpu"), as_tensor(crop, "cpu"))
    assert rows[0]["psnr"] != rows[1]["psnr"]  # the refinement changed the result
    for mode in ("baseline", "refined"):
        values = [r["psnr"] for r in rows if r["mode"] == mode]
        assert summary["summary"]["mean"][mode]["psnr"] == math.fsum(values) / len(values)  # scores.mean, exactly rounded
    assert "PSNR ↑" in result.stderr and "mean (refined)" in result.stderr
    written = list(csv.DictReader(open(tmp_path / "sr.csv")))
    assert [float(r["psnr"]) for r in written[:4]] == [r["psnr"] for r in rows]
    assert [(r["image"], r["mode"], float(r["psnr"])) for r in written[4:]] == [
        ("mean", mode, summary["summary"]["mean"][mode]["psnr"]) for mode in ("baseline", "refined")]

    for mode, extra in (("baseline", ("--baseline",)), ("refined", ())):
        single = run_cli("sr", str(out / "b-lr.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                         "--seed", "4", "-o", str(tmp_path / f"{mode}.png"), *extra)
        assert single.returncode == 0, single.stderr
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{mode}.png")), np.asarray(Image.open(out / f"b-{mode}.png")))


def test_iec_runs_beside_the_same_baseline(tiny, hr_dir, tmp_path):
    iec = eval_sr(tiny, hr_dir, tmp_path / "iec", "--metrics", "psnr", "--refiner", "iec", "--iec-steps", "first:1")
    diffier = eval_sr(tiny, hr_dir, tmp_path / "diffier", "--metrics", "psnr")
    assert iec.returncode == 0 and diffier.returncode == 0, iec.stderr + diffier.stderr
    assert [r["mode"] for r in iec.records[:-1]] == ["baseline", "iec"] * 2
    assert [r["psnr"] for r in iec.records[:-1:2]] == [r["psnr"] for r in diffier.records[:-1:2]]
    assert (tmp_path / "iec" / "a-iec.png").is_file() and set(iec.records[-1]["summary"]["mean"]) == {"baseline", "iec"}


def fake_pyiqa(create_metric) -> types.ModuleType:
    """A stand-in for pyiqa's entry point (pyiqa itself needs torchvision, which this CPU torch lacks)."""
    module = types.ModuleType("pyiqa")
    module.create_metric = create_metric
    return module


@pytest.mark.numerics
def test_pyiqa_metrics_get_rgb_in_0_1_output_first_and_their_scores_land_in_the_table(tiny, hr_dir, tmp_path, monkeypatch):
    built = []

    def create_metric(name, device, as_loss):
        print(f"Loading pretrained model {name}")  # pyiqa prints to stdout; --json must stay clean
        built.append((name, str(device), as_loss))
        if name == "lpips":  # full reference: (distorted, reference); signed, so a swap shows
            return lambda output, reference: (output - reference).mean().reshape(1, 1)
        return lambda output: output.mean(dim=(1, 2, 3))

    monkeypatch.setitem(sys.modules, "pyiqa", fake_pyiqa(create_metric))
    monkeypatch.setattr("diffier_cli.eval_sr.metric_versions", lambda metrics: {m.name: "stand-in" for m in metrics})
    result = eval_sr(tiny, hr_dir, tmp_path / "eval", "--metrics", "lpips,musiq,clipiqa")
    assert result.returncode == 0, result.stderr
    assert built == [("lpips", "cpu", False), ("musiq", "cpu", False), ("clipiqa", "cpu", False)]
    assert "Loading pretrained model lpips" in result.stderr
    for row in result.records[:-1]:
        output = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.float64) / 255
        source = np.asarray(Image.open(row["hr"]).convert("RGB"), dtype=np.float64) / 255
        reference = source[: output.shape[0], : output.shape[1]]
        # The metrics get float32 pixels/255 and average them in float32: 5.8e-8 from these float64 means
        # at worst; 1e-6 is 17× that, and swapped arguments flip lpips' sign (|lpips| > 1e-3 below).
        assert_within(row["lpips"], (output - reference).mean(), atol=1e-6, what="lpips")
        assert row["musiq"] == row["clipiqa"]
        assert_within(row["musiq"], output.mean(), atol=1e-6, what="musiq")
    assert any(abs(row["lpips"]) > 1e-3 for row in result.records[:-1])
    assert "LPIPS ↓" in result.stderr and "MUSIQ ↑" in result.stderr


def test_metric_weights_unavailable_is_exit_3_before_any_work(tiny, hr_dir, tmp_path, monkeypatch):
    def create_metric(name, device, as_loss):
        raise OSError(f"cannot download {name}: network unreachable")

    monkeypatch.setitem(sys.modules, "pyiqa", fake_pyiqa(create_metric))
    result = eval_sr(tiny, hr_dir, tmp_path / "eval", "--metrics", "psnr,musiq")
    assert_one_line_error(result, 3, "pyiqa's musiq weights cannot be had", "network unreachable", "~/.cache/torch/hub/pyiqa")
    assert not (tmp_path / "eval").exists()


def test_offline_refuses_the_connections_pyiqa_would_download_through(tiny, hr_dir, tmp_path, monkeypatch):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def create_metric(name, device, as_loss):
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # a weight download's first act
            pass
        return lambda output: output.mean(dim=(1, 2, 3))

    monkeypatch.setitem(sys.modules, "pyiqa", fake_pyiqa(create_metric))
    monkeypatch.setattr("diffier_cli.eval_sr.metric_versions", lambda metrics: {})
    with server:
        offline = eval_sr(tiny, hr_dir, tmp_path / "offline", "--metrics", "musiq", "--offline")
        assert_one_line_error(offline, 3, "pyiqa's musiq weights are not in the caches (--offline)", "no connection to")
        online = eval_sr(tiny, hr_dir, tmp_path / "online", "--metrics", "musiq")
        assert online.returncode == 0, online.stderr  # and the refusal ended with the offline run


def test_a_module_pyiqa_cannot_import_is_exit_2_naming_it(tiny, hr_dir, tmp_path, monkeypatch):
    def create_metric(name, device, as_loss):
        import pkg_resources_gone_from_setuptools  # noqa: F401 - what openai-clip does on setuptools >= 82

    monkeypatch.setitem(sys.modules, "pyiqa", fake_pyiqa(create_metric))
    result = eval_sr(tiny, hr_dir, tmp_path / "eval", "--metrics", "clipiqa")
    assert_one_line_error(result, 2, "pyiqa's clipiqa cannot import pkg_resources_gone_from_setuptools", "setuptools<82")


def test_learned_metrics_without_pyiqa_name_the_extra(tiny, hr_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa raises ImportError
    result = eval_sr(tiny, hr_dir, tmp_path / "eval")
    assert_one_line_error(result, 2, "LPIPS, MUSIQ, CLIP-IQA need pyiqa", "pip install 'diffier[iqa]'", "--metrics psnr")
    assert not (tmp_path / "eval").exists()


def test_hr_folder_problems_are_named_before_any_model_loads(tiny, tmp_path):
    def attempt(build, *extra):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        (folder / "hr").mkdir(parents=True)
        build(folder / "hr")
        return eval_sr(tiny, folder / "hr", folder / "out", "--metrics", "psnr", *extra), folder

    def broken(hr):
        Image.new("RGB", (8, 8)).save(hr / "a.png")
        (hr / "b.png").write_bytes(b"not a png")

    result, _ = attempt(broken)
    assert_one_line_error(result, 2, "b.png: not a readable image")
    result, _ = attempt(lambda hr: Image.new("RGBA", (8, 8)).save(hr / "a.png"))
    assert_one_line_error(result, 2, "a.png: has an alpha channel")
    result, _ = attempt(lambda hr: Image.new("RGB", (70000, 4)).save(hr / "wide.png"), "--scale", "2")
    assert_one_line_error(result, 2, "wide.png: a 70000×4 output needs")
    result, _ = attempt(lambda hr: (Image.new("RGB", (8, 8)).save(hr / "a.png"), Image.new("RGB", (8, 8)).save(hr / "a.jpg")))
    assert_one_line_error(result, 2, "are named a (besides their suffix)")
    result, folder = attempt(lambda hr: Image.new("RGB", (8, 8)).save(hr / "a.png"))
    inside = eval_sr(tiny, folder / "hr", folder / "hr" / "scores", "--metrics", "psnr")
    assert_one_line_error(inside, 2, "would be written among the inputs")


def test_recursive_keeps_the_sub_folders_in_the_output_names(tiny, tmp_path):
    hr = tmp_path / "hr"
    (hr / "x").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(hr / "a.png")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(hr / "x" / "a.png")
    result = eval_sr(tiny, hr, tmp_path / "out", "--metrics", "psnr", "--recursive", "--blur-sigma", "0")
    assert result.returncode == 0, result.stderr
    assert [r["image"] for r in result.records[:-1]] == ["a", "a", "x/a", "x/a"]
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "a-baseline.png", "a-lr.png", "a-refined.png", "x/a-baseline.png", "x/a-lr.png", "x/a-refined.png"]


@pytest.mark.parametrize(("extra", "needle"), [(("--metrics", "psnr,ssim"), "choose from psnr,lpips,musiq,clipiqa"),
                                               (("--blur-kernel", "6"), "must be odd"),
                                               (("--scale", "32"), "smaller than --scale 32")])
def test_bad_eval_options_exit_2(tiny, hr_dir, tmp_path, extra, needle):
    result = eval_sr(tiny, hr_dir, tmp_path / "eval", "--metrics", "psnr", *extra)
    assert_one_line_error(result, 2, needle)
