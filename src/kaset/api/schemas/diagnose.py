"""Crop Guardian diagnosis (Kaset's own API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kaset.api.schemas.advice import SourceRef


class DiagnoseJSONRequest(BaseModel):
    image: str = Field(description="The photo as base64, or a data URL (data:image/jpeg;base64,...).")
    crop: str | None = Field(default=None, description="mango, rice, cassava or durian; inferred if omitted.")
    language: Literal["th", "en"] = "en"
    top_k: int = Field(default=3, ge=1, le=10)
    compare: bool = Field(default=False, description="Run every model and variant for the crop, side by side.")
    ab_key: str | None = Field(default=None, max_length=200,
                               description="A stable id (device, user) so A/B splits are sticky.")


class ScoredLabel(BaseModel):
    label: str
    index: int
    score: float


class SignalReport(BaseModel):
    name: str = Field(description="imagenet_plant_mass, imagenet_object, leaf_colour, imagenet_foreign_plant, "
                                  "leaf_elongation, leaf_area, leaf_edges, leaf_solidity, crop_model_agreement or "
                                  "crop_confidence (see crop_guardian.yaml).")
    value: float
    threshold: float | tuple[float, float]
    passed: bool


class LeafReport(BaseModel):
    colour_fraction: float = Field(description="Share of the photo's pixels that are leaf-coloured.")
    area: float = Field(description="The largest leaf region's share of the photo, holes filled.")
    elongation: float = Field(description="Its length / width (principal axes).")
    solidity: float = Field(description="Its area / its convex hull's area.")
    edges_touched: int


class GateReport(BaseModel):
    passed: bool = Field(description="False when the photo is not of a plant at all.")
    model: str
    version: str
    plant_score: float
    top: list[ScoredLabel]
    decided_by: str | None = Field(description="The signal that decided a refusal or doubt; null when diagnosed.")
    signals: list[SignalReport]
    leaf: LeafReport | None


class ModelReport(BaseModel):
    slot: str
    model: str
    version: str
    top: list[ScoredLabel]


class TreatmentPlan(BaseModel):
    entry_id: str
    name: str
    summary: str
    symptoms: list[str]
    cause: str
    actions: list[str]
    chemical: list[dict[str, str]]
    safety: list[str]
    prevention: list[str]
    season_notes: str
    region_notes: str
    text: str
    sources: list[SourceRef]


class DiagnoseResponse(BaseModel):
    status: Literal["diagnosed", "unsure", "not_a_plant", "not_this_crop", "no_model"]
    message: str
    language: Literal["th", "en"]
    crop: str | None
    crop_source: Literal["given", "inferred"] | None
    label: str | None
    confidence: float | None
    confidence_level: Literal["high", "moderate"] | None = Field(
        description="For a diagnosis: high at or above the crop's confident_above, else moderate (show it with "
                    "'check with an extension officer').")
    models_agree: bool | None = Field(
        description="compare=true: every variant names the same label and each is confident; else null.")
    decided_by: str | None = Field(description="The gate signal that decided a refusal or doubt.")
    top: list[ScoredLabel]
    per_model: list[ModelReport]
    ensemble: str | None
    models_used: list[str] = Field(description="model@version of every model that answered, gate included.")
    gate: GateReport | None
    plan: TreatmentPlan | None
    retake_tips: list[str]
