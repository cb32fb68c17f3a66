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

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from kaset.errors import InvalidRequest
from kaset.knowledge.schema import Entry, index_by_model_label
from kaset.language import Language
from kaset.pipelines.advice import curated_answer
from kaset.pipelines.diagnosis_text import (
    RETAKE_TIPS,
    leaf_cut_off,
    leaf_too_small,
    no_leaf,
    no_model,
    not_a_plant,
    not_crop_leaf,
    not_one_leaf,
    not_this_crop,
    unstable,
    unsure,
)
from kaset.pipelines.leaf_shape import NO_LEAF, LeafColour, LeafMeasure, measure_leaf
from kaset.registry.handle import ModelHandle
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router, as_router
from kaset.weighted import weighted_pick

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
    leaf_colour: LeafColour = Field(default_factory=LeafColour)
    # Below this fraction of leaf-coloured pixels the photo holds no leaf to diagnose.
    min_leaf_colour: float = Field(default=0.02, ge=0, le=1)
    # A distinct leaf: a leaf-coloured region this big, clear of the frame's edges and this
    # convex. With one in the photo the general model's "not a plant" does not stand (it calls a
    # leaf on paper an envelope): the leaf's outline decides instead.
    distinct_leaf_area: float = Field(default=0.04, ge=0, le=1)
    distinct_leaf_solidity: float = Field(default=0.9, ge=0, le=1)


class LeafProfile(BaseModel):
    """The outline a photo's leaf must have for the crop's models to be asked about it."""

    model_config = ConfigDict(extra="forbid")
    min_area: float = Field(default=0.08, ge=0, le=1)
    elongation: tuple[float, float] = (2.2, 7.0)
    min_solidity: float = Field(default=0.85, ge=0, le=1)
    max_edges: int = Field(default=1, ge=0, le=4)


View = Literal["hflip", "vflip", "center_crop"]
DEFAULT_VIEWS: tuple[View, ...] = ("hflip", "center_crop")


class Stability(BaseModel):
    """Test-time views the crop models also see; the answer must hold on enough of them."""

    model_config = ConfigDict(extra="forbid")
    views: list[View] = Field(default_factory=lambda: list(DEFAULT_VIEWS))
    center_crop: float = Field(default=0.8, gt=0.3, le=1)
    min_agreement: float = Field(default=0.66, ge=0, le=1)


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
    # At or above this the diagnosis is shown as confident (green); between unsure_below and it,
    # as moderate, with "check with an extension officer".
    confident_above: float = Field(default=0.85, ge=0, le=1)
    foreign_classes: list[Range] = Field(default_factory=list)
    foreign_confidence: float = 0.2
    label_namespace: str | None = None
    leaf: LeafProfile | None = None
    stability: Stability | None = None


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
class Signal:
    """One piece of evidence the gate weighed: its measured value against its threshold."""

    name: str
    value: float
    threshold: float | tuple[float, float]
    passed: bool


@dataclass
class GateResult:
    passed: bool
    top: list[Scored]
    plant_score: float
    model: str
    version: str
    refused_as: str | None = None
    refused_index: int | None = None
    leaf: LeafMeasure | None = None
    signals: list[Signal] = field(default_factory=list)
    decided_by: str | None = None


@dataclass
class ModelResult:
    slot: str
    model: str
    version: str
    top: list[Scored]
    probabilities: np.ndarray
    # The top label's agreement over the test-time views (1.0 when there are none).
    agreement: float = 1.0


Status = Literal["diagnosed", "unsure", "not_a_plant", "not_this_crop", "no_model"]


@dataclass
class Diagnosis:
    status: Status
    language: Language
    crop: str | None
    crop_source: Literal["given", "inferred"] | None
    message: str
    gate: GateResult | None
    label: str | None = None
    confidence: float | None = None
    confidence_level: Literal["high", "moderate"] | None = None
    models_agree: bool | None = None
    top: list[Scored] = field(default_factory=list)
    per_model: list[ModelResult] = field(default_factory=list)
    ensemble: str | None = None
    entry: Entry | None = None
    plan_text: str | None = None
    retake_tips: list[str] = field(default_factory=list)

    @property
    def decided_by(self) -> str | None:
        return self.gate.decided_by if self.gate is not None else None


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


def views_of(image: np.ndarray, stability: Stability | None) -> list[np.ndarray]:
    """The photo and its test-time views: mirror images and a centre crop."""
    views = [image]
    for view in stability.views if stability else []:
        if view == "hflip":
            views.append(np.ascontiguousarray(image[:, ::-1]))
        elif view == "vflip":
            views.append(np.ascontiguousarray(image[::-1]))
        else:
            assert stability is not None
            height, width = image.shape[:2]
            dy, dx = int(height * (1 - stability.center_crop) / 2), int(width * (1 - stability.center_crop) / 2)
            views.append(np.ascontiguousarray(image[dy:height - dy, dx:width - dx]))
    return views


@dataclass
class _Refusal:
    status: Status
    message: str


