"""`t2i` and `sr` write PNG, JPEG and WebP (issue 16, part 1), checked with the readers others use:
sd-parsers (what AUTOMATIC1111-style image browsers parse), piexif (what AUTOMATIC1111 writes its
EXIF with) and Pillow's EXIF reader. exiftool is not a test dependency (a Debian package, not on a
fresh machine): `.ci/check_with_exiftool.py` checks the same outputs with it where it is installed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
import pytest
from PIL import ExifTags, Image
from sd_parsers import ParserManager

from diffier_cli.errors import UsageError
from diffier_cli.formats import JPEG_SEGMENT_BYTES, ImageFormat, encode
from tests.helpers import SR_SMALL, assert_one_line_error, pixels, run_cli

STEPS = "3"
PROMPT = "ein Hündchen, das 🍔 isst"  # past Latin-1 and past the BMP: UTF-16 needs a surrogate pair
NEGATIVE = "dark, blurry"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
NO_MODEL = ("--model", "/nonexistent/model")


def t2i(model, out, *extra, prompt=PROMPT):
    return run_cli("t2i", prompt, "--model", str(model), "--steps", STEPS, "--seed", "7", "--cfg", "5",
                   "--negative-prompt", NEGATIVE, "-o", str(out), "--json", *extra, env=ONE_THREAD)


def exif_of(path: Path):
    with Image.open(path) as image:
        exif = image.getexif()
        return exif, image.info["exif"]


@pytest.fixture(scope="module")
def three_formats(tiny_sd, tmp_path_factory):
    """One seed drawn as PNG, JPEG (by -o's extension), WebP (by --format) and lossless WebP."""
    folder = tmp_path_factory.mktemp("formats")
    runs = {
        "png": t2i(tiny_sd["epsilon"], folder / "cat.png"),
        "jpeg": t2i(tiny_sd["epsilon"], folder / "cat.jpg"),
        "webp": t2i(tiny_sd["epsilon"], f"{folder / 'webp'}/", "--format", "webp"),
        "lossless": t2i(tiny_sd["epsilon"], folder / "lossless.webp", "--lossless"),
    }
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    return folder, {name: result.records[0] for name, result in runs.items()}


def test_each_format_carries_the_record_and_a1111_infotext_where_a1111_puts_it(three_formats, tiny_sd):
    folder, records = three_formats
    png = Image.open(records["png"]["path"]).text
    infotext, png_record = png["parameters"], json.loads(png["diffier"])
    assert records["webp"]["path"] == str(folder / "webp" / "00000-7-refined-ein-hundchen-das-isst.webp")
    strip = lambda record: {k: v for k, v in record.items() if k not in ("path", "wall_time_s", "encoding", "job")}
    assert strip(records["jpeg"]) == strip(records["webp"]) == strip(records["lossless"]) == strip(records["png"]) == strip(png_record)
    assert len({record["job"]["id"] for record in records.values()}) == 4  # the encoding is a setting of the job
    assert "encoding" not in records["png"]
    assert records["jpeg"]["encoding"] == {"format": "jpeg", "quality": 95}
    assert records["webp"]["encoding"] == {"format": "webp", "quality": 95}
    assert records["lossless"]["encoding"] == {"format": "webp", "lossless": True}

    for name in ("jpeg", "webp", "lossless"):
        exif, raw = exif_of(Path(records[name]["path"]))
        assert raw.startswith(b"Exif\x00\x00MM") or raw.startswith(b"MM")  # big-endian, as piexif writes (WebP drops the header)
        comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        assert comment == piexif.helper.UserComment.dump(infotext, encoding="unicode")  # byte for byte what A1111 writes
        assert piexif.helper.UserComment.load(comment) == infotext  # and what A1111's reader gets back
        assert exif[ExifTags.Base.Software] == "diffier 0.1.0"
        assert json.loads(exif[ExifTags.Base.ImageDescription]) == {k: v for k, v in records[name].items() if k not in ("path", "wall_time_s")}
        assert exif[ExifTags.Base.ImageDescription].isascii()
        loaded = piexif.load(raw if raw.startswith(b"Exif") else b"Exif\x00\x00" + raw)  # piexif parses the whole block
        assert loaded["Exif"][piexif.ExifIFD.UserComment] == comment


@pytest.mark.parametrize("name", ["png", "jpeg", "webp", "lossless"])
def test_sd_parsers_reads_every_format_as_automatic1111(three_formats, tiny_sd, name):
    _, records = three_formats
    info = ParserManager().parse(records[name]["path"])
    assert info.generator.value == "AUTOMATIC1111"
    assert info.full_prompt == PROMPT and info.full_negative_prompt == NEGATIVE
    (sampler,) = info.samplers
    assert sampler.name == "DDIM"
    assert sampler.parameters == {"steps": STEPS, "cfg_scale": "5.0", "seed": "7"}
    assert sampler.model.name == tiny_sd["epsilon"].name and sampler.model.hash == records[name]["model"]["sha256"][:10]
    assert info.metadata["Size"] == "32x32" and info.metadata["DiffIER"] == "refined" and info.metadata["RNG"] == "CPU"


def test_pixels_lossless_webp_exact_jpeg_and_webp_close(three_formats):
    _, records = three_formats
    reference = pixels(records["png"]["path"])
    assert np.array_equal(pixels(records["lossless"]["path"]), reference)
    for name in ("jpeg", "webp"):
        assert Image.open(records[name]["path"]).format == {"jpeg": "JPEG", "webp": "WEBP"}[name]
        # lossy at quality 95; the tiny model's 32 px images are noise, JPEG's worst case (mean error measured 19, WebP 10)
        assert 0 < np.abs(pixels(records[name]["path"]) - reference).mean() < 30


def test_info_and_manifest_read_every_format(three_formats):
    folder, records = three_formats
    paths = [records[name]["path"] for name in ("png", "jpeg", "webp", "lossless")]
    shown = run_cli("info", "--json", *paths)
    assert shown.returncode == 0, shown.stderr
    assert shown.records == [{"path": path, "kind": "diffier", "record": {k: v for k, v in records[name].items() if k not in ("path", "wall_time_s")}}
                             for path, name in zip(paths, ("png", "jpeg", "webp", "lossless"))]
    listing = run_cli("manifest", str(folder))
    assert listing.returncode == 0, listing.stderr
    assert sorted(line["path"] for line in listing.records) == sorted(paths)
    assert len(listing.stderr.splitlines()) == 4  # four jobs, each 1 of 1
    assert all(line.endswith("1 of 1 item(s)") for line in listing.stderr.splitlines())


def test_a_jpeg_job_resumes_with_skip_existing_and_names_from_jsonl_keep_their_extension(tiny_sd, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "name": "cat.jpeg"}\n{"prompt": "a dog"}\n')
    out = tmp_path / "out"
    args = ("t2i", "--prompts-file", str(prompts), "--model", str(tiny_sd["epsilon"]), "--steps", "2", "--seed", "4",
            "--format", "jpeg", "--quality", "80", "-o", f"{out}/", "--json")
    first = run_cli(*args, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00001-5-refined-a-dog.jpg", "cat.jpeg"]
    assert {r["encoding"]["quality"] for r in first.records} == {80}
    made = (out / "cat.jpeg").read_bytes()
    (out / "00001-5-refined-a-dog.jpg").unlink()
    again = run_cli(*args, "--skip-existing", env=ONE_THREAD)
    assert again.returncode == 0, again.stderr
    assert [Path(r["path"]).name for r in again.records] == ["00001-5-refined-a-dog.jpg"]
    assert (out / "cat.jpeg").read_bytes() == made and "1 already done" in again.stderr
    assert run_cli("manifest", str(out)).returncode == 0


@pytest.mark.parametrize(("args", "needle"), [
    (("-o", "x.jpg", "--format", "png"), "-o 'x.jpg' names a JPEG file but --format is png; drop --format or change the extension"),
    (("-o", "out/", "--name", "{index}.webp", "--format", "jpeg"), "--name '{index}.webp' names a WebP file but --format is jpeg"),
    (("-o", "x.png", "--quality", "90"), "--quality sets JPEG and lossy WebP compression and PNG is lossless: drop --quality"),
    (("-o", "x.webp", "--lossless", "--quality", "90"), "--lossless WebP has no lossy quality: drop --quality"),
    (("--format", "jpeg", "--lossless"), "--lossless is WebP's lossless mode; JPEG has none"),
    (("-o", "x.png", "--lossless"), "--lossless is WebP's lossless mode; PNG is always lossless: drop it"),
    (("--format", "jpeg", "--quality", "0"), "Invalid value for '--quality': Input should be greater than or equal to 1"),
    (("--format", "gif"), "Invalid value for '--format': Value error, 'gif' is not one of 'png', 'jpeg', 'webp'"),
    (("-o", "x.gif"), "output x.gif must end in .png (the format this run writes)"),
    (("--sweep-cfg", "3,5", "--format", "webp"), "--sweep-cfg writes PNGs (its grid or comparison and their images); drop --format"),
    (("--sweep-cfg", "3,5", "-o", "grid.jpg"), "a sweep writes one grid; pass a .png file name"),
])
def test_format_choices_that_disagree_or_do_nothing_are_refused_before_any_model(tmp_path, args, needle):
    result = run_cli("t2i", "a cat", *NO_MODEL, "--seed", "1", "-q", *args, cwd=tmp_path)
    assert_one_line_error(result, 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_a_record_too_large_for_a_jpeg_segment_is_refused_and_png_and_webp_take_it():
    image = Image.new("RGB", (8, 8))
    record = {"tool": "diffier", "prompt": "x" * JPEG_SEGMENT_BYTES}
    with pytest.raises(UsageError, match=r"bytes of EXIF, over the 65533 a JPEG metadata segment holds; write PNG or WebP"):
        encode(image, ImageFormat("jpeg", 95), record, {}, "short")
    webp = encode(image, ImageFormat("webp", 95), record, {}, "short")
    assert json.loads(Image.open(io.BytesIO(webp)).getexif()[ExifTags.Base.ImageDescription]) == record
    assert encode(image, ImageFormat(), record, {"parameters": "short"}, "short").startswith(b"\x89PNG")


# --- sr ----------------------------------------------------------------------------------------


def sr(tiny, source, out, *extra):
    return run_cli("sr", str(source), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                   "--seed", "2", "-o", str(out), "--json", *extra, env=ONE_THREAD)


@pytest.fixture(scope="module")
def sr_inputs(tmp_path_factory):
    from PIL import PngImagePlugin

    folder = tmp_path_factory.mktemp("sr-inputs")
    rng = np.random.default_rng(3)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nSteps: 20, Sampler: DDIM, Seed: 5")
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), "RGB").save(folder / "rgb.png", pnginfo=info)
    Image.fromarray(rng.integers(0, 256, (8, 12, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), "RGB").save(folder / "plain.png")
    Image.new("RGB", (4200, 128)).save(folder / "wide.png")
    return folder


def test_sr_jpeg_carries_the_inputs_infotext_and_webp_keeps_alpha_exactly(tiny, sr_inputs, tmp_path):
    jpeg = sr(tiny, sr_inputs / "rgb.png", tmp_path / "rgb.jpg")
    plain = sr(tiny, sr_inputs / "plain.png", tmp_path / "plain.webp")
    png = sr(tiny, sr_inputs / "rgba.png", tmp_path / "rgba.png")
    webp = sr(tiny, sr_inputs / "rgba.png", tmp_path / "rgba.webp", "--lossless")
    for result in (jpeg, plain, png, webp):
        assert result.returncode == 0, result.stderr
    exif, _ = exif_of(tmp_path / "rgb.jpg")
    assert piexif.helper.UserComment.load(exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]) == \
        "a castle\nSteps: 20, Sampler: DDIM, Seed: 5"  # carried through, as a PNG output's parameters chunk is
    (record,) = jpeg.records
    assert json.loads(exif[ExifTags.Base.ImageDescription]) == {k: v for k, v in record.items() if k not in ("path", "wall_time_s")}
    comment = piexif.helper.UserComment.load(exif_of(tmp_path / "plain.webp")[0].get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment])
    assert comment.startswith("StableSR upscale: 4, preset: paper") and comment.endswith("Version: diffier 0.1.0")  # the postprocessing line
    out = Image.open(tmp_path / "rgba.webp")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), np.asarray(Image.open(tmp_path / "rgba.png")))
    assert run_cli("info", "--json", str(tmp_path / "rgb.jpg")).records[0]["record"] == json.loads(exif[ExifTags.Base.ImageDescription])


@pytest.mark.parametrize(("source", "args", "needle"), [
    ("rgba.png", ("-o", "out.jpg"), "rgba.png: the image has an alpha channel, which JPEG cannot hold; write PNG or WebP"),
    ("wide.png", ("--format", "webp", "-o", "out/"), "wide.png: a 16800×512 image is over the 16383 px a WebP side may have"),
    ("rgb.png", ("--compare", "--format", "jpeg", "-o", "cmp/"), "--compare writes PNGs"),
])
def test_sr_refuses_what_the_format_cannot_hold_before_the_model_loads(sr_inputs, tmp_path, source, args, needle):
    result = run_cli("sr", str(sr_inputs / source), "--ckpt", str(tmp_path / "missing.ckpt"), "--seed", "1", "-q", *args, cwd=tmp_path)
    assert_one_line_error(result, 2, needle)  # exit 3 would mean it went on to the missing checkpoint
    assert list(tmp_path.iterdir()) == []
