"""What a caller may use: request rate, concurrency and daily budgets of units.

A `Limits` is attached to a key and to a user (stored as JSON on their rows, null meaning
"use the server's default"); the server's defaults come from settings. Every field is
optional: None means no limit of that kind. The two scopes are enforced independently, so
a user's budget is shared by all of that user's keys while each key can be held tighter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kaset.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    concurrent_requests: int | None = None
    tokens_per_day: int | None = None
    audio_seconds_per_day: int | None = None
    images_per_day: int | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def over(self, default: Limits) -> Limits:
        """These limits, with `default`'s value wherever this one sets none."""
        return Limits(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                         else getattr(default, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, int]:
        """Only the limits that are set (what is stored in a row and in the key cache)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Limits | None:
        if data is None:
            return None
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidRequest(f"Unknown limit(s): {', '.join(sorted(unknown))}. Known: {', '.join(sorted(known))}.",
                                 param="limits")
        return cls(**{k: None if v is None else int(v) for k, v in data.items()})


NO_LIMITS = Limits()


class LimitsModel(BaseModel):
    """The API and settings shape of `Limits` (null or absent: no limit of that kind)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    concurrent_requests: int | None = Field(default=None, ge=1, le=100_000)
    tokens_per_day: int | None = Field(default=None, ge=1)
    audio_seconds_per_day: int | None = Field(default=None, ge=1)
    images_per_day: int | None = Field(default=None, ge=1)

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())

    @classmethod
    def of(cls, limits: Limits | None) -> LimitsModel | None:
        return None if limits is None else cls(**asdict(limits))
