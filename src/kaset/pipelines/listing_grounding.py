"""What a listing may say, and holding the LLM's listing to it.

The `Evidence` is the classifier's labels, the photo's description and the seller's notes.
`check_grounding` lists a schema-valid listing's claims the evidence does not support;
`build_listing` keeps, field by field, what of the model's replies passes and fills the rest
from the evidence (the "repaired" and "template" listings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kaset.pipelines.describe import _FRAME_WORDS, _stem
from kaset.pipelines.diagnose import Scored
from kaset.pipelines.listing_categories import suggest_categories
from kaset.pipelines.listing_schema import (
    DESCRIPTION_MAX,
    KEYWORD_MAX_CHARS,
    MAX_CATEGORIES,
    MIN_KEYWORDS,
    TITLE_MAX,
    Listing,
)

# Share of the description's content words that must come from the labels, the photo's
# description or the notes (the describer's threshold).
MIN_GROUNDED_FRACTION = 0.75

_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# "The photo is likely espresso" names the item but is no title.
_ABOUT_THE_PHOTO = re.compile(r"\b(?:photos?|images?|pictures?|likely|probably|possibly)\b", re.IGNORECASE)
# Words a listing may use without them being a fact about the item.
_LISTING_FRAME_TEXT = """
sale sell selling sold buy buying available item items product products listing offer offered pictured shown
shop store marketplace depicted seller seller's notes
"""
_LISTING_FRAME_WORDS = frozenset(_LISTING_FRAME_TEXT.split()) | _FRAME_WORDS


def _content(text: str) -> dict[str, str]:
    """The content words of `text`, {word: stem}, frame words and numbers left out (dropped
    before stemming too: "this" is no "thi")."""
    return {w: _stem(w) for w in _WORD.findall(text.lower())
            if w not in _LISTING_FRAME_WORDS and _stem(w) not in _LISTING_FRAME_WORDS and not w.isdigit()}


def _words(text: str) -> set[str]:
    """The stems of the content words of `text`."""
    return set(_content(text).values())


def _grounded(word: str, allowed: set[str]) -> bool:
    # "mushrooms" for "mushroom", "espressos" for "espresso": a shared stem of 4+ letters counts.
    return word in allowed or (len(word) >= 4 and any(a.startswith(word) or word.startswith(a)
                                                      for a in allowed if len(a) >= 4))


@dataclass
class Evidence:
    """What a listing may say: the labels, the photo's description, the seller's notes."""

    labels: list[Scored]
    description: str
    notes: str
    suggested: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.suggested = suggest_categories(self.labels)
        self.label_words = {w for s in self.labels for w in _words(s.label)}
        # The suggested categories' words ("fruit", "flowers") follow from the labels too.
        category_words = {w for c in self.suggested for w in _words(c)}
        self.allowed = self.label_words | category_words | _words(self.description) | _words(self.notes)

    def names_the_item(self, text: str) -> bool:
        words = _words(text)
        return any(_grounded(w, self.label_words) for w in words)

    def invented(self, text: str) -> list[str]:
        """Content words of `text` that none of the evidence supports."""
        return [word for word, stem in _content(text).items() if not _grounded(stem, self.allowed)]

    def supports(self, text: str) -> bool:
        content = _content(text)
        if not content:  # "for sale": nothing claimed
            return True
        return (len(content) - len(self.invented(text))) / len(content) >= MIN_GROUNDED_FRACTION


def check_grounding(listing: Listing, evidence: Evidence) -> list[str]:
    """Why a schema-valid listing still cannot be used: claims the evidence does not support."""
    errors: list[str] = []
    labels = ", ".join(s.label for s in evidence.labels)
    if not evidence.names_the_item(listing.title):
        errors.append(f"title: '{listing.title}' does not name what the photo shows ({labels})")
    elif not evidence.supports(listing.title):
        errors.append(f"title: '{listing.title}' claims things the labels do not support "
                      f"({', '.join(dict.fromkeys(evidence.invented(listing.title)))})")
    elif _ABOUT_THE_PHOTO.search(listing.title):
        errors.append(f"title: '{listing.title}' talks about the photo; name the item itself")
    if not evidence.names_the_item(listing.description):
        errors.append(f"description: it does not name what the photo shows ({labels})")
    elif not evidence.supports(listing.description):
        errors.append("description: it claims things the photo's labels and notes do not support "
                      f"({', '.join(dict.fromkeys(evidence.invented(listing.description)))})")
    loose = [k for k in listing.keywords if evidence.invented(k)]
    if loose:
        errors.append(f"keywords: {', '.join(repr(k) for k in loose)} are not about what the photo shows "
                      f"({labels})")
    unfit = [c for c in listing.categories if c not in evidence.suggested]
    if unfit:
        errors.append(f"categories: {', '.join(repr(c) for c in unfit)} do not fit what the photo shows; "
                      f"choose from {', '.join(repr(c) for c in evidence.suggested)}")
    return errors


# --- repair and template -----------------------------------------------------------------------


def _trim(text: str, limit: int) -> str:
    """`text` cut to `limit` characters at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut if len(cut) >= 3 else text[:limit]


