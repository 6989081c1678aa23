"""What an image or a WAV carries about how it was made, read as untrusted: diffier's record (a
PNG's `diffier` chunk, a JPEG's or WebP's EXIF ImageDescription under Software `diffier ...`, a
WAV's `<stem>.json` sidecar), and for `diffier info` the metadata other generators write (PNG text
chunks, the EXIF UserComment AUTOMATIC1111 writes into JPEG and WebP).

The file may come from anywhere, so nothing in it is trusted: every failure is a UsageError whose
one-line message starts with the path ("PATH: why"), each piece is bounded (MAX_RECORD_BYTES), and
JSON goes through the one bounded reader (untrusted.loads).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffier_cli.errors import UsageError, first_line
from diffier_cli.formats import SOFTWARE_PREFIX
from diffier_cli.limits import MAX_RECORD_BYTES
from models import untrusted
from models.untrusted import mib

# PNG text chunks a reader looks at: diffier's record, AUTOMATIC1111's infotext, ComfyUI's API
# graph and editor workflow, InvokeAI's metadata (3.x and later), graph, 2.x `sd-metadata` and
# the oldest `Dream` line. Other chunks are left alone.
TEXT_CHUNKS = ("diffier", "parameters", "prompt", "workflow", "invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream")

# Formats whose metadata is an EXIF block (a JPEG that holds several pictures opens as MPO).
EXIF_FORMATS = ("JPEG", "MPO", "WEBP")

# The fix offered for a record diffier cannot have written: its own records pass every check.
NOT_OURS = "not written by diffier, or altered since; move it away"


class NoRecord(UsageError):
    """A readable file that carries no diffier record: not an output of diffier, so `manifest`
    leaves it out without counting it as a problem (a bad record is one)."""


@dataclass
class Embedded:
    """The metadata of one image: its known text chunks (PNG), diffier's record from EXIF (JPEG,
    WebP), and the EXIF UserComment decoded (AUTOMATIC1111's infotext in a JPEG or WebP)."""

    text: dict[str, str] = field(default_factory=dict)
    exif_record: str | None = None
    user_comment: str | None = None


def read_record(path) -> dict:
    """The record diffier stored with an output, as an object; NoRecord for a readable file that
    carries none, a UsageError ("PATH: why") for one that cannot be read or trusted."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() == ".wav":
        return _sidecar_record(path)
    return record_in(path, embedded(path))


def record_in(path: Path, found: Embedded) -> dict:
    """diffier's record among an image's metadata, parsed; NoRecord when it has none."""
    if "diffier" in found.text:
        return json_object(found.text["diffier"], f"{path}: its diffier chunk")
    if found.exif_record is not None:
        return json_object(found.exif_record, f"{path}: its EXIF ImageDescription")
    raise NoRecord(f"{path}: carries no diffier record")


def json_object(text: str | bytes, where: str, fix: str = NOT_OURS) -> dict:
    """JSON from a file, bounded, as an object: anything else is a usage error naming `where`
    ("PATH: its diffier chunk") and ending in `fix`."""
    try:
        value = untrusted.loads(text)
    except untrusted.Refused as exc:
        raise UsageError(f"{where} {exc}; {fix}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{where} is a JSON {type(value).__name__}, not an object; {fix}")
    return value


def _sidecar_record(path: Path) -> dict:
    """A WAV's record: its `<stem>.json` sidecar, read at most MAX_RECORD_BYTES of; without one,
    the record in brief in the WAV's INFO comment."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return _wav_info_record(path, sidecar)
    try:
        with sidecar.open("rb") as stream:
            data = untrusted.read_bytes(stream, MAX_RECORD_BYTES, "MAX_RECORD_BYTES")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read its sidecar {sidecar.name} ({exc.strerror or exc})") from exc
    except untrusted.Refused as exc:
        raise UsageError(f"{path}: its sidecar {sidecar.name} {exc}; {NOT_OURS}") from None
    return json_object(data, f"{path}: its sidecar {sidecar.name}")


def _wav_info_record(path: Path, sidecar: Path) -> dict:
    """The record in brief that diffier writes into a WAV's INFO chunk (ISFT `diffier ...`, ICMT
    the JSON; see wavinfo.py and tts.wav_comment). A WAV without them, or one libsndfile cannot
    read, carries no diffier record; one whose software says diffier must hold a good record."""
    from diffier_cli.wavinfo import read_info

    try:
        software, comment = read_info(path)
    except ValueError as exc:
        raise NoRecord(f"{path}: no sidecar {sidecar.name} beside it, and {exc}") from None
    if not software.startswith(SOFTWARE_PREFIX):
        raise NoRecord(f"{path}: no sidecar {sidecar.name} beside it and no diffier record in its INFO chunk")
    return json_object(comment, f"{path}: its INFO comment (ICMT)")


def embedded(path: Path) -> Embedded:
    """An image's metadata, within Pillow's bounds and ours, with its warnings kept off stderr.

    Chunks before the pixel data (where diffier writes them) come with the header, so a diffier
    output is read without decoding its pixels; only a PNG without them there is decoded, to reach
    chunks after the pixels. Pillow refuses a compressed text chunk that inflates past 1 MB, text
    over 64 MB in all, and an image over MAX_IMAGE_PIXELS (a decompression bomb: an error here, not
    a warning on stderr), each with a ValueError or its own exception type.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                found = Embedded(_known_chunks(image.info))
                if not found.text and image.format == "PNG":
                    found.text = _known_chunks(image.text)
                if image.format in EXIF_FORMATS:
                    found.exif_record, found.user_comment = _exif_fields(path, image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UsageError(f"{path}: refused as a decompression bomb ({first_line(exc)}); {NOT_OURS}") from None
        except ValueError as exc:  # Pillow's bounds on text chunks, and other malformed chunks
            raise UsageError(f"{path}: Pillow refused it ({first_line(exc)}); {NOT_OURS}") from None
        except (OSError, SyntaxError, EOFError) as exc:  # not an image, truncated, a bad checksum
            raise UsageError(f"{path}: not a readable image or WAV ({first_line(exc)})") from None
    for key, value in found.text.items():
        _bounded(path, f"its {key} chunk", value)
    return found


def _known_chunks(chunks: dict) -> dict[str, str]:
    """The chunks readers know among an image's info or text (where other keys hold bytes or tuples)."""
    return {key: chunks[key] for key in TEXT_CHUNKS if isinstance(chunks.get(key), str)}


def _bounded(path: Path, what: str, value: str | bytes) -> None:
    if len(value) > MAX_RECORD_BYTES:
        raise UsageError(f"{path}: {what} is over {mib(MAX_RECORD_BYTES)} (MAX_RECORD_BYTES); {NOT_OURS}")


def _exif_fields(path: Path, image) -> tuple[str | None, str | None]:
    """(diffier's record from IFD0 ImageDescription when IFD0 Software says diffier wrote the block,
    the Exif IFD's UserComment decoded), each None where absent."""
    from PIL import ExifTags

    try:
        exif = image.getexif()
        software, description = exif.get(ExifTags.Base.Software), exif.get(ExifTags.Base.ImageDescription)
        comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    except Exception as exc:  # noqa: BLE001 - Pillow's EXIF parser fails on damaged blocks with many exception types
        raise UsageError(f"{path}: its EXIF block is damaged ({type(exc).__name__}: {first_line(exc)})") from None
    ours = isinstance(software, str) and software.startswith(SOFTWARE_PREFIX)
    record = description if ours and isinstance(description, str) else None
    if ours and record is None:
        raise UsageError(f"{path}: its EXIF Software says diffier but it has no ImageDescription record; {NOT_OURS}")
    for what, value in (("EXIF ImageDescription", record), ("EXIF UserComment", comment)):
        if value is not None:
            _bounded(path, f"its {what}", value)
    return record, decode_user_comment(comment)


def decode_user_comment(raw) -> str | None:
    """An EXIF UserComment as text, read as AUTOMATIC1111's read_info_from_image reads it: piexif's
    UserComment.load (its 8-byte character code: UNICODE, ASCII or JIS), else the bytes as UTF-8;
    None for none, or an empty one."""
    import piexif.helper

    if isinstance(raw, str):  # a writer that typed it ASCII
        text = raw
    elif isinstance(raw, bytes):
        try:
            text = piexif.helper.UserComment.load(raw)
        except ValueError:
            text = raw.decode("utf-8", errors="ignore")
    else:
        return None
    text = text.strip("\x00")  # an undefined code's eight NULs, a writer's terminator
    return text or None
