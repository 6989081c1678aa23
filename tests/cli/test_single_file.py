"""`diffier t2i --model FILE`: single-file checkpoints in the original layout (tests/ldm_export.py)
give the pixels of the diffusers folder they came from, with their configs from --config or the
hub cache, never from the network when offline; what cannot be loaded exits 3 naming the fix."""

from __future__ import annotations

import datetime
import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, pixels, run_cli
from tests.ldm_export import save_single_file

FAST = ("--steps", "3", "--seed", "4", "--json")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def t2i(model, out, *extra):
    return run_cli("t2i", "a red bicycle", "--model", str(model), *FAST, "-o", str(out), *extra)


def refused(model, out, *extra):
    """A run expected to fail: --quiet leaves the error line alone on stderr."""
    return t2i(model, out, "--quiet", *extra)


@pytest.mark.parametrize("case, layout, suffix", [
    ("epsilon", "clip", ".safetensors"),  # SD 1.x
    ("v_prediction", "open_clip", ".safetensors"),  # SD 2.x: OpenCLIP text encoder, v-prediction configs
    ("epsilon", "clip", ".ckpt"),  # a tensors-only torch file
    ("sdxl", "clip", ".safetensors"),
])
def test_a_single_file_gives_the_pixels_of_its_folder(tiny_sd, tiny_sdxl, tmp_path, case, layout, suffix):
    folder = tiny_sdxl if case == "sdxl" else tiny_sd[case]
    path = save_single_file(folder, tmp_path / f"model{suffix}", layout)
    for extra in (("--baseline",), ()):
        from_folder = t2i(folder, tmp_path / "folder.png", *extra, "--overwrite")
        from_file = t2i(path, tmp_path / "file.png", "--config", str(folder), *extra, "--overwrite")
        assert from_folder.returncode == 0 and from_file.returncode == 0, from_folder.stderr + from_file.stderr
        assert np.array_equal(pixels(tmp_path / "file.png"), pixels(tmp_path / "folder.png")), extra
    (record,) = from_file.records
    assert record["model"]["id"] == path.name and record["model"]["hashed"] == path.name
    assert record["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # A1111's Model hash: the file's
    assert record["model"]["single_file"] == {"config": folder.name, "config_revision": None}
    assert f"Model hash: {record['model']['sha256'][:10]}, Model: model," in Image.open(tmp_path / "file.png").text["parameters"]
    assert record["model"]["pipeline"] == ("StableDiffusionXLPipeline" if case == "sdxl" else "StableDiffusionPipeline")


def test_a_hub_cache_link_to_a_blob_is_read_by_its_own_name(tiny_sd, tmp_path):
    """`hf download REPO FILE` leaves snapshots/<commit>/FILE linking to blobs/<sha256>, which has no suffix."""
    blob = save_single_file(tiny_sd["epsilon"], tmp_path / "blob.safetensors").rename(tmp_path / "0123abcd")
    link = tmp_path / "snapshot" / "v1-5-pruned.safetensors"
    link.parent.mkdir()
    link.symlink_to(blob)
    result = t2i(link, tmp_path / "x.png", "--config", str(tiny_sd["epsilon"]), "--baseline")
    assert result.returncode == 0, result.stderr
    assert result.records[0]["model"]["id"] == "v1-5-pruned.safetensors"


def test_config_given_a_file_is_a_usage_error(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    yaml = tmp_path / "v1-inference.yaml"
    yaml.write_text("model: {}\n")
    result = refused(path, tmp_path / "x.png", "--config", str(yaml))
    assert_one_line_error(result, 2, "is a file; it takes a diffusers folder or hub id")


def fake_cache(root, repo: str, folder, leave_out: str | None = None):
    """A Hugging Face hub cache holding `repo`'s config files, as `hf download --include` leaves it."""
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    if leave_out:
        (snapshot / leave_out).unlink()
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    return root


def test_without_config_the_family_configs_come_from_the_cache(tiny_sd, tmp_path):
    """The tiny file reads as SD 1.x (diffusers' classification), whose configs live in
    stable-diffusion-v1-5/stable-diffusion-v1-5; a cache holding them is enough, offline."""
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    cache = fake_cache(tmp_path / "cache", "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_sd["epsilon"])
    result = t2i(path, tmp_path / "x.png", "--offline", "--cache-dir", str(cache), "--baseline")
    assert result.returncode == 0, result.stderr
    assert result.records[0]["model"]["single_file"] == {"config": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                         "config_revision": COMMIT}
    reference = t2i(tiny_sd["epsilon"], tmp_path / "ref.png", "--baseline")
    assert reference.returncode == 0 and np.array_equal(pixels(tmp_path / "x.png"), pixels(tmp_path / "ref.png"))


def test_offline_without_cached_configs_exits_3_naming_the_repo_and_both_fixes(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    result = refused(path, tmp_path / "x.png", "--offline", "--cache-dir", str(tmp_path / "empty"))
    assert_one_line_error(result, 3, "model.safetensors is an SD 1.x checkpoint",
                          "stable-diffusion-v1-5/stable-diffusion-v1-5", "not in the local cache (--offline)",
                          "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include '*.json' '*.txt'", "--config")
    assert not (tmp_path / "x.png").exists()


def test_a_cache_missing_a_config_names_it(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    cache = fake_cache(tmp_path / "cache", "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_sd["epsilon"],
                       leave_out="vae/config.json")
    result = refused(path, tmp_path / "x.png", "--offline", "--cache-dir", str(cache))
    assert_one_line_error(result, 3, "stable-diffusion-v1-5/stable-diffusion-v1-5 lacks vae/config.json")


def test_a_ckpt_with_pickled_code_is_refused_then_loads_once_converted(tiny_sd, tmp_path):
    import torch
    from safetensors.torch import load_file

    tensors = load_file(save_single_file(tiny_sd["epsilon"], tmp_path / "plain.safetensors"))
    path = tmp_path / "model.ckpt"
    # What Lightning saves beside the weights: a callback's state (here a class from an installed package).
    torch.save({"state_dict": tensors, "callbacks": {"ModelCheckpoint": datetime.timedelta(seconds=5)}}, path)
    result = refused(path, tmp_path / "x.png", "--config", str(tiny_sd["epsilon"]))
    assert_one_line_error(result, 3, "pickles datetime.timedelta", f"diffier convert {path} {tmp_path / 'model.safetensors'}")
    converted = run_cli("convert", str(path), str(tmp_path / "model.safetensors"))
    assert converted.returncode == 0, converted.stderr
    loaded = t2i(tmp_path / "model.safetensors", tmp_path / "x.png", "--config", str(tiny_sd["epsilon"]), "--baseline")
    reference = t2i(tiny_sd["epsilon"], tmp_path / "ref.png", "--baseline")
    assert loaded.returncode == 0 and reference.returncode == 0, loaded.stderr
    assert np.array_equal(pixels(tmp_path / "x.png"), pixels(tmp_path / "ref.png"))


def test_an_sdxl_file_with_sd_configs_is_refused(tiny_sd, tiny_sdxl, tmp_path):
    path = save_single_file(tiny_sdxl, tmp_path / "xl.safetensors")
    result = refused(path, tmp_path / "x.png", "--config", str(tiny_sd["epsilon"]))
    assert_one_line_error(result, 3, "xl.safetensors is an SDXL checkpoint", "StableDiffusionPipeline",
                          "pass --config with an SDXL diffusers folder or hub id")


def test_config_with_a_folder_model_is_a_usage_error(tiny_sd, tmp_path):
    result = refused(tiny_sd["epsilon"], tmp_path / "x.png", "--config", str(tiny_sd["v_prediction"]))
    assert_one_line_error(result, 2, "--config gives a single-file checkpoint's configs", "is not a file")


def test_a_missing_config_folder_or_bad_hub_id_is_refused(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd["epsilon"], tmp_path / "model.safetensors")
    result = refused(path, tmp_path / "x.png", "--config", str(tmp_path / "nowhere" / "x"))
    assert_one_line_error(result, 3, "--config", "no such folder")
