"""Bad or hostile input refused before anything heavy: every numeric option has a finite range,
every output name is checked for every item, launcher variables are read strictly, and signals,
warnings and failed writes end as one stderr line with nothing left behind.

None of these runs loads a model: each is refused first, so none needs one (the model paths given
do not exist, and a run that got as far as loading would exit 3 instead of 2).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time

import pytest

from diffier_cli.errors import UsageError
from diffier_cli.jobs import Item, resolve_shard, split_lines
from diffier_cli.limits import MAX_ITEMS, MAX_NAME_BYTES
from diffier_cli.outputs import name_problem, plan_outputs, write_atomically
from tests.helpers import assert_one_line_error, run_cli

NO_MODEL = ("--model", "/nonexistent/model")


def refused_before_work(tmp_path, *args: str, needle: str, code: int = 2, stdin: str | None = None):
    """Run `diffier ARGS` in an empty folder: the documented code, one line naming `needle`, no
    file or folder left, and fast (a guard against a hang, not a timing claim)."""
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    result = run_cli(*args, cwd=work, input_text=stdin)
    assert time.monotonic() - started < 30
    assert_one_line_error(result, code, needle)
    assert list(work.iterdir()) == []
    return result


# --- every numeric option has a finite range -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("t2i", "p", "--cfg", "1e309"), "inf is outside [0, 100]"),
        (("t2i", "p", "--cfg", "nan"), "nan is outside [0, 100]"),
        (("t2i", "p", "--cfg", "101"), "--cfg"),
        (("t2i", "p", "--steps", "2000"), "--steps"),
        (("t2i", "p", "--num-images", "99999999999999999999"), "--num-images"),
        (("t2i", "p", "--batch-size", "5000"), "--batch-size"),
        (("t2i", "p", "--height", "16384"), "outside 8..8192 pixels"),
        (("t2i", "p", "--width", "8200"), "outside 8..8192 pixels"),
        (("t2i", "p", "--ddim-eta", "1.5"), "--ddim-eta"),
        (("t2i", "p", "--eta", "nan"), "--eta"),
        (("t2i", "p", "--eta", "2"), "outside [0, 1]"),
        (("t2i", "p", "--threshold", "inf"), "--threshold"),
        (("t2i", "p", "--max-iters", "100000"), "--max-iters"),
        (("t2i", "p", "--refiner", "iec", "--iec-iters", "1000"), "--iec-iters"),
        (("t2i", "p", "--refiner", "iec", "--iec-tol", "nan"), "--iec-tol"),
        (("t2i", "p", "--refiner", "iec", "--iec-gamma", "inf"), "--iec-gamma"),
        (("tts", "--text", "Hi.", "--pause", "inf"), "--pause"),
        (("tts", "--text", "Hi.", "--pause", "1e10"), "outside [0, 60]"),
        (("tts", "--text", "Hi.", "--length-scale", "inf"), "--length-scale"),
        (("tts", "--text", "Hi.", "--pe-scale", "inf"), "--pe-scale"),
        (("tts", "--text", "Hi.", "--temperature", "nan"), "--temperature"),
        (("tts", "--text", "Hi.", "--temperature", "1e-300"), "outside [0.1, 100]"),
        (("tts", "--text", "Hi.", "--steps", "100000"), "--steps"),
        (("tts", "--text", "Hi.", "--speaker", str(10**30)), "--speaker"),
        (("sr", "x.png", "--scale", "inf"), "--scale"),
        (("sr", "x.png", "--scale", "nan"), "--scale"),
        (("sr", "x.png", "--scale", "33"), "(0, 32]"),
        (("sr", "x.png", "--ddim-eta", "2"), "--ddim-eta"),
        (("sr", "x.png", "--dec-w", "nan"), "--dec-w"),
        (("sr", "x.png", "--cfg", "inf"), "--cfg"),
        (("sr", "x.png", "--tile-size", "100000"), "--tile-size"),
        (("gap", "--misfit-size", "inf"), "--misfit-size"),
        (("gap", "--sigma", "nan"), "--sigma"),
        (("gap", "--dim", "100000"), "--dim"),
        (("gap", "--steps", "1000"), "--steps"),
        (("eval", "sr", "--hr-dir", ".", "--blur-sigma", "nan"), "--blur-sigma"),
        (("eval", "tts", "--text-file", "x", "--reference-dir", ".", "--pause", "inf"), "--pause"),
        (("t2i", "p", "--refiner", "iec", "--iec-steps", "first:" + "9" * 5000), "A, k in 1..9999"),
        (("sr", "x.png", "--compare", "--crop", "1,2,3," + "9" * 5000), "is not X,Y,W,H"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_option(tmp_path, args, needle):
    result = refused_before_work(tmp_path, *args, needle=needle)
    assert len(result.stderr) < 300  # a 5000-digit value is not echoed back whole


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("t2i", "p", "--sweep-cfg", "3,1e309"), "finite"),
        (("t2i", "p", "--sweep-cfg", "3,200"), "at most 100"),
        (("t2i", "p", "--sweep-eta", "0.1,5"), "at most 1"),
        (("t2i", "p", "--sweep-iters", "1,100000"), "at most 1000"),
        (("t2i", "p", "--sweep-cfg", ",".join(str(i) for i in range(40))), "at most 32 values"),
        (("gap", "--omegas", "1,1e400"), "finite"),
        (("gap", "--n-samples", "20000", "--classes", "1000", "--components", "1000"), "--n-samples × --classes"),
    ],
)
def test_lists_and_their_products_are_bounded(tmp_path, args, needle):
    refused_before_work(tmp_path, *args, *(NO_MODEL if args[0] == "t2i" else ()), needle=needle)


def test_sr_tile_overlap_must_fit_in_the_tile(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")  # never read: the settings are refused first
    result = run_cli("sr", str(tmp_path / "x.png"), "--tile-overlap", "64", "-o", str(tmp_path / "out/"))
    assert_one_line_error(result, 2, "--tile-overlap 64", "64 latent px")
    assert not (tmp_path / "out").exists()


def test_total_items_are_bounded_before_any_is_built(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    result = run_cli("t2i", "--prompts-file", str(prompts), "--num-images", str(MAX_ITEMS // 2 + 1), *NO_MODEL,
                     "-o", str(tmp_path / "out/"))
    assert_one_line_error(result, 2, f"over the {MAX_ITEMS} items")
    # 5 million lines are refused from a count, before any is split off or parsed (which would
    # take about 1 GB and 10 s): a guard against that, not a timing claim
    many = tmp_path / "many.jsonl"
    many.write_bytes(b"{}\n" * 5_000_000)
    started = time.monotonic()
    result = run_cli("t2i", "--prompts-file", str(many), *NO_MODEL, "-o", str(tmp_path / "out/"))
    assert time.monotonic() - started < 5
    assert_one_line_error(result, 2, f"holds over {MAX_ITEMS} lines")
    lines = tmp_path / "lines.txt"
    lines.write_text("hello.\n" * (MAX_ITEMS + 1))
    for args in (("tts", str(lines), "--per-line", "--checkpoint", "/nonexistent.pt", "-o", str(tmp_path / "out/")),
                 ("eval", "tts", "--text-file", str(lines), "--reference-dir", str(tmp_path), "--checkpoint", "/nonexistent.pt")):
        assert_one_line_error(run_cli(*args), 2, f"holds over {MAX_ITEMS} lines")
    assert len(split_lines("hello.\n" * MAX_ITEMS, "x")) == MAX_ITEMS  # exactly the bound still fits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.txt", "many.jsonl", "p.txt"]


# --- output names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("{index:{seed.foo}}", "nests a field"),
        ("{index:{seed[0]}}", "nests a field"),
        ("{index:>100000}", f"more than the {MAX_NAME_BYTES} bytes"),
        ("{seed:.999999999f}", f"more than the {MAX_NAME_BYTES} bytes"),
        ("{index}-" + "x" * 250, f"at most {MAX_NAME_BYTES} fit"),
        ("{seed.real}", "unknown field"),
        ("con", "device name Windows reserves"),
    ],
)
def test_name_templates_are_checked_before_anything_is_rendered_or_loaded(tmp_path, name, needle):
    refused_before_work(tmp_path, "t2i", "p", "--num-images", "2", "-o", "out/", "--name", name, *NO_MODEL, needle=needle)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ({"prompt": "x", "name": "a\u0000b"}, "control character"),
        ({"prompt": "x", "name": "a\nb"}, "control character"),
        ({"prompt": "x", "name": "n" * 300}, "300 bytes"),
        ({"prompt": "x", "name": ".hidden"}, "would be a hidden file"),
        ({"prompt": "x", "name": "lpt1.png"}, "Windows reserves"),
        ({"prompt": "x", "name": ".."}, "would be a hidden file"),
        ({"prompt": "x", "name": ["a", "b"]}, "is not a string"),
    ],
)
def test_bad_jsonl_names_fail_before_the_model_loads(tmp_path, line, needle):
    """A single bad line: its item fails with exit 2 before any model is loaded (the model path does
    not exist, so loading would exit 3), and no output folder is made."""
    result = refused_before_work(tmp_path, "t2i", "--prompts-file", "-", "--seed", "1", "-o", "out/", "-q", *NO_MODEL,
                                 stdin=json.dumps(line) + "\n", needle=needle)
    assert "stdin line 1" in result.stderr


def test_a_name_that_only_fails_with_its_image_number_fails_alone():
    """A .jsonl name that fits, but not with a two-digit image number: image 10 of 11 fails alone
    (exit 2 in its turn), images 0..9 keep the line's name."""
    from diffier_cli.t2i import PromptLine, work_items

    base = "n" * (MAX_NAME_BYTES - len("-9.png"))
    items = work_items([PromptLine("x", name=base)], 11, None, 0, "refined")
    assert [item.error for item in items[:10]] == [None] * 10
    assert [item.name for item in items[:10]] == [f"{base}-{j}" for j in range(10)]
    assert "241 bytes" in items[10].error and items[10].name is None and items[10].stem == "x"


