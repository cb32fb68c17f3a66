"""Calibrate Crop Guardian's thresholds on an operator's labelled photos.

The shipped thresholds were set on the photos in reach here, none of them a real mango leaf, so
the false-reject rate on real crop photos is unknown until someone measures it. An operator with
labelled photos lays them out as one folder per label (the crop model's label names, e.g.
`Anthracnose/`, `Healthy/`) plus `other/` for photos that are not the crop at all, and
`kaset crop calibrate PHOTOS_DIR` runs the real gate and models over them:

* each photo once through the whole pipeline with the confidence bars opened (unsure_below 0,
  confident_above 1), recording its outcome, the signal that decided it, and the crop models'
  label and confidence;
* a sweep of the confidence bar over every observed confidence: the false-accept rate (photos in
  `other/` diagnosed), the false-reject rate (labelled photos not diagnosed) and the error rate
  among the labelled photos diagnosed;
* `unsure_below` = the lowest bar whose false-accept rate meets the target, `confident_above` =
  the lowest bar at or above it whose error rate among diagnoses meets the confident-error target.

With `fit_leaf`, the leaf outline (elongation, area, solidity) is first fitted to the labelled
photos' own leaves (their 2nd-98th percentiles, widened by a margin), so a region whose mango
leaves are rounder than the default profile allows is not refused by shape.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kaset.media.image import decode_image
from kaset.pipelines.diagnose import CropGuardianConfig, DiagnosisService, LeafProfile
from kaset.pipelines.leaf_shape import measure_leaf

OTHER = "other"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class CalibrationError(ValueError):
    """The photo folder cannot be calibrated on (missing folders, unknown labels, no photos)."""


@dataclass
class Observation:
    path: Path
    truth: str  # a crop label or "other"
    status: str
    decided_by: str | None
    label: str | None
    confidence: float | None


@dataclass
class ThresholdRow:
    threshold: float
    false_accept: float
    false_reject: float
    error: float  # wrong labels among the labelled photos diagnosed
    diagnosed: int


@dataclass
class Calibration:
    crop: str
    observations: list[Observation]
    rows: list[ThresholdRow]
    unsure_below: float | None
    confident_above: float | None
    leaf: LeafProfile | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def outcome(self, observation: Observation, threshold: float) -> str:
        if observation.status == "diagnosed" and (observation.confidence or 0) >= threshold:
            return observation.label or "?"
        return "unsure" if observation.status == "diagnosed" else observation.status

    def confusion(self, threshold: float) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for observation in self.observations:
            table.setdefault(observation.truth, Counter())[self.outcome(observation, threshold)] += 1
        return table

    def signal_refusals(self) -> dict[str, Counter[str]]:
        """Per truth group ("crop" or "other"), how often each signal refused or doubted a photo."""
        counts: dict[str, Counter[str]] = {"crop": Counter(), OTHER: Counter()}
        for observation in self.observations:
            if observation.decided_by:
                counts[OTHER if observation.truth == OTHER else "crop"][observation.decided_by] += 1
        return counts


def labelled_photos(folder: Path, labels: list[str]) -> list[tuple[Path, str]]:
    if not folder.is_dir():
        raise CalibrationError(f"{folder} is not a folder.")
    found: list[tuple[Path, str]] = []
    unknown = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name != OTHER and sub.name not in labels:
            unknown.append(sub.name)
            continue
        found.extend((p, sub.name) for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    if unknown:
        raise CalibrationError(f"Folders {', '.join(unknown)} are not labels of the crop model "
                               f"({', '.join(labels)}) nor '{OTHER}'.")
    if not any(truth == OTHER for _, truth in found):
        raise CalibrationError(f"Put photos that are not the crop in {folder / OTHER}: without them no "
                               "false-accept rate can be measured.")
    if not any(truth != OTHER for _, truth in found):
        raise CalibrationError("Put labelled crop photos in one folder per label: none was found.")
    return found


def fit_leaf_profile(leaves: list[np.ndarray], base: LeafProfile, colour_config: CropGuardianConfig,
                     margin: float = 0.15) -> LeafProfile:
    """The leaf outline of the labelled photos: their 2nd-98th percentiles, widened by `margin`."""
    measures = [measure_leaf(leaf, colour_config.gate.leaf_colour) for leaf in leaves]
    elongation = np.array([m.elongation for m in measures if m.area > 0])
    if len(elongation) == 0:
        return base
    area = np.array([m.area for m in measures if m.area > 0])
    solidity = np.array([m.solidity for m in measures if m.area > 0])
    return LeafProfile(
        min_area=round(min(base.min_area, float(np.percentile(area, 2)) * (1 - margin)), 3),
        elongation=(round(float(np.percentile(elongation, 2)) * (1 - margin), 2),
                    round(float(np.percentile(elongation, 98)) * (1 + margin), 2)),
        min_solidity=round(min(base.min_solidity, float(np.percentile(solidity, 2)) * (1 - margin / 2)), 3),
        max_edges=base.max_edges)


def sweep(observations: list[Observation]) -> list[ThresholdRow]:
    crop = [o for o in observations if o.truth != OTHER]
    other = [o for o in observations if o.truth == OTHER]
    thresholds = sorted({0.0, *(round(o.confidence, 4) for o in observations if o.confidence is not None), 1.0001})
    rows = []
    for t in thresholds:
        accepted_other = sum(o.status == "diagnosed" and (o.confidence or 0) >= t for o in other)
        accepted = [o for o in crop if o.status == "diagnosed" and (o.confidence or 0) >= t]
        wrong = sum(o.label != o.truth for o in accepted)
        rows.append(ThresholdRow(threshold=t, false_accept=accepted_other / len(other),
                                 false_reject=1 - len(accepted) / len(crop),
                                 error=wrong / len(accepted) if accepted else 0.0, diagnosed=len(accepted)))
    return rows


def choose(rows: list[ThresholdRow], false_accept: float, confident_error: float,
           floor: float = 0.0) -> tuple[float | None, float | None]:
    """(unsure_below, confident_above), neither below `floor`; (None, None) if no bar meets the target."""
    meeting = [r for r in rows if r.false_accept <= false_accept and r.threshold >= floor]
    if not meeting:
        return None, None
    unsure_below = min(r.threshold for r in meeting)
    confident = [r for r in rows if r.threshold >= unsure_below and r.error <= confident_error and r.diagnosed > 0]
    confident_above = min((r.threshold for r in confident), default=1.0)
    return min(unsure_below, 1.0), min(confident_above, 1.0)


async def calibrate(service: DiagnosisService, folder: Path, crop: str, *, false_accept: float = 0.01,
                    confident_error: float = 0.05, floor: float = 0.5, fit_leaf: bool = False,
                    max_pixels: int = 60_000_000,
                    progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Run the real gate and models over the folder's photos and choose the thresholds."""
    config = service.config.model_copy(deep=True)
    if crop not in config.crops or not config.crops[crop].slots:
        raise CalibrationError(f"Crop '{crop}' has no photo model in the Crop Guardian config.")
    first = config.crops[crop].slots[0].variants[0].model
    labels = await service.labels_of(first)
    photos = labelled_photos(folder, labels)
    images: list[tuple[Path, str, np.ndarray]] = []
    skipped: list[tuple[Path, str]] = []
    for path, truth in photos:
        try:
            images.append((path, truth, await asyncio.to_thread(decode_image, path.read_bytes(),
                                                                max_pixels=max_pixels)))
        except Exception as exc:  # a photo that cannot be read is reported, not fatal
            skipped.append((path, str(exc)))
    crop_config = config.crops[crop]
    leaf = crop_config.leaf
    if fit_leaf and leaf is not None:
        leaf = fit_leaf_profile([image for _, truth, image in images if truth != OTHER], leaf, config)
        crop_config.leaf = leaf
    # Open the confidence bars: every photo the gate lets through comes back with its confidence.
    crop_config.unsure_below, crop_config.confident_above = 0.0, 1.0
    probe = DiagnosisService(service.router, [], config)
    observations = []
    for done, (path, truth, image) in enumerate(images, start=1):
        result = await probe.diagnose(image, crop=crop, language="en", compare=True)
        observations.append(Observation(path=path, truth=truth, status=result.status, decided_by=result.decided_by,
                                        label=result.label, confidence=result.confidence))
        if progress is not None:
            progress(done, len(images))
    rows = sweep(observations)
    unsure_below, confident_above = choose(rows, false_accept, confident_error, floor)
    return Calibration(crop=crop, observations=observations, rows=rows, unsure_below=unsure_below,
                       confident_above=confident_above, leaf=leaf if fit_leaf else None, skipped=skipped,
                       warnings=_resolution_warnings(observations, false_accept))


