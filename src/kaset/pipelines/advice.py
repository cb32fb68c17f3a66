"""Grounded crop advice: retrieve curated entries, answer from them, let an LLM only rephrase.

The small local LLM invents facts, so it never decides what to recommend. The curated
knowledge base (`kaset.knowledge`) does: entries are retrieved with multilingual
embeddings (Thai and English share one space) plus keyword matches (Thai tokenised with
PyThaiNLP), the answer is composed from the best entry, and the LLM may rewrite it in
plainer words. Its rewrite is checked against the retrieved text (no product, number or
unsupported claim that is not there; the right language) and thrown away if it fails, in
which case the curated text is the answer. The response says which path answered.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.knowledge.schema import Entry, LocalizedContent, load_entries
from kaset.registry.manager import ModelManager
from kaset.runtimes.base import ChatModel, Embedder, GenerationParams

Language = Literal["en", "th"]
SUPPORTED_LANGUAGES: tuple[Language, ...] = ("en", "th")
CROPS = ("mango", "rice", "cassava", "durian")

_THAI = re.compile(r"[\u0E00-\u0E7F]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"[a-z][a-z\-]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")

# Words that name a pesticide by its chemistry. A rewrite that uses one the retrieved
# entries do not contain is inventing a product.
_PRODUCT_SUFFIXES = (
    "azole", "conazole", "zeb", "fos", "phos", "thrin", "mycin", "carb", "oxam", "cide", "chlor", "dazim",
    "strobin", "amid", "nil", "prid", "metrozine", "fenuron", "uron", "zine", "lane", "ram", "oxyl", "thion",
)
_KNOWN_PRODUCTS = frozenset({
    "glyphosate", "paraquat", "chlorpyrifos", "cypermethrin", "imidacloprid", "abamectin", "mancozeb", "copper",
    "sulfur", "sulphur", "captan", "thiram", "benomyl", "carbendazim", "azoxystrobin", "difenoconazole",
    "propiconazole", "tebuconazole", "hexaconazole", "tricyclazole", "isoprothiolane", "metalaxyl", "fosetyl",
    "streptomycin", "tetracycline", "kasugamycin", "validamycin", "fipronil", "carbofuran", "malathion",
    "dimethoate", "profenofos", "thiamethoxam", "buprofezin", "pymetrozine", "dinotefuran", "emamectin",
    "spinosad", "lambda-cyhalothrin", "cyhalothrin", "deltamethrin", "permethrin", "acephate", "methomyl",
    "carbaryl", "endosulfan", "atrazine", "2,4-d", "neem", "trichoderma", "bacillus", "beauveria",
    "metarhizium", "urea", "potassium", "phosphonate", "phosphonic", "fungicide", "insecticide", "herbicide",
    "bactericide", "pesticide",
})
# Generic words that end like products but are not.
_NOT_PRODUCTS = frozenset({"decide", "side", "inside", "outside", "provide", "provides", "divide", "carry",
                           "aside", "wide", "guide", "hide", "ride", "tide", "slide", "beside", "override"})
_STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "for", "with", "from", "by", "as", "is", "are",
    "be", "been", "this", "that", "these", "those", "it", "its", "your", "you", "they", "them", "their", "there",
    "here", "when", "then", "than", "if", "so", "not", "no", "do", "does", "can", "may", "should", "will", "would",
    "could", "into", "over", "under", "more", "most", "less", "also", "very", "just", "only", "each", "every",
    "any", "some", "such", "which", "who", "what", "how", "why", "where", "while", "about", "after", "before",
    "during", "until", "use", "using", "used", "make", "sure", "keep", "take", "help", "helps",
})

MIN_GROUNDED_FRACTION = 0.75


@dataclass
class AdviceQuery:
    question: str
    language: Language | None = None
    crop: str | None = None
    diagnosis: str | None = None
    region: str | None = None
    month: int | None = None
    top_k: int = 3
    use_llm: bool = True


@dataclass
class Hit:
    entry: Entry
    score: float


@dataclass
class Advice:
    answer: str
    language: Language
    path: Literal["llm", "curated"]
    hits: list[Hit]
    curated: str
    llm_model: str | None = None
    llm_rejected: str | None = None
    notes: list[str] = field(default_factory=list)


# --- language ---------------------------------------------------------------------------------


def detect_language(text: str) -> Language:
    """Thai or English; anything else is refused with a message saying what is supported."""
    letters = _LETTER.findall(text)
    if not letters:
        raise InvalidRequest("The question has no words in it. Ask in Thai or English.", param="question")
    thai = sum(1 for c in letters if _THAI.match(c))
    latin = sum(1 for c in letters if _LATIN.match(c))
    if thai / len(letters) >= 0.3:
        return "th"
    if latin / len(letters) >= 0.7:
        return "en"
    raise InvalidRequest(
        "Questions are answered in Thai or English only; this one looks like another language. "
        "ถามเป็นภาษาไทยหรือภาษาอังกฤษได้เท่านั้น", param="question", code="unsupported_language",
    )


def thai_tokens(text: str) -> list[str]:
    from pythainlp.tokenize import word_tokenize

    return [t.strip() for t in word_tokenize(text, keep_whitespace=False) if t.strip()]


# --- retrieval --------------------------------------------------------------------------------


def _document(content: LocalizedContent) -> str:
    return " ".join([content.name, content.summary, *content.symptoms, *content.keywords])


class KnowledgeIndex:
    """Entries with one embedding per language, searched by cosine plus keyword overlap."""

    def __init__(self, entries: list[Entry], vectors: np.ndarray) -> None:
        self.entries = entries
        # Row 2*i is entry i in English, 2*i+1 in Thai.
        self.vectors = vectors
        self._keywords = [
            {k.lower() for lang in SUPPORTED_LANGUAGES for k in entry.content(lang).keywords} for entry in entries
        ]

    @staticmethod
    def documents(entries: list[Entry]) -> list[str]:
        return [_document(entry.content(lang)) for entry in entries for lang in SUPPORTED_LANGUAGES]

    def search(self, query_vector: np.ndarray, query: AdviceQuery, language: Language) -> list[Hit]:
        similarity = (self.vectors @ query_vector).reshape(len(self.entries), 2).max(axis=1)
        words = _query_words(query.question, language)
        hits = []
        for index, entry in enumerate(self.entries):
            if query.crop and entry.crop != query.crop:
                continue
            score = float(similarity[index])
            score += 0.05 * sum(1 for k in self._keywords[index] if _keyword_matches(k, words, query.question))
            if query.diagnosis and _matches_diagnosis(entry, query.diagnosis):
                score += 1.0
            if query.month and entry.months and query.month in entry.months:
                score += 0.02
            if query.region and entry.regions and query.region in entry.regions:
                score += 0.02
            hits.append(Hit(entry, score))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[: query.top_k]


def _query_words(question: str, language: Language) -> set[str]:
    if language == "th":
        return {t.lower() for t in thai_tokens(question)}
    return set(_WORD.findall(question.lower()))


def _keyword_matches(keyword: str, words: set[str], question: str) -> bool:
    # Multi-word keywords ("neck blast", "โรคไหม้คอรวง") match as phrases.
    return keyword in words or (len(keyword) > 3 and keyword in question.lower())


def _matches_diagnosis(entry: Entry, diagnosis: str) -> bool:
    wanted = diagnosis.strip().lower()
    labels = {label.lower() for label in entry.model_labels} | {label.split("/", 1)[-1].lower()
                                                                for label in entry.model_labels}
    names = {entry.id.lower(), entry.en.name.lower(), entry.th.name.lower()}
    return wanted in labels or wanted in names or entry.id.lower().endswith(wanted.replace(" ", "-"))


# --- composing and checking answers ----------------------------------------------------------

_HEADINGS: dict[Language, dict[str, str]] = {
    "en": {"do": "What to do now", "spray": "If you spray", "safety": "Safety", "prevent": "To prevent it",
           "season": "Season", "region": "Your region", "label": "Always follow the product label."},
    "th": {"do": "สิ่งที่ควรทำตอนนี้", "spray": "หากจำเป็นต้องใช้สารเคมี", "safety": "ความปลอดภัย",
           "prevent": "การป้องกัน", "season": "ช่วงที่พบ", "region": "พื้นที่ของคุณ",
           "label": "ปฏิบัติตามคำแนะนำบนฉลากทุกครั้ง"},
}


def curated_answer(entry: Entry, language: Language, month: int | None = None, region: str | None = None) -> str:
    """The answer written from the entry itself: the path that never invents anything."""
    content = entry.content(language)
    words = _HEADINGS[language]
    lines = [f"{content.name}: {content.summary}", "", f"{words['do']}:"]
    lines += [f"- {action}" for action in content.cultural_treatment[:4]]
    if content.chemical_treatment:
        lines += ["", f"{words['spray']}:"]
        lines += [f"- {c.active_ingredient}: {c.how}" for c in content.chemical_treatment[:3]]
        lines += [f"- {s}" for s in content.safety[:2]]
    lines += ["", f"{words['prevent']}:"] + [f"- {p}" for p in content.prevention[:3]]
    if month is not None and entry.months and month in entry.months:
        lines += ["", f"{words['season']}: {content.season_notes}"]
    if region is not None and entry.regions and region in entry.regions:
        lines += ["", f"{words['region']}: {content.region_notes}"]
    return "\n".join(lines)


def _content_words(text: str) -> list[str]:
    return [w.rstrip("s") for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS]


def _sentences(text: str) -> list[str]:
    return [s.strip(" -*•:") for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip(" -*•:")]


def validate_rephrasing(text: str, curated: str, language: Language) -> str | None:
    """Why the LLM's rewrite of `curated` cannot be used, or None when it only restates it.

    Every sentence must be built from the words of one line of the curated answer (a
    rewrite may reorder and trim, not add), must not flip a recommendation into a
    warning or back, and must name no product or number the curated answer lacks.
    """
    stripped = text.strip()
    if len(stripped) < 20:
        return "the rewrite is empty or too short"
    letters = _LETTER.findall(stripped)
    thai_share = sum(1 for c in letters if _THAI.match(c)) / max(len(letters), 1)
    if language == "en" and thai_share > 0.05:
        return "the rewrite is not in English"
    if language == "th" and thai_share < 0.5:
        return "the rewrite is not in Thai"
    source = curated.lower()
    lowered = stripped.lower()
    for word in sorted(set(_WORD.findall(lowered))):
        if _looks_like_product(word) and word not in source:
            return f"it names '{word}', which the curated advice does not recommend"
    for number in sorted(set(_NUMBER.findall(lowered))):
        if number not in source:
            return f"it states the number {number}, which is not in the curated advice"
    if language == "th":
        return None  # no sentence-level check for Thai yet: Thai rewrites must pass the checks above
    lines = [(set(_content_words(line)), _negated(line)) for line in _sentences(curated)]
    for sentence in _sentences(stripped):
        words = _content_words(sentence)
        if len(words) < 3:
            continue
        best_share, best_negated = max(
            ((sum(1 for w in words if w in line_words) / len(words), negated) for line_words, negated in lines),
            default=(0.0, False),
        )
        if best_share < MIN_GROUNDED_FRACTION:
            return f"the sentence '{sentence[:80]}' is not in the curated advice"
        if _negated(sentence) != best_negated:
            return f"the sentence '{sentence[:80]}' turns the advice around"
    return None


_NEGATIONS = re.compile(r"\b(not|no|never|avoid|don't|do not|without|stop)\b")


def _negated(text: str) -> bool:
    return bool(_NEGATIONS.search(text.lower()))


def _looks_like_product(word: str) -> bool:
    if word in _NOT_PRODUCTS:
        return False
    return word in _KNOWN_PRODUCTS or (len(word) > 6 and word.endswith(_PRODUCT_SUFFIXES))


def _rephrase_messages(question: str, curated: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You rewrite farm advice in plain, friendly English for a farmer. "
         "Use only the facts in the advice. Do not add any product, dose, number or new fact."},
        {"role": "user", "content": f"Advice:\n{curated}\n\nFarmer's question: {question}\n\n"
         "Rewrite the advice as a short answer of 3 to 5 sentences."},
    ]


# --- the service --------------------------------------------------------------------------------


class AdviceService:
    def __init__(self, manager: ModelManager, embed_model: str = "e5-small", llm_model: str | None = "smollm2-135m",
                 entries: list[Entry] | None = None) -> None:
        self.manager = manager
        self.embed_model = embed_model
        self.llm_model = llm_model
        self._entries = entries
        self._index: KnowledgeIndex | None = None
        self._lock = asyncio.Lock()

    @property
    def entries(self) -> list[Entry]:
        if self._entries is None:
            self._entries = load_entries()
        return self._entries

    async def index(self) -> KnowledgeIndex:
        async with self._lock:
            if self._index is None:
                model = await self.manager.get(self.embed_model, "embed")
                embedder = model.as_(Embedder)
                docs = KnowledgeIndex.documents(self.entries)
                result = await model.run(embedder.embed, docs)
                self._index = KnowledgeIndex(self.entries, result.vectors)
            return self._index

    async def retrieve(self, query: AdviceQuery, language: Language) -> list[Hit]:
        index = await self.index()
        model = await self.manager.get(self.embed_model, "embed")
        # Through the batcher: concurrent questions share one engine call.
        (result,) = await model.batch("embed", [query.question])
        return index.search(result.vectors[0], query, language)

    async def advise(self, query: AdviceQuery) -> Advice:
        if query.crop is not None and query.crop not in CROPS:
            raise InvalidRequest(f"Unknown crop '{query.crop}'. Known crops: {', '.join(CROPS)}.", param="crop")
        detected = detect_language(query.question)
        language: Language = query.language or detected
        if language not in SUPPORTED_LANGUAGES:
            raise InvalidRequest("language must be 'th' or 'en'.", param="language")
        hits = await self.retrieve(query, language)
        if not hits:
            raise InvalidRequest("No knowledge matches this crop and question.", param="question")
        curated = curated_answer(hits[0].entry, language, query.month, query.region)
        advice = Advice(answer=curated, language=language, path="curated", hits=hits, curated=curated)
        if query.use_llm:
            await self._try_rephrase(query, advice)
        return advice

    async def _try_rephrase(self, query: AdviceQuery, advice: Advice) -> None:
        spec = self.manager.catalog.get(self.llm_model) if self.llm_model else None
        if spec is None or spec not in self.manager.available():
            advice.notes.append("no local LLM is installed; answered with the curated text")
            return
        if advice.language not in spec.languages:
            advice.notes.append(f"the local LLM ({spec.id}) does not write {advice.language}; "
                                "answered with the curated text")
            return
        try:
            model = await self.manager.get(spec.id, "chat")
        except ModelUnavailable as exc:
            advice.notes.append(f"the local LLM is unavailable ({exc.message})")
            return
        llm = model.as_(ChatModel)
        params = GenerationParams(max_tokens=220, temperature=0.2, seed=0)
        generation = await model.run(llm.chat, _rephrase_messages(query.question, advice.curated), params)
        advice.llm_model = spec.id
        rejection = validate_rephrasing(generation.text, advice.curated, advice.language)
        if rejection is None:
            advice.answer = generation.text.strip()
            advice.path = "llm"
        else:
            advice.llm_rejected = rejection