class DiagnosisService:
    def __init__(self, models: Router | ModelManager, entries: list[Entry], config: CropGuardianConfig | None = None,
                 rng: random.Random | None = None) -> None:
        # Every model call goes through the router: local or on a worker, with its breakers.
        self.router = as_router(models)
        self.manager = self.router.manager
        self.config = config or CropGuardianConfig.load()
        self.by_label = index_by_model_label(entries)
        self.plant = expand_ranges(self.config.gate.plant_classes)
        self.neutral = expand_ranges(self.config.gate.neutral_classes)
        self.animals = expand_ranges(self.config.gate.animal_classes) - self.neutral
        self.rng = rng or random.Random()

    async def labels_of(self, model_id: str) -> list[str]:
        model = await self.router.handle(model_id, "classify")
        return (await model.info()).labels

    def crops_with_models(self) -> list[str]:
        return [name for name, crop in self.config.crops.items() if crop.slots]

    async def gate(self, image: np.ndarray) -> GateResult:
        """The general model's view and the leaf measurement, before any crop is considered."""
        gate = self.config.gate
        # Through the batcher: concurrent diagnoses share one gate call. The leaf is measured
        # in a thread meanwhile.
        ((answers, labels), spec), leaf = await asyncio.gather(
            self.router.call(gate.model, "classify", _classified([image])),
            asyncio.to_thread(measure_leaf, image, gate.leaf_colour))
        probabilities = answers[0]
        top = top_k(probabilities, labels, 5)
        plant_score = _mass(probabilities, self.plant | self.neutral)
        animal_score = _mass(probabilities, self.animals)
        best = top[0]
        confident_other = (best.index not in self.plant and best.index not in self.neutral
                           and best.score >= gate.reject_confidence)
        refuse = plant_score < gate.plant_mass and (confident_other or animal_score >= gate.animal_mass)
        refused = None
        if refuse:
            refused = best if confident_other else next(s for s in top if s.index in self.animals)
        signals = [
            Signal("imagenet_plant_mass", plant_score, gate.plant_mass, plant_score >= gate.plant_mass),
            Signal("imagenet_object", best.score if confident_other else animal_score,
                   gate.reject_confidence if confident_other else gate.animal_mass, not refuse),
            Signal("leaf_colour", leaf.colour_fraction, gate.min_leaf_colour,
                   leaf.colour_fraction >= gate.min_leaf_colour),
        ]
        return GateResult(passed=not refuse, top=top, plant_score=plant_score, model=spec.id,
                          version=spec.version, refused_as=refused.label if refused else None,
                          refused_index=refused.index if refused else None, leaf=leaf, signals=signals)

    def judge(self, gate: GateResult, crop: str, language: Language) -> _Refusal | None:
        """The gate's verdict for this crop: None when the photo may go to the crop's models,
        else why not. Records the deciding signal in `gate.decided_by` and every leaf signal."""
        config = self.config.crops[crop]
        leaf = gate.leaf or NO_LEAF
        profile = config.leaf
        leaf_like = profile is not None and _leaf_like(leaf, profile)
        settings = self.config.gate
        distinct = (leaf.area >= settings.distinct_leaf_area and leaf.solidity >= settings.distinct_leaf_solidity
                    and leaf.edges_touched == 0)
        # The general model's refusal stands unless the photo holds a distinct leaf.
        if not gate.passed and not (leaf_like or distinct):
            gate.decided_by = "imagenet_object"
            return _Refusal("not_a_plant", not_a_plant(gate.refused_as or "", language, index=gate.refused_index))
        gate.passed = True
        foreign = _foreign_plant(gate, expand_ranges(config.foreign_classes), config.foreign_confidence)
        if leaf.colour_fraction < settings.min_leaf_colour:
            if foreign is not None:
                gate.decided_by = "imagenet_foreign_plant"
                return _Refusal("not_this_crop", not_this_crop(foreign, crop, language, index=gate.top[0].index))
            gate.passed, gate.decided_by = False, "leaf_colour"
            return _Refusal("not_a_plant", no_leaf(language))
        if foreign is not None and not leaf_like:
            gate.decided_by = "imagenet_foreign_plant"
            return _Refusal("not_this_crop", not_this_crop(foreign, crop, language, index=gate.top[0].index))
        if profile is None:
            return None
        low, high = profile.elongation
        outlined = leaf.area >= self.config.gate.min_leaf_colour  # enough pixels for an outline to mean much
        checks = [
            (Signal("leaf_elongation", leaf.elongation, (low, high), not outlined or low <= leaf.elongation <= high),
             _Refusal("not_this_crop", not_crop_leaf(crop, leaf.elongation < low, language))),
            (Signal("leaf_area", leaf.area, profile.min_area, leaf.area >= profile.min_area),
             _Refusal("unsure", leaf_too_small(language))),
            (Signal("leaf_edges", leaf.edges_touched, profile.max_edges, leaf.edges_touched <= profile.max_edges),
             _Refusal("unsure", leaf_cut_off(language))),
            (Signal("leaf_solidity", leaf.solidity, profile.min_solidity, leaf.solidity >= profile.min_solidity),
             _Refusal("unsure", not_one_leaf(language))),
        ]
        gate.signals.extend(signal for signal, _ in checks)
        for signal, refusal in checks:
            if signal.passed:
                continue
            if signal.name == "leaf_elongation" and leaf.edges_touched > profile.max_edges and leaf.elongation < high:
                # A leaf cut off by the frame looks shorter than it is: too round says nothing then.
                continue
            gate.passed = refusal.status != "not_a_plant"
            gate.decided_by = signal.name
            return refusal
        return None

    def choose_variant(self, slot: Slot, ab_key: str | None) -> Variant:
        # Sticky: the same key (a device or user id) always lands on the same variant. An empty
        # key is no key.
        return weighted_pick(slot.variants, salt=slot.name, key=ab_key or None, rng=self.rng.random)

    async def run_slot(self, slot: Slot, variant: Variant, views: list[np.ndarray],
                       k: int) -> tuple[ModelResult, list[str]]:
        """One variant on the photo (views[0]) and its test-time views, in one batch; the answer
        is the photo's own, and `agreement` the share of views whose best label is the same."""
        (answers, labels), spec = await self.router.call(variant.model, "classify", _classified(views))
        probabilities = answers[0]
        winner = int(np.argmax(probabilities))
        agreement = sum(int(np.argmax(a)) == winner for a in answers) / len(answers)
        return (ModelResult(slot=slot.name, model=spec.id, version=spec.version,
                            top=top_k(probabilities, labels, k), probabilities=probabilities,
                            agreement=agreement), labels)

    async def diagnose(self, image: np.ndarray, *, crop: str | None, language: Language, k: int = 3,
                       compare: bool = False, ab_key: str | None = None, skip_gate: bool = False) -> Diagnosis:
        crop, crop_source = self._crop(crop)
        gate = None if skip_gate else await self.gate(image)
        refusal = None if gate is None else self.judge(gate, crop, language)
        if refusal is not None:
            return Diagnosis(status=refusal.status, language=language, crop=crop, crop_source=crop_source,
                             gate=gate, message=refusal.message, retake_tips=RETAKE_TIPS[language])
        config = self.config.crops[crop]
        if not config.slots:
            return Diagnosis(status="no_model", language=language, crop=crop, crop_source=crop_source, gate=gate,
                             message=no_model(crop, self.crops_with_models(), language))
        views = views_of(image, config.stability)
        results: list[ModelResult] = []
        weights: list[float] = []
        labels: list[str] = []
        for slot in config.slots:
            variants = slot.variants if compare else [self.choose_variant(slot, ab_key)]
            for variant in variants:
                result, labels_of_model = await self.run_slot(slot, variant, views, k)
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
        if compare and len(results) > 1:
            diagnosis.models_agree = (len({int(np.argmax(r.probabilities)) for r in results}) == 1
                                      and all(r.top[0].score >= config.confident_above for r in results))
        agreement = min(r.agreement for r in results)
        if config.stability is not None and gate is not None:
            stable = agreement >= config.stability.min_agreement
            gate.signals.append(Signal("crop_model_agreement", agreement, config.stability.min_agreement, stable))
            if not stable:
                gate.decided_by = "crop_model_agreement"
                return _unsure(diagnosis, unstable(language))
        confident = best.score >= config.unsure_below
        if gate is not None:
            gate.signals.append(Signal("crop_confidence", best.score, config.unsure_below, confident))
        if not confident:
            if gate is not None:
                gate.decided_by = "crop_confidence"
            return _unsure(diagnosis, unsure(best.score, language))
        diagnosis.confidence_level = "high" if best.score >= config.confident_above else "moderate"
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


