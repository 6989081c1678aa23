"""WAV files that carry their provenance: the samples, and a RIFF LIST/INFO chunk with the software
(ISFT) and a comment (ICMT), written and read back through soundfile (libsndfile).

libsndfile writes the INFO strings set before the first sample into the header, so the LIST chunk
comes before `data`, where a reader of a pipe (ffprobe -, sox -) finds it too. It appends its own
name to the software: ISFT reads `diffier 0.1.0 (libsndfile-1.2.2)`.

Bounds: libsndfile reads an INFO string only when its length with the terminating NUL, padded to
an even count, is under 2048 bytes (wavlike.c, wavlike_subchunk_parse's `char buffer [2048]`); a
longer one ends its reading of the chunk. So a comment holds at most INFO_MAX_BYTES = 2045 bytes.

`--subtype FLOAT`: libsndfile writes IEEE-float WAVs with a 16-byte fmt chunk and has no option
for another. SoX (wav.c, 14.4.2 and Debian's 14.4.2+git20190427: a non-PCM, non-A-law, non-µ-law
tag must be followed by the 2-byte cbSize, else "wave header missing extended part of fmt chunk";
cbSize may not exceed the bytes after it, and from 2020 must equal them) warns on it, and
libsndfile's WAVEX does not help: SoX 14.4.2 replaces the tag by the extensible subformat (float
again) after reading the extension, with no bytes left, and warns the same. So the 16-byte fmt of
a float WAV is extended here to the 18 bytes the WAVE spec asks of non-PCM formats (cbSize 0, the
`fact` chunk libsndfile already writes), and the RIFF size grows by 2. Nothing else moves but by
those 2 bytes: the samples' bytes are the ones libsndfile wrote.
"""

from __future__ import annotations

import io
import struct

from diffier_cli import __version__
from diffier_cli.errors import first_line

SOFTWARE = f"diffier {__version__}"
INFO_MAX_BYTES = 2045

WAVE_FORMAT_IEEE_FLOAT = 3


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
    return _float_fmt_with_cb_size(buffer.getvalue())


def _float_fmt_with_cb_size(data: bytes) -> bytes:
    """The WAV with its IEEE-float fmt chunk extended from 16 to 18 bytes by cbSize = 0 (see the
    module's docstring); any other WAV unchanged. libsndfile writes `fmt ` first, at byte 12."""
    size, tag = struct.unpack_from("<IH", data, 16)
    if data[12:16] != b"fmt " or size != 16 or tag != WAVE_FORMAT_IEEE_FLOAT:
        return data
    (riff_size,) = struct.unpack_from("<I", data, 4)
    return b"".join([data[:4], struct.pack("<I", riff_size + 2), data[8:16], struct.pack("<I", 18), data[20:36],
                     struct.pack("<H", 0), data[36:]])


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
