"""Grad-TTS text front end: a line of English to the encoder's input ids.

Reproduces what the reference inference.py feeds the encoder,
`intersperse(text_to_sequence(text, dictionary=cmu), len(symbols))` (grad_tts/text/__init__.py and
utils.py), id for id: the checkpoints only understand that exact encoding.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

from models.gradtts.cleaners import clean_english_text
from models.gradtts.cmudict import ARPABET, load_cmudict

# symbols.py: pad, hyphen, punctuation (space last), letters, then the phones prefixed with "@".
SYMBOLS = ("_", "-", *"!'(),.:;? ", *string.ascii_uppercase, *string.ascii_lowercase, *("@" + p for p in ARPABET))
BLANK_ID = len(SYMBOLS)  # 148: the blank that `intersperse` puts around every symbol
N_VOCAB = len(SYMBOLS) + 1  # 149: rows of the encoder's embedding

# __init__.py `_should_keep_symbol`: anything outside the table, and the pad, is dropped from text.
_KEPT_IDS = {symbol: i for i, symbol in enumerate(SYMBOLS) if symbol != "_"}
_SPACE_ID = _KEPT_IDS[" "]
_SPEAKABLE_IDS = range(_KEPT_IDS["A"], BLANK_ID)  # letters and phones; the rest is punctuation

# __init__.py `_curly_re`: "{HH AH0 L OW1}" is raw ARPAbet. Without re.DOTALL, as in the reference,
# a newline before the braces defeats the match and text after a newline that follows them is lost.
_ARPABET_IN_BRACES = re.compile(r"(.*?)\{(.+?)\}(.*)")


def _chars_to_ids(text: str) -> list[int]:
    return [_KEPT_IDS[char] for char in text if char in _KEPT_IDS]


def _phones_to_ids(phones: Iterable[str]) -> list[int]:
    return [_KEPT_IDS["@" + phone] for phone in phones if "@" + phone in _KEPT_IDS]


def _words_to_ids(text: str, lexicon: Mapping[str, tuple[str, ...]]) -> list[int]:
    """__init__.py `text_to_sequence`: look each " "-separated token up whole, a space after each.

    Tokens with attached punctuation ("hello,", "well-known") miss and are spelled with letters.
    """
    ids: list[int] = []
    for word in text.split(" "):
        phones = lexicon.get(word.upper())
        if phones is not None:
            ids += _phones_to_ids(phones)
        elif not word.startswith("{"):
            ids += _chars_to_ids(word)
        # else: the reference reads a "{"-led token as ARPAbet, which lowercased text never matches.
        ids.append(_SPACE_ID)
    return ids


def _symbol_ids(text: str) -> list[int]:
    """__init__.py `text_to_sequence(text, dictionary=cmu)`, braces included."""
    lexicon = load_cmudict()
    ids: list[int] = []
    while text:
        match = _ARPABET_IN_BRACES.match(text)
        if match is None:
            ids += _words_to_ids(clean_english_text(text), lexicon)
            break
        before, arpabet, text = match.groups()
        ids += _chars_to_ids(clean_english_text(before))  # text before braces is spelled, never looked up
        ids += _phones_to_ids(arpabet.split())
    if ids and ids[-1] == _SPACE_ID:
        ids.pop()
    return ids


def intersperse(ids: list[int], blank: int) -> list[int]:
    """utils.py `intersperse`: a blank before, between and after the ids, as the encoder was trained."""
    spaced = [blank] * (2 * len(ids) + 1)
    spaced[1::2] = ids
    return spaced


class NothingToSay(ValueError):
    """The utterance has no letter or phone left after cleaning."""


def text_to_ids(text: str) -> list[int]:
    """Encoder input ids for one utterance, identical to the reference inference's.

    Raises NothingToSay (a ValueError) when nothing speakable (no letter or phone) is left after cleaning, e.g. for
    empty, whitespace-only, emoji-only or punctuation-only text: the reference raises IndexError on
    an empty line and otherwise feeds the model only blanks, spaces and punctuation.
    """
    ids = _symbol_ids(text)
    if not any(i in _SPEAKABLE_IDS for i in ids):
        raise NothingToSay(f"nothing to speak in {text!r}: it has no letters or words left after cleaning")
    return intersperse(ids, BLANK_ID)
