"""The one reader of bytes and JSON that diffier did not write in this run: records in PNG chunks
and WAV sidecars (`info`, `manifest`) and prompt files (`t2i --prompts-file`).

Such input may be hostile or merely broken, so every read here is bounded before any work that
grows with the input: a size bound before the bytes are read whole, then a depth bound and finite
numbers in the JSON. Each refusal is a `Refused` whose one-line message completes "THING ...",
e.g. "stdin line 3 nests deeper than 32 levels (MAX_JSON_DEPTH)", for the caller to wrap as a
usage error or a failed item.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import BinaryIO

from models.errors import first_line

# Nesting depth of any JSON diffier reads (records, .jsonl prompt lines). Its own records nest
# at most 6 deep; Python's parser would recurse until RecursionError on a deeply nested file.
MAX_JSON_DEPTH = 32

# Digits of an integer in that JSON: Python's default bound (sys.int_info.default_max_str_digits),
# checked by diffier itself because PYTHONINTMAXSTRDIGITS=0 lifts Python's, and converting one
# 16 MB integer then costs minutes (the cost grows with the square of the digits). diffier's own
# integers (seeds, counts, sizes) have at most 20 digits.
MAX_INT_DIGITS = 4300

# Bytes of a record read from a file: a PNG text chunk (Pillow refuses compressed chunks over
# 1 MB, ImageFile.SAFEBLOCK) or a WAV's JSON sidecar. diffier's largest records (a long text's
# per-utterance, per-step statistics) are well under 1 MB.
MAX_RECORD_BYTES = 16 * 2**20

# Bytes of a prompts file or of the text given to tts: MAX_ITEMS lines of 2 kB each with room to spare.
MAX_TEXT_BYTES = 256 * 2**20


class Refused(ValueError):
    """Input refused by a bound or as malformed; the message is one line."""


def mib(size: int) -> str:
    """A byte bound as people say it: 16 MiB, 256 MiB."""
    return f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size} bytes"


def read_bytes(stream: BinaryIO, max_bytes: int, bound: str) -> bytes:
    """All of a file or pipe, refused without reading it when its size is known to be over
    `max_bytes`, and after reading max_bytes + 1 bytes otherwise (a pipe, or a file still growing),
    so a 10 GB input costs at most max_bytes of memory. `bound` names the limit in the message."""
    try:
        size = os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # an in-memory stream: no file number
        size = 0
    if size <= max_bytes:
        data = stream.read(max_bytes + 1)
        size = len(data)
    if size > max_bytes:
        raise Refused(f"is over {mib(max_bytes)} ({bound}); split it into several files and run each")
    return data


def read_json_file(path) -> object:
    """A JSON file (a config or record beside a model or output) under MAX_RECORD_BYTES, through
    `loads`'s bounds. OSError is the caller's to word."""
    with open(path, "rb") as stream:
        return loads(read_bytes(stream, MAX_RECORD_BYTES, "MAX_RECORD_BYTES"))


def read_text(source: str) -> str:
    """The UTF-8 text of a file, or of stdin for '-', read whole only under MAX_TEXT_BYTES: a larger
    file is refused before it is read, a larger pipe after MAX_TEXT_BYTES + 1 bytes. OSError (no
    such file, no permission) is the caller's to word."""
    if source == "-":
        raw = read_bytes(sys.stdin.buffer, MAX_TEXT_BYTES, "MAX_TEXT_BYTES")
    else:
        with open(source, "rb") as stream:
            raw = read_bytes(stream, MAX_TEXT_BYTES, "MAX_TEXT_BYTES")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused("is not UTF-8 text; pass a plain-text file saved as UTF-8") from None


def _utf8_size(text: str | bytes) -> int:
    """Bytes of the text as UTF-8, without encoding it when it is ASCII (the usual case)."""
    if isinstance(text, (bytes, bytearray)):
        return len(text)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _no_constant(name: str) -> float:
    """NaN, Infinity and -Infinity: Python's json accepts them, JSON and every other reader do not."""
    raise Refused(f"holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    """A float literal that overflows (1e400) would otherwise come back as infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"holds {text[:40]}, a number too large for a float")
    return value


def _bounded_int(text: str) -> int:
    """Checked before conversion, whose cost grows with the square of the digits; Python's own limit
    can be switched off (PYTHONINTMAXSTRDIGITS=0), this one cannot."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise Refused(f"holds an integer of {digits} digits, over {MAX_INT_DIGITS} (MAX_INT_DIGITS)")
    return int(text)


def _check_depth(value: object) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH that parsed fine. Walked a level at a time, not
    by recursion (which could itself hit Python's limit), and with one comprehension a level, so a
    16 MB array of 5 million empty arrays takes a fraction of a second, not seconds."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise Refused(f"nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
        level = [child for node in level for child in (node.values() if type(node) is dict else node)
                 if type(child) is dict or type(child) is list]


def loads(text: str | bytes) -> object:
    """JSON of at most MAX_RECORD_BYTES, nested at most MAX_JSON_DEPTH deep, with finite numbers
    and integers of at most MAX_INT_DIGITS digits; anything else is `Refused`, never a
    RecursionError or a traceback.

    Very deep input makes the parser itself raise RecursionError (it recurses once a level) before
    it has built much; depth that parses fine is refused by a walk afterwards.
    """
    size = _utf8_size(text)
    if size > MAX_RECORD_BYTES:
        raise Refused(f"is {size} bytes, over {mib(MAX_RECORD_BYTES)} (MAX_RECORD_BYTES)")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except Refused:
        raise
    except RecursionError:
        raise Refused(f"nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        raise Refused(f"is not JSON ({first_line(exc)})") from None
    _check_depth(value)
    return value
