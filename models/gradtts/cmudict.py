"""CMUdict 0.7b pronunciations, parsed with the Grad-TTS rules (grad_tts/text/cmudict.py).

Grad-TTS was trained on the first pronunciation of this exact dictionary version; the newer
`cmudict.dict` differs for about 1,450 words (even "a"), so the 0.7b file ships gzipped in
models/gradtts/data and is checked by md5 before use.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import string
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# cmudict.py `valid_symbols`: the 84 phones (with stress digits); their order fixes the symbol ids.
ARPABET = (
    "AA", "AA0", "AA1", "AA2", "AE", "AE0", "AE1", "AE2", "AH", "AH0", "AH1", "AH2",
    "AO", "AO0", "AO1", "AO2", "AW", "AW0", "AW1", "AW2", "AY", "AY0", "AY1", "AY2",
    "B", "CH", "D", "DH", "EH", "EH0", "EH1", "EH2", "ER", "ER0", "ER1", "ER2", "EY",
    "EY0", "EY1", "EY2", "F", "G", "HH", "IH", "IH0", "IH1", "IH2", "IY", "IY0", "IY1",
    "IY2", "JH", "K", "L", "M", "N", "NG", "OW", "OW0", "OW1", "OW2", "OY", "OY0",
    "OY1", "OY2", "P", "R", "S", "SH", "T", "TH", "UH", "UH0", "UH1", "UH2", "UW",
    "UW0", "UW1", "UW2", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
_ARPABET_SET = frozenset(ARPABET)

CMUDICT_MD5 = "b47544b82324660b7f558051a7e0e2a9"  # of the uncompressed grad_tts/text/cmu_dictionary

_ENTRY_INITIALS = frozenset(string.ascii_uppercase + "'")  # other lines are comments or symbols
_ALTERNATE_MARK = re.compile(r"\([0-9]+\)")  # "WORD(2)" is WORD's second pronunciation


def _first_pronunciations(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """cmudict.py `_parse_cmudict`, keeping only the first valid pronunciation: the one Grad-TTS reads."""
    entries: dict[str, tuple[str, ...]] = {}
    for line in lines:
        if line[:1] not in _ENTRY_INITIALS:
            continue
        word, pronunciation, *_ = line.split("  ")
        phones = tuple(pronunciation.strip().split(" "))
        if _ARPABET_SET.issuperset(phones):  # a pronunciation with any unknown phone is dropped
            entries.setdefault(_ALTERNATE_MARK.sub("", word), phones)
    return entries


def read_cmudict(source: Traversable) -> Mapping[str, tuple[str, ...]]:
    """Parse a gzipped CMUdict 0.7b into {WORD: phones}, refusing any other content.

    Raises RuntimeError when the uncompressed file is not the one Grad-TTS ships.
    """
    data = gzip.decompress(source.read_bytes())
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if digest != CMUDICT_MD5:
        raise RuntimeError(
            f"{source} is not the CMUdict 0.7b that Grad-TTS was trained with "
            f"(md5 {digest}, expected {CMUDICT_MD5}); reinstall diffier"
        )
    # A text wrapper splits lines exactly as the reference's open(path, encoding="latin-1") does.
    lines = io.TextIOWrapper(io.BytesIO(data), encoding="latin-1")
    return MappingProxyType(_first_pronunciations(lines))


@functools.lru_cache(maxsize=1)
def load_cmudict() -> Mapping[str, tuple[str, ...]]:
    """The packaged dictionary, parsed on first use only (it takes about a second)."""
    return read_cmudict(resources.files("models.gradtts") / "data" / "cmudict-0.7b.gz")
