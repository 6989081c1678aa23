#!/usr/bin/env python3
"""Check diffier's image outputs with exiftool, the reader the test suite cannot depend on (a Perl
program: Debian's libimage-exiftool-perl, Homebrew's exiftool; no PyPI package ships it).

    python .ci/check_with_exiftool.py               # draws a PNG, a JPEG, a WebP and a lossless WebP
                                                    # with a tiny model (tests/tiny_sd.py), then checks them
    python .ci/check_with_exiftool.py out/*.jpg     # checks your own outputs

For every file, what exiftool reads must equal what diffier reads (embedded.py, as `diffier info`):
a PNG's `parameters` and `diffier` text chunks (exiftool's PNG:Parameters and PNG:Diffier), a JPEG's
or WebP's EXIF UserComment (ExifIFD:UserComment, the A1111 infotext), ImageDescription
(IFD0:ImageDescription, the record, JSON) and Software (IFD0:Software, `diffier VERSION`), and
exiftool must raise no warning. Exit 0 when every file agrees, 1 on a disagreement (each printed),
2 when exiftool is missing or a file is not one of diffier's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exiftool(path: Path) -> dict:
    done = subprocess.run(["exiftool", "-j", "-G1", "-a", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path}: exiftool failed: {done.stderr.strip()}")
    return json.loads(done.stdout)[0]


def problems(path: Path) -> list[str]:
    """What exiftool reads differently from diffier in one file (empty: they agree)."""
    from diffier_cli.embedded import embedded, record_in

    found, seen = embedded(path), exiftool(path)
    record = record_in(path, found)
    if path.suffix.lower() == ".png":
        expected = {"PNG:Parameters": found.text.get("parameters"), "PNG:Diffier": found.text["diffier"]}
    else:
        expected = {"ExifIFD:UserComment": found.user_comment, "IFD0:ImageDescription": found.exif_record,
                    "IFD0:Software": f"diffier {record.get('version')}"}
    wrong = [f"{tag}: exiftool reads {str(seen.get(tag))[:80]!r}, diffier {str(value)[:80]!r}"
             for tag, value in expected.items() if value is not None and seen.get(tag) != value]
    for tag in ("PNG:Diffier", "IFD0:ImageDescription"):
        if tag in seen and json.loads(seen[tag]) != record:
            wrong.append(f"{tag}: exiftool's JSON is not the record diffier reads")
    wrong += [f"exiftool warns: {value}" for tag, value in seen.items() if tag.endswith(":Warning")]
    return wrong


def draw(folder: Path) -> list[Path]:
    """One seed in every format, drawn with the tiny test model (no download)."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_sd import save_tiny_sd

    model = save_tiny_sd(folder / "models")["epsilon"]
    outputs = [folder / name for name in ("cat.png", "cat.jpg", "cat.webp", "lossless.webp")]
    for output in outputs:
        extra = ["--lossless"] if output.name == "lossless.webp" else []
        subprocess.run([sys.executable, "-m", "diffier_cli", "t2i", "ein Hündchen, das 🍔 isst", "--negative-prompt", "dark",
                        "--model", str(model), "--steps", "3", "--seed", "7", "-q", "-o", str(output), *extra],
                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return outputs


def main(argv: list[str]) -> int:
    if shutil.which("exiftool") is None:
        print("exiftool is not installed (apt-get install libimage-exiftool-perl, brew install exiftool)", file=sys.stderr)
        return 2
    version = subprocess.run(["exiftool", "-ver"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        paths = [Path(name) for name in argv] or draw(Path(scratch))
        failed = False
        for path in paths:
            try:
                wrong = problems(path)
            except Exception as exc:  # noqa: BLE001 - a file that is not diffier's: say so and go on
                print(f"{path}: not checked: {exc}", file=sys.stderr)
                return 2
            print(f"{path}: {'agrees with exiftool ' + version if not wrong else 'DISAGREES'}")
            for line in wrong:
                print(f"  {line}")
            failed |= bool(wrong)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
