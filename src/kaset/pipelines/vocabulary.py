"""The words a farmer's question is likely to hold, as a Whisper prompt.

Whisper reads its prompt as the text said just before the recording, so names in it are
heard as names: "anthracnose on mango leaves" rather than "antherc noesomengo leads". The
names come from the curated knowledge base (its crops and the problems it has entries for),
so a new entry is heard better without anyone editing a word list.

Measured (bench/crop_hearing.py): Piper-spoken English crop questions through an Opus round
trip with added noise, whisper-tiny.en, "mango" heard in 38 of 96 recordings without the
prompt and 96 of 96 with it; noise, silence and garbled speech stay refused or doubted with it
(tests/pipelines/test_vocabulary.py checks both). English only, for now: see crop_hearing_prompt.
"""

from __future__ import annotations

from collections.abc import Iterable

from kaset.knowledge.schema import Entry
from kaset.pipelines.diagnosis_text import THAI_CROPS

# Spoken names of the crops, in the farmer's language (the schema's crop ids are English words).
_CROP_NAMES: dict[str, dict[str, str]] = {"en": {}, "th": THAI_CROPS}
# Languages whose questions are heard with the prompt (see crop_hearing_prompt).
PROMPTED_LANGUAGES = frozenset({"en"})
_LEAD = {"en": "A farmer asks about {crops}: {problems}.", "th": "เกษตรกรถามเรื่อง{crops}: {problems}"}


def crop_hearing_prompt(entries: Iterable[Entry], language: str | None) -> str | None:
    """The prompt the crop doctor and the farmer's voice questions are heard with, in a language
    where it was measured to help (English); None elsewhere: for Thai it raised the error rate on
    recorded Thai that is not about crops (0.183 -> 0.219 CER) and no recorded Thai crop question
    is available here to show a gain; for auto-detection a prompt would pull detection its way."""
    return vocabulary_text(entries, language) if language in PROMPTED_LANGUAGES else None


def vocabulary_text(entries: Iterable[Entry], language: str | None) -> str | None:
    """A short text naming the crops and problems of `entries` in `language` (en or th), None for
    another language or when no entry names a problem."""
    if language not in _LEAD:
        return None
    crops: dict[str, None] = {}
    problems: dict[str, None] = {}
    for entry in entries:
        crops[_CROP_NAMES[language].get(entry.crop, entry.crop)] = None
        if entry.kind != "healthy":
            problems[getattr(entry, language).name] = None
    if not problems:
        return None
    separator = ", " if language == "en" else " "
    return _LEAD[language].format(crops=separator.join(crops), problems=separator.join(problems))
