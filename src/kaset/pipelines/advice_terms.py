"""The words of a question and of a knowledge entry, as advice retrieval reads them.

Tokenising (Thai with PyThaiNLP, its compounds also as their syllables), stemming English,
mapping growers' words to one term each (synonyms), marking what is said under a negation, and
telling whether a question describes a symptom. Questions and entries go through the same
functions, so a question's terms can be looked up in an entry's.
"""

from __future__ import annotations

import functools
import re

from kaset.knowledge.schema import Entry
from kaset.language import Language, has_thai

# English function words: never a term of a question, never a fact of an answer.
EN_STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "for", "with", "from", "by", "as", "is", "are",
    "be", "been", "this", "that", "these", "those", "it", "its", "your", "you", "they", "them", "their", "there",
    "here", "when", "then", "than", "if", "so", "not", "no", "do", "does", "can", "may", "should", "will", "would",
    "could", "into", "over", "under", "more", "most", "less", "also", "very", "just", "only", "each", "every",
    "any", "some", "such", "which", "who", "what", "how", "why", "where", "while", "about", "after", "before",
    "during", "until", "use", "using", "used", "make", "sure", "keep", "take", "help", "helps",
})


def thai_tokens(text: str) -> list[str]:
    from pythainlp.tokenize import word_tokenize

    return [t.strip() for t in word_tokenize(text, keep_whitespace=False) if t.strip()]


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
_EN_QUERY_STOPWORDS = EN_STOPWORDS | frozenset({
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

