"""`diffier tts --compare`: baseline and refined from one text on one seed, and a picture of both.

Each WAV and its sidecar are what a plain run (`--baseline`, or refined) with that seed writes;
the PNG stacks the two mel spectrograms (one colour scale) over their difference, refined − baseline.
The mels drawn are the ones HiFi-GAN received: the Grad-TTS decoder's output cut to each
utterance's frames, which tts.synthesize() feeds to the vocoder as it is (there is no
normalisation to undo). A --pause between utterances is drawn as round(pause · rate / hop) blank
frames, so the time axis follows the WAV to within half a frame per pause.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import UsageError
from diffier_cli.jobs import refuse_batch_options, resolve_shard
from diffier_cli.refiners import a1111_pairs
from diffier_cli.outputs import preflight, write_atomically
from diffier_cli.runtime import Reporter, choose_seed, require
from diffier_cli.scores import compared_modes
from diffier_cli.task import print_record
from diffier_cli.tts import N_MELS, TTSOptions, job_fields, load_voice, read_text, sidecar_bytes, speak, speakable, work_items



def _refuse(opts: TTSOptions) -> None:
    """The options --compare cannot honour, refused before anything is read or loaded."""
    for flag, given in {"--per-line": opts.per_line, "--baseline": opts.refiner is None}.items():
        if given:
            raise UsageError(f"--compare makes one baseline and one refined WAV from one text; drop {flag}")
    refuse_batch_options(opts, "--compare")
    output = opts.output
    if output == "-":
        raise UsageError("--compare writes two WAVs and a PNG, not a WAV on stdout; pass a folder (-o out/) or no -o")
    if output is not None and ("{" in output or (Path(output).suffix and not Path(output).is_dir())):
        raise UsageError(f"-o {output}: --compare names its five files itself; pass a folder (-o out/)")
    require("matplotlib", purpose="--compare", extra="plot")


def _title(record: dict, mode: str) -> str:
    _headline, *settings = a1111_pairs(record["refiner"], mode).items()
    return f"{mode}: " + ", ".join(f"{key} {value}" for key, value in settings)


def plot(mels: dict[str, list], modes: tuple[str, str], gap: int, frame_s: float, record: dict) -> bytes:
    """PNG bytes: baseline and refined log-mels on one colour scale, then refined − baseline; the
    record in a `diffier` text chunk."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend state

    blank = np.full((N_MELS, gap), np.nan, dtype=np.float32)
    baseline, refined = modes
    joined = {mode: np.concatenate([part for mel in mels[mode] for part in (blank, mel)][1:], axis=1) for mode in modes}
    difference = joined[refined] - joined[baseline]
    low, high = np.nanmin([*joined.values()]), np.nanmax([*joined.values()])
    spread = float(np.nanmax(np.abs(difference))) or 1.0
    extent = (0.0, difference.shape[1] * frame_s, 0, N_MELS)
    figure = Figure(figsize=(10, 8), layout="constrained")
    axes = figure.subplots(3, 1, sharex=True)
    panels = [(joined[baseline], f"baseline (no refinement), seed {record['seed']}", dict(cmap="magma", vmin=low, vmax=high), "log-mel"),
              (joined[refined], _title(record, refined), dict(cmap="magma", vmin=low, vmax=high), "log-mel"),
              (difference, f"difference: {refined} − baseline", dict(cmap="coolwarm", vmin=-spread, vmax=spread), "Δ log-mel")]
    for axis, (values, title, scale, label) in zip(axes, panels):
        shown = axis.imshow(values, origin="lower", aspect="auto", interpolation="nearest", extent=extent, **scale)
        axis.set(title=title, ylabel="mel bin")
        figure.colorbar(shown, ax=axis, label=label)
    axes[-1].set_xlabel("time (s)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"diffier": json.dumps(record, ensure_ascii=False, separators=(",", ":"))})
    return buffer.getvalue()


def run_compare(opts: TTSOptions) -> None:
    _refuse(opts)
    reporter = Reporter(opts.quiet)
    text, stem = read_text(opts.text, opts.text_file)
    seed = choose_seed(opts.seed)
    modes = compared_modes(opts.refiner, "--compare")
    runs = {modes[0]: replace(opts, refiner=None), modes[1]: opts}
    items = {mode: work_items(text, stem, False, seed, mode) for mode in modes}
    if not items[modes[1]]:
        raise UsageError("the text is empty; nothing to say")
    folder = Path(opts.output or ".")
    wavs = {mode: folder / f"{stem}-{seed}-{mode}.wav" for mode in modes}
    png = folder / f"{stem}-{seed}-compare.png"
    preflight([path for wav in wavs.values() for path in (wav, wav.with_suffix(".json"))] + [png], opts.overwrite)
    reporter.message(f"seed {seed}")
    spoken, skipped = speakable(text, reporter, opts)
    voice = load_voice(opts, reporter, resolve_shard(None).local_rank)

    files, records, mels = {}, {}, {mode: [] for mode in modes}
    with reporter.progress(total=2 * len(spoken) * opts.steps, description="compare"):
        for mode in modes:
            (item,) = items[mode]
            item.spoken, item.skipped = spoken, skipped
            fields = job_fields(runs[mode], items[mode], seed, mode)
            data, record, seconds = speak(voice, runs[mode], item, fields, on_step=reporter.advance, mels=mels[mode])
            files.update({wavs[mode].with_suffix(".json"): sidecar_bytes(record), wavs[mode]: data})  # the sidecar first
            records[mode] = (record, seconds)
            reporter.message(f"{mode}: {record['audio']['duration_s']:.2f} s of audio, {seconds:.1f} s")
    hop = voice.vocoder.config.hop_length
    gap = round(round(opts.pause * voice.sample_rate) / hop)
    record = {"tool": "diffier", "version": __version__, "command": "tts",
              "compare": {mode: str(wav) for mode, wav in wavs.items()}, "seed": seed, "refiner": opts.refiner.settings()}
    files[png] = plot(mels, modes, gap, hop / voice.sample_rate, record)
    write_atomically(files, opts.overwrite)  # the PNG last: its presence says the comparison is complete
    if opts.json:
        for mode in modes:
            print_record(wavs[mode], records[mode][1], records[mode][0])
    reporter.message(f"wrote {wavs[modes[0]]}, {wavs[modes[1]]} (each with its .json) and {png}")