def test_name_problems_cover_what_file_systems_refuse():
    assert name_problem("00001-7-refined-a-cat.png") is None
    assert name_problem("кот.png") is None
    assert name_problem("é" * (MAX_NAME_BYTES // 2)) is None  # 2 bytes each: exactly the limit
    assert "bytes" in name_problem("é" * (MAX_NAME_BYTES // 2 + 1))
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x7fb", "a\tb", "CON.png", "com3", "Nul.tar.gz"):
        assert name_problem(bad), bad
    items = [Item(index=0, seed=1, slug="s", stem="s", mode="m")]
    with pytest.raises(UsageError, match="4096 bytes"):
        plan_outputs("/" + "/".join(["d" * 200] * 25) + "/", items, "{index}.png")


# --- nothing left behind --------------------------------------------------------------------------


def test_a_failed_write_removes_the_folders_it_made_and_only_those(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    existing = tmp_path / "F"
    existing.mkdir()
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(Exception, match="No space left on device"):
        write_atomically({existing / "out" / "deeper" / "x.png": b"data"}, overwrite=False)
    assert existing.is_dir() and list(existing.iterdir()) == []

    (existing / "out").mkdir()
    (existing / "out" / "other.png").write_bytes(b"keep")
    with pytest.raises(Exception, match="No space left on device"):
        write_atomically({existing / "out" / "new" / "x.png": b"data"}, overwrite=False)
    assert sorted(p.name for p in (existing / "out").iterdir()) == ["other.png"]


# --- launchers, signals, warnings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"RANK": "1"}, "sets RANK but not WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "sets WORLD_SIZE but not RANK"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two', not a whole number"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= K < N"),
        ({"SLURM_NTASKS": "4x"}, "SLURM_NTASKS"),
        ({"SLURM_ARRAY_TASK_COUNT": "-3"}, "SLURM_ARRAY_TASK_COUNT"),
        ({"LOCAL_RANK": "gpu0"}, "LOCAL_RANK"),
        ({"RANK": "\u0661", "WORLD_SIZE": "2"}, "not a whole number"),  # an Arabic-Indic one: isdigit, not ASCII
        ({"RANK": "0", "WORLD_SIZE": "9" * 12}, "too large for a process count"),
        ({"SLURM_NTASKS": "2"}, "sets SLURM_NTASKS=2 but not SLURM_PROCID"),
        ({"SLURM_ARRAY_TASK_COUNT": "4"}, "sets SLURM_ARRAY_TASK_COUNT=4 but not SLURM_ARRAY_TASK_ID"),
    ],
)
def test_launcher_variables_are_read_strictly(environ, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        resolve_shard(None, environ)


def test_a_stray_rank_is_refused_by_the_command(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("t2i", "p", "--seed", "1", *NO_MODEL, "-o", "out/", cwd=work, env={"RANK": "1"})
    assert_one_line_error(result, 2, "RANK", "WORLD_SIZE")
    assert list(work.iterdir()) == []
    # WORLD_SIZE=1 alone (a one-process launch) and a full pair are fine
    assert resolve_shard(None, {"WORLD_SIZE": "1"}).count == 1
    assert (resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}).index, resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}).count) == (1, 3)


def test_sigterm_before_the_model_loads_exits_130_with_the_resume_hint(tmp_path, monkeypatch, capsys):
    """SIGTERM while the prompts are still being read (a batch job killed by Slurm early)."""
    from diffier_cli.app import main

    class KilledWhileReading:
        def read(self, size=-1):
            os.kill(os.getpid(), signal.SIGTERM)
            return b"a cat\n"

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": KilledWhileReading()})())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        main(["t2i", "--prompts-file", "-", *NO_MODEL, "-o", str(tmp_path / "out/"), "-q"])
    assert stopped.value.code == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("diffier: error: interrupted; rerun the same command with --skip-existing")
    assert signal.getsignal(signal.SIGTERM) is before  # main() leaves the process's handlers as it found them
    assert not (tmp_path / "out").exists()


def test_library_warnings_reach_stderr_as_one_line(tmp_path, monkeypatch):
    """A warning raised inside a command (here from the shard lookup) is printed by main() as one
    line, its source lines and any later lines of its text dropped."""
    import warnings

    import diffier_cli.task

    def warns(explicit):
        warnings.warn("first line\n  second line with source", UserWarning)
        raise UsageError("stop here")

    monkeypatch.setattr(diffier_cli.task, "resolve_shard", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = run_cli("t2i", "p", *NO_MODEL, "-o", str(tmp_path / "out/"), "-q")
    assert result.stderr.splitlines() == ["diffier: warning: first line", "diffier: error: stop here"]


def test_control_characters_and_long_names_in_paths_stay_on_one_line(tmp_path):
    odd = tmp_path / "bad\nname.png"
    odd.write_bytes(b"not an image")
    result = run_cli("sr", str(odd), "-o", f"{tmp_path / 'out'}/", "-q")
    assert_one_line_error(result, 2, "'bad\\nname-x4-refined.png' holds a control character")
    long_folder = tmp_path / ("d" * 300)
    for args in (("t2i", "p", *NO_MODEL, "-o", f"{long_folder}/"), ("info", str(long_folder / "a.png")),
                 ("manifest", str(long_folder)), ("tts", "--text", "Hi.", "-o", str(long_folder / "a.wav")),
                 ("sr", str(long_folder / "a.png")), ("convert", "x.ckpt", str(long_folder / "b.safetensors"))):
        result = run_cli(*args)
        assert_one_line_error(result, 2, "d" * 40)
        assert len(result.stderr) < 400, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad\nname.png"]


def test_out_of_memory_anywhere_is_exit_4_and_odd_paths_exit_2():
    from diffier_cli.errors import ExitCode, as_diffier_error

    assert as_diffier_error(MemoryError()).code == ExitCode.OUT_OF_MEMORY  # numpy's _ArrayMemoryError is one
    too_long = as_diffier_error(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 5000))
    assert too_long.code == ExitCode.USAGE and len(str(too_long)) < 250
    assert as_diffier_error(OSError(errno.ENOENT, "No such file")) is None


def test_one_wav_is_bounded_before_any_cleaning_or_model(tmp_path):
    refused_before_work(tmp_path, "tts", "--text", "Hi. " * 200, "--pause", "60", "--checkpoint", "/nonexistent.pt",
                        "-o", "out.wav", "-q", needle="about 200 minutes of audio")


def test_refinement_summaries_survive_nan_statistics():
    from diffier_cli.refine import RefineStats

    summary = RefineStats.summarize({"iterations": [1, 1, 1], "loss": [2.0, None, 4.0], "rel_change": [None, None, None]})
    assert summary == {"steps": 3, "iterations_total": 3, "iterations_max": 1, "loss_mean": 3.0,
                       "rel_change_mean": None, "rel_change_max": None}
    json.dumps(summary, allow_nan=False)


def test_an_overflow_names_the_fix_that_fits_the_run():
    from diffier_cli.errors import numerical_overflow
    from models.errors import NumericalOverflow

    assert str(numerical_overflow(NumericalOverflow("output", "float16"), "lower --cfg")) == (
        "the output is NaN or infinite (numerical overflow in float16); rerun with --dtype float32")
    assert str(numerical_overflow(NumericalOverflow("output", "float32"), "lower --cfg")).endswith("in float32); lower --cfg")


def test_a_number_too_long_to_read_out_says_why(tmp_path):
    result = refused_before_work(tmp_path, "tts", "--text", "I owe you " + "9" * 40 + " dollars.", "--checkpoint",
                                 "/nonexistent.pt", "-o", "out.wav", "-q", needle="a number too large to read out")
    assert len(result.stderr) < 300


def test_tts_text_and_eval_metadata_are_read_within_bounds(tmp_path):
    from diffier_cli.limits import MAX_TEXT_BYTES

    huge = tmp_path / "huge.txt"
    with huge.open("wb") as sparse:  # no disk used: the size alone is refused, before any byte is read
        sparse.truncate(MAX_TEXT_BYTES + 1)
    result = run_cli("tts", str(huge), "--checkpoint", "/nonexistent.pt", "-o", str(tmp_path / "out.wav"), "-q")
    assert_one_line_error(result, 2, f"{huge} is over 256 MiB (MAX_TEXT_BYTES); split it")
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("LJ001|Fine.\n../../elsewhere/LJ002|Reads outside the reference folder.\n")
    result = run_cli("eval", "tts", "--text-file", str(metadata), "--reference-dir", str(tmp_path), "--checkpoint",
                     "/nonexistent.pt", "-q")
    assert_one_line_error(result, 2, "line 2: the id names no reference file", "folder separator")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.txt", "metadata.csv"]


# --- forged model configs -------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["[1]", "[" * 100_000, '{"_class_name": 5}', "{}"])
def test_a_forged_model_index_is_exit_3(tmp_path, index):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(index)
    result = run_cli("t2i", "p", "--model", str(model), "-o", str(tmp_path / "out" / "x.png"), "-q")
    assert_one_line_error(result, 3, str(model))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("config", "needle"), [
    ("[1]", "is not a StableSR config"),
    ('{"unet": [1]}', "is not a StableSR config"),
    ("[" * 100_000, "nests deeper than 32 levels"),
    ('{"struct_encoder": {"no_such_argument": 1}}', "does not describe a StableSR module"),
])
def test_a_forged_stablesr_config_sidecar_is_exit_3(tiny, tmp_path, config, needle):
    import shutil

    from PIL import Image

    checkpoint = tmp_path / "stablesr.ckpt"
    shutil.copyfile(tiny["ckpt"], checkpoint)
    (tmp_path / "stablesr.ckpt.config.json").write_text(config)
    Image.new("RGB", (12, 8)).save(tmp_path / "in.png")
    result = run_cli("sr", str(tmp_path / "in.png"), "--ckpt", str(checkpoint), "--vae-ckpt", str(tiny["vae"]),
                     "--tile-size", "64", "--tile-overlap", "4", "--steps", "2", "-o", str(tmp_path / "out.png"), "-q")
    assert_one_line_error(result, 3, needle)
    assert not (tmp_path / "out.png").exists()


