"""Kaset's native translation API (OpenAI has none)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TranslateRequest(BaseModel):
    text: list[str] | str = Field(description="One text or a list of texts to translate.")
    source: str = Field(description="Source language, ISO 639-1 (e.g. 'en').", min_length=2, max_length=12)
    target: str = Field(description="Target language, ISO 639-1 (e.g. 'es').", min_length=2, max_length=12)
    model: str | None = Field(default=None, description="Translation model; the server's default if omitted.")


class TranslateResponse(BaseModel):
    model: str
    source: str
    target: str
    translations: list[str]


class LanguagePair(BaseModel):
    source: str
    target: str
    model: str


class LanguagePairs(BaseModel):
    pairs: list[LanguagePair]
