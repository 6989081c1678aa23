"""Parity of models.gradtts.text with the official Grad-TTS front end (grad-tts 0.0.4, grad_tts/text)."""

from __future__ import annotations

import ast
import gzip
import importlib
import importlib.util
import random
import sys
import types
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from models.gradtts.cmudict import ARPABET, load_cmudict, read_cmudict
from models.gradtts.text import BLANK_ID, N_VOCAB, SYMBOLS, text_to_ids

REFERENCE_DIR = Path(importlib.util.find_spec("grad_tts").submodule_search_locations[0])
WHEEL_CMUDICT = REFERENCE_DIR / "text" / "cmu_dictionary"
REFERENCE_ALIAS = "_grad_tts_reference"  # grad_tts/__init__.py imports the model (torch, monotonic_align)


def _reference_intersperse() -> Callable:
    """grad_tts/utils.py imports matplotlib, so only its `intersperse` is compiled, from the file itself."""
    source = REFERENCE_DIR / "utils.py"
    tree = ast.parse(source.read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "intersperse")
    namespace: dict = {}
    exec(compile(ast.Module([function], type_ignores=[]), str(source), "exec"), namespace)
    return namespace["intersperse"]


@pytest.fixture(scope="module")
def reference() -> types.SimpleNamespace:
    """The reference text package, imported under an alias with a stub `pkg_resources` (setuptools 84 has none)."""
    package = types.ModuleType(REFERENCE_ALIAS)
    package.__path__ = [str(REFERENCE_DIR)]
    pkg_resources = types.ModuleType("pkg_resources")
    pkg_resources.resource_filename = lambda _package, name: str(REFERENCE_DIR / "text" / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, REFERENCE_ALIAS, package)
        patch.setitem(sys.modules, "pkg_resources", pkg_resources)
        text = importlib.import_module(f"{REFERENCE_ALIAS}.text")
        cmudict = importlib.import_module(f"{REFERENCE_ALIAS}.text.cmudict")
    dictionary = cmudict.CMUDict(str(WHEEL_CMUDICT))
    intersperse = _reference_intersperse()

    def ids(line: str) -> list[int]:
        # What inference.py feeds the encoder.
        return intersperse(text.text_to_sequence(line, dictionary=dictionary), len(text.symbols))

    speakable = {i for i, s in enumerate(text.symbols) if s[0].isalpha() or s[0] == "@"}
    return types.SimpleNamespace(ids=ids, symbols=text.symbols, dictionary=dictionary, speakable=speakable)


CURATED = [
    # years: 1001-2999 read as years
    "It happened in 1998.", "By 2005 it was over.", "In 1800 and 2000, and 1000, 3000, 2010, 1066.",
    # money, including the "£" that unidecode turns into "PS"
    "It costs $3.50.", "Only $1 today.", "$0.01 or $.5 or $1.5 or $1.2.3 or $0", "£5 and £1,000,000.",
    # ordinals, decimals, comma-grouped numbers
    "The 1st and 22nd and 103rd and 11th.", "pi is 3.14, not 3.14.15", "1,000,000 people and 12,34,5",
    "007 agents, 1000000000000 stars", "12st 3nd",
    # abbreviations
    "Mr. Smith met Mrs. Jones, Dr. Who and St. John at Smith Co. Ltd.",
    "Gen. Lee, Capt. Hook, Sgt. Pepper, Lt. Dan, Col. Mustard, Rev. Green, Hon. Ed, Esq. Jr. Ft. Knox, Maj. Tom",
    "Drs. Jekyll and Hyde etc. mr.smith",
    # attached punctuation and hyphens
    "hello, world.", "Hello, world!", "ninety-eight well-known items; done: (yes) 'quoted'",
    # apostrophes
    "don't", "It's five o'clock, isn't it? 'bout time 'cause", "the dog's bone",
    # non-ASCII
    "café", "naïve façade", "Škoda", "wait — what", "“quotes” and ‘single’",
    "Zürich, 5€, ½, ß, 北京, 🙂 ok",
    # braces: raw ARPAbet, text before them is never looked up
    "{HH AH0 L OW1} there", "Say {HH AH0 L OW1} there and {W ER1 L D}.", "a{AH0}b", "{XX HH} {hh}x",
    "unclosed {brace here", "a } b { c", "{} empty", "{ } space", "x\n{HH AH0} y", "{HH AH0}\nlost words",
    # whitespace and case
    "multiple   spaces\there", "  leading and trailing  ", "MiXeD CaSe WoRdS", "UPPER CASE TEXT",
    "under_score and tilde~ and @at and #hash",
    # a paragraph
    "Grad-TTS is a diffusion model. It was published in 2021 by Popov et al.; the code is on GitHub! "
    "Dr. Smith paid $12.75 for 3 books on the 4th of July, 1999. Isn't that well-known?",
]