def _unsure(diagnosis: Diagnosis, message: str) -> Diagnosis:
    diagnosis.status, diagnosis.message = "unsure", message
    diagnosis.retake_tips = RETAKE_TIPS[diagnosis.language]
    return diagnosis


def _leaf_like(leaf: LeafMeasure, profile: LeafProfile) -> bool:
    low, high = profile.elongation
    return (leaf.area >= profile.min_area and low <= leaf.elongation <= high and leaf.solidity >= profile.min_solidity
            and leaf.edges_touched <= profile.max_edges)


def _mass(probabilities: np.ndarray, indices: set[int]) -> float:
    return float(sum(probabilities[i] for i in indices if i < len(probabilities)))


def _foreign_plant(gate: GateResult | None, foreign: set[int], confidence: float) -> str | None:
    if gate is None or not foreign:
        return None
    best = gate.top[0]
    return best.label if best.index in foreign and best.score >= confidence else None


def _classified(images: list[np.ndarray]) -> Callable[[ModelHandle], Awaitable[tuple[list[np.ndarray], list[str]]]]:
    """A router call: the images' probabilities and the model's labels."""
    async def classify(model: ModelHandle) -> tuple[list[np.ndarray], list[str]]:
        answers = await model.classify(images)
        return answers, (await model.info()).labels

    return classify
