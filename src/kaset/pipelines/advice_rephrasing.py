"""The local LLM's rewrite of a curated answer: the prompt, and the validator that throws away a
rewrite adding anything (a product, a number, a sentence not built from the curated text, a
recommendation turned into a warning) or written in the wrong language.
"""

from __future__ import annotations

import re

from kaset.language import Language, thai_share
from kaset.pipelines.advice_terms import EN_STOPWORDS

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

# Share of a rewritten sentence's content words that must come from one line of the curated answer.
MIN_GROUNDED_FRACTION = 0.75


def _content_words(text: str) -> list[str]:
    return [w.rstrip("s") for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in EN_STOPWORDS]


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
    share = thai_share(stripped)
    if language == "en" and share > 0.05:
        return "the rewrite is not in English"
    if language == "th" and share < 0.5:
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


def rephrase_messages(question: str, curated: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You rewrite farm advice in plain, friendly English for a farmer. "
         "Use only the facts in the advice. Do not add any product, dose, number or new fact."},
        {"role": "user", "content": f"Advice:\n{curated}\n\nFarmer's question: {question}\n\n"
         "Rewrite the advice as a short answer of 3 to 5 sentences."},
    ]
