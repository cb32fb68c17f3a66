"""The listing writer: a product photo → a marketplace listing (title, description, keywords,
categories) as JSON validated against a schema.

Steps: the describer turns the photo into words (a vision provider, or the image classifier's
labels worded by the local LLM); the local LLM then writes the listing as JSON. On llama.cpp the
reply is grammar-constrained to the listing's JSON schema (llama-cpp-python's
`LlamaGrammar.from_json_schema`, passed through `GenerationParams.json_schema`), so its syntax,
lengths, item counts and category names hold by construction. What a grammar cannot say is
checked after parsing, by the `Listing` model and by `check_grounding`:

- keywords and categories must be unique;
- the title must name what the photo shows (one of the classifier's labels);
- keywords and the description must come from the labels, the photo's description or the
  seller's notes (the 135M model otherwise sells "a rich, bold flavor profile" it never saw);
- categories must be ones the labels map to (`suggest_categories`), not any name on the list.

A reply that fails is sent back once with its errors in the prompt. If the second reply fails
too, the listing is repaired deterministically: what survived the checks is kept (a grounded
title, grounded keywords and description sentences, fitting categories) and the rest is filled
from the labels, the description and the notes (method "repaired"). When nothing of the model's
survives, or no LLM is installed, the same filler builds the whole listing ("template"). No step
adds a fact that the labels, the description or the seller did not give.

Thai: the offline LLM writes English only, so a Thai request gets an English listing and a
note in Thai and English saying so (the same choice as the describer).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from kaset.errors import KasetError
from kaset.pipelines.advice import Language
from kaset.pipelines.describe import _FRAME_WORDS, DescribeService, Description, _stem
from kaset.pipelines.diagnose import Scored
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import Router
from kaset.runtimes.base import Generation, GenerationParams

Method = Literal["llm-json", "repaired", "template"]

TITLE_MAX = 80
DESCRIPTION_MAX = 600
KEYWORD_MAX_CHARS = 40
MIN_KEYWORDS = 3
DEFAULT_MAX_KEYWORDS = 8
MAX_KEYWORDS_LIMIT = 15
MAX_CATEGORIES = 3
# Two tries at the JSON: the first, and one with the first's errors in the prompt.
MAX_ATTEMPTS = 2
# Room for a 600-character description and the rest (SmolLM2 averages ~4 characters a token).
LLM_PARAMS = GenerationParams(max_tokens=320, temperature=0.0, seed=0)
# The retry samples (seeded): greedy decoding ignores the error list and repeats its first reply.
RETRY_TEMPERATURE = 0.7
# Share of the description's content words that must come from the labels, the photo's
# description or the notes (the describer's threshold).
MIN_GROUNDED_FRACTION = 0.75

Category = Literal[
    "Fruit", "Vegetables", "Rice, grains & seeds", "Plants & flowers", "Livestock & poultry", "Pets",
    "Food & drinks", "Kitchen & dining", "Home & garden", "Farm tools & machinery", "Vehicles",
    "Clothing & accessories", "Electronics", "Toys, sports & outdoors", "Other",
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]

# ImageNet class indices (the classifier's label order) of the categories that are whole ranges.
_INDEX_CATEGORIES: list[tuple[range, str]] = [
    (range(936, 948), "Vegetables"),       # head cabbage … mushroom
    (range(948, 958), "Fruit"),            # Granny Smith … pomegranate
    (range(924, 936), "Food & drinks"),    # guacamole … mashed potato
    (range(959, 968), "Food & drinks"),    # carbonara … espresso
    (range(969, 970), "Food & drinks"),    # eggnog
    (range(958, 959), "Rice, grains & seeds"),  # hay
    (range(984, 985), "Rice, grains & seeds"),  # rapeseed
    (range(987, 988), "Vegetables"),       # corn
    (range(987, 988), "Rice, grains & seeds"),
    (range(998, 999), "Rice, grains & seeds"),  # ear (of grain)
    (range(988, 989), "Rice, grains & seeds"),  # acorn
    (range(990, 991), "Rice, grains & seeds"),  # buckeye
    (range(985, 987), "Plants & flowers"),  # daisy, yellow lady's slipper
    (range(989, 990), "Plants & flowers"),  # hip
    (range(992, 993), "Vegetables"),       # agaric
    (range(996, 998), "Vegetables"),       # hen-of-the-woods, bolete
    (range(151, 269), "Pets"),             # dogs
    (range(281, 286), "Pets"),             # domestic cats
    (range(1, 2), "Pets"),                 # goldfish
    (range(7, 9), "Livestock & poultry"),  # cock, hen
    (range(97, 98), "Livestock & poultry"),  # drake
    (range(99, 100), "Livestock & poultry"),  # goose
    (range(339, 340), "Livestock & poultry"),  # sorrel (horse)
    (range(341, 342), "Livestock & poultry"),  # hog
    (range(345, 347), "Livestock & poultry"),  # ox, water buffalo
    (range(348, 349), "Livestock & poultry"),  # ram
]
# Object classes (398-923) by words of their label.
_WORD_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Kitchen & dining": (
        "cup", "coffee mug", "plate", "teapot", "coffeepot", "frying pan", "wok", "caldron", "espresso maker",
        "pitcher", "water jug", "wine bottle", "beer glass", "goblet", "ladle", "spatula", "mixing bowl",
        "soup bowl", "dutch oven", "crock pot", "toaster", "waffle iron", "microwave", "refrigerator",
        "dishwasher", "can opener", "corkscrew", "strainer", "tray", "saltshaker", "measuring cup",
        "wooden spoon", "beer bottle", "pop bottle", "water bottle", "cocktail shaker", "plate rack", "rotisserie",
        "dishrag", "hot pot", "pizza", "eggnog"),
    "Home & garden": (
        "pot", "vase", "lamp", "table lamp", "rocking chair", "folding chair", "studio couch", "four-poster",
        "quilt", "pillow", "bookcase", "chest", "wardrobe", "window shade", "doormat", "broom", "bucket",
        "watering can", "rain barrel", "birdhouse", "wall clock", "shower curtain", "bath towel", "bathtub",
        "china cabinet", "dining table", "desk", "lampshade", "barrow", "lawn mower", "candle", "hamper"),
    "Farm tools & machinery": (
        "tractor", "harvester", "thresher", "plow", "hammer", "shovel", "hatchet", "chain saw", "power drill",
        "screwdriver", "barrow", "lawn mower", "chain", "cleaver", "plane", "hay"),
    "Vehicles": (
        "car", "truck", "pickup", "jeep", "minivan", "cab", "convertible", "limousine", "bicycle", "mountain bike",
        "motor scooter", "moped", "tricycle", "tractor", "forklift", "golf cart", "ambulance", "fire engine",
        "police van", "school bus", "trolleybus", "canoe", "speedboat", "go-kart", "racer", "snowmobile",
        "tandem", "moving van", "recreational vehicle", "wheel"),
    "Clothing & accessories": (
        "jersey", "sweatshirt", "cardigan", "jean", "miniskirt", "kimono", "abaya", "gown", "suit", "trench coat",
        "fur coat", "lab coat", "poncho", "sarong", "apron", "bow tie", "windsor tie", "sock", "running shoe",
        "sandal", "clog", "cowboy boot", "loafer", "cowboy hat", "sombrero", "bonnet", "backpack", "purse",
        "wallet", "sunglasses", "necklace", "umbrella", "bikini", "swimming trunks", "mitten", "stole", "vestment"),
    "Electronics": (
        "laptop", "notebook", "desktop computer", "monitor", "screen", "television", "cellular telephone", "ipod",
        "remote control", "computer keyboard", "mouse", "printer", "radio", "loudspeaker", "digital watch",
        "reflex camera", "polaroid camera", "projector", "joystick", "modem", "hard disc", "cd player",
        "cassette player", "tape player", "microphone", "hand-held computer", "dial telephone", "space heater"),
    "Toys, sports & outdoors": (
        "teddy", "toyshop", "jigsaw puzzle", "soccer ball", "basketball", "tennis ball", "golf ball",
        "ping-pong ball", "volleyball", "rugby ball", "croquet ball", "baseball", "football helmet",
        "mountain tent", "sleeping bag", "dumbbell", "barbell", "ski", "snorkel", "paddle", "racket", "puck",
        "balance beam", "parallel bars", "horizontal bar", "kite", "yo-yo"),
}
_WORD_PATTERNS = {category: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
                  for category, words in _WORD_CATEGORIES.items()}

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

THAI_NOTE = ("โมเดลภาษาที่ทำงานแบบออฟไลน์บนเซิร์ฟเวอร์นี้เขียนภาษาไทยไม่ได้ จึงเขียนประกาศเป็นภาษาอังกฤษ "
             "(The offline LLM writes no Thai, so the listing is in English.)")


# --- the schema --------------------------------------------------------------------------------


class Listing(BaseModel):
    """A marketplace listing. `max_keywords` comes from the validation context (default 8)."""

    title: str = Field(min_length=3, max_length=TITLE_MAX, description="A short product title.")
    description: str = Field(min_length=10, max_length=DESCRIPTION_MAX,
                             description="What is offered, in one to three sentences.")
    keywords: list[str] = Field(min_length=MIN_KEYWORDS, max_length=MAX_KEYWORDS_LIMIT,
                                description="Search keywords, unique.")
    categories: list[Category] = Field(min_length=1, max_length=MAX_CATEGORIES,
                                       description="Marketplace categories from the fixed list, unique.")

    @field_validator("title", "description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value) < 3:
            raise ValueError("must not be blank")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limit = int((info.context or {}).get("max_keywords", DEFAULT_MAX_KEYWORDS))
        if len(value) > limit:
            raise ValueError(f"has {len(value)} keywords; at most {limit} are allowed")
        cleaned = [" ".join(k.split()) for k in value]
        for keyword in cleaned:
            if not 2 <= len(keyword) <= KEYWORD_MAX_CHARS:
                raise ValueError(f"keyword '{keyword}' must be 2 to {KEYWORD_MAX_CHARS} characters")
        lowered = [k.lower() for k in cleaned]
        repeated = sorted({k for k in lowered if lowered.count(k) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repr(k) for k in repeated)}; keywords must be unique")
        return cleaned

    @field_validator("categories")
    @classmethod
    def _unique_categories(cls, value: list[str]) -> list[str]:
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repr(c) for c in repeated)}; categories must be unique")
        return value


def listing_schema(max_keywords: int = DEFAULT_MAX_KEYWORDS) -> dict[str, Any]:
    """The listing's JSON schema for `max_keywords` (what GET /v1/listings/schema serves and the
    grammar is built from). uniqueItems is stated for readers; the grammar cannot enforce it, the
    `Listing` model does."""
    schema = Listing.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    properties = schema["properties"]
    properties["keywords"]["maxItems"] = max_keywords
    properties["keywords"]["items"] = {"type": "string", "minLength": 2, "maxLength": KEYWORD_MAX_CHARS}
    properties["keywords"]["uniqueItems"] = True
    properties["categories"]["uniqueItems"] = True
    schema["additionalProperties"] = False
    return schema


def _format_error(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "listing"
    return f"{where}: {error['msg']}"


def parse_listing(text: str, max_keywords: int) -> tuple[Listing | None, dict[str, Any], list[str]]:
    """(the valid listing or None, whatever fields could be read, the validation errors)."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        return None, salvage_fields(stripped), [f"not valid JSON ({exc.msg} at character {exc.pos})"]
    if not isinstance(data, dict):
        return None, {}, [f"the JSON is a {type(data).__name__}, not an object"]
    try:
        listing = Listing.model_validate(data, context={"max_keywords": max_keywords})
    except ValidationError as exc:
        return None, data, [_format_error(e) for e in exc.errors()]
    extra = sorted(set(data) - set(Listing.model_fields))
    if extra:
        return None, data, [f"unexpected fields: {', '.join(extra)}"]
    return listing, data, []


