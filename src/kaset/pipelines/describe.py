"""Describe a photo in words: a vision model when an operator configured one, else the labels
of the image classifier, rephrased by the local LLM and clearly marked as label-based.

No model in the offline pack can see an image and talk about it. What it has is a general
ImageNet classifier (EfficientNet-Lite0) and a tiny LLM (SmolLM2-135M). So the default path
classifies the photo and asks the LLM to turn the top labels into a sentence or two, and the
response says plainly that the text comes from classifier labels, not from seeing the image.
The 135M model invents freely ("a sleek espresso machine and a woman in a red dress" for a
cup of coffee), so its sentence is kept only if it names the classifier's top label and adds
almost nothing that is not in the labels or the user's question; otherwise a template
sentence built from the labels answers (method "labels-template"). The LLM writes no Thai:
for Thai the label path answers in English with a Thai note saying so.

When `KASET_DESCRIBE_MODELS` names vision-capable provider models (OpenAI-compatible or
Gemini, `vision: true`), they are tried first, in order; any error (rate limit, outage,
timeout, bad key, a model that cannot take images) moves on to the next one and finally to
the label path, and each failure is reported in `fallbacks`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from kaset.errors import InvalidRequest, KasetError, UpstreamError
from kaset.language import Language, has_thai
from kaset.pipelines.diagnose import Scored, top_k
from kaset.registry.handle import ModelHandle
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router, as_router
from kaset.runtimes.base import Generation, GenerationParams

log = logging.getLogger(__name__)

Method = Literal["vision-model", "labels", "labels-template"]

MAX_LABELS = 3
# Labels below this score are noise, except the top one, which is always kept.
MIN_LABEL_SCORE = 0.05
# Below this the top label is a guess, and the template says the photo is unclear.
UNSURE_SCORE = 0.2
LIKELY_SCORE = 0.5
# Share of an LLM sentence's content words that must come from the labels or the question.
MIN_GROUNDED_FRACTION = 0.75
MAX_SENTENCES = 3

LLM_PARAMS = GenerationParams(max_tokens=60, temperature=0.0, seed=0)
VISION_PARAMS = GenerationParams(max_tokens=300, temperature=0.2)
DEFAULT_PROMPT: dict[Language, str] = {
    "en": "Describe this photo in one to three sentences.",
    "th": "อธิบายภาพนี้เป็นภาษาไทย 1 ถึง 3 ประโยค",
}

_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words that frame a description without adding a fact about the photo.
_FRAME_TEXT = """
a an the this that these those it its it's there here of in on at to for from with by as and or but nor not no
is are was were be been being has have had do does did can could may might must should will would shall
photo photos photograph picture pictures image images shot scene view close closeup close-up up
show shows showing shown depict depicts depicting contain contains containing feature features featuring
likely probably possibly perhaps maybe most more less very quite rather somewhat either also too just
appear appears appearing look looks looking seem seems seeming see seen
what which who kind type sort something like some one two several
classifier label labels says say suggests suggest guess guesses best unclear sure certain
"""
_FRAME_WORDS = frozenset(_FRAME_TEXT.split())


@dataclass
class Fallback:
    model: str
    error: str


@dataclass
class Description:
    text: str
    method: Method
    language: Language  # the language `text` is in
    requested_language: Language
    note: str
    model: str | None = None  # the model that wrote `text`; None for the template
    classifier: str | None = None
    labels: list[Scored] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    llm_rejected: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def models_used(self) -> list[str]:
        return [m for m in (self.classifier, self.model) if m]


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """An RGB array as JPEG bytes, to send a decoded (upright, bounded) photo to a provider."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class DescribeService:
    def __init__(self, models: Router | ModelManager, vision_models: Sequence[str] = (),
                 classifier: str = "efficientnet-lite0", llm: str | None = "smollm2-135m") -> None:
        # Every model call goes through the router: local or on a worker, with its breakers.
        self.router = as_router(models)
        self.manager = manager = self.router.manager
        self.vision_models = list(vision_models)
        self.classifier = classifier
        self.llm = llm
        for name in self.vision_models:
            if name not in manager.catalog:
                # Not fatal (each request falls back and says why), but an operator wants to know now.
                log.warning("KASET_DESCRIBE_MODELS names '%s', which is not in the catalog", name)

    async def describe(self, image: np.ndarray, *, language: Language = "en", prompt: str | None = None) -> Description:
        """Describe an RGB photo; never fails because a provider did (the label path answers)."""
        fallbacks: list[Fallback] = []
        if self.vision_models:
            jpeg = await asyncio.to_thread(encode_jpeg, image)
            for name in self.vision_models:
                try:
                    return await self.with_vision_model(name, jpeg, language=language, prompt=prompt,
                                                        fallbacks=fallbacks)
                except KasetError as exc:
                    log.info("describe: %s failed (%s), trying the next option", name, exc.message)
                    fallbacks.append(Fallback(model=name, error=exc.message))
        description = await self.from_labels(image, language=language, prompt=prompt)
        description.fallbacks = fallbacks
        return description

    # --- vision models ---------------------------------------------------------------------------

    async def with_vision_model(self, name: str, jpeg: bytes, *, language: Language, prompt: str | None,
                                fallbacks: list[Fallback] | None = None) -> Description:
        question = (prompt or DEFAULT_PROMPT[language]).strip()
        if language == "th" and prompt:
            question += "\nตอบเป็นภาษาไทย (answer in Thai)."

        async def look(model: ModelHandle) -> Generation:
            if not (await model.info()).vision:
                raise InvalidRequest(f"The model '{name}' cannot take images (it is not a vision-capable provider).")
            return await model.describe_image(jpeg, question, VISION_PARAMS)

        generation, spec = await self.router.call(name, "chat", look)
        text = generation.text.strip()
        if not text:
            raise UpstreamError(f"The model '{name}' returned an empty description.")
        written_in: Language = "th" if has_thai(text) else "en"
        notes = [] if written_in == language else [f"asked for {language}, the model answered in {written_in}"]
        return Description(
            text=text, method="vision-model", language=written_in, requested_language=language,
            note=_vision_note(spec.id, language), model=spec.id, fallbacks=list(fallbacks or []),
            notes=notes, prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
        )

    # --- the label path --------------------------------------------------------------------------

    async def classify(self, image: np.ndarray) -> tuple[str, list[Scored]]:
        """(classifier id, the labels worth mentioning, best first)."""
        async def classify(model: ModelHandle) -> tuple[np.ndarray, list[str]]:
            # Through the batcher: concurrent describe and diagnose requests share one model call.
            (probabilities,) = await model.classify([image])
            return probabilities, (await model.info()).labels

        (probabilities, labels), spec = await self.router.call(self.classifier, "classify", classify)
        top = top_k(probabilities, labels, MAX_LABELS)
        return spec.id, [s for s in top if s.score >= MIN_LABEL_SCORE] or top[:1]

    async def from_labels(self, image: np.ndarray, *, language: Language, prompt: str | None) -> Description:
        classifier_id, labels = await self.classify(image)
        description = Description(
            text=template_sentence(labels), method="labels-template", language="en", requested_language=language,
            note=_labels_note(classifier_id, language), classifier=classifier_id, labels=labels,
        )
        if language != "en":
            description.notes.append("the local LLM writes English only; answered in English")
        await self._rephrase(description, prompt)
        return description

    async def _rephrase(self, description: Description, prompt: str | None) -> None:
        """Let the local LLM word the labels; keep its sentence only if it stays on them."""
        spec = self.manager.catalog.get(self.llm) if self.llm else None
        if spec is None or spec not in self.router.models_for("chat"):
            description.notes.append("no local LLM is installed; the description is a template")
            return
        messages = rephrase_messages(description.labels, prompt)
        try:
            generation, served = await self.router.call(spec.id, "chat", lambda model: model.chat(messages, LLM_PARAMS))
        except KasetError as exc:
            description.notes.append(f"the local LLM failed ({exc.message}); the description is a template")
            return
        text = first_sentences(generation.text)
        rejection = check_description(text, description.labels, prompt)
        if rejection is not None:
            description.llm_rejected = rejection
            description.notes.append(f"the local LLM's sentence was not used: {rejection}")
            return
        description.text = text
        description.method = "labels"
        description.model = served.id
        description.prompt_tokens = generation.prompt_tokens
        description.completion_tokens = generation.completion_tokens