def _resolution_warnings(observations: list[Observation], false_accept: float) -> list[str]:
    """A rate measured on n photos moves in steps of 1/n: say when the folder is too small to show it."""
    warnings = []
    others = sum(o.truth == OTHER for o in observations)
    needed = int(np.ceil(3 / false_accept)) if false_accept > 0 else None
    # With no false accept among n photos, the 95% upper bound of the true rate is about 3/n.
    if needed is not None and others < needed:
        warnings.append(f"Only {others} photos in {OTHER}/: a false-accept rate of {false_accept:.1%} needs about "
                        f"{needed} to be shown at 95% confidence (the rule of three). Add more.")
    if false_accept == 0:
        warnings.append(f"A false-accept target of 0 holds on these {others} photos only; the true rate may be up "
                        f"to about {3 / max(others, 1):.0%}.")
    return warnings


def write_config(source: Path, output: Path, calibration: Calibration, false_accept: float) -> None:
    """The source config with the crop's calibrated thresholds, written to `output`."""
    import datetime

    import yaml

    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    crop = data["crops"][calibration.crop]
    crop["unsure_below"] = round(float(calibration.unsure_below or 1.0), 4)
    crop["confident_above"] = round(float(calibration.confident_above or 1.0), 4)
    if calibration.leaf is not None:
        crop["leaf"] = calibration.leaf.model_dump(mode="json")
    counts = Counter("other" if o.truth == OTHER else "crop" for o in calibration.observations)
    chosen = next(r for r in calibration.rows if r.threshold >= (calibration.unsure_below or 1.0))
    header = (f"# Calibrated by `kaset crop calibrate` on {datetime.date.today().isoformat()}: "
              f"{counts['crop']} labelled {calibration.crop} photos, {counts['other']} others.\n"
              f"# At unsure_below {crop['unsure_below']}: false accept {chosen.false_accept:.1%} "
              f"(target {false_accept:.1%}), false reject {chosen.false_reject:.1%}, "
              f"wrong labels among diagnoses {chosen.error:.1%}.\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
