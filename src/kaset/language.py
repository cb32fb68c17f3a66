"""Thai or English: the one place that tells which script a text is written in.

Callers ask one of two different questions, so there are two kinds of answer:

- **Any Thai at all** (`has_thai`): one character of the Thai block (U+0E00-U+0E7F) is enough.
  Right for choosing a tool (PyThaiNLP's sentence splitter or normalizer, a Thai-capable
  transcriber), where a single Thai word needs the Thai tool.
- **Share of the letters** (`thai_share`, `latin_share`, `written_language`): right for saying
  which language a text is *in*, because Thai questions and answers routinely carry Latin words
  (a product name, "pH", a variety code) and English text may quote one Thai word.

Letters are what `str.isalpha` says: in Thai script the consonants and the vowels written on
the line, not the combining vowel and tone marks (Unicode Mn), digits, punctuation or spaces,
so a word's share does not change with how many marks it carries.
"""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["en", "th"]

# A text is Thai when at least this share of its letters is Thai script: Thai writing mixes in
# Latin names freely ("ฉีด mancozeb 2 ครั้ง" is 38% Thai letters), so a majority would misread it.
THAI_SHARE = 0.3

_THAI = re.compile(r"[\u0E00-\u0E7F]")


def has_thai(text: str) -> bool:
    """Whether any character of `text` is in the Thai block."""
    return _THAI.search(text) is not None


def letter_count(text: str) -> int:
    """How many letters `text` has (`str.isalpha`)."""
    return sum(1 for c in text if c.isalpha())


def thai_share(text: str) -> float:
    """The share of `text`'s letters in Thai script; 0.0 when it has no letters."""
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if "\u0e00" <= c <= "\u0e7f") / len(letters) if letters else 0.0


def latin_share(text: str) -> float:
    """The share of `text`'s letters that are plain Latin A-Z/a-z; 0.0 when it has no letters."""
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if c.isascii()) / len(letters) if letters else 0.0


def written_language(text: str) -> Language:
    """"th" when at least `THAI_SHARE` of the letters are Thai, else "en" (also for no letters:
    callers that must refuse other languages check `latin_share` too, as the advisor does)."""
    return "th" if thai_share(text) >= THAI_SHARE else "en"
