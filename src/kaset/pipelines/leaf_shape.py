"""Measure the leaf in a photo: how much of it is leaf-coloured, and the outline of the largest leaf.

A crop disease model answers with one of its own labels whatever it is shown, and a general
ImageNet model has no class for "a mango leaf" (it calls drawn and real leaves alike "hair slide",
"ocarina" or "envelope"). So Crop Guardian asks for positive evidence of its own: a leaf-coloured
region (green to yellow-green, saturated), its size in the frame, whether it runs off the edges,
how elongated it is (a mango leaf is lanceolate, about three to five times as long as wide; a
cereal leaf is a long strip, many broad leaves are nearly round) and how convex its outline is
(one leaf, not a tree canopy or a scatter of shapes).

Measured on a thumbnail of at most 192 pixels a side: a few milliseconds, no model. Lesions and
powdery patches inside the leaf are not leaf-coloured; the region's holes are filled before
its outline is measured, so spots do not break the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

THUMBNAIL_SIDE = 192


class LeafColour(BaseModel):
    """Which pixels count as leaf: hue in degrees (0-360), saturation and value in 0-1."""

    model_config = ConfigDict(extra="forbid")
    hue: tuple[float, float] = (50.0, 175.0)
    min_saturation: float = Field(default=0.18, ge=0, le=1)
    min_value: float = Field(default=0.12, ge=0, le=1)


@dataclass(frozen=True)
class LeafMeasure:
    """The photo's leaf-coloured fraction and the outline of its largest leaf-coloured region."""

    colour_fraction: float  # of the whole photo, every region
    area: float  # of the largest region, holes filled, as a fraction of the photo
    elongation: float  # length / width of that region (principal axes); 0 when there is none
    solidity: float  # its area / the area of its convex hull (1 = convex)
    edges_touched: int  # how many of the photo's four edges the region reaches


NO_LEAF = LeafMeasure(colour_fraction=0.0, area=0.0, elongation=0.0, solidity=0.0, edges_touched=0)


def leaf_mask(image: np.ndarray, colour: LeafColour) -> np.ndarray:
    thumbnail = Image.fromarray(image)
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    hsv = np.asarray(thumbnail.convert("HSV"), dtype=np.float32)
    hue, saturation, value = hsv[..., 0] * (360 / 255), hsv[..., 1] / 255, hsv[..., 2] / 255
    mask = ((hue >= colour.hue[0]) & (hue <= colour.hue[1]) & (saturation >= colour.min_saturation)
            & (value >= colour.min_value))
    # One opening removes single green pixels (noise, chromatic fringes) that would join regions.
    return np.asarray(ndimage.binary_opening(mask, iterations=1), dtype=bool)


def measure_leaf(image: np.ndarray, colour: LeafColour) -> LeafMeasure:
    """Blocking (numpy and SciPy on a thumbnail): call it off the event loop."""
    mask = leaf_mask(image, colour)
    labels, count = ndimage.label(mask)
    if count == 0:
        return NO_LEAF
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    leaf = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(leaf)
    height, width = leaf.shape
    area = float(leaf.mean())
    points = np.stack([xs, ys]).astype(np.float64)
    if points.shape[1] < 3:
        return LeafMeasure(float(mask.mean()), area, 0.0, 0.0, 0)
    low, high = np.sort(np.linalg.eigvalsh(np.cov(points)))
    elongation = float(np.sqrt(high / max(low, 1e-6)))
    try:
        # Pixel centres' hull misses half a pixel all round; for regions of a few hundred pixels
        # and more (the only ones that pass the size check) that is a percent or two.
        hull_area = float(ConvexHull(points.T).volume)
        solidity = min(1.0, float(leaf.sum()) / max(hull_area, 1.0))
    except QhullError:  # all points on one line
        solidity = 0.0
    edges = int(ys.min() == 0) + int(ys.max() == height - 1) + int(xs.min() == 0) + int(xs.max() == width - 1)
    return LeafMeasure(colour_fraction=float(mask.mean()), area=area, elongation=elongation, solidity=solidity,
                       edges_touched=edges)
