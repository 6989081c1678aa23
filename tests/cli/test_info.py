"""`diffier info` as a reader of other generators' images (issue 16, part 3), on files written here
in each generator's exact layout:

- AUTOMATIC1111 (stable-diffusion-webui, modules/images.py save_image_with_geninfo): a PNG's
  `parameters` text chunk (PngInfo.add_text), and for JPEG and WebP the image saved by Pillow, then
  `piexif.insert(piexif.dump({"Exif": {UserComment: piexif.helper.UserComment.dump(infotext,
  encoding="unicode")}}), path)`; the infotext is a Forge/A1111 1.10 one (Schedule type, hashes).
- ComfyUI (nodes.py SaveImage): `prompt`, the API graph, and `workflow`, the editor's graph, each
  `json.dumps`'d into a PNG text chunk; the graph is ComfyUI's default text-to-image workflow
  (checkpoint loader, two CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode, SaveImage), links
  as the editor saves them ([id, from node, from slot, to node, to slot, type]).
- InvokeAI 3.x (invokeai/app/services/image_files/image_files_disk.py): `invokeai_metadata`, the
  CoreMetadata fields as 3.3 writes them, and `invokeai_graph`, each `json.dumps`'d into a PNG chunk.

The parsing is sd-parsers' (the test extra has it, as `pip install 'diffier[readers]'` does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import piexif
import piexif.helper
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from diffier_cli.formats import ImageFormat, encode
from tests.helpers import damaged_copies, run_cli

A1111_TEXT = ("a lighthouse at dusk, oil painting\nNegative prompt: blurry, lowres\n"
              "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, "
              "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, Clip skip: 2, Version: v1.10.1")
A1111_FIELDS = {"prompt": "a lighthouse at dusk, oil painting", "negative_prompt": "blurry, lowres", "seed": 1234567890,
                "steps": 28, "cfg": 6.5, "sampler": "DPM++ 2M", "scheduler": "Karras", "width": 512, "height": 768,
                "model": "v1-5-pruned-emaonly", "model_hash": "6ce0161689",
                "other": {"VAE hash": "735e4c3a44", "Clip skip": "2", "Version": "v1.10.1"}}

COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
                                               "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}
COMFY_WORKFLOW = {
    "last_node_id": 9, "last_link_id": 9, "version": 0.4, "groups": [], "config": {}, "extra": {},
    "nodes": [{"id": int(node), "type": body["class_type"]} for node, body in COMFY_PROMPT.items()],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 4, 1, 6, 0, "CLIP"], [3, 4, 1, 7, 0, "CLIP"], [4, 6, 0, 3, 1, "CONDITIONING"],
              [5, 7, 0, 3, 2, "CONDITIONING"], [6, 5, 0, 3, 3, "LATENT"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
              [9, 8, 0, 9, 0, "IMAGE"]],
}
COMFY_FIELDS = {"prompt": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", "negative_prompt": "text, watermark",
                "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler": "euler", "scheduler": "normal",
                "width": 512, "height": 512, "model": "v1-5-pruned-emaonly.safetensors"}

INVOKE_METADATA = {"app_version": "3.3.0post3", "generation_mode": "txt2img", "positive_prompt": "landscape",
                   "negative_prompt": "low quality", "width": 768, "height": 432, "seed": 356120443, "rand_device": "cpu",
                   "cfg_scale": 7.5, "steps": 50, "scheduler": "dpmpp_2m_sde_k", "clip_skip": 0,
                   "model": {"model_name": "amixx_3Prunedfp16", "base_model": "sd-1", "model_type": "main"},
                   "controlnets": [], "loras": [], "vae": {"model_name": "sd-vae-ft-mse", "base_model": "sd-1"}}
INVOKE_FIELDS = {"prompt": "landscape", "negative_prompt": "low quality", "seed": 356120443, "steps": 50, "cfg": 7.5,
                 "sampler": "dpmpp_2m_sde_k", "width": 768, "height": 432, "model": "amixx_3Prunedfp16"}


def png(path: Path, **chunks: str) -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16), "navy").save(path, pnginfo=info)
    return path


def a1111_exif(path: Path, text: str = A1111_TEXT) -> Path:
    """As AUTOMATIC1111 saves a JPEG or WebP: Pillow writes the pixels, piexif inserts the EXIF."""
    Image.new("RGB", (16, 16), "navy").save(path, quality=80)
    piexif.insert(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}}), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generators")
    diffier = folder / "diffier.jpg"
    diffier.write_bytes(encode(Image.new("RGB", (16, 16)), ImageFormat("jpeg", 95), {"tool": "diffier", "seed": 3},
                               {}, "a cat\nSteps: 1, Sampler: DDIM, Seed: 3"))
    return {
        "diffier": diffier,
        "a1111_png": png(folder / "a1111.png", parameters=A1111_TEXT),
        "a1111_jpeg": a1111_exif(folder / "a1111.jpg"),
        "a1111_webp": a1111_exif(folder / "a1111.webp"),
        "comfyui": png(folder / "comfyui.png", prompt=json.dumps(COMFY_PROMPT), workflow=json.dumps(COMFY_WORKFLOW)),
        "invokeai": png(folder / "invokeai.png", invokeai_metadata=json.dumps(INVOKE_METADATA),
                        invokeai_graph=json.dumps({"id": "graph", "nodes": {}, "edges": []})),
        "plain": png(folder / "plain.png"),
    }


def shown(*paths: Path):
    result = run_cli("info", "--json", *map(str, paths))
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize(("name", "kind", "fields"), [
    ("a1111_png", "a1111", A1111_FIELDS), ("a1111_jpeg", "a1111", A1111_FIELDS), ("a1111_webp", "a1111", A1111_FIELDS),
    ("comfyui", "comfyui", COMFY_FIELDS), ("invokeai", "invokeai", INVOKE_FIELDS),
])
def test_each_generators_fields_are_parsed(files, name, kind, fields):
    result = shown(files[name])
    assert result.returncode == 0, result.stderr
    ((only,),) = [result.records]
    assert only["path"] == str(files[name]) and only["kind"] == kind
    common = {key: value for key, value in only["record"].items() if key != "other"}
    assert common == {key: value for key, value in fields.items() if key != "other"}
    if "other" in fields:
        assert only["record"]["other"] == fields["other"]


def test_the_readme_query_works_for_every_kind(files):
    """`diffier info --json *.png | jq .record.seed`: one object a file, the seed where it always is."""
    result = shown(*(files[name] for name in ("diffier", "a1111_png", "a1111_jpeg", "comfyui", "invokeai")))
    assert result.returncode == 0, result.stderr
    assert [(r["kind"], r["record"]["seed"]) for r in result.records] == [
        ("diffier", 3), ("a1111", 1234567890), ("a1111", 1234567890), ("comfyui", 156680208700286), ("invokeai", 356120443)]


def test_every_file_is_listed_and_the_exit_code_is_the_worst(files, tmp_path):
    deep = png(tmp_path / "deep.png", prompt="[" * 40 + "]" * 40, workflow="{}")
    listed = png(tmp_path / "list.png", invokeai_metadata="[1, 2]")
    no_sampler = png(tmp_path / "nosampler.png", parameters="just a prompt")
    order = [files["plain"], files["a1111_jpeg"], deep, tmp_path / "missing.webp", listed, no_sampler, files["comfyui"]]
    result = shown(*order)
    assert result.returncode == 2
    assert [(r["path"], r["kind"], r.get("exit_code")) for r in result.records] == [
        (str(files["plain"]), "none", 2), (str(files["a1111_jpeg"]), "a1111", None), (str(deep), "comfyui", 2),
        (str(tmp_path / "missing.webp"), "none", 2), (str(listed), "invokeai", 2), (str(no_sampler), "a1111", 2),
        (str(files["comfyui"]), "comfyui", None)]
    errors = result.stderr.splitlines()
    assert errors == [f"diffier: error: {r['error']}" for r in result.records if "error" in r]
    assert errors[0].endswith("plain.png: carries no generation metadata that info reads (diffier's, AUTOMATIC1111's, ComfyUI's or InvokeAI's)")
    assert f"{deep}: its prompt chunk nests deeper than 32 levels (MAX_JSON_DEPTH); the file is damaged or was altered" in errors[1]
    assert errors[2].endswith("missing.webp: no such file")
    assert f"{listed}: its invokeai_metadata chunk is a JSON list, not an object" in errors[3]
    assert errors[4].endswith("nosampler.png: its AUTOMATIC1111 metadata is not in a layout sd-parsers reads "
                              "(ParserError: no sampler information found)")


def test_the_text_form_names_the_generator(files):
    result = run_cli("info", str(files["a1111_webp"]))
    assert result.returncode == 0, result.stderr
    header, body = result.stdout.split("\n", 1)
    assert header == f"{files['a1111_webp']}: AUTOMATIC1111"
    assert json.loads(body)["prompt"] == "a lighthouse at dusk, oil painting"


def test_without_sd_parsers_diffier_files_are_read_and_the_rest_name_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "sd_parsers", None)  # as if not installed: find_spec finds nothing, imports fail
    alone = shown(files["diffier"])
    assert alone.returncode == 0 and alone.records == [{"path": str(files["diffier"]), "kind": "diffier", "record": {"tool": "diffier", "seed": 3}}]
    result = shown(files["a1111_jpeg"], files["diffier"], files["comfyui"])
    assert result.returncode == 2
    assert [(r["kind"], r["record"]) for r in result.records] == [("a1111", None), ("diffier", {"tool": "diffier", "seed": 3}), ("comfyui", None)]
    assert result.stderr.splitlines() == [
        f"diffier: error: {files['a1111_jpeg']}: holds AUTOMATIC1111 metadata, which info reads with sd-parsers; pip install 'diffier[readers]'",
        f"diffier: error: {files['comfyui']}: holds ComfyUI metadata, which info reads with sd-parsers; pip install 'diffier[readers]'"]


def test_manifest_counts_other_generators_files_as_foreign(files):
    result = run_cli("manifest", *(str(files[name]) for name in ("diffier", "a1111_jpeg", "a1111_webp", "comfyui", "plain")))
    assert result.returncode == 0, result.stderr
    assert [line["path"] for line in result.records] == [str(files["diffier"])]
    assert result.stderr.splitlines() == ["4 file(s) without a diffier record left out"]


def test_a_diffier_exif_record_is_read_as_untrusted(tmp_path):
    """EXIF that says diffier wrote it but holds a hostile record: one error line, like a PNG chunk."""
    deep = tmp_path / "deep.jpg"
    Image.new("RGB", (8, 8)).save(deep, exif=piexif.dump({"0th": {piexif.ImageIFD.ImageDescription: "[" * 40 + "]" * 40,
                                                                 piexif.ImageIFD.Software: "diffier 0.1.0"}}))
    other = tmp_path / "other.jpg"  # another tool's ImageDescription (a camera's, imaginAIry's prompt) is not a record
    Image.new("RGB", (8, 8)).save(other, exif=piexif.dump({"0th": {piexif.ImageIFD.ImageDescription: "[" * 100}}))
    result = shown(deep, other)
    assert result.returncode == 2
    assert [(r["kind"], r.get("exit_code")) for r in result.records] == [("none", 2), ("none", 2)]
    assert result.stderr.splitlines()[0] == (f"diffier: error: {deep}: its EXIF ImageDescription nests deeper than 32 levels "
                                             "(MAX_JSON_DEPTH); not written by diffier, or altered since; move it away")
    assert result.stderr.splitlines()[1].endswith("other.jpg: carries no generation metadata that info reads "
                                                  "(diffier's, AUTOMATIC1111's, ComfyUI's or InvokeAI's)")


@pytest.mark.parametrize("name", ["diffier", "a1111_webp", "comfyui"])
def test_damaged_files_never_escape_as_a_traceback(files, tmp_path, name):
    """Random byte flips, cuts and insertions (a fixed seed, so a failure is reproducible): each
    file is a reading or an error naming it, whichever reader it reaches."""
    from diffier_cli.readers import read

    path = tmp_path / files[name].name
    for data in damaged_copies(files[name].read_bytes(), seed=16, trials=150, keep=2):
        path.write_bytes(data)
        reading = read(str(path))
        assert (reading.record is None) == (reading.error is not None)
        if reading.error is not None:
            assert str(reading.error).startswith(f"{path}: ") and "\n" not in str(reading.error)
        json.dumps(reading.as_json(), allow_nan=False)  # whatever was read is JSON
