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
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.knowledge.schema import Entry, LocalizedContent, load_entries
from kaset.language import THAI_SHARE, Language, has_thai, latin_share, letter_count, thai_share
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router, as_router
from kaset.runtimes.base import GenerationParams

SUPPORTED_LANGUAGES: tuple[Language, ...] = ("en", "th")
CROPS = ("mango", "rice", "cassava", "durian")

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
    score: float  # the ranking score: `match` plus the crop, diagnosis, month and region boosts
    match: float = 0.0  # how well the question's words alone match the entry (embedding + lexical)


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


def thai_tokens(text: str) -> list[str]:
    from pythainlp.tokenize import word_tokenize

    return [t.strip() for t in word_tokenize(text, keep_whitespace=False) if t.strip()]


# --- retrieval --------------------------------------------------------------------------------

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

# Growers' words for the same thing map to one term, in questions and entries alike, so "dots",
# "specks" and "spots" match, and ลูก (what growers call a fruit) matches ผล. General symptom
# vocabulary, not phrases of particular questions.
_EN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "spot": ("spots", "spotted", "spotty", "spotting", "dot", "dots", "dotted", "speck", "specks", "speckled",
             "speckles", "fleck", "flecks", "flecked", "freckle", "freckles", "blotch", "blotches", "blotchy"),
    "powder": ("powdery", "dust", "dusty", "flour", "floury", "talc"),
    "rot": ("rots", "rotten", "rotting", "rotted", "decay", "decays", "decaying", "decayed", "putrid"),
    "soft": ("mushy", "mush", "soggy"),
    "ooze": ("oozes", "oozing", "leak", "leaks", "leaking", "bleed", "bleeds", "bleeding", "drip", "drips",
             "dripping", "exude", "exudes", "exuding", "seep", "seeps", "seeping", "weep", "weeping"),
    "gum": ("sap", "resin", "latex", "gummy", "slime", "slimy"),
    "sticky": ("tacky", "syrupy"),
    "soot": ("sooty", "smut", "ash", "ashy"),
    "insect": ("insects", "bug", "bugs", "critter", "critters"),
    "caterpillar": ("caterpillars", "worm", "worms", "larva", "larvae", "grub", "grubs", "maggot", "maggots"),
    "jump": ("jumps", "jumping", "jumped", "hop", "hops", "hopping", "hopped"),
    "wilt": ("wilts", "wilting", "wilted", "droop", "droops", "drooping", "droopy", "limp", "sag", "sagging"),
    "dry": ("dries", "dried", "drying", "wither", "withers", "withered", "withering", "shrivel", "shrivelled",
            "shriveled", "shrivelling"),
    "burn": ("burns", "burnt", "burned", "burning", "scorch", "scorched", "scorching", "scald", "scalded"),
    "curl": ("curls", "curled", "curling", "curly", "crinkle", "crinkled", "crinkly", "crumple", "crumpled",
             "wrinkle", "wrinkled", "pucker", "puckered"),
    "deform": ("deformed", "distort", "distorted", "misshapen", "malformed", "twist", "twisted", "twisting"),
    "stunt": ("stunted", "stunting", "dwarf", "dwarfed", "dwarfing"),
    "yellow": ("yellows", "yellowing", "yellowed", "yellowish", "chlorotic"),
    "grey": ("gray", "greyish", "grayish"),
    "white": ("whitish", "whitened"),
    "brown": ("brownish", "browning", "browned", "rusty"),
    "black": ("blackish", "blackened", "blackening", "blacken", "blackens"),
    "crack": ("cracks", "cracked", "cracking", "split", "splits", "splitting"),
    "bore": ("bores", "bored", "boring", "borer", "borers", "tunnel", "tunnels", "tunnelling", "burrow"),
    "frass": ("droppings", "poop", "excrement", "dung"),
    "drop": ("drops", "dropping", "dropped", "fall", "falls", "falling", "fell", "shed", "sheds", "shedding"),
    "fruit": ("fruits", "fruitlet", "fruitlets"),
    "flower": ("flowers", "blossom", "blossoms", "bloom", "blooms", "inflorescence"),
    "panicle": ("panicles", "head", "heads", "ear", "ears"),
    "leaf": ("leaves", "foliage"),
    "stem": ("stems", "stalk", "stalks"),
    "skin": ("rind", "peel"),
    "root": ("roots", "tuber", "tubers"),
    "mould": ("mold", "moulds", "molds", "mouldy", "moldy", "fungus", "fungi", "fungal"),
    "web": ("webs", "cobweb", "cobwebs", "thread", "threads", "threadlike"),
    "wax": ("waxy", "fluff", "fluffy", "cotton", "cottony", "wool", "woolly", "fuzz", "fuzzy"),
    "scab": ("scabs", "scabby", "cork", "corky", "scurf", "scurfy", "scar", "scars", "scarred"),
    "unfilled": ("empty", "hollow", "chaffy"),
    "sunken": ("sink", "sinks", "sunk", "depressed"),
    "wet": ("watery", "soaked", "greasy", "oily"),
    "die": ("dies", "dying", "dead", "death", "died"),
    "sick": ("diseased", "infected", "unhealthy", "ill"),
    "hole": ("holes", "holed"),
    "patch": ("patches", "patchy"),
    "young": ("new", "tender"),
    "underside": ("undersides", "underneath", "beneath", "below"),
    "base": ("bottom", "foot"),
    "coating": ("coat", "coated", "film", "layer", "cover", "covered", "covering", "crust"),
}
_TH_SYNONYMS: dict[str, tuple[str, ...]] = {
    "ผง": ("ฝุ่น", "แป้ง"),
    "จุด": ("แต้ม", "ตกกระ"),
    "แผล": ("รอย",),
    "เน่า": ("เละ", "เปื่อย", "ยุ่ย"),
    "ผล": ("ลูก",),
    "ดอก": ("ช่อ",),
    "เหี่ยว": ("เฉา", "ห่อเหี่ยว", "ลู่"),
    "แห้ง": ("กรอบ",),
    "หงิก": ("งอ", "ม้วน", "บิด", "หยิก", "ย่น", "เบี้ยว"),
    "แคระ": ("แกร็น", "เตี้ย", "จู๋"),
    "ร่วง": ("หล่น", "หลุด"),
    "ยาง": ("เมือก", "ยางไหล"),
    "ไหล": ("เยิ้ม", "ซึม", "หยด"),
    "หนอน": ("ตัวหนอน", "บุ้ง"),
    "มูล": ("ขี้", "ขุย"),
    "ดำ": ("คล้ำ",),
    "ใย": ("เส้นใย",),
    "ปุย": ("สำลี",),
    "ไหม้": ("เกรียม",),
    "สะเก็ด": ("ตกสะเก็ด", "ขรุขระ"),
    "แคงเกอร์": ("แคงเคอร์",),
}
_EN_CANON = {variant: term for term, variants in _EN_SYNONYMS.items() for variant in variants}
_TH_CANON = {variant: term for term, variants in _TH_SYNONYMS.items() for variant in variants}

