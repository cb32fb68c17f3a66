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

The parts: `listing_schema` (the `Listing` model, its JSON schema, reading a reply),
`listing_categories` (labels → categories), `listing_grounding` (the evidence, the checks, the
repair); this module prompts the LLM and runs the service.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kaset.errors import KasetError
from kaset.language import Language
from kaset.pipelines.describe import DescribeService, Description
from kaset.pipelines.diagnose import Scored
from kaset.pipelines.listing_grounding import Evidence, build_listing, check_grounding
from kaset.pipelines.listing_schema import (
    DEFAULT_MAX_KEYWORDS,
    MAX_CATEGORIES,
    MAX_KEYWORDS_LIMIT,
    MIN_KEYWORDS,
    TITLE_MAX,
    Listing,
    listing_schema,
    parse_listing,
)
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import Router
from kaset.runtimes.base import Generation, GenerationParams

# What callers import from here: the service, and the listing's model, schema and limits that
# its requests and responses are made of.
__all__ = [
    "DEFAULT_MAX_KEYWORDS", "LLM_PARAMS", "MAX_KEYWORDS_LIMIT", "MIN_KEYWORDS", "Listing", "ListingResult",
    "ListingService", "Method", "listing_schema",
]

Method = Literal["llm-json", "repaired", "template"]

# Two tries at the JSON: the first, and one with the first's errors in the prompt.
MAX_ATTEMPTS = 2
# Room for a 600-character description and the rest (SmolLM2 averages ~4 characters a token).
LLM_PARAMS = GenerationParams(max_tokens=320, temperature=0.0, seed=0)
# The retry samples (seeded): greedy decoding ignores the error list and repeats its first reply.
RETRY_TEMPERATURE = 0.7

THAI_NOTE = ("โมเดลภาษาที่ทำงานแบบออฟไลน์บนเซิร์ฟเวอร์นี้เขียนภาษาไทยไม่ได้ จึงเขียนประกาศเป็นภาษาอังกฤษ "
             "(The offline LLM writes no Thai, so the listing is in English.)")


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
