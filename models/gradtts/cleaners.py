"""English text normalisation, reproducing Grad-TTS's `english_cleaners`.

The checkpoints were trained on text cleaned exactly this way, so every rule (quirks included)
follows the reference; each cites the grad_tts/text/ file it comes from.
"""

from __future__ import annotations

import re

import inflect
from unidecode import unidecode

_INFLECT = inflect.engine()

# numbers.py patterns, applied in this order by `normalize_numbers`.
_NUMBER_WITH_COMMAS = re.compile(r"([0-9][0-9,]+[0-9])")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")
_INTEGER = re.compile(r"[0-9]+")

# cleaners.py `_abbreviations`, in the reference order. The reference matches case-insensitively,
# but the text is already lowercase when they run.
_ABBREVIATION_TABLE = [
    ("mrs", "misess"),
    ("mr", "mister"),
    ("dr", "doctor"),
    ("st", "saint"),
    ("co", "company"),
    ("jr", "junior"),
    ("maj", "major"),
    ("gen", "general"),
    ("drs", "doctors"),
    ("rev", "reverend"),
    ("lt", "lieutenant"),
    ("hon", "honorable"),
    ("sgt", "sergeant"),
    ("capt", "captain"),
    ("esq", "esquire"),
    ("ltd", "limited"),
    ("col", "colonel"),
    ("ft", "fort"),
]
_ABBREVIATIONS = [(re.compile(rf"\b{short}\."), full) for short, full in _ABBREVIATION_TABLE]
# What a period may end without ending a sentence: the expanded abbreviations and common Latin ones.
NON_FINAL_ABBREVIATIONS = frozenset(short for short, _ in _ABBREVIATION_TABLE) | {"e.g", "i.e", "etc", "vs"}

_WHITESPACE = re.compile(r"\s+")


def _spell_dollars(match: re.Match[str]) -> str:
    """numbers.py `_expand_dollars`: "$3.50" -> "3 dollars, 50 cents" (digits are spelled later).

    Quirks kept: "$1.5" is "1 dollar, 5 cents", "$1.2.3" is "1.2.3 dollars", and a comma left
    in the amount ("$,5") makes int() raise ValueError, as in the reference.
    """
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return f"{amount} dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    spoken = [f"{n} {unit}" if n == 1 else f"{n} {unit}s" for n, unit in ((dollars, "dollar"), (cents, "cent")) if n]
    return ", ".join(spoken) or "zero dollars"


def _spell_integer(match: re.Match[str]) -> str:
    """numbers.py `_expand_number`: 1001-2999 are read as years, other integers plainly."""
    n = int(match.group(0))
    if not 1000 < n < 3000:
        return _INFLECT.number_to_words(n, andword="")
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + _INFLECT.number_to_words(n % 100)
    if n % 100 == 0:
        return _INFLECT.number_to_words(n // 100) + " hundred"
    return _INFLECT.number_to_words(n, andword="", zero="oh", group=2).replace(", ", " ")


def _spell_numbers(text: str) -> str:
    """numbers.py `normalize_numbers`, minus its "£" rule: unidecode has already made "£" into "PS"."""
    text = _NUMBER_WITH_COMMAS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _DOLLARS.sub(_spell_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL.sub(lambda m: _INFLECT.number_to_words(m.group(0)), text)
    return _INTEGER.sub(_spell_integer, text)


def clean_english_text(text: str) -> str:
    """cleaners.py `english_cleaners`: ASCII, lowercase, numbers and abbreviations spelled out, one space.

    Leading and trailing whitespace is kept (collapsed to one space), as in the reference.
    """
    text = _spell_numbers(unidecode(text).lower())
    for abbreviation, expansion in _ABBREVIATIONS:
        text = abbreviation.sub(expansion, text)
    return _WHITESPACE.sub(" ", text)