# Terms (after the mapping above) that say something is wrong with the plant: a question with one
# of them, not negated, describes a symptom, and no 'healthy' entry may answer it.
_EN_SYMPTOMS = frozenset({
    "spot", "powder", "rot", "soft", "ooze", "gum", "sticky", "soot", "insect", "caterpillar", "jump", "wilt",
    "dry", "burn", "curl", "deform", "stunt", "yellow", "grey", "brown", "black", "crack", "bore", "frass",
    "drop", "mould", "web", "wax", "scab", "unfilled", "sunken", "wet", "die", "sick", "hole", "patch",
    "lesion", "canker", "blight", "mildew", "rust", "virus", "bacteria", "bacterial", "pest", "mite", "aphid",
    "hopper", "mealybug", "scale", "psyllid", "beetle", "moth", "honeydew", "mosaic", "mottle", "mottled",
    "stripe", "streak", "streaks", "pale", "abnormal", "damage", "damaged", "dieback", "swollen", "gall",
    "ring", "halo", "ragged", "torn", "shrink", "small", "rough", "discoloured", "discolored", "stain",
})
_TH_SYMPTOMS = frozenset({
    "จุด", "แผล", "เน่า", "ผง", "เหี่ยว", "แห้ง", "หงิก", "แคระ", "ร่วง", "ยาง", "ไหล", "หนอน", "แมลง", "เพลี้ย",
    "มูล", "ดำ", "เหลือง", "น้ำตาล", "เทา", "ใย", "ปุย", "ไหม้", "สะเก็ด", "แตก", "รู", "ด่าง", "ซีด", "ตาย",
    "เชื้อรา", "ราดำ", "ราแป้ง", "ผิดปกติ", "ป่วย", "เหนียว", "เขม่า", "ลีบ", "บวม", "คราบ", "ยุบ", "บุ๋ม",
    "ไวรัส", "แบคทีเรีย", "ลาย", "ขีด", "เจาะ", "กัด", "ทำลาย", "ฉ่ำน้ำ", "เป็นโรค", "โทรม", "ม้วน", "ซูบ",
})
# Wanting something good to happen is a symptom said with a negation.
_EN_NEGATIVE_SYMPTOMS = re.compile(r"\b(not|n't|never|no longer|won't|doesn't|don't|isn't|aren't|stopped)\s+"
                                   r"(grow|growing|grown|set|setting|flower|flowering|fill|filling|fruit|fruiting)")
