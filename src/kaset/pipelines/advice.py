"""Grounded crop advice: retrieve curated entries, answer from them, let an LLM only rephrase.

The small local LLM invents facts, so it never decides what to recommend. The curated
knowledge base (`kaset.knowledge`) does: entries are retrieved with multilingual
embeddings (Thai and English share one space) plus a lexical score (the IDF-weighted share
of the question's terms an entry contains; Thai tokenised with PyThaiNLP, growers' words
mapped to one term each), the answer is composed from the best entry, and the LLM may
rewrite it in plainer words. Its rewrite is checked against the retrieved text (no product,
number or unsupported claim that is not there; the right language) and thrown away if it
fails, in which case the curated text is the answer. The response says which path answered.

A 'healthy' entry only answers a question that describes no symptom. A question that matches
no entry well enough (`Advice.understood` false: a garbled transcript, noise, another topic)
gets a request, in its language, to say it again in other words, never a treatment plan.

The parts: `advice_terms` reads a question's words (tokens, synonyms, negation, symptoms),
`advice_retrieval` ranks the entries for it and says when it is understood, `advice_rephrasing`
prompts the LLM and validates its rewrite; this module composes the answer and runs the service.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.knowledge.schema import Entry, load_entries
from kaset.language import THAI_SHARE, Language, latin_share, letter_count, thai_share
from kaset.pipelines.advice_rephrasing import rephrase_messages, validate_rephrasing
from kaset.pipelines.advice_retrieval import (
    SUPPORTED_LANGUAGES,
    UNDERSTOOD_THRESHOLD,
    AdviceQuery,
    Hit,
    KnowledgeIndex,
    matches_diagnosis,
)
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router, as_router
from kaset.runtimes.base import GenerationParams

# What callers import from here. The query, the hits and the languages are defined with the
# retrieval they drive, and are the service's input and output, so they are exported here too.
__all__ = [
    "CROPS", "SUPPORTED_LANGUAGES", "Advice", "AdviceQuery", "AdviceService", "Hit", "curated_answer",
    "detect_language", "not_understood_answer",
]

CROPS = ("mango", "rice", "cassava", "durian")


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
    # The answering entry's `Hit.match`, and whether the question was understood: it matched an
    # entry at least UNDERSTOOD_THRESHOLD, or a diagnosis (the photo's label) named the entry.
    # When not understood the answer asks the farmer to rephrase and holds no plan.
    match_score: float = 0.0
    understood: bool = True


# --- language ---------------------------------------------------------------------------------


def detect_language(text: str) -> Language:
    """Thai or English; anything else is refused with a message saying what is supported."""
    if not letter_count(text):
        raise InvalidRequest("The question has no words in it. Ask in Thai or English.", param="question")
    if thai_share(text) >= THAI_SHARE:
        return "th"
    if latin_share(text) >= 0.7:
        return "en"
    raise InvalidRequest(
        "Questions are answered in Thai or English only; this one looks like another language. "
        "ถามเป็นภาษาไทยหรือภาษาอังกฤษได้เท่านั้น", param="question", code="unsupported_language",
    )


# --- composing answers ----------------------------------------------------------------------------

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


_NOT_UNDERSTOOD: dict[Language, str] = {
    "en": "Sorry, I did not understand the question. Please say it again, or ask in other words: "
          "name the crop and what you see on it (for example spots, rot, insects or wilting) and on which part "
          "of the plant.",
    "th": "ขออภัย ไม่เข้าใจคำถาม กรุณาพูดอีกครั้ง หรือถามใหม่ด้วยคำอื่น โดยบอกชื่อพืชและอาการที่เห็น "
          "(เช่น จุด แผล เน่า แมลง หรือเหี่ยว) และเป็นที่ส่วนไหนของต้น",
}


def not_understood_answer(language: Language) -> str:
    """The answer to a question that matched no entry: ask again, with no plan in it."""
    return _NOT_UNDERSTOOD[language]


# --- the service --------------------------------------------------------------------------------


class AdviceService:
    def __init__(self, models: Router | ModelManager, embed_model: str = "e5-small",
                 llm_model: str | None = "smollm2-135m", entries: list[Entry] | None = None) -> None:
        # Every model call goes through the router: local or on a worker, with its breakers.
        self.router = as_router(models)
        self.manager = self.router.manager
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
                docs = KnowledgeIndex.documents(self.entries)
                result, _spec = await self.router.call(self.embed_model, "embed", lambda model: model.embed(docs),
                                                       retry=True)
                self._index = KnowledgeIndex(self.entries, result.vectors)
            return self._index

    async def retrieve(self, query: AdviceQuery, language: Language) -> list[Hit]:
        index = await self.index()
        # Through the batcher: concurrent questions share one engine call.
        (result,), _spec = await self.router.call(self.embed_model, "embed",
                                                  lambda model: model.embed_each([query.question]), retry=True)
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
        best = hits[0]
        by_diagnosis = bool(query.diagnosis) and matches_diagnosis(best.entry, query.diagnosis or "")
        understood = by_diagnosis or best.match >= UNDERSTOOD_THRESHOLD
        notes: list[str] = []
        if query.diagnosis and not by_diagnosis:
            notes.append(f"the diagnosis '{query.diagnosis}' did not decide the answer: "
                         "the question describes a symptom, or names no entry of this crop")
        if not understood:
            notes.append(f"the question matched no entry well enough (match score {best.match:.3f} < "
                         f"{UNDERSTOOD_THRESHOLD}); asked to rephrase")
            text = not_understood_answer(language)
            return Advice(answer=text, language=language, path="curated", hits=hits, curated=text, notes=notes,
                          match_score=best.match, understood=False)
        curated = curated_answer(best.entry, language, query.month, query.region)
        advice = Advice(answer=curated, language=language, path="curated", hits=hits, curated=curated, notes=notes,
                        match_score=best.match, understood=True)
        if query.use_llm:
            await self._try_rephrase(query, advice)
        return advice

    async def _try_rephrase(self, query: AdviceQuery, advice: Advice) -> None:
        spec = self.manager.catalog.get(self.llm_model) if self.llm_model else None
        if spec is None or spec not in self.router.models_for("chat"):
            advice.notes.append("no local LLM is installed; answered with the curated text")
            return
        if advice.language not in spec.languages:
            advice.notes.append(f"the local LLM ({spec.id}) does not write {advice.language}; "
                                "answered with the curated text")
            return
        params = GenerationParams(max_tokens=220, temperature=0.2, seed=0)
        messages = rephrase_messages(query.question, advice.curated)
        try:
            generation, _spec = await self.router.call(spec.id, "chat", lambda model: model.chat(messages, params))
        except ModelUnavailable as exc:
            advice.notes.append(f"the local LLM is unavailable ({exc.message})")
            return
        advice.llm_model = spec.id
        rejection = validate_rephrasing(generation.text, advice.curated, advice.language)
        if rejection is None:
            advice.answer = generation.text.strip()
            advice.path = "llm"
        else:
            advice.llm_rejected = rejection
