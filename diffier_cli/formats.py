"""The image files `t2i` and `sr` write, PNG, JPEG or WebP, and how each carries what made it.

The format comes from `-o`'s or `--name`'s extension, else `--format`, else PNG; two that disagree
are a usage error. A PNG keeps its text chunks (`parameters`, AUTOMATIC1111's infotext, and
`diffier`, the full JSON record), byte for byte as before formats existed.

JPEG and WebP carry one EXIF block, written by piexif as AUTOMATIC1111 writes it:

- the infotext where AUTOMATIC1111 puts it (modules/images.py, save_image_with_geninfo): the Exif
  IFD's UserComment, `piexif.helper.UserComment.dump(text, encoding="unicode")`, b"UNICODE\\0" and
  the text in UTF-16 big-endian, typed UNDEFINED as EXIF says, in piexif's big-endian block.
  Pillow alone would type it BYTE (its tag table lacks UserComment), which piexif.load, and so
  AUTOMATIC1111's own PNG Info, reads as a tuple of numbers and fails on;
- the full record in IFD0's ImageDescription, as ASCII JSON (characters past ASCII escaped as
  \\uXXXX: the tag's EXIF type is ASCII), and IFD0's Software `diffier VERSION`, which says whose
  record it is. exiftool shows them as Image Description and Software; `diffier info` and
  `diffier manifest` read them back.

A JPEG's EXIF block lives in one APP1 segment of at most 65 533 bytes; a record that does not fit
(a very long prompt, thousands of sr steps over many pixel tiles) is refused for JPEG, naming PNG
and WebP, whose blocks have no such bound. Nothing here imports Pillow at module level.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from diffier_cli import __version__
from diffier_cli.errors import UsageError, excerpt
from diffier_cli.metadata import record_json
from diffier_cli.outputs import names_folder, png_bytes

FORMATS = ("png", "jpeg", "webp")
SUFFIXES = {"png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",)}
LABELS = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}
FORMAT_OF_SUFFIX = {suffix: name for name, suffixes in SUFFIXES.items() for suffix in suffixes}

# Lossy quality when --quality is not given. AUTOMATIC1111 saves JPEG and WebP at 80 (its
# jpeg_quality setting), Pillow at 75; diffier's images are compared pixel against pixel, run
# against run, so its default loses less: 95. `--quality 80` writes what AUTOMATIC1111 writes.
DEFAULT_QUALITY = 95

JPEG_SEGMENT_BYTES = 65533  # the data one JPEG marker segment holds (Pillow's MAX_BYTES_IN_MARKER)
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}  # the pixels a side may have in each format

SOFTWARE = f"diffier {__version__}"  # IFD0 Software of every JPEG and WebP diffier writes
SOFTWARE_PREFIX = "diffier "  # what a reader checks before trusting IFD0's ImageDescription as a record


@dataclass(frozen=True)
class ImageFormat:
    """The format a run writes, with its lossy quality (None for PNG and lossless WebP)."""

    name: str = "png"
    quality: int | None = None
    lossless: bool = False

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.name][0]

    @property
    def suffixes(self) -> tuple[str, ...]:
        return SUFFIXES[self.name]

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def encoding(self) -> dict:
        """What a JPEG's or WebP's record keeps of how its pixels were encoded (its `encoding`, and
        a setting of its job); empty for PNG, whose records stay as they were before formats."""
        if self.name == "png":
            return {}
        return {"format": self.name, **({"lossless": True} if self.lossless else {"quality": self.quality})}


def _named_format(text: str) -> str | None:
    """The format an output name's extension names, None for a name without one of ours."""
    return FORMAT_OF_SUFFIX.get(Path(text).suffix.lower())