_TH_NEGATIVE_SYMPTOMS = re.compile(r"ไม่(ยอม)?(โต|เจริญ|ติดผล|ติดลูก|ติดดอก|ออกดอก|ออกรวง|ออกผล|แตกใบ|ค่อยโต)")
_EN_NEGATORS = frozenset({"no", "not", "without", "never", "none", "free", "nothing", "n't", "isn't", "aren't",
                          "doesn't", "don't", "haven't", "hasn't"})
_TH_NEGATORS = ("ไม่", "ไร้", "ปราศจาก")
_TH_KEEP = frozenset({"ผล", "เล็ก", "ใหญ่", "แก่", "สั้น", "ยาว", "ช้า", "ใต้", "ต้น", "ใบ"})
# Function words PyThaiNLP's list lacks (directions and amounts that describe no symptom).
_TH_EXTRA_STOPWORDS = frozenset({"ออกจาก", "ออกมา", "เข้าไป", "ข้าง", "ข้างใน", "ด้านใน", "ภายใน", "ทั้งหมด",
                                 "ตอนนี้", "ช่วงนี้", "ครับ", "ค่ะ", "คะ", "จ้า", "หน่อย", "บ้าง", "ๆ"})
# Crop names are one term each, not split into syllables ("ทุเรียน", not also "ทุ" and "เรียน").
_TH_WHOLE = frozenset({"มะม่วง", "ข้าว", "มันสำปะหลัง", "ทุเรียน"})
_EN_QUERY_STOPWORDS = _STOPWORDS | frozenset({
    "my", "mine", "our", "have", "has", "had", "get", "gets", "got", "look", "looks", "like", "all", "there", "i",
    "me", "we", "am", "was", "were", "what", "wrong", "please", "tell", "want", "know", "now", "something",
})
_EN_TERM = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    for suffix in ("ing", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _en_term(word: str) -> str:
    return _EN_CANON.get(word) or _EN_CANON.get(_stem(word)) or _stem(word)


@functools.cache
def _thai_stopwords() -> frozenset[str]:
    from pythainlp.corpus import thai_stopwords

    return (frozenset(thai_stopwords()) | _TH_EXTRA_STOPWORDS) - _TH_KEEP


def _syllables(token: str) -> list[str]:
    from pythainlp.tokenize import syllable_tokenize

    return syllable_tokenize(token, engine="dict", keep_whitespace=False)


NEGATED = "not:"  # prefix of a term said under a negation ("no spots" -> "not:spot")
_EN_CLAUSE = re.compile(r"[,.;:!?()]|\bbut\b|\bexcept\b|\bthough\b")
_EN_NEGATOR = re.compile(r"\b(?:" + "|".join(sorted(_EN_NEGATORS, key=len, reverse=True)) + r")\b|n't\b")
_TH_CHUNK = re.compile(r"[\s,.;:!?()]+")


def _scopes(text: str, language: Language) -> list[tuple[str, bool]]:
    """The text cut into pieces, each with whether it is said under a negation: in English from
    a negator to the end of its clause, in Thai from ไม่ (ไร้, ปราศจาก) to the next space (Thai
    writes a space between phrases)."""
    out: list[tuple[str, bool]] = []
    pieces = _EN_CLAUSE.split(text) if language == "en" else _TH_CHUNK.split(text)
    for piece in pieces:
        if not piece or not piece.strip():
            continue
        if language == "en":
            found = _EN_NEGATOR.search(piece)
            cut, after = (found.start(), found.end()) if found else (len(piece), len(piece))
        else:
            cut = min((i for i in (piece.find(n) for n in _TH_NEGATORS) if i >= 0), default=len(piece))
            after = cut + next((len(n) for n in _TH_NEGATORS if piece.startswith(n, cut)), 0)
        if piece[:cut].strip():
            out.append((piece[:cut], False))
        if piece[after:].strip():
            out.append((piece[after:], True))
    return out


def _plain_terms(text: str, language: Language, words: frozenset[str] | None = None) -> list[str]:
    if language == "en":
        return [_en_term(w) for w in _EN_TERM.findall(text) if len(w) > 1 and w not in _EN_QUERY_STOPWORDS]
    stop = _thai_stopwords()
    terms: list[str] = []
    for token in thai_tokens(text):
        if not has_thai(token):
            terms += _plain_terms(token, "en")
            continue
        if token in stop:
            continue
        terms.append(_TH_CANON.get(token, token))
        if token.startswith("สี") and len(token) > 3:
            terms.append(_TH_CANON.get(token[2:], token[2:]))  # "สีน้ำตาล" is also "น้ำตาล" (brown)
        pieces = [] if token in _TH_WHOLE else _syllables(token)
        if len(pieces) > 1:
            # Only syllables that are words of their own ("ผง" and "ขาว" of "ผงขาว", not "คา" of "ราคา").
            terms += [_TH_CANON.get(p, p) for p in pieces
                      if len(p) > 1 and p not in stop and (words is None or p in words)]
    return terms


def question_terms(text: str, language: Language, words: frozenset[str] | None = None) -> list[str]:
    """The text's lexical terms: stemmed English words, or Thai words and, for Thai compounds
    ("ผงขาว"), their syllables too ("ผง", "ขาว"), each mapped to its synonym group's term, and
    prefixed with NEGATED when said under a negation. Stopwords are dropped; Latin words inside
    Thai text are read as English. Entries and questions go through the same function. `words`
    (Thai words known on their own, see `thai_words`) limits which syllables count."""
    terms: list[str] = []
    for piece, negated in _scopes(text.lower(), language):
        terms += [NEGATED + t if negated else t for t in _plain_terms(piece, language, words)]
    return terms


def describes_symptoms(text: str, language: Language, problem_phrases: frozenset[str] = frozenset(),
                       words: frozenset[str] | None = None) -> bool:
    """Whether the question says something is wrong with the plant: a symptom word that is not
    negated ("no spots", "ไม่มีจุด"), a wish stated negatively ("not growing", "ไม่ติดผล"), or one of
    `problem_phrases` (the disease and pest entries' own keywords, such as "anthracnose")."""
    lowered = text.lower()
    negative = _EN_NEGATIVE_SYMPTOMS if language == "en" else _TH_NEGATIVE_SYMPTOMS
    if negative.search(lowered):
        return True
    symptoms = _EN_SYMPTOMS if language == "en" else _TH_SYMPTOMS
    for piece, negated in _scopes(lowered, language):
        if negated:
            continue
        if any(t in symptoms for t in _plain_terms(piece, language, words)):
            return True
        if any(len(p) > 3 and p in piece for p in problem_phrases):
            return True
    return False


def thai_words(entries: list[Entry]) -> frozenset[str]:
    """The Thai words the entries use on their own (as PyThaiNLP cuts their whole Thai text)."""
    return frozenset(t for entry in entries for text in entry.th.texts() for t in thai_tokens(text.lower())
                     if has_thai(t))


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
            if query.diagnosis and _matches_diagnosis(entry, query.diagnosis):
                score += 1.0
            if query.month and entry.months and query.month in entry.months:
                score += 0.02
            if query.region and entry.regions and query.region in entry.regions:
                score += 0.02
            hits.append(Hit(entry, score, match))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[: query.top_k]


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


def _rephrase_messages(question: str, curated: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You rewrite farm advice in plain, friendly English for a farmer. "
         "Use only the facts in the advice. Do not add any product, dose, number or new fact."},
        {"role": "user", "content": f"Advice:\n{curated}\n\nFarmer's question: {question}\n\n"
         "Rewrite the advice as a short answer of 3 to 5 sentences."},
    ]


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
        by_diagnosis = bool(query.diagnosis) and _matches_diagnosis(best.entry, query.diagnosis or "")
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
        messages = _rephrase_messages(query.question, advice.curated)
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