_STRING = r'"((?:[^"\\]|\\.)*)"'


def salvage_fields(text: str) -> dict[str, Any]:
    """Fields readable from broken JSON (cut off, a missing comma): complete string values and the
    complete strings of arrays, so a repair can keep what the model did write."""
    fields: dict[str, Any] = {}

    def unescape(raw: str) -> str:
        try:
            return str(json.loads(f'"{raw}"'))
        except json.JSONDecodeError:
            return raw

    for name in ("title", "description"):
        found = re.search(rf'"{name}"\s*:\s*{_STRING}', text)
        if found:
            fields[name] = unescape(found.group(1))
    for name in ("keywords", "categories"):
        found = re.search(rf'"{name}"\s*:\s*\[([^\]]*)', text)
        if found:
            fields[name] = [unescape(s) for s in re.findall(_STRING, found.group(1))]
    return fields


# --- grounding ---------------------------------------------------------------------------------


def suggest_categories(labels: list[Scored]) -> list[str]:
    """The categories the classifier's labels fit, best label first; ["Other"] when none does."""
    found: list[str] = []
    for scored in labels:
        by_index = [category for indices, category in _INDEX_CATEGORIES if scored.index in indices]
        found.extend(by_index)
        if not by_index and scored.index >= 398:  # objects (and "cup"), by the words of their label
            label = scored.label.lower()
            found.extend(c for c, pattern in _WORD_PATTERNS.items() if pattern.search(label))
    unique = list(dict.fromkeys(found))[:MAX_CATEGORIES]
    return unique or ["Other"]


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