def choose(output: str | None, name: str | None, requested: str | None, quality: int | None, lossless: bool) -> ImageFormat:
    """The run's format from -o's extension (a file or a template), --name's, or --format, in that
    order of precedence, any two that disagree refused; then --quality and --lossless checked
    against it. Called before anything is read or loaded."""
    named = [(option, text, fmt) for option, text in (("-o", None if names_folder(output) else output), ("--name", name))
             if text is not None and (fmt := _named_format(text)) is not None]
    for option, text, fmt in named:
        if requested is not None and fmt != requested:
            raise UsageError(f"{option} {excerpt(text)} names a {LABELS[fmt]} file but --format is {requested}; "
                             "drop --format or change the extension")
    if len({fmt for _, _, fmt in named}) > 1:
        (first, first_text, _), (second, second_text, _) = named
        raise UsageError(f"{first} {excerpt(first_text)} and {second} {excerpt(second_text)} name different formats; "
                         "give one extension")
    fmt = named[0][2] if named else (requested or "png")
    if lossless and fmt != "webp":
        raise UsageError(f"--lossless is WebP's lossless mode; {LABELS[fmt]} "
                         + ("is always lossless: drop it" if fmt == "png" else "has none: drop it, or write WebP (--format webp)"))
    if quality is not None and (fmt == "png" or lossless):
        why = "PNG is lossless" if fmt == "png" else "--lossless WebP has no lossy quality"
        raise UsageError(f"--quality sets JPEG and lossy WebP compression and {why}: drop --quality")
    return ImageFormat(fmt, None if fmt == "png" or lossless else (quality or DEFAULT_QUALITY), lossless)


def refuse_other_than_png(opts, what: str) -> None:
    """Grids and comparisons stay PNG: a --format, --quality or --lossless asking otherwise is
    refused (an -o of another extension is refused by the command's own check of it)."""
    if opts.image_format not in (None, "png") or opts.quality is not None or opts.lossless:
        raise UsageError(f"{what} writes PNGs (its grid or comparison and their images); drop --format, --quality and --lossless")


def has_alpha(image) -> bool:
    """Whether an image (or an sr input, from its header) has the alpha an output keeps: an alpha
    channel, or a palette's transparency (sr.read_image keeps both)."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def size_problem(spec: ImageFormat, width: int, height: int, alpha: bool) -> str | None:
    """Why an image of this size (and alpha) cannot be written in the format, or None; known
    before any sampling."""
    if max(width, height) > MAX_SIDE[spec.name]:
        return (f"a {width}×{height} image is over the {MAX_SIDE[spec.name]} px a {spec.label} side may have; "
                "write PNG (--format png)" + (" or JPEG" if spec.name == "webp" else ""))
    if alpha and spec.name == "jpeg":
        return "the image has an alpha channel, which JPEG cannot hold; write PNG or WebP (--format png|webp), which keep it"
    return None


def exif_block(record: dict, infotext: str | None) -> bytes:
    """The EXIF block of a JPEG or WebP ("Exif\\0\\0" and a big-endian TIFF structure, as piexif
    dumps it): the record (IFD0 ImageDescription), the producer (IFD0 Software) and the infotext
    (Exif IFD UserComment)."""
    import piexif
    import piexif.helper

    description = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    zeroth = {piexif.ImageIFD.ImageDescription: description, piexif.ImageIFD.Software: SOFTWARE}
    exif = {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(infotext, encoding="unicode")} if infotext is not None else {}
    return piexif.dump({"0th": zeroth, "Exif": exif})


def encode(image, spec: ImageFormat, record: dict, chunks: Mapping[str, str], infotext: str | None) -> bytes:
    """One output's bytes. PNG: the text `chunks` in order, then `diffier`, the record. JPEG and
    WebP: the pixels at the run's quality and one EXIF block (record, infotext for UserComment)."""
    if spec.name == "png":
        return png_bytes(image, {**chunks, "diffier": record_json(record)})
    problem = size_problem(spec, image.width, image.height, has_alpha(image))
    if problem:
        raise UsageError(problem)
    exif = exif_block(record, infotext)
    if spec.name == "jpeg" and len(exif) > JPEG_SEGMENT_BYTES:
        raise UsageError(f"the record and infotext take {len(exif)} bytes of EXIF, over the {JPEG_SEGMENT_BYTES} "
                         "a JPEG metadata segment holds; write PNG or WebP (--format png|webp), which hold any size")
    buffer = io.BytesIO()
    if spec.name == "jpeg":
        image.save(buffer, format="JPEG", quality=spec.quality, exif=exif)
    elif spec.lossless:  # exact: keep the colour under fully transparent pixels too, so every pixel is as made
        image.save(buffer, format="WEBP", lossless=True, exact=True, exif=exif)
    else:
        image.save(buffer, format="WEBP", quality=spec.quality, exif=exif)
    return buffer.getvalue()
