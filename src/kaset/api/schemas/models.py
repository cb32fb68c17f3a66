"""Model listing types: OpenAI's shape plus Kaset's own fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kaset"
    # Kaset's additions; OpenAI clients ignore them.
    tasks: list[str]
    runtime: str
    version: str
    languages: list[str]
    license: str
    state: str
    aliases: list[str]
    alias_of: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