# --- the service -------------------------------------------------------------------------------


@dataclass
class ListingResult:
    listing: Listing
    method: Method
    attempts: int
    model: str | None
    labels: list[Scored]
    errors: list[str]
    description: Description
    language: Language = "en"
    requested_language: Language = "en"
    constrained: bool = False
    notes: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def listing_messages(evidence: Evidence, max_keywords: int) -> list[dict[str, str]]:
    labels = ", ".join(s.label for s in evidence.labels)
    notes = f"Seller's notes: {' '.join(evidence.notes.split())[:500]}\n" if evidence.notes.strip() else ""
    # No example listing: the 135M model copies an example's bananas into every listing.
    return [
        {"role": "system", "content": "You write product listings for an online marketplace as JSON. "
                                      "Use only the facts given."},
        {"role": "user", "content": (
            f"Item: {evidence.labels[0].label}\nOther labels: {labels}\nDetails: {evidence.description}\n{notes}"
            f"Write a JSON object with: title (a product name of at most {TITLE_MAX} characters), "
            "description (one or two sentences, only the facts above), "
            f"keywords ({MIN_KEYWORDS} to {max_keywords} words from the labels), "
            f"categories (1 to {MAX_CATEGORIES} of: {', '.join(evidence.suggested)}).")},
    ]