# --- wording -------------------------------------------------------------------------------------


def rephrase_messages(labels: list[Scored], prompt: str | None) -> list[dict[str, str]]:
    ranked = ", ".join([f"most likely {labels[0].label}", *(f"possibly {s.label}" for s in labels[1:])])
    # The question goes first: after the labels, the 135M model answers it and forgets them.
    request = f"Question: {' '.join(prompt.split())[:300]}\n" if prompt else ""
    request += (f"The classifier says the photo shows: {ranked}.\n"
                "Write one sentence describing the photo using only these labels.")
    return [
        {"role": "system", "content": "You turn image-classifier labels into one short sentence about a photo. "
                                      "Use only the labels given."},
        {"role": "user", "content": request},
    ]


def _with_article(label: str) -> str:
    return f"{'an' if label[:1].lower() in 'aeiou' else 'a'} {label}"


def template_sentence(labels: list[Scored]) -> str:
    """A plain sentence from the labels alone, hedged by how sure the classifier is."""
    first, others = labels[0], [_with_article(s.label) for s in labels[1:]]
    if first.score < UNSURE_SCORE:
        guesses = [_with_article(first.label), *others]
        listed = guesses[0] if len(guesses) == 1 else ", ".join(guesses[:-1]) + " or " + guesses[-1]
        return f"It is unclear what the photo shows; an image classifier's best guess is {listed}."
    if first.score >= LIKELY_SCORE or not others:
        return f"The photo most likely shows {_with_article(first.label)}."
    return f"The photo probably shows {_with_article(first.label)}, or possibly {' or '.join(others)}."


