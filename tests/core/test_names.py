"""Output names from prompts and texts: transliterated to ASCII, and unchanged for ASCII prompts,
which earlier runs named the same way (`--skip-existing` finds their outputs by name)."""

from __future__ import annotations

import random
import re
import string
import unicodedata

import pytest

from diffier_cli.outputs import SLUG_MAX, name_problem, slugify


def slugify_before_transliteration(text: str, limit: int = SLUG_MAX) -> str:
    """slugify as it was until names were transliterated (NFKD, then every non-ASCII character dropped)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "untitled"


@pytest.mark.parametrize(("text", "slug"), [
    ("кот", "kot"),
    ("Кот на крыше", "kot-na-kryshe"),
    ("一只猫", "yi-zhi-mao"),
    ("猫cat", "mao-cat"),
    ("a cat 猫", "a-cat-mao"),
    ("中文prompt测试", "zhong-wen-prompt-ce-shi"),
    ("ねこ", "neko"),
    ("고양이", "goyangi"),
    ("Ελληνικά", "ellenika"),
    ("straße", "strasse"),
    ("объект", "obekt"),  # the hard sign's apostrophe is no letter: dropped, not a separator
    ("٣ قطط", "3-qtt"),
    ("🐱🐱🐱", "untitled"),  # nothing left but symbols
    ("", "untitled"),
])
def test_letters_of_every_script_are_transliterated(text, slug):
    assert slugify(text) == slug


def test_a_transliterated_slug_is_capped_like_any_other():
    slug = slugify("猫" * 100)  # four ASCII characters a character
    assert slug == ("mao-" * 15).rstrip("-") and len(slug) <= SLUG_MAX
    assert slugify("кот " * 30, limit=40) == "kot-kot-kot-kot-kot-kot-kot-kot-kot-kot"


def test_ascii_prompts_keep_the_names_they_had():
    rng = random.Random(16)
    prompts = ["a puppy eating a cheeseburger", "A red bicycle, 4k, trending on ArtStation", "  --weird__ (prompt)!! ",
               "", "---", "x" * 200, "con", "..hidden", "path/to\\file", "tab\tnew\nline", string.printable]
    prompts += ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 120))) for _ in range(2000)]
    prompts += [chr(code) for code in range(128)]
    for prompt in prompts:
        for limit in (SLUG_MAX, 40):
            assert slugify(prompt, limit) == slugify_before_transliteration(prompt, limit), prompt


@pytest.mark.parametrize("prompt", [
    "café crème", "Ｆｕｌｌｗｉｄｔｈ", "ﬁsh ﬂakes", "don’t “quote” me", "½ cup — 2×", "🐱 a cat 🐱", "naïve résumé", "Ångström"])
def test_prompts_whose_only_non_ascii_is_accents_or_symbols_keep_their_names_too(prompt):
    assert slugify(prompt) == slugify_before_transliteration(prompt)


@pytest.mark.parametrize("text", ["кот", "一只猫" * 40, "Ελληνικά", "ⅫⅫ", "ǅ", "ᚠᛇᚻ", "𝔣𝔯𝔞𝔨𝔱𝔲𝔯", "אבג", "ไทย", "ア" * 200])
def test_transliterated_slugs_stay_safe_file_names(text):
    slug = slugify(text)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= SLUG_MAX, slug
    assert name_problem(f"00000-7-refined-{slug}.png") is None
