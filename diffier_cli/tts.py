"""`diffier tts`: read text → items (the whole text, or one per line with --per-line) → plan
outputs → load Grad-TTS and HiFi-GAN once → per item: utterances → the shared loop → one WAV.

Grad-TTS was trained on single sentences (LJSpeech), so a paragraph is synthesised sentence by
sentence and joined with a short silence; every utterance of a WAV draws, in order, from that
WAV's own generators (item i: seed + i), so the same seed and text give the same samples in any
shard or restart.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from diffier_cli import __version__
from diffier_cli.errors import UsageError, excerpt, first_line, numerical_overflow
from diffier_cli.jobs import Item, Plan, Planned, Shard, job_id, plan_job, split_lines
from diffier_cli.metadata import located
from diffier_cli.limits import MAX_AUDIO_SECONDS
from diffier_cli.outputs import slugify
from diffier_cli.refiners import refinement
from diffier_cli.refiners import settings as refiner_settings
from diffier_cli.runtime import (
    REFINE_SEED_MIX,
    BatchOptions,
    Hardware,
    Reporter,
    RunOptions,
    item_generators,
    resolve_device,
    resolve_dtype,
)
from diffier_cli.task import Made
from diffier_cli.wavinfo import INFO_MAX_BYTES, wav_bytes
from models import untrusted
from models.errors import ModelUnavailable, NumericalOverflow

if TYPE_CHECKING:
    from diffier_cli.sampling import Refiner

N_MELS = 80
_INITIAL = re.compile(r"[a-z]")


@dataclass(frozen=True, kw_only=True)
class TTSSettings(Hardware):
    """What speech depends on besides its text and seed: `tts`, `tts --compare` and `eval tts`."""

    checkpoint: str | None
    pe_scale: float
    vocoder: str
    speaker: int | None
    steps: int
    temperature: float
    length_scale: float
    stochastic: bool
    pause: float
    refiner: Refiner | None  # None = --baseline (--refiner none)


@dataclass(frozen=True, kw_only=True)
class TTSOptions(TTSSettings, RunOptions, BatchOptions):
    """`diffier tts`: the settings, the text, the WAV format and how the run is named and split."""

    text_file: str | None
    text: str | None
    subtype: str
    per_line: bool = False


def read_text(text: str | None, text_file: str | None) -> tuple[str, str]:
    """(text, stem for output names) from --text, a file, or '-' for stdin."""
    if text is not None and text_file is not None:
        raise UsageError("pass either TEXT_FILE or --text, not both")
    if text is not None:
        return text, slugify(text, limit=40)
    if text_file is None:
        raise UsageError("nothing to say: pass a TEXT_FILE, '-' for stdin, or --text \"...\"")
    stem = "stdin" if text_file == "-" else Path(text_file).stem
    try:
        read = untrusted.read_text(text_file)
    except OSError as exc:
        raise UsageError(f"cannot read {text_file}: {exc.strerror or exc}") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"{text_file} {exc}") from None
    if "\x00" in read:
        raise UsageError(f"{text_file} is a binary file, not text; pass a plain-text file")
    return read, stem


def split_utterances(text: str) -> list[str]:
    """Lines, then sentences: the units Grad-TTS handles well.

    A sentence ends at a word ending in '!', '?', ';' or '.', except the period of an abbreviation
    the cleaners expand (Mr., Dr., St., ...), of e.g./i.e./etc./vs., or of an initial ("J. Smith").
    """
    from models.gradtts.cleaners import NON_FINAL_ABBREVIATIONS

    utterances = []
    for line in split_lines(text):
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


@dataclass(kw_only=True)
class Speech(Item):
    """One WAV to speak: its text, its line (--per-line), and once checked its utterances with
    their encoder ids and those skipped for having nothing speakable."""

    text: str
    line: int | None = None
    spoken: list[tuple[str, list[int]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def work_items(text: str, stem: str, per_line: bool, seed: int, mode: str) -> list[Speech]:
    """The whole text as item 0, or with --per-line item i = the i-th non-empty line (its 1-based
    line number kept); item i's seed is seed + i."""
    if per_line:
        lines = [(number, line.strip()) for number, line in enumerate(split_lines(text, "--per-line's text"), 1) if line.strip()]
    else:
        lines = [(None, text)] if text.strip() else []
    return [Speech(index=index, seed=seed + index, mode=mode, stem=stem, slug=slugify(line), text=line, line=number)
            for index, (number, line) in enumerate(lines)]


# Speech runs at about 15 characters a second at --length-scale 1 (LJSpeech's pace): the estimate
# that bounds one WAV before anything is synthesised, since its samples are held in memory whole.
CHARACTERS_PER_SECOND = 15


