"""`diffier eval tts`: wideband PESQ of baseline and refined speech against reference recordings.

The input is a metadata file in LJSpeech's `metadata.csv` layout (`id|text` or `id|raw|normalised`,
the last field spoken) and a folder of `<id>.wav` recordings. Every line is synthesised twice on
the same seed (seed + line index), baseline and refined, and both are scored against the
recording by wideband PESQ (ITU-T P.862.2, the `pesq` package), which is defined at 16 kHz:
synthesis (22050 Hz) and references are resampled with soxr (its high-quality setting) first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from diffier_cli.errors import UsageError
from diffier_cli.jobs import split_lines
from diffier_cli.outputs import name_problem, preflight
from diffier_cli.runtime import Reporter, RunOptions, require
from diffier_cli.scores import compared_modes, mean, print_json, write_csv
from diffier_cli.tts import TTSSettings
from models import untrusted

PESQ_RATE = 16000  # P.862.2 wideband


@dataclass(frozen=True, kw_only=True)
class EvalTTSOptions(TTSSettings, RunOptions):
    """`diffier eval tts`: Grad-TTS's settings, the metadata file and the reference recordings."""

    text_file: str
    reference_dir: str


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    line: int


def read_metadata(path: Path) -> list[Utterance]:
    """The `id|text` lines; an id names its reference `<id>.wav`, so it must be a plain file name."""
    try:
        text = untrusted.read_text(str(path))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"{path} {exc}") from None
    entries = []
    for number, line in enumerate(split_lines(text, str(path)), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
            raise UsageError(f"{path} line {number} is not 'id|text' (LJSpeech's metadata.csv layout)")
        problem = name_problem(fields[0].strip() + ".wav")
        if problem:
            raise UsageError(f"{path} line {number}: the id names no reference file: {problem}")
        entries.append(Utterance(fields[0].strip(), fields[-1].strip(), number))
    if not entries:
        raise UsageError(f"{path} holds no 'id|text' lines")
    return entries


def to_pesq_rate(samples, rate: int):
    """Mono float64 at 16 kHz."""
    import numpy as np
    import soxr

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples if rate == PESQ_RATE else soxr.resample(samples, rate, PESQ_RATE, quality="HQ")


def wideband_pesq(reference, degraded) -> float:
    from pesq import PesqError, pesq

    try:
        return float(pesq(PESQ_RATE, reference, degraded, "wb"))
    except PesqError as exc:  # e.g. no utterance detected in a silent or too short signal
        raise UsageError(f"PESQ cannot score this pair ({type(exc).__name__}: {exc}); check the recording") from exc


def run_eval(opts: EvalTTSOptions, csv_path: str | None) -> None:
    import numpy as np
    import soundfile
    import torch

    from diffier_cli.tts import load_voice, speakable, synthesize

    modes = compared_modes(opts.refiner, "eval tts")
    metadata, references = Path(opts.text_file), Path(opts.reference_dir)
    require("pesq", "soxr", purpose="eval tts", extra="eval")
    entries = read_metadata(metadata)
    missing = [e.id for e in entries if not (references / f"{e.id}.wav").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"no reference recording in {references} for {shown}; name them <id>.wav")
    if csv_path is not None:
        preflight([Path(csv_path)], opts.overwrite)
    reporter = Reporter(opts.quiet)
    prepared = [speakable(entry.text, reporter, opts, f"{entry.id}: ") for entry in entries]
    voice = load_voice(opts, reporter, None)
    rows = []
    with torch.no_grad():
        for index, (entry, (spoken, _)) in enumerate(zip(entries, prepared)):
            recorded, rate = soundfile.read(references / f"{entry.id}.wav")
            reference = to_pesq_rate(recorded, rate)
            row = {"id": entry.id, "line": entry.line, "seed": opts.seed + index}
            for mode in modes:
                run = replace(opts, refiner=None) if mode == "baseline" else opts
                waveform, _ = synthesize(voice, run, spoken, opts.seed + index)
                try:
                    row[f"pesq_{mode}"] = wideband_pesq(reference, to_pesq_rate(np.clip(waveform, -1, 1), voice.sample_rate))
                except UsageError as exc:
                    raise UsageError(f"{entry.id}: {exc}") from exc
            rows.append(row)
            reporter.message(f"{entry.id}: PESQ " + ", ".join(f"{mode} {row[f'pesq_{mode}']:.3f}" for mode in modes))
            if opts.json:
                print_json(row)
    summary = {mode: mean([row[f"pesq_{mode}"] for row in rows]) for mode in modes}
    reporter.message(f"mean PESQ (wideband) over {len(rows)} utterance(s): " + ", ".join(f"{mode} {summary[mode]:.3f}" for mode in modes))
    if opts.json:
        print_json({"summary": {"utterances": len(rows), **{f"mean_pesq_{m}": v for m, v in summary.items()},
                                "refiner": opts.refiner.settings(), "steps": opts.steps}})
    if csv_path is not None:
        write_csv(rows, Path(csv_path), opts.overwrite)
