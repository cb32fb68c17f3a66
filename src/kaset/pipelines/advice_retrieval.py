"""Finding the knowledge entries that answer a question: the query, the index, the ranking.

Each entry is embedded once per language (multilingual e5: Thai and English share one space);
a question's score for an entry is its best cosine plus LEXICAL_WEIGHT times the lexical score
(the IDF-weighted share of the question's terms, `kaset.pipelines.advice_terms`, the entry
contains), boosted when the photo's diagnosis names the entry or the month and region fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaset.knowledge.schema import Entry, LocalizedContent
from kaset.language import Language
from kaset.pipelines.advice_terms import describes_symptoms, question_terms, thai_words

# Every entry is indexed, and every question answered, in these.
SUPPORTED_LANGUAGES: tuple[Language, ...] = ("en", "th")


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
    score: float  # the ranking score: `match` plus the crop, diagnosis, month and region boosts
    match: float = 0.0  # how well the question's words alone match the entry (embedding + lexical)


# Weight of the lexical score (0..1) beside the embedding cosine (about 0.75..0.95 for e5; the
# spread between the right and a wrong entry is usually a few hundredths). 0.15 lets a question
# that names an entry's distinctive words win over a near tie in cosine without letting one
# shared common word decide. Chosen on tests/pipelines/advice_questions.yaml among 0.05..0.4 in
# steps (0.1..0.2 were equal there; see docs/crop-guardian.md, "Advice retrieval").
LEXICAL_WEIGHT = 0.15
# A question is understood when its best entry's match (cosine + LEXICAL_WEIGHT * lexical) is at
# least this. Measured with tests/pipelines/test_advice_retrieval.py: the 68 farmers' questions
# without a diagnosis hint scored 0.907 at the lowest (the 25 written later 0.897), the 20
# garbled transcripts, noise and other topics 0.845 at the highest; 0.87 is the middle of that
# gap (about 0.03 from either side), so a stray question is as likely to fall either way.
UNDERSTOOD_THRESHOLD = 0.87


def _document(content: LocalizedContent) -> str:
    return " ".join([content.name, content.summary, *content.symptoms, *content.keywords])


def _lexical_text(content: LocalizedContent) -> str:
    return " ".join([content.name, *content.symptoms, *content.keywords])


class KnowledgeIndex:
    """Entries with one embedding per language, searched by cosine plus a lexical score."""

    def __init__(self, entries: list[Entry], vectors: np.ndarray) -> None:
        self.entries = entries
        # Row 2*i is entry i in English, 2*i+1 in Thai.
        self.vectors = vectors
        self._words = thai_words(entries)
        # Per language: each entry's terms (name, symptoms, keywords), and each term's IDF.
        self._terms: dict[Language, list[frozenset[str]]] = {
            lang: [frozenset(question_terms(_lexical_text(e.content(lang)), lang, self._words)) for e in entries]
            for lang in SUPPORTED_LANGUAGES
        }
        n = len(entries)
        self._idf: dict[Language, dict[str, float]] = {}
        for lang in SUPPORTED_LANGUAGES:
            counts: dict[str, int] = {}
            for terms in self._terms[lang]:
                for term in terms:
                    counts[term] = counts.get(term, 0) + 1
            self._idf[lang] = {t: float(np.log((n + 1) / (c + 0.5))) for t, c in counts.items()}
        self._unknown_idf = float(np.log((n + 1) / 0.5))  # a word no entry has weighs most
        self._problem_phrases: dict[Language, frozenset[str]] = {
            lang: frozenset(k.lower() for e in entries if e.kind != "healthy" for k in e.content(lang).keywords)
            for lang in SUPPORTED_LANGUAGES
        }

    @staticmethod
    def documents(entries: list[Entry]) -> list[str]:
        return [_document(entry.content(lang)) for entry in entries for lang in SUPPORTED_LANGUAGES]

    def lexical(self, question: str, language: Language) -> np.ndarray:
        """Per entry, the IDF-weighted share of the question's terms the entry contains (0..1)."""
        terms = set(question_terms(question, language, self._words))
        scores = np.zeros(len(self.entries))
        if not terms:
            return scores
        idf = self._idf[language]
        weights = {t: idf.get(t, self._unknown_idf) for t in terms}
        # At least one distinctive word's weight: "mango" alone, in every mango entry, is not a
        # full match for any of them.
        total = max(sum(weights.values()), self._unknown_idf)
        for index, entry_terms in enumerate(self._terms[language]):
            scores[index] = sum(w for t, w in weights.items() if t in entry_terms) / total
        return scores

    def describes_symptoms(self, question: str, language: Language) -> bool:
        return describes_symptoms(question, language, self._problem_phrases[language], self._words)

    def search(self, query_vector: np.ndarray, query: AdviceQuery, language: Language) -> list[Hit]:
        similarity = (self.vectors @ query_vector).reshape(len(self.entries), 2).max(axis=1)
        lexical = self.lexical(query.question, language)
        symptomatic = self.describes_symptoms(query.question, language)
        hits = []
        for index, entry in enumerate(self.entries):
            if query.crop and entry.crop != query.crop:
                continue
            if entry.kind == "healthy" and symptomatic:
                continue  # "no disease found" is no answer to a question about a symptom
            match = float(similarity[index]) + LEXICAL_WEIGHT * float(lexical[index])
            score = match
            if query.diagnosis and matches_diagnosis(entry, query.diagnosis):
                score += 1.0
            if query.month and entry.months and query.month in entry.months:
                score += 0.02
            if query.region and entry.regions and query.region in entry.regions:
                score += 0.02
            hits.append(Hit(entry, score, match))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[: query.top_k]


def matches_diagnosis(entry: Entry, diagnosis: str) -> bool:
    """Whether `diagnosis` (a classifier label or an entry's name or id) names `entry`."""
    wanted = diagnosis.strip().lower()
    labels = {label.lower() for label in entry.model_labels} | {label.split("/", 1)[-1].lower()
                                                                for label in entry.model_labels}
    names = {entry.id.lower(), entry.en.name.lower(), entry.th.name.lower()}
    return wanted in labels or wanted in names or entry.id.lower().endswith(wanted.replace(" ", "-"))