def _v1_with(**fields) -> str:
    from dataclasses import asdict

    from models.gradtts.hifigan import HiFiGANConfig

    return json.dumps({**asdict(HiFiGANConfig()), **fields})


@pytest.mark.parametrize(("config", "needle"), [
    ("[1]", "not a HiFi-GAN config"),
    ("[" * 100_000, "nests deeper than 32 levels"),
    (_v1_with(upsample_rates=5), "not a HiFi-GAN config: 'int' object is not iterable"),
    (_v1_with(num_mels="eighty"), "not a HiFi-GAN config: invalid literal"),
])
def test_a_forged_hifigan_config_is_model_unavailable(tmp_path, config, needle):
    from diffier_cli.errors import ModelUnavailable
    from models.gradtts.hifigan import HiFiGANConfig

    (tmp_path / "config.json").write_text(config)
    (tmp_path / "v1.json").write_text(_v1_with())
    assert HiFiGANConfig.from_json(tmp_path / "v1.json") == HiFiGANConfig()  # unaltered, it reads back
    with pytest.raises(ModelUnavailable, match=needle):
        HiFiGANConfig.from_json(tmp_path / "config.json")


def test_only_commands_that_resume_offer_the_resume_hint(monkeypatch):
    import diffier_cli.gap

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffier_cli.gap, "run_benchmark", interrupted)
    result = run_cli("gap", "-q")
    assert (result.returncode, result.stderr) == (130, "diffier: error: interrupted\n")