def retry_messages(messages: list[dict[str, str]], errors: list[str]) -> list[dict[str, str]]:
    """The first request again, with the first reply's errors to avoid. The reply itself is left
    out: shown its own JSON, the 135M model copies it verbatim, errors and all."""
    problems = "\n".join(f"- {e}" for e in errors)
    *head, last = messages
    return [*head, {"role": "user", "content": f"{last['content']}\nA previous answer was rejected:\n{problems}\n"
                                               "Avoid these problems."}]


class ListingService:
    """`params` and `constrain` (grammar-constrained sampling on runtimes that offer it) are
    the defaults; tests change them to walk the repair paths with the real model."""

    def __init__(self, describer: DescribeService, router: Router, llm: str | None = "smollm2-135m", *,
                 params: GenerationParams = LLM_PARAMS, constrain: bool = True) -> None:
        self.describer = describer
        self.router = router
        self.manager = describer.manager
        self.llm = llm
        self.params = params
        self.constrain = constrain

    def llm_available(self) -> bool:
        spec = self.manager.catalog.get(self.llm) if self.llm else None
        return spec is not None and spec in self.router.models_for("chat")

    async def write(self, image: np.ndarray, *, notes: str = "", language: Language = "en",
                    max_keywords: int = DEFAULT_MAX_KEYWORDS) -> ListingResult:
        # The LLM writes English only: describe in English whatever the request's language.
        description = await self.describer.describe(image, language="en")
        labels = description.labels
        if not labels:  # a vision provider described it: the classifier still gives the labels
            _classifier, labels = await self.describer.classify(image)
        evidence = Evidence(labels=labels, description=description.text, notes=notes)
        result = ListingResult(listing=build_listing([], evidence, max_keywords)[0], method="template", attempts=0,
                               model=None, labels=labels, errors=[], description=description,
                               requested_language=language)
        if language != "en":
            result.notes.append(THAI_NOTE)
        if not self.llm_available():
            result.notes.append("no local LLM is installed; the listing is a template built from the labels")
            return result
        await self._with_llm(result, evidence, max_keywords)
        return result

    async def _with_llm(self, result: ListingResult, evidence: Evidence, max_keywords: int) -> None:
        messages = first = listing_messages(evidence, max_keywords)
        schema = listing_schema(max_keywords)
        replies: list[dict[str, Any]] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            params = dataclasses.replace(self.params, json_schema=schema if self.constrain else None,
                                         temperature=self.params.temperature if attempt == 1 else RETRY_TEMPERATURE)
            async def run(model: ModelHandle, messages: list[dict[str, str]] = messages,
                          params: GenerationParams = params) -> tuple[Generation, bool]:
                return await model.chat(messages, params), (await model.info()).supports_json_schema

            try:
                (generation, constrained), spec = await self.router.call(self.llm or "", "chat", run)
            except KasetError as exc:
                result.notes.append(f"the local LLM failed ({exc.message}); the listing is built from the labels")
                break
            reply = generation.text
            result.attempts, result.model, result.constrained = attempt, spec.id, constrained and self.constrain
            result.prompt_tokens += generation.prompt_tokens
            result.completion_tokens += generation.completion_tokens
            result.replies.append(reply)
            listing, fields, errors = parse_listing(reply, max_keywords)
            if listing is not None:
                errors = check_grounding(listing, evidence)
                if not errors:
                    result.listing, result.method = listing, "llm-json"
                    return
            elif generation.finish_reason == "length":
                errors.append(f"the reply was cut off at {generation.completion_tokens} tokens; write less")
            result.errors.extend(f"attempt {attempt}: {e}" for e in errors)
            replies.append(fields)
            messages = retry_messages(first, errors)
        listing, kept = build_listing(replies, evidence, max_keywords)
        result.listing = listing
        result.method = "repaired" if kept else "template"