UNSPEAKABLE = [
    "",  # the reference raises IndexError
    " ",
    "   \t\n ",
    "🙂",
    "{XX}",  # the reference raises IndexError: nothing survives
    "?!...",  # the reference returns only punctuation
    "—",
    "$,5",  # both raise: int(",5") in numbers.py `_expand_dollars`
]


def random_sentences(words: list[str], count: int, seed: int) -> list[str]:
    """Deterministic mixes of dictionary words, numbers, money, abbreviations, symbols and braces."""
    rng = random.Random(seed)
    extras = ["Mr.", "Dr.", "St.", "Co.", "Ltd.", "etc.", "café", "—", "“", "”", "…", "£", "%", "&", "(", ")"]

    def token() -> str:
        kind = rng.randrange(12)
        word = rng.choice(words)
        if kind < 4:
            return rng.choice([word.lower(), word.title(), word])
        if kind == 4:
            return word.lower() + rng.choice(",.;:!?-'")
        if kind == 5:
            return f"{word.lower()}-{rng.choice(words).lower()}"
        if kind == 6:
            n = rng.choice([rng.randrange(100), rng.randrange(1000, 3000), rng.randrange(10**9)])
            return rng.choice([str(n), f"{n:,}", f"{n}{rng.choice(['st', 'nd', 'rd', 'th'])}"])
        if kind == 7:
            dollars, cents = rng.randrange(1000), rng.randrange(100)
            return rng.choice([f"${dollars}.{cents:02d}", f"${dollars % 10}", f"{rng.random() * 100:.3f}"])
        if kind == 8:
            phones = rng.choices([*ARPABET, "XX", "ah0"], k=rng.randint(1, 4))
            return "{" + " ".join(phones) + "}" + rng.choice(["", "", ",", "x"])
        return rng.choice(extras)

    separators = [" "] * 20 + ["  ", "\t", "\n"]
    sentences = []
    for _ in range(count):
        tokens = [token() for _ in range(rng.randint(1, 14))]
        sentences.append("".join(t + rng.choice(separators) for t in tokens).rstrip(" "))
    return sentences


def assert_same_ids(reference, line: str) -> None:
    expected = reference.ids(line)
    assert reference.speakable.intersection(expected), f"not a parity case: {line!r}"
    assert text_to_ids(line) == expected, line


def test_symbol_table_matches_reference(reference):
    assert SYMBOLS == tuple(reference.symbols)
    assert len(SYMBOLS) == 148 and BLANK_ID == 148 and N_VOCAB == 149


@pytest.mark.parametrize("line", CURATED)
def test_curated_ids_match_reference(reference, line):
    assert_same_ids(reference, line)


def test_random_sentences_match_reference(reference):
    words = sorted(reference.dictionary._entries)
    spoken = 0
    for line in random_sentences(words, count=400, seed=20210513):
        try:
            expected = reference.ids(line)
        except ValueError:  # "$,5"-style amounts crash the reference's int(); the port raises too
            expected = []
        if reference.speakable.intersection(expected):
            assert text_to_ids(line) == expected, line
            spoken += 1
        else:
            with pytest.raises(ValueError):
                text_to_ids(line)
    assert spoken > 350


def test_dictionary_matches_reference_first_pronunciations(reference):
    expected = {word: tuple(prons[0].split(" ")) for word, prons in reference.dictionary._entries.items()}
    assert dict(load_cmudict()) == expected


def test_common_words_use_the_07b_pronunciation(reference):
    # The newer cmudict.dict reads "a" as AH0; Grad-TTS was trained on 0.7b's EY1.
    assert load_cmudict()["A"] == ("EY1",)
    assert load_cmudict()["THE"] == ("DH", "AH0")
    phone_ids = {SYMBOLS.index("@" + p) for p in ("EY1", "DH", "AH0")}
    assert phone_ids <= set(text_to_ids("a the"))
    assert text_to_ids("a the") == reference.ids("a the")


def test_dictionary_is_parsed_once():
    assert load_cmudict() is load_cmudict()


def test_tampered_dictionary_is_refused(tmp_path):
    original = gzip.decompress((resources.files("models.gradtts") / "data" / "cmudict-0.7b.gz").read_bytes())
    tampered = tmp_path / "cmudict-0.7b.gz"
    tampered.write_bytes(gzip.compress(original.replace(b"A  EY1\n", b"A  AH0\n", 1), compresslevel=1))
    with pytest.raises(RuntimeError, match="md5"):
        read_cmudict(tampered)


@pytest.mark.parametrize("line", UNSPEAKABLE)
def test_unspeakable_text_raises_value_error(reference, line):
    try:
        expected = reference.ids(line)
    except (IndexError, ValueError):
        pass
    else:
        assert not reference.speakable.intersection(expected)
    with pytest.raises(ValueError):
        text_to_ids(line)
