"""`diffier tts`: read text → split into utterances → Grad-TTS (the shared loop) → HiFi-GAN → one WAV.

Grad-TTS was trained on single sentences (LJSpeech), so a paragraph is synthesised sentence by
sentence and joined with a short silence; every utterance of a WAV draws, in order, from that
WAV's own generators, so the same seed and text give the same samples.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from diffier_cli import __version__
from diffier_cli.errors import ModelUnavailable, UsageError
from diffier_cli.outputs import plan_outputs, preflight, slugify, write_atomically
from diffier_cli.runtime import (
    RunOptions,
    REFINE_SEED_MIX,
    Reporter,
    choose_seed,
    item_generators,
    resolve_device,
    resolve_dtype,
)

N_MELS = 80
_INITIAL = re.compile(r"[a-z]")


@dataclass(frozen=True)
class TTSOptions(RunOptions):
    text_file: str | None
    text: str | None
    checkpoint: str | None
    pe_scale: float
    vocoder: str
    speaker: int | None
    steps: int
    temperature: float
    length_scale: float
    stochastic: bool
    pause: float
    subtype: str


def read_text(opts: TTSOptions) -> tuple[str, str]:
    """(text, stem for output names) from --text, a file, or '-' for stdin."""
    if opts.text is not None and opts.text_file is not None:
        raise UsageError("pass either TEXT_FILE or --text, not both")
    if opts.text is not None:
        return opts.text, slugify(opts.text, limit=40)
    if opts.text_file is None:
        raise UsageError("nothing to say: pass a TEXT_FILE, '-' for stdin, or --text \"...\"")
    if opts.text_file == "-":
        raw = sys.stdin.buffer.read()
        stem = "stdin"
    else:
        path = Path(opts.text_file)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
        stem = path.stem
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{opts.text_file} is not UTF-8 text; pass a plain-text file") from exc
    if "\x00" in text:
        raise UsageError(f"{opts.text_file} is a binary file, not text; pass a plain-text file")
    return text, stem


def split_utterances(text: str) -> list[str]:
    """Lines, then sentences: the units Grad-TTS handles well.

    A sentence ends at a word ending in '!', '?', ';' or '.', except the period of an abbreviation
    the cleaners expand (Mr., Dr., St., ...), of e.g./i.e./etc./vs., or of an initial ("J. Smith").
    """
    from models.gradtts.cleaners import NON_FINAL_ABBREVIATIONS

    utterances = []
    for line in text.splitlines():
        words: list[str] = []
        for word in line.split():
            words.append(word)
            bare = word.lower().rstrip("\"')]”’")
            stem = bare[:-1].lstrip("(\"'“‘")
            ends = bare.endswith(("!", "?", ";")) or (
                bare.endswith(".") and stem not in NON_FINAL_ABBREVIATIONS and not _INITIAL.fullmatch(stem)
            )
            if ends:
                utterances.append(" ".join(words))
                words = []
        if words:
            utterances.append(" ".join(words))
    return utterances


def wav_bytes(waveform, sample_rate: int, subtype: str) -> bytes:
    """A complete WAV in memory (a pipe cannot be seeked to patch the header later).

    PCM_16 is written from int16 scaled by 32767 and rounded: the official inference scales by
    32768 and truncates, which wraps +1.0 to −32768. No normalisation, so A/B comparisons stay honest.
    """
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    samples = np.clip(waveform, -1.0, 1.0)
    if subtype == "PCM_16":
        samples = np.round(samples * 32767).astype(np.int16)
    soundfile.write(buffer, samples, sample_rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def run(opts: TTSOptions) -> None:
    reporter = Reporter(opts.quiet)
    text, stem = read_text(opts)
    utterances = split_utterances(text)
    if not utterances:
        raise UsageError("the text is empty; nothing to say")
    seed = choose_seed(opts.seed)
    mode = "baseline" if opts.refiner is None else "refined"
    to_stdout = opts.output == "-"
    if to_stdout:
        if sys.stdout.isatty():
            raise UsageError("-o - writes a WAV to stdout, which is a terminal; redirect it or pass a file")
        if opts.json:
            raise UsageError("-o - and --json both want stdout; choose one")
        path = sidecar = None
    else:
        item = {"index": 0, "seed": seed, "slug": slugify(text), "stem": stem, "mode": mode}
        (path,) = plan_outputs(opts.output, [item], "{stem}-{seed}-{mode}.wav")
        sidecar = path.with_suffix(".json")
        preflight([path, sidecar], opts.overwrite)
    reporter.message(f"seed {seed}")

    from models.gradtts.text import NothingToSay, text_to_ids

    spoken: list[tuple[str, list[int]]] = []
    for utterance in utterances:
        try:
            spoken.append((utterance, text_to_ids(utterance)))
        except NothingToSay:
            reporter.message(f"warning: nothing speakable in {utterance!r}; skipped")
        except RuntimeError:  # the dictionary failed its checksum: a broken install, not the text
            raise
        except Exception as exc:  # noqa: BLE001 - the cleaners' number reading fails on some inputs ($1.,5, 40-digit numbers)
            raise UsageError(f"cannot read {utterance!r}: {exc}; rewrite that part of the text") from exc
    if not spoken:
        raise UsageError("the text has nothing speakable (no letters or digits)")

    import numpy as np
    import torch

    from diffier_cli.sampling import denoise, per_item_stats, summarize
    from models.gradtts.adapter import GradTTSBackbone
    from models.gradtts.checkpoints import OFFICIAL_FILE_ID, resolve_checkpoint
    from models.gradtts.hifigan import load_hifigan
    from models.gradtts.model import load_gradtts

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device, low_precision_on_cuda=False)
    checkpoint = resolve_checkpoint(opts.checkpoint, offline=opts.offline, cache_dir=opts.cache_dir, reporter=reporter)
    model, model_info = load_gradtts(checkpoint, pe_scale=opts.pe_scale, device=device, dtype=dtype)
    if opts.checkpoint is None:
        model_info["source"] = f"official grad-tts.pt, Google Drive file {OFFICIAL_FILE_ID}"
    if opts.speaker is not None and model.n_spks == 1:
        raise UsageError(f"--speaker {opts.speaker}: this checkpoint has one speaker; drop --speaker")
    if opts.speaker is not None and not 0 <= opts.speaker < model.n_spks:
        raise UsageError(f"--speaker {opts.speaker} is out of range: use 0..{model.n_spks - 1}")
    speaker = opts.speaker
    if model.n_spks > 1 and speaker is None:
        speaker = 0
        reporter.message(f"speaker 0 of {model.n_spks} (pass --speaker to choose)")
    vocoder, vocoder_info = load_hifigan(opts.vocoder, device=device, dtype=dtype)
    if vocoder.config.num_mels != N_MELS:
        raise ModelUnavailable(f"the vocoder takes {vocoder.config.num_mels} mel bands; Grad-TTS makes {N_MELS}")
    backbone = GradTTSBackbone(model, device, dtype)

    started = time.perf_counter()
    noise_generators, refine_generators = item_generators([seed], device)
    sample_rate = vocoder.config.sampling_rate
    pause = np.zeros(int(round(opts.pause * sample_rate)), dtype=np.float32)
    pieces, per_utterance = [], []
    with reporter.progress(total=len(spoken) * opts.steps, description=mode), torch.no_grad():
        for utterance, sequence in spoken:
            state = backbone.prepare(
                sequence,
                speaker=speaker,
                steps=opts.steps,
                temperature=opts.temperature,
                length_scale=opts.length_scale,
                stochastic=opts.stochastic,
                noise_generator=noise_generators[0],
            )
            trajectory = denoise(
                backbone, state, backbone.init_noise(state), refiner=opts.refiner,
                generators=refine_generators, on_step=reporter.advance,
            )
            mel = backbone.decode(trajectory.sample, state)
            audio = vocoder(mel).squeeze().float().cpu().numpy()
            pieces.extend([audio, pause])
            per_utterance.append({"text": utterance, "frames": state.frames, **per_item_stats(trajectory.steps, 1)[0]})
    waveform = np.concatenate(pieces[:-1])
    seconds = time.perf_counter() - started
    duration = len(waveform) / sample_rate

    record = {
        "tool": "diffier",
        "version": __version__,
        "command": "tts",
        "text": text,
        "utterances": [utterance for utterance, _ in spoken],
        "skipped": [u for u in utterances if u not in {text for text, _ in spoken}],
        "seed": seed,
        "mode": mode,
        "checkpoint": model_info,
        "vocoder": vocoder_info,
        "params": {
            "steps": opts.steps,
            "temperature": opts.temperature,
            "length_scale": opts.length_scale,
            "stochastic": opts.stochastic,
            "speaker": speaker,
            "pause_s": opts.pause,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        },
        "rng": {
            "prior_and_sde_noise": f"cpu torch.Generator seeded {seed}",
            "refinement": f"{device.type} torch.Generator seeded {seed ^ REFINE_SEED_MIX}",
        },
        "refiner": None if opts.refiner is None else opts.refiner.settings(),
        "refinement": {
            "summary": [summarize({k: v for k, v in u.items() if k not in ("text", "frames")}) for u in per_utterance],
            "per_utterance": per_utterance,
        },
        "audio": {
            "sample_rate": sample_rate,
            "subtype": opts.subtype,
            "channels": 1,
            "num_samples": len(waveform),
            "duration_s": duration,
        },
        "real_time_factor": seconds / duration if duration else None,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    data = wav_bytes(waveform, sample_rate, opts.subtype)
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        reporter.message(f"wrote {len(data)} bytes of WAV to stdout ({duration:.2f} s of audio, seed {seed}, {mode})")
        return
    sidecar_data = json.dumps(record, ensure_ascii=False, indent=1).encode()
    write_atomically({path: data, sidecar: sidecar_data}, opts.overwrite)
    if opts.json:
        print(json.dumps({"path": str(path), "wall_time_s": round(seconds, 3), **record}, ensure_ascii=False), flush=True)
    reporter.message(f"wrote {path} and {sidecar.name} ({duration:.2f} s of audio, seed {seed}, {mode}, {seconds:.1f} s)")
