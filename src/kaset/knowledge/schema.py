"""Schema and loader for the curated crop-health knowledge base.

Each entry lives in ``entries/<crop>/<id>.yaml`` (one entry per file) and carries the
same structured advice in English (``en``) and Thai (``th``), plus the public sources the
advice was taken from. Nothing outside these files may be presented to farmers as advice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

ENTRIES_DIR = Path(__file__).resolve().parent / "entries"

Crop = Literal["mango", "rice", "cassava", "durian"]
Kind = Literal["disease", "pest", "disorder", "healthy"]
Region = Literal["central", "north", "northeast", "east", "west", "south"]
Language = Literal["en", "th"]

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MODEL_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9 ._-]*$")


class KnowledgeBaseError(ValueError):
    """Raised when the knowledge base on disk is malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChemicalTreatment(_Strict):
    """One chemical (or biological product) option, by active ingredient only."""

    active_ingredient: Text
    how: Text


class Source(_Strict):
    """A public source that the entry's statements are traceable to."""

    title: Text
    publisher: Text
    url: str = ""
    language: Language

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("url must be empty or start with http:// or https://")
        return value


class LocalizedContent(_Strict):
    """The farmer-facing advice in one language. ``en`` and ``th`` share this structure."""

    name: Text
    summary: Text
    symptoms: list[Text] = Field(min_length=1)
    cause: Text
    cultural_treatment: list[Text] = Field(min_length=1)
    chemical_treatment: list[ChemicalTreatment] = Field(default_factory=list)
    safety: list[Text] = Field(min_length=1)
    prevention: list[Text] = Field(min_length=1)
    season_notes: Text
    region_notes: Text
    keywords: list[Text] = Field(min_length=1)

    def texts(self) -> list[str]:
        """Every human-readable string in this block (used for language checks and search)."""
        out: list[str] = [self.name, self.summary, self.cause, self.season_notes, self.region_notes]
        out.extend(self.symptoms)
        out.extend(self.cultural_treatment)
        out.extend(self.safety)
        out.extend(self.prevention)
        out.extend(self.keywords)
        for item in self.chemical_treatment:
            out.extend((item.active_ingredient, item.how))
        return out


class Entry(_Strict):
    """One crop problem (or the healthy state) with bilingual advice and its sources."""

    id: Text
    crop: Crop
    kind: Kind
    scientific_name: str | None = None
    model_labels: list[Text] = Field(default_factory=list)
    months: list[int] | None = None
    regions: list[Region] | None = None
    en: LocalizedContent
    th: LocalizedContent
    sources: list[Source] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(f"id {value!r} must be lowercase words joined by '-'")
        return value

    @field_validator("model_labels")
    @classmethod
    def _check_model_labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not _MODEL_LABEL_RE.match(label):
                raise ValueError(f"model label {label!r} must look like '<model-id>/<Label>'")
        if len(set(value)) != len(value):
            raise ValueError("model_labels contains duplicates")
        return value

    @field_validator("months")
    @classmethod
    def _check_months(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("months must be omitted rather than empty")
        if any(m < 1 or m > 12 for m in value):
            raise ValueError("months must be between 1 and 12")
        if len(set(value)) != len(value):
            raise ValueError("months contains duplicates")
        return value

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, value: list[Region] | None) -> list[Region] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("regions must be omitted, or a non-empty list without duplicates")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Entry:
        if not self.id.startswith(f"{self.crop}-"):
            raise ValueError(f"id {self.id!r} must start with the crop name '{self.crop}-'")
        if len(self.en.chemical_treatment) != len(self.th.chemical_treatment):
            raise ValueError("en and th must list the same number of chemical treatments")
        if self.kind == "healthy" and (self.en.chemical_treatment or self.th.chemical_treatment):
            raise ValueError("a 'healthy' entry must not recommend chemical treatments")
        return self

    def content(self, language: Language) -> LocalizedContent:
        """The advice block for ``language`` ("en" or "th")."""
        return self.en if language == "en" else self.th


def _read_entry(path: Path, root: Path) -> Entry:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise KnowledgeBaseError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise KnowledgeBaseError(f"{path}: expected one mapping (one entry per file)")
    try:
        entry = Entry.model_validate(raw)
    except ValidationError as exc:
        raise KnowledgeBaseError(f"{path}: {exc}") from exc
    if entry.id != path.stem:
        raise KnowledgeBaseError(f"{path}: id {entry.id!r} does not match the file name {path.stem!r}")
    if path.parent != root and path.parent.name != entry.crop:
        raise KnowledgeBaseError(f"{path}: crop {entry.crop!r} does not match folder {path.parent.name!r}")
    return entry


def load_entries(directory: Path | None = None) -> list[Entry]:
    """Load and validate every ``**/*.yaml`` entry under ``directory`` (default: the bundled entries).

    Raises :class:`KnowledgeBaseError` on malformed files, id/file-name mismatches and duplicate ids.
    Entries are returned sorted by id.
    """
    root = (directory or ENTRIES_DIR).resolve()
    if not root.is_dir():
        raise KnowledgeBaseError(f"knowledge directory not found: {root}")
    entries: dict[str, Entry] = {}
    origins: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        entry = _read_entry(path, root)
        if entry.id in entries:
            raise KnowledgeBaseError(f"duplicate id {entry.id!r} in {origins[entry.id]} and {path}")
        entries[entry.id] = entry
        origins[entry.id] = path
    return [entries[key] for key in sorted(entries)]


def index_by_model_label(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Map each ``<model-id>/<label>`` to its entry; a label mapped twice is an error."""
    index: dict[str, Entry] = {}
    for entry in entries:
        for label in entry.model_labels:
            if label in index:
                raise KnowledgeBaseError(f"model label {label!r} is mapped by {index[label].id!r} and {entry.id!r}")
            index[label] = entry
    return index