def speakable(text: str, reporter: Reporter, opts: TTSSettings, where: str = "") -> tuple[list[tuple[str, list[int]]], list[str]]:
    """(utterances with their encoder ids, utterances skipped for having nothing speakable) of one
    item; UsageError when nothing is left, the cleaners cannot read a part, or the WAV would run
    over MAX_AUDIO_SECONDS (checked first, from the text's length, before any cleaning)."""
    from models.gradtts.text import NothingToSay, text_to_ids

    utterances = split_utterances(text)
    estimate = len(text) / CHARACTERS_PER_SECOND * opts.length_scale + opts.pause * (len(utterances) - 1)
    if estimate > MAX_AUDIO_SECONDS:
        raise UsageError(
            f"the text would make about {estimate / 60:.0f} minutes of audio ({len(text)} characters at --length-scale "
            f"{opts.length_scale:g}, and --pause {opts.pause:g} s between {len(utterances)} sentences), over the "
            f"{MAX_AUDIO_SECONDS // 60} minutes one WAV holds; split it, or use --per-line for a WAV a line"
        )
    spoken, skipped = [], []
    for utterance in utterances:
        try:
            spoken.append((utterance, text_to_ids(utterance)))
        except NothingToSay:
            skipped.append(utterance)
        except RuntimeError:  # the dictionary failed its checksum: a broken install, not the text
            raise
        except Exception as exc:  # noqa: BLE001 - the cleaners' number reading fails on some inputs ($1.,5, 40-digit numbers)
            reason = "a number too large to read out (inflect reads up to 36 digits)" if type(exc).__name__ == "NumOutOfRangeError" else first_line(exc)
            raise UsageError(f"cannot read {excerpt(utterance)}: {reason}; rewrite that part of the text") from exc
    if not spoken:
        raise UsageError("the text has nothing speakable (no letters or digits)")
    for utterance in skipped:
        reporter.message(f"warning: {where}nothing speakable in {excerpt(utterance)}; skipped")
    return spoken, skipped


@dataclass
class Voice:
    """Grad-TTS and its vocoder, loaded once per process."""

    backbone: object
    vocoder: object
    speaker: int | None
    checkpoint: dict
    vocoder_info: dict

    @property
    def sample_rate(self) -> int:
        return self.vocoder.config.sampling_rate


def load_voice(opts: TTSSettings, reporter: Reporter, local_rank: int | None) -> Voice:
    """Grad-TTS and its vocoder on the process's device, the speaker checked against the checkpoint."""
    from models.gradtts.adapter import GradTTSBackbone
    from models.gradtts.checkpoints import OFFICIAL_FILE_ID, resolve_checkpoint
    from models.gradtts.hifigan import load_hifigan
    from models.gradtts.model import load_gradtts

    device = resolve_device(opts.device, local_rank)
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
    return Voice(GradTTSBackbone(model, device, dtype), vocoder, speaker, model_info, vocoder_info)


def synthesize(voice: Voice, opts: TTSSettings, spoken: list[tuple[str, list[int]]], seed: int, on_step=None,
               mels: list | None = None):
    """One item → (waveform, per-utterance statistics): every utterance through the shared loop
    and the vocoder, drawing in order from the item's own generators, joined by --pause of silence.
    `mels`, when given, receives each utterance's mel as the vocoder got it ([80, frames] float32)."""
    import numpy as np
    import torch

    from diffier_cli.sampling import denoise, per_item_stats

    backbone = voice.backbone
    noise_generators, refine_generators = item_generators([seed], backbone.device)
    pause = np.zeros(int(round(opts.pause * voice.sample_rate)), dtype=np.float32)
    pieces, per_utterance = [], []
    for utterance, sequence in spoken:
        with torch.no_grad():
            state = backbone.prepare(
                sequence,
                speaker=voice.speaker,
                steps=opts.steps,
                temperature=opts.temperature,
                length_scale=opts.length_scale,
                stochastic=opts.stochastic,
                noise_generator=noise_generators[0],
            )
            trajectory = denoise(
                backbone, state, backbone.init_noise(state), refiner=opts.refiner,
                generators=refine_generators, on_step=on_step,
            )
            mel = backbone.decode(trajectory.sample, state)
            if not torch.isfinite(mel).all():
                raise numerical_overflow(NumericalOverflow("mel spectrogram", str(backbone.dtype).removeprefix("torch.")),
                                         "raise --temperature, or lower --pe-scale or the refinement's --eta and --max-iters")
            audio = voice.vocoder(mel).squeeze().float().cpu().numpy()
        if mels is not None:
            mels.append(mel[0].float().cpu().numpy())
        pieces.extend([audio, pause])
        per_utterance.append({"text": utterance, "frames": state.frames, **per_item_stats(trajectory.steps, 1)[0]})
    return np.concatenate(pieces[:-1]), per_utterance


