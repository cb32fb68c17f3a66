"""Crop Guardian diagnosis: plant gate, crop models (ensembles, A/B variants), unsure, plan.

A farmer's photo goes through a general ImageNet classifier first, so a photo of a cat is
called a cat instead of being given a disease. Then every model slot configured for the
crop classifies it (a slot with variants sends the request to one of them, by weight), the
slots' probabilities are combined (weighted average or vote), and a result below the
crop's confidence threshold is reported as unsure, with advice on taking a better photo,
rather than as a guess. A confident label is looked up in the curated knowledge base for
the treatment plan, in Thai or English.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from kaset.errors import InvalidRequest
from kaset.knowledge.schema import Entry, index_by_model_label
from kaset.pipelines.advice import Language, curated_answer
from kaset.pipelines.diagnosis_text import RETAKE_TIPS, no_model, not_a_plant, not_this_crop, unsure
from kaset.registry.manager import ModelManager
from kaset.runtimes.base import ImageClassifier

DEFAULT_CONFIG = Path(__file__).parent / "crop_guardian.yaml"


Range = int | list[int]


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    plant_classes: list[Range]
    neutral_classes: list[Range] = Field(default_factory=list)
    animal_classes: list[Range] = Field(default_factory=list)
    reject_confidence: float = 0.35
    animal_mass: float = 0.5
    plant_mass: float = 0.15


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    weight: float = Field(default=1.0, gt=0)


class Slot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = Field(default=1.0, gt=0)
    variants: list[Variant] = Field(min_length=1)


class CropConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slots: list[Slot] = Field(default_factory=list)
    ensemble: Literal["weighted_average", "vote"] = "weighted_average"
    unsure_below: float = Field(default=0.6, ge=0, le=1)
    foreign_classes: list[Range] = Field(default_factory=list)
    foreign_confidence: float = 0.2
    label_namespace: str | None = None


class CropGuardianConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: GateConfig
    crops: dict[str, CropConfig]

    @classmethod
    def load(cls, path: Path | None = None) -> CropGuardianConfig:
        path = path or Path(os.environ.get("KASET_CROP_GUARDIAN_CONFIG", DEFAULT_CONFIG))
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def expand_ranges(ranges: list[Range]) -> set[int]:
    indices: set[int] = set()
    for item in ranges:
        if isinstance(item, int):
            indices.add(item)
        else:
            low, high = item
            indices.update(range(low, high + 1))
    return indices


@dataclass
class Scored:
    label: str
    index: int
    score: float


@dataclass
class GateResult:
    passed: bool
    top: list[Scored]
    plant_score: float
    model: str
    version: str
    refused_as: str | None = None


@dataclass
class ModelResult:
    slot: str
    model: str
    version: str
    top: list[Scored]
    probabilities: np.ndarray


@dataclass
class Diagnosis:
    status: Literal["diagnosed", "unsure", "not_a_plant", "no_model"]
    language: Language
    crop: str | None
    crop_source: Literal["given", "inferred"] | None
    message: str
    gate: GateResult | None
    label: str | None = None
    confidence: float | None = None
    top: list[Scored] = field(default_factory=list)
    per_model: list[ModelResult] = field(default_factory=list)
    ensemble: str | None = None
    entry: Entry | None = None
    plan_text: str | None = None
    retake_tips: list[str] = field(default_factory=list)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Scored]:
    order = np.argsort(-probabilities)[:k]
    return [Scored(labels[i], int(i), float(probabilities[i])) for i in order]


def combine(results: list[ModelResult], weights: list[float], method: str, labels: list[str]) -> np.ndarray:
    """Combine per-model probabilities over one shared label list."""
    if method == "vote":
        votes = np.zeros(len(labels))
        for result, weight in zip(results, weights, strict=True):
            winner = int(np.argmax(result.probabilities))
            # Ties between equal vote counts are broken by the winners' confidence.
            votes[winner] += weight * (1.0 + 1e-3 * float(result.probabilities[winner]))
        return votes / votes.sum()
    stacked = np.stack([r.probabilities for r in results])
    weighted = np.asarray(weights, dtype=np.float64)[:, None] * stacked
    return np.asarray(weighted.sum(axis=0) / sum(weights), dtype=np.float32)


class DiagnosisService:
    def __init__(self, manager: ModelManager, entries: list[Entry], config: CropGuardianConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.manager = manager
        self.config = config or CropGuardianConfig.load()
        self.by_label = index_by_model_label(entries)
        self.plant = expand_ranges(self.config.gate.plant_classes)
        self.neutral = expand_ranges(self.config.gate.neutral_classes)
        self.animals = expand_ranges(self.config.gate.animal_classes) - self.neutral
        self.rng = rng or random.Random()

    def crops_with_models(self) -> list[str]:
        return [name for name, crop in self.config.crops.items() if crop.slots]

    async def gate(self, image: np.ndarray) -> GateResult:
        gate = self.config.gate
        model = await self.manager.get(gate.model, "classify")
        # Through the batcher: concurrent diagnoses share one gate call.
        probabilities = (await model.batch("classify", [image]))[0]
        labels = model.as_(ImageClassifier).labels
        top = top_k(probabilities, labels, 5)
        plant_score = _mass(probabilities, self.plant | self.neutral)
        animal_score = _mass(probabilities, self.animals)
        best = top[0]
        confident_other = (best.index not in self.plant and best.index not in self.neutral
                           and best.score >= gate.reject_confidence)
        refuse = plant_score < gate.plant_mass and (confident_other or animal_score >= gate.animal_mass)
        refused_as = None
        if refuse:
            refused_as = best.label if confident_other else next(s.label for s in top if s.index in self.animals)
        return GateResult(passed=not refuse, top=top, plant_score=plant_score, model=model.spec.id,
                          version=model.spec.version, refused_as=refused_as)

    def choose_variant(self, slot: Slot, ab_key: str | None) -> Variant:
        if len(slot.variants) == 1:
            return slot.variants[0]
        total = sum(v.weight for v in slot.variants)
        if ab_key:
            # Sticky: the same key (a device or user id) always lands on the same variant.
            digest = hashlib.sha256(f"{slot.name}:{ab_key}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64 * total
        else:
            point = self.rng.random() * total
        for variant in slot.variants:
            point -= variant.weight
            if point < 0:
                return variant
        return slot.variants[-1]

    async def run_slot(self, slot: Slot, variant: Variant, image: np.ndarray, k: int) -> tuple[ModelResult, list[str]]:
        model = await self.manager.get(variant.model, "classify")
        probabilities = (await model.batch("classify", [image]))[0]
        labels = model.as_(ImageClassifier).labels
        return (ModelResult(slot=slot.name, model=model.spec.id, version=model.spec.version,
                            top=top_k(probabilities, labels, k), probabilities=probabilities), labels)

    async def diagnose(self, image: np.ndarray, *, crop: str | None, language: Language, k: int = 3,
                       compare: bool = False, ab_key: str | None = None, skip_gate: bool = False) -> Diagnosis:
        crop, crop_source = self._crop(crop)
        gate = None if skip_gate else await self.gate(image)
        if gate is not None and not gate.passed:
            return Diagnosis(status="not_a_plant", language=language, crop=crop, crop_source=crop_source,
                             gate=gate, message=not_a_plant(gate.refused_as or "", language),
                             retake_tips=RETAKE_TIPS[language])
        config = self.config.crops[crop]
        foreign = _foreign_plant(gate, expand_ranges(config.foreign_classes), config.foreign_confidence)
        if foreign is not None:
            return Diagnosis(status="unsure", language=language, crop=crop, crop_source=crop_source, gate=gate,
                             message=not_this_crop(foreign, crop, language), retake_tips=RETAKE_TIPS[language])
        if not config.slots:
            return Diagnosis(status="no_model", language=language, crop=crop, crop_source=crop_source, gate=gate,
                             message=no_model(crop, self.crops_with_models(), language))
        results: list[ModelResult] = []
        weights: list[float] = []
        labels: list[str] = []
        for slot in config.slots:
            variants = slot.variants if compare else [self.choose_variant(slot, ab_key)]
            for variant in variants:
                result, labels_of_model = await self.run_slot(slot, variant, image, k)
                if labels and labels_of_model != labels:
                    raise InvalidRequest(f"Models for {crop} disagree on their labels; fix the crop guardian config.")
                labels = labels_of_model
                results.append(result)
                weights.append(slot.weight / (len(variants) if compare else 1))
        combined = combine(results, weights, config.ensemble, labels)
        top = top_k(combined, labels, k)
        best = top[0]
        diagnosis = Diagnosis(status="diagnosed", language=language, crop=crop, crop_source=crop_source, gate=gate,
                              message="", label=best.label, confidence=best.score, top=top, per_model=results,
                              ensemble=config.ensemble if len(results) > 1 else None)
        if best.score < config.unsure_below:
            diagnosis.status = "unsure"
            diagnosis.message = unsure(best.score, language)
            diagnosis.retake_tips = RETAKE_TIPS[language]
            return diagnosis
        namespace = config.label_namespace or config.slots[0].variants[0].model
        diagnosis.entry = self.by_label.get(f"{namespace}/{best.label}")
        if diagnosis.entry is not None:
            diagnosis.plan_text = curated_answer(diagnosis.entry, language)
            diagnosis.message = diagnosis.entry.content(language).name
        else:
            diagnosis.message = best.label
        return diagnosis

    def _crop(self, crop: str | None) -> tuple[str, Literal["given", "inferred"]]:
        if crop is not None:
            if crop not in self.config.crops:
                raise InvalidRequest(f"Unknown crop '{crop}'. Known crops: {', '.join(self.config.crops)}.",
                                     param="crop")
            return crop, "given"
        with_models = self.crops_with_models()
        if len(with_models) == 1:
            return with_models[0], "inferred"
        raise InvalidRequest(f"Say which crop the photo shows: one of {', '.join(self.config.crops)}.",
                             param="crop")


def _mass(probabilities: np.ndarray, indices: set[int]) -> float:
    return float(sum(probabilities[i] for i in indices if i < len(probabilities)))


def _foreign_plant(gate: GateResult | None, foreign: set[int], confidence: float) -> str | None:
    if gate is None or not foreign:
        return None
    best = gate.top[0]
    return best.label if best.index in foreign and best.score >= confidence else None
