"""WAV files that carry their provenance: the samples, and a RIFF LIST/INFO chunk with the software
(ISFT) and a comment (ICMT), written and read back through soundfile (libsndfile).

libsndfile writes the INFO strings set before the first sample into the header, so the LIST chunk
comes before `data`, where a reader of a pipe (ffprobe -, sox -) finds it too. It appends its own
name to the software: ISFT reads `diffier 0.1.0 (libsndfile-1.2.2)`.

Bounds: libsndfile reads an INFO string only when its length with the terminating NUL, padded to
an even count, is under 2048 bytes (wavlike.c, wavlike_subchunk_parse's `char buffer [2048]`); a
longer one ends its reading of the chunk. So a comment holds at most INFO_MAX_BYTES = 2045 bytes.
"""

from __future__ import annotations

import io

from diffier_cli import __version__
from diffier_cli.errors import first_line

SOFTWARE = f"diffier {__version__}"
INFO_MAX_BYTES = 2045


def wav_bytes(waveform, sample_rate: int, subtype: str, comment: str | None = None) -> bytes:
    """A complete mono WAV in memory (a pipe cannot be seeked to patch the header later), with
    ISFT = SOFTWARE and, when given, ICMT = `comment` (ASCII, at most INFO_MAX_BYTES).

    PCM_16 is written from int16 scaled by 32767 and rounded: the official inference scales by
    32768 and truncates, which wraps +1.0 to −32768. No normalisation, so A/B comparisons stay honest.
    """
    import numpy as np
    import soundfile

    if comment is not None and (not comment.isascii() or len(comment) > INFO_MAX_BYTES):
        raise ValueError(f"a WAV comment is ASCII of at most {INFO_MAX_BYTES} bytes; got {len(comment.encode())} bytes")
    buffer = io.BytesIO()
    samples = np.clip(waveform, -1.0, 1.0)
    if subtype == "PCM_16":
        samples = np.round(samples * 32767).astype(np.int16)
    with soundfile.SoundFile(buffer, "w", sample_rate, 1, subtype=subtype, format="WAV") as sound:
        sound.software = SOFTWARE  # before the first sample: into the header, ahead of `data`
        if comment:
            sound.comment = comment
        sound.write(samples)
    return buffer.getvalue()


def read_info(path) -> tuple[str, str]:
    """(software, comment) from a WAV's INFO chunk, each "" when absent, as libsndfile reads them
    (header only; the samples are not read). ValueError, worded to complete "PATH: ...", when
    libsndfile cannot read the file as audio."""
    import soundfile

    try:
        with soundfile.SoundFile(path) as sound:
            return sound.software, sound.comment
    except (RuntimeError, OSError, TypeError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        reason = getattr(exc, "error_string", None) or first_line(exc)  # without the path soundfile puts first
        raise ValueError(f"libsndfile cannot read it as audio ({reason})") from None