def record(opts: TTSOptions, voice: Voice, item: Speech, per_utterance: list[dict], num_samples: int, seconds: float,
           job: dict) -> dict:
    """What made one WAV, as its sidecar and `--json` carry it."""
    import torch

    duration = num_samples / voice.sample_rate
    device = voice.backbone.device
    return {
        "tool": "diffier",
        "version": __version__,
        "command": "tts",
        "text": item.text,
        "utterances": [u["text"] for u in per_utterance],
        "skipped": item.skipped,
        "index": item.index,
        **({"line": item.line} if item.line is not None else {}),
        "seed": item.seed,
        "mode": item.mode,
        "job": {**job, "index": item.index},
        "checkpoint": located(voice.checkpoint, opts.record_paths),
        "vocoder": voice.vocoder_info,
        "params": {
            "steps": opts.steps,
            "temperature": opts.temperature,
            "length_scale": opts.length_scale,
            "stochastic": opts.stochastic,
            "speaker": voice.speaker,
            "pause_s": opts.pause,
            "device": str(device),
            "dtype": str(voice.backbone.dtype).removeprefix("torch."),
        },
        "rng": {
            "prior_and_sde_noise": f"cpu torch.Generator seeded {item.seed}",
            "refinement": f"{device.type} torch.Generator seeded {item.seed ^ REFINE_SEED_MIX}",
        },
        "refiner": refiner_settings(opts.refiner),
        "refinement": {
            **refinement(opts.refiner, [{k: v for k, v in u.items() if k not in ("text", "frames")} for u in per_utterance]),
            "per_utterance": per_utterance,
        },
        "audio": {
            "sample_rate": voice.sample_rate,
            "subtype": opts.subtype,
            "channels": 1,
            "num_samples": num_samples,
            "duration_s": duration,
        },
        "real_time_factor": seconds / duration if duration else None,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }


# Bytes of a file name in a WAV's comment: the name of a checkpoint or vocoder file, never its folder.
COMMENT_NAME_BYTES = 100


def _ascii_json(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]


def _ascii_head(text: str, budget: int) -> str:
    """The longest beginning of `text` whose ASCII JSON form (\\uXXXX for the rest) fits `budget` bytes."""
    used = 0
    for end, char in enumerate(text):
        used += len(_ascii_json(char))
        if used > budget:
            return text[:end]
    return text


def wav_comment(record: dict) -> str:
    """The record in brief, as a WAV's INFO comment (ICMT): one line of ASCII JSON of at most
    INFO_MAX_BYTES, so that a WAV on stdout, or parted from its sidecar, still says what made it.

    Keys as in the record where they mean the same, and `compact: true`; the checkpoint and the
    vocoder by file name (no folder) and SHA-256; the refiner's scalar settings (IEC's weights
    follow from them); `text_sha256` (of the UTF-8 text) always, and last the text whole, or when
    it does not fit its beginning as `text_head`.
    """
    checkpoint, vocoder, refiner = record["checkpoint"], record["vocoder"], record["refiner"]
    brief = {
        "tool": record["tool"], "version": record["version"], "command": record["command"], "compact": True,
        "seed": record["seed"], "mode": record["mode"], "index": record["index"],
        **({"line": record["line"]} if "line" in record else {}),
        "job": record["job"],
        "checkpoint": {"file": _ascii_head(Path(checkpoint.get("path") or checkpoint["file"]).name, COMMENT_NAME_BYTES), "sha256": checkpoint["sha256"],
                       "n_spks": checkpoint["n_spks"], "pe_scale": checkpoint["pe_scale"]},
        "vocoder": {"id": _ascii_head(Path(vocoder["id"]).name, COMMENT_NAME_BYTES), "sha256": vocoder["sha256"]},
        "params": record["params"],
        "refiner": None if refiner is None else {k: v for k, v in refiner.items() if not isinstance(v, (list, dict))},
        "text_sha256": hashlib.sha256(record["text"].encode("utf-8", "surrogateescape")).hexdigest(),
    }
    fixed = json.dumps(brief, separators=(",", ":"))
    if len(fixed) + len(',"text":""') + len(_ascii_json(record["text"])) <= INFO_MAX_BYTES:
        brief["text"] = record["text"]
    else:
        brief["text_head"] = _ascii_head(record["text"], INFO_MAX_BYTES - len(fixed) - len(',"text_head":""'))
    return json.dumps(brief, separators=(",", ":"))


