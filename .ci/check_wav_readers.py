"""Read diffier's WAVs with the real tools: sox, ffprobe and exiftool (not needed by the tests, which
read the same bytes with libsndfile, Python's wave, PyAV's FFmpeg demuxer and a RIFF parser).

    python .ci/check_wav_readers.py                 # WAVs written here: PCM_16, PCM_24, FLOAT
    diffier tts --text "Good morning." -o - > a.wav && python .ci/check_wav_readers.py a.wav

Needs `sox`, `ffprobe` and `exiftool` on PATH (Debian: apt-get install sox ffmpeg
libimage-exiftool-perl). For each WAV it checks that sox reads it without a warning, that ffprobe
shows ISFT as `encoder` and ICMT as `comment` from the file and from a pipe, and that exiftool shows
the same as Software and Comment; and prints what each reader reports. Exit 1 on any difference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = ("sox", "ffprobe", "exiftool")


def run(*command: str, stdin: Path | None = None) -> subprocess.CompletedProcess:
    with open(stdin, "rb") if stdin else open("/dev/null", "rb") as source:
        return subprocess.run(command, stdin=source, capture_output=True, text=True, check=False, timeout=60)


def written_here(folder: Path) -> list[Path]:
    import numpy as np

    from diffier_cli.wavinfo import wav_bytes

    waveform = (0.5 * np.sin(np.arange(22050) / 9.0)).astype(np.float32)
    comment = json.dumps({"tool": "diffier", "command": "tts", "compact": True, "seed": 7, "text": "Кот. Good morning."},
                         separators=(",", ":"))
    paths = []
    for subtype in ("PCM_16", "PCM_24", "FLOAT"):
        path = folder / f"check-{subtype.lower()}.wav"
        path.write_bytes(wav_bytes(waveform, 22050, subtype, comment))
        paths.append(path)
    return paths


def check(path: Path) -> list[str]:
    """What is wrong with one WAV as the three tools read it; prints their reports."""
    problems = []
    sox = run("sox", "-V2", str(path), "-n")  # read every sample, write nothing; -V2: warnings and errors
    soxi = run("soxi", str(path))
    encoding = next((line.split(":", 1)[1].strip() for line in soxi.stdout.splitlines() if line.startswith("Sample Encoding")), "?")
    print(f"  sox: exit {sox.returncode}, encoding {encoding!r}, warnings: "
          f"{[line for line in sox.stderr.splitlines() if 'WARN' in line or 'FAIL' in line] or 'none'}")
    if sox.returncode != 0 or "WARN" in sox.stderr or "FAIL" in sox.stderr:
        problems.append(f"sox: {sox.stderr.strip()}")

    tags = {}
    for source, kwargs in (("file", {}), ("pipe", {"stdin": path})):
        probe = run("ffprobe", "-v", "error", "-show_entries", "format_tags=encoder,comment", "-of", "json",
                    "-" if source == "pipe" else str(path), **kwargs)
        tags[source] = json.loads(probe.stdout or "{}").get("format", {}).get("tags", {})
        print(f"  ffprobe ({source}): {json.dumps(tags[source], ensure_ascii=False)}")
        if probe.returncode != 0 or probe.stderr.strip():
            problems.append(f"ffprobe ({source}): exit {probe.returncode}, {probe.stderr.strip()}")
    if tags["file"] != tags["pipe"]:
        problems.append("ffprobe shows other tags from a pipe than from the file")

    exif = run("exiftool", "-j", "-Software", "-Comment", str(path))
    shown = json.loads(exif.stdout or "[{}]")[0]
    print(f"  exiftool: Software {shown.get('Software')!r}, Comment {shown.get('Comment')!r}")

    software, comment = tags["file"].get("encoder", ""), tags["file"].get("comment", "")
    if not software.startswith("diffier "):
        problems.append(f"ffprobe's encoder is {software!r}, not diffier's")
    try:
        record = json.loads(comment)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or record.get("tool") != "diffier":
        problems.append(f"ffprobe's comment is not a diffier record: {comment[:80]!r}")
    if (shown.get("Software"), shown.get("Comment")) != (software, comment):
        problems.append("exiftool shows another Software or Comment than ffprobe")
    return problems


def main(argv: list[str]) -> int:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"check_wav_readers: {', '.join(missing)} not on PATH; install them (Debian: apt-get install sox ffmpeg "
              "libimage-exiftool-perl)", file=sys.stderr)
        return 2
    for tool, flag in (("sox", "--version"), ("ffprobe", "-version"), ("exiftool", "-ver")):
        print(f"{tool}: {run(tool, flag).stdout.splitlines()[0].strip()}")
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(arg) for arg in argv] or written_here(Path(folder))
        failures = 0
        for path in paths:
            print(path.name)
            problems = check(path)
            for problem in problems:
                print(f"  PROBLEM: {problem}")
            failures += bool(problems)
    print(f"{len(paths) - failures} of {len(paths)} WAV(s) read as expected by sox, ffprobe and exiftool")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
