"""A marketplace listing's shape: the `Listing` model (limits, the fixed category list, unique
keywords and categories), its JSON schema (what the grammar is built from and GET
/v1/listings/schema serves), and reading an LLM reply into it, with what can be salvaged from
broken JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

TITLE_MAX = 80
DESCRIPTION_MAX = 600
KEYWORD_MAX_CHARS = 40
MIN_KEYWORDS = 3
DEFAULT_MAX_KEYWORDS = 8
MAX_KEYWORDS_LIMIT = 15
MAX_CATEGORIES = 3

Category = Literal[
    "Fruit", "Vegetables", "Rice, grains & seeds", "Plants & flowers", "Livestock & poultry", "Pets",
    "Food & drinks", "Kitchen & dining", "Home & garden", "Farm tools & machinery", "Vehicles",
    "Clothing & accessories", "Electronics", "Toys, sports & outdoors", "Other",
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]


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