def speak(voice: Voice, opts: TTSOptions, item: Speech, job: dict, on_step=None,
          mels: list | None = None) -> tuple[bytes, dict, float]:
    """One checked item → (its WAV, with the record in brief inside, its record, seconds of synthesis)."""
    started = time.perf_counter()
    waveform, per_utterance = synthesize(voice, opts, item.spoken, item.seed, on_step=on_step, mels=mels)
    seconds = time.perf_counter() - started
    speech_record = record(opts, voice, item, per_utterance, len(waveform), seconds, job)
    return wav_bytes(waveform, voice.sample_rate, opts.subtype, wav_comment(speech_record)), speech_record, seconds


def sidecar_bytes(record: dict) -> bytes:
    """A WAV's record as its `.json` sidecar."""
    return json.dumps(record, ensure_ascii=False, indent=1).encode()


def job_fields(opts: TTSOptions, items: list[Speech], seed: int, mode: str) -> dict:
    """The records' `job`: a digest of the items and settings, and the item count."""
    settings = {"seed": seed, "mode": mode, "checkpoint": opts.checkpoint, "pe_scale": opts.pe_scale,
                "vocoder": opts.vocoder, "speaker": opts.speaker, "steps": opts.steps, "temperature": opts.temperature,
                "length_scale": opts.length_scale, "stochastic": opts.stochastic, "pause": opts.pause,
                "subtype": opts.subtype, "refiner": refiner_settings(opts.refiner)}
    return {"id": job_id("tts", [item.text for item in items], settings), "count": len(items)}


class Speak:
    """`diffier tts` as a task: the text (or each line) → one WAV and its sidecar, one at a time."""

    batch_size = 1
    name_single_item = False

    def __init__(self, options: TTSOptions):
        self.options = options
        self.text, self.stem = read_text(options.text, options.text_file)

    def read(self, seed: int, mode: str) -> list[Speech]:
        items = work_items(self.text, self.stem, self.options.per_line, seed, mode)
        if not items:
            raise UsageError("the text is empty; nothing to say")
        self.job = job_fields(self.options, items, seed, mode)
        return items

    def plan(self, items: list[Speech], shard: Shard) -> Plan:
        """Files for the items (a WAV and its .json sidecar each), or with -o - one WAV on stdout."""
        opts = self.options
        if opts.output != "-":
            default_name = "{stem}-{index:04d}-{seed}-{mode}.wav" if opts.per_line else "{stem}-{seed}-{mode}.wav"
            return plan_job(items, output=opts.output, name=opts.name, default_name=default_name, shard=shard,
                            skip_existing=opts.skip_existing, overwrite=opts.overwrite, seed_given=opts.seed is not None,
                            companions=lambda path: [path.with_suffix(".json")])
        if sys.stdout.isatty():
            raise UsageError("-o - writes a WAV to stdout, which is a terminal; redirect it or pass a file")
        if opts.json:
            raise UsageError("-o - and --json both want stdout; choose one")
        if len(items) > 1:
            raise UsageError(f"-o - writes one WAV to stdout but --per-line makes {len(items)}; pass a folder (-o out/)")
        return Plan([Planned(items[i], []) for i in shard.select(len(items))], total=len(items), shard=shard, skipped=0)

    def check(self, item: Speech, reporter: Reporter, several: bool) -> None:
        """The cleaners run before any model loads, so a text with nothing to say never loads one."""
        try:
            item.spoken, item.skipped = speakable(item.text, reporter, self.options, f"{self.label(item)}: " if several else "")
        except UsageError as exc:
            item.error = str(exc)

    def load(self, local_rank: int | None, reporter: Reporter) -> None:
        self.voice = load_voice(self.options, reporter, local_rank)

    def progress(self, reporter: Reporter, pending: list, mode: str):
        return reporter.progress(total=sum(len(planned.item.spoken) for planned in pending) * self.options.steps, description=mode)

    def make(self, items: Sequence[Speech], reporter: Reporter, plan: Plan) -> list[Made]:
        (item,) = items
        data, speech_record, _ = speak(self.voice, self.options, item, self.job, on_step=reporter.advance)
        return [Made(speech_record, lambda: [data, sidecar_bytes(speech_record)], detail=f"{speech_record['audio']['duration_s']:.2f} s of audio", kind="WAV")]

    def label(self, item: Speech) -> str:
        return f"item {item.index}" + (f" (line {item.line})" if item.line is not None else "")
