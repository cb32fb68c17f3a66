"""Model listing types: OpenAI's shape plus Kaset's own fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BatchingInfo(BaseModel):
    """Dynamic batching of a loaded model: its settings and what it has done since loading."""

    max_batch_size: int
    max_wait_ms: float
    batches: int = Field(description="Model calls made by the batcher.")
    requests: int
    items: int
    fallbacks: int = Field(description="Merged calls that failed and were retried request by request.")
    mean_batch_size: float
    batch_sizes: dict[str, int] = Field(description="Items per call -> calls; '>N' counts lone requests "
                                                    "larger than max_batch_size.")
    mean_queue_wait_ms: float
    mean_call_ms: float


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
    batching: BatchingInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