def _keyword_key(keyword: str) -> tuple[str, ...]:
    return tuple(_stem(w) for w in _WORD.findall(keyword.lower())) or (keyword.lower(),)


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def build_listing(candidates: list[dict[str, Any]], evidence: Evidence,
                  max_keywords: int) -> tuple[Listing, int]:
    """A valid, grounded listing that keeps, field by field, the first of the model's replies
    (`candidates`, in order) whose value passes the checks, and fills the rest from the evidence:
    (listing, how many fields came from the model)."""
    kept = 0
    top = evidence.labels[0].label

    def usable_title(value: Any) -> bool:
        return (isinstance(value, str) and evidence.names_the_item(value) and evidence.supports(value)
                and not _ABOUT_THE_PHOTO.search(value) and len(_trim(value, TITLE_MAX)) >= 3)

    title = next((str(c["title"]) for c in candidates if usable_title(c.get("title"))), None)
    if title is not None:
        title, kept = _trim(title, TITLE_MAX), kept + 1
    else:
        title = top[:1].upper() + top[1:]
        first_note = evidence.notes.strip().splitlines()[0].strip() if evidence.notes.strip() else ""
        if first_note:
            title = f"{title} – {first_note}"
        title = _trim(title, TITLE_MAX)

    sentences: list[str] = []
    for candidate in candidates:
        raw = candidate.get("description")
        if isinstance(raw, str):
            sentences = [s for s in _SENTENCE_END.split(" ".join(raw.split()))
                         if evidence.names_the_item(s) and evidence.supports(s)]
        if sentences:
            break
    if sentences:
        kept += 1
        description = " ".join(sentences)
    else:
        description = evidence.description
    if evidence.notes.strip():
        description = f"{description} Seller's notes: {' '.join(evidence.notes.split())}"
    description = _trim(description, DESCRIPTION_MAX)

    keywords: list[str] = []

    def add(keyword: str) -> None:
        keyword = " ".join(keyword.split())[:KEYWORD_MAX_CHARS].strip()
        # "bees" after "bee" is the same keyword: compare stems.
        if len(keyword) >= 2 and len(keywords) < max_keywords and _keyword_key(keyword) not in {
                _keyword_key(k) for k in keywords}:
            keywords.append(keyword)

    for candidate in candidates:
        for keyword in _strings(candidate.get("keywords")):
            if not evidence.invented(keyword):
                add(keyword)
    if keywords:
        kept += 1
    # Fill from the labels, then their words, then the categories they map to.
    for scored in evidence.labels:
        add(scored.label)
    for scored in evidence.labels:
        for word in _WORD.findall(scored.label.lower()):
            if len(word) >= 3 and word not in _LISTING_FRAME_WORDS:
                add(word)
    for category in evidence.suggested:
        for word in _words(category):
            add(word)
    if len(keywords) < MIN_KEYWORDS:
        add("for sale")

    categories = list(dict.fromkeys(c for candidate in candidates for c in _strings(candidate.get("categories"))
                                    if c in evidence.suggested))
    if categories:
        kept += 1
    else:
        categories = list(evidence.suggested)
    listing = Listing.model_validate({"title": title, "description": description, "keywords": keywords,
                                      "categories": categories[:MAX_CATEGORIES]},
                                     context={"max_keywords": max_keywords})
    return listing, kept