def first_sentences(text: str, limit: int = MAX_SENTENCES) -> str:
    sentences = [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]
    return " ".join(sentences[:limit])


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _grounded(word: str, allowed: set[str]) -> bool:
    # "lake" for the label "lakeside", "tabbies" for "tabby": a shared stem of 4+ letters is the label's word.
    return word in allowed or (len(word) >= 4 and any(a.startswith(word) or word.startswith(a) for a in allowed
                                                      if len(a) >= 4))


def check_description(text: str, labels: list[Scored], prompt: str | None) -> str | None:
    """Why an LLM sentence about these labels cannot be used, or None when it can.

    It must name the top label (or its head word: "cat" for "tiger cat"), and at least
    MIN_GROUNDED_FRACTION of its content words must come from the labels or the question.
    """
    if not text.strip():
        return "it was empty"
    lowered = text.lower()
    words = {_stem(w) for w in _WORD.findall(lowered)}
    top = labels[0].label.lower()
    if top not in lowered and _stem(top.split()[-1]) not in words:
        return f"it does not name the classifier's top label '{labels[0].label}'"
    allowed = {_stem(w) for s in labels for w in _WORD.findall(s.label.lower())}
    allowed |= {_stem(w) for w in _WORD.findall((prompt or "").lower())}
    content = [_stem(w) for w in _WORD.findall(lowered) if w not in _FRAME_WORDS and _stem(w) not in _FRAME_WORDS]
    invented = [w for w in content if not _grounded(w, allowed)]
    if content and (len(content) - len(invented)) / len(content) < MIN_GROUNDED_FRACTION:
        return f"it adds words that are not among the labels ({', '.join(dict.fromkeys(invented))})"
    return None


def _labels_note(classifier: str, language: Language) -> str:
    english = (f"Label-based: written from the labels of an image classifier ({classifier}), not from seeing "
               "the image. Details beyond those labels are unknown.")
    if language == "th":
        return ("คำอธิบายนี้สร้างจากป้ายกำกับของโมเดลจำแนกภาพ ไม่ได้มาจากการมองเห็นภาพจริง และเป็นภาษาอังกฤษ "
                "เพราะโมเดลที่ทำงานแบบออฟไลน์บนเซิร์ฟเวอร์นี้รองรับเฉพาะภาษาอังกฤษ "
                f"(Only English is available offline. {english})")
    return english


def _vision_note(model: str, language: Language) -> str:
    if language == "th":
        return f"คำอธิบายจากโมเดลที่มองเห็นภาพ ({model}) ของผู้ให้บริการภายนอก"
    return f"Described from the image itself by a vision model ({model}) at an external provider."
