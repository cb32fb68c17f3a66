"""What the crop doctor says aloud: a short answer a farmer in the field will listen to.

The written answer is a whole knowledge entry (summary, what to do, spraying, safety,
prevention): read aloud it runs for close to a minute, and the voice stream read it all in two.
The spoken answer is built from the entry's curated fields instead, in the farmer's language:

* a diagnosed photo: what it is (with "check with an extension officer" when the diagnosis is
  only moderately confident), the one to three first actions of the entry, whole, and "the
  details are on the screen";
* an answer to a question: the entry the advice was grounded on, said the same way;
* a refused or doubtful photo (not a plant, not this crop, unsure, no model): the message and
  the single most useful retake tip.

Actions are taken whole, in the entry's order (curators list the most important first), as
many as fit in `BUDGET` characters (about 20 seconds of Piper's English voice), never fewer than
one and never more than three. Spraying is never spoken: its safety lines would have to go with
it, and they stay on the screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaset.language import Language

if TYPE_CHECKING:
    from kaset.knowledge.schema import Entry
    from kaset.pipelines.advice import Advice
    from kaset.pipelines.diagnose import Diagnosis

# Characters of spoken text: Piper's English voice says about 17 a second, so 330 is about
# 19 s. Thai script is denser (no spaces, vowels as marks), so fewer characters say as much.
BUDGET: dict[Language, int] = {"en": 330, "th": 220}
MAX_ACTIONS = 3

_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "looks": "This looks like {name}.",
        "healthy": "{name}: no disease found.",
        "caution": "I am not certain, so check with an extension officer.",
        "do": "What to do now:",
        "keep": "To keep it healthy:",
        "about": "For {name}, what to do now:",
        "details": "The details are on the screen.",
        "tips": "More tips are on the screen.",
    },
    "th": {
        "looks": "ภาพนี้ดูเหมือน{name}",
        "healthy": "{name}",
        "caution": "ยังไม่แน่ใจนัก ควรตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร",
        "do": "สิ่งที่ควรทำตอนนี้",
        "keep": "การดูแลให้ต้นแข็งแรง",
        "about": "{name} สิ่งที่ควรทำตอนนี้",
        "details": "รายละเอียดอยู่บนหน้าจอ",
        "tips": "คำแนะนำอื่นอยู่บนหน้าจอ",
    },
}

# The retake tip that helps most, by the signal that refused the photo (`gate.decided_by`), as an
# index into diagnosis_text.RETAKE_TIPS: 0 focus, 1 daylight, 2 one leaf filling the frame,
# 3 a plain background.
_TIP_FOR_SIGNAL = {"imagenet_object": 2, "imagenet_foreign_plant": 2, "leaf_colour": 1, "leaf_area": 2,
                   "leaf_edges": 2, "leaf_solidity": 3, "leaf_elongation": 2, "crop_confidence": 0,
                   "crop_model_agreement": 0}


def spoken_answer(diagnosis: Diagnosis | None, advice: Advice | None, language: Language) -> str:
    """The short spoken answer to a consultation (see the module docstring)."""
    words = _WORDS[language]
    pieces: list[str] = []
    if advice is not None and not advice.understood:
        # The question was not understood: its answer asks to say it again; no entry is spoken.
        if diagnosis is None:
            return speakable(advice.answer)
        advice = None
    if diagnosis is not None and diagnosis.status != "diagnosed":
        pieces.append(diagnosis.message)
        tip = retake_tip(diagnosis)
        if tip:
            pieces.append(tip)
        if advice is None or not advice.hits:
            if diagnosis.retake_tips:
                pieces.append(words["tips"])
            return _join(pieces, language)
        # A question came with the refused photo: the voice answers it too, briefly.
        pieces += entry_speech(advice.hits[0].entry, language, lead=words["about"], room=_room(pieces, language),
                               most=1)
    elif diagnosis is not None and diagnosis.entry is not None:
        entry = diagnosis.entry
        healthy = entry.kind == "healthy"
        lead = words["healthy" if healthy else "looks"]
        caution = [words["caution"]] if getattr(diagnosis, "confidence_level", None) == "moderate" else []
        pieces += entry_speech(entry, language, lead=lead, caution=caution, heading=words["keep" if healthy else "do"])
    elif diagnosis is not None:
        pieces.append(diagnosis.message)  # a label the knowledge base does not know: no plan to read
    elif advice is not None and advice.hits:
        pieces += entry_speech(advice.hits[0].entry, language, lead=words["about"])
    elif advice is not None:
        return speakable(advice.answer)
    pieces.append(words["details"])
    return _join(pieces, language)


def entry_speech(entry: Entry, language: Language, *, lead: str, caution: list[str] | None = None,
                 heading: str | None = None, room: int | None = None, most: int = MAX_ACTIONS) -> list[str]:
    """What to say about an entry: `lead` (with {name}), `caution`, `heading` and its first
    actions, whole, as many as fit in `room` characters (at least one, at most `most`)."""
    content = entry.content(language)
    said = [lead.format(name=content.name), *(caution or [])]
    if heading:
        said.append(heading)
    room = BUDGET[language] if room is None else room
    room -= _length(said, language) + len(_WORDS[language]["details"]) + 1
    actions: list[str] = []
    for action in content.cultural_treatment[:most]:
        line = _sentence(action, language)
        if actions and len(line) + 1 > room:
            break
        actions.append(line)
        room -= len(line) + 1
    return said + actions


def retake_tip(diagnosis: Diagnosis) -> str | None:
    """The one retake tip worth saying for this refusal (the rest are on the screen)."""
    tips = diagnosis.retake_tips
    if not tips:
        return None
    decided_by = getattr(diagnosis.gate, "decided_by", None) if diagnosis.gate is not None else None
    if decided_by is None and diagnosis.status == "not_a_plant":
        decided_by = "imagenet_object"
    index = _TIP_FOR_SIGNAL.get(decided_by or "", 0)
    return tips[index] if index < len(tips) else tips[0]


def _room(pieces: list[str], language: Language) -> int:
    return max(BUDGET[language] - _length(pieces, language), 0)


def _length(pieces: list[str], language: Language) -> int:
    return len(_join(pieces, language))


def _sentence(text: str, language: Language) -> str:
    text = " ".join(text.split())
    if language == "en" and text and text[-1] not in ".!?:":
        text += "."
    return text


def _join(pieces: list[str], language: Language) -> str:
    return " ".join(_sentence(p, language) for p in pieces if p.strip())


# --- reading a written answer aloud (moved from crop_doctor.py) -------------------------------

# Answers are spoken a line at a time; a bullet's dash is not something to say aloud.
_BULLET = "-*•"

_MORE_ON_SCREEN: dict[Language, str] = {
    "en": "Spraying, safety and prevention are in the written answer.",
    "th": "วิธีใช้สารเคมี ความปลอดภัย และการป้องกัน อยู่ในคำตอบที่เป็นข้อความ",
}


def spoken_part(text: str, language: Language) -> str:
    """What is read aloud of a written answer: its first two blocks (what it is, what to do now).
    A curated answer goes on with spraying, safety and prevention, a minute and more of speech that a
    farmer in the field will not sit through; those stay on the screen, and the voice says so.
    Spray advice is never read without its safety lines: both are left to the text.
    The crop doctor now speaks `spoken_answer`, built from the entry itself, which is shorter."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    if len(blocks) <= 2:
        return speakable(text)
    return speakable("\n\n".join(blocks[:2])) + " " + _MORE_ON_SCREEN[language]


def speakable(text: str) -> str:
    """The text as sentences a voice can read: bullets dropped, each line ending as a sentence,
    so "What to do now:" and the items after it are not run together."""
    lines = []
    for line in text.splitlines():
        line = line.strip().lstrip(_BULLET).strip()
        if not line:
            continue
        if line[-1].isascii() and line[-1].isalnum():
            line += "."  # Thai lines end without punctuation, and a Thai voice would read a dot
        lines.append(line)
    return " ".join(lines)
