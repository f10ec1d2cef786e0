"""Object localization without box labels, from the backbone's own activations.

Selective Convolutional Descriptor Aggregation (Wei et al., 2017): summing a feature map
over channels gives an activation map whose above-mean region covers the objects. Each
connected region is a box; the one with the most activation is the main object.
The threshold sits half a standard deviation above SCDA's mean, which keeps the cells that
the object's edges light up out of its box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

UPSAMPLE = 4
MIN_AREA_FRACTION = 0.01
THRESHOLD_STD = 0.5  # SCDA keeps cells above the mean; half a deviation more stops edge spill-over


@dataclass(frozen=True)
class Box:
    """A box in image pixels, `score` in 0-1 (peak activation relative to the image's peak)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)


def find_boxes(
    feature_map: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5, max_boxes: int = 5
) -> list[Box]:
    """SCDA boxes of the objects in one image (main object first) from its C x h x w feature map.

    Always returns at least one box: the whole image when nothing stands out.
    """
    activation = upsample(feature_map.sum(axis=0))
    peak = activation.max()
    if peak <= 0 or np.ptp(activation) < 1e-6 * peak:
        return [Box(0, 0, *image_size, 0.0)]
    activation /= peak
    cutoff = activation.mean() + THRESHOLD_STD * activation.std()
    return boxes_from_map(activation, image_size, cutoff=cutoff, threshold=threshold, max_boxes=max_boxes)


def boxes_from_map(
    activation: np.ndarray, image_size: tuple[int, int], *, cutoff: float, threshold: float, max_boxes: int = 5
) -> list[Box]:
    """Boxes of the connected regions of a 0-1 map above `cutoff`; the one with most mass first.

    A box's score is its region's peak value; boxes other than the main one need `threshold`.
    """
    width, height = image_size
    regions, count = ndimage.label(activation > cutoff)
    index = np.arange(1, count + 1)
    masses = ndimage.sum_labels(activation, regions, index)
    peaks = ndimage.maximum(activation, regions, index)
    slices = ndimage.find_objects(regions)
    grid_h, grid_w = activation.shape
    boxes: list[tuple[float, Box]] = []
    for mass, region_peak, (rows, cols) in zip(masses, peaks, slices):
        if (rows.stop - rows.start) * (cols.stop - cols.start) < MIN_AREA_FRACTION * grid_h * grid_w:
            continue
        boxes.append((float(mass), _to_pixels(rows, cols, grid_h, grid_w, width, height, float(region_peak))))
    if not boxes:
        return [Box(0, 0, width, height, 0.0)]
    boxes.sort(key=lambda pair: pair[0], reverse=True)
    main, rest = boxes[0][1], [box for _, box in boxes[1:] if box.score >= threshold]
    return [main] + sorted(rest, key=lambda box: box.score, reverse=True)[: max_boxes - 1]


class ObjectnessModel:
    """Product-vs-background at each feature-map cell: Fisher's linear discriminant.

    Fitted on synthetic views (`models.augment`), whose product masks are known; its
    per-cell probability map replaces SCDA's channel sum once a catalog has taught it.
    Statistics are accumulated batch by batch (`partial_fit`), then solved (`solve`).
    """

    def __init__(self, *, shrinkage: float = 0.1) -> None:
        self.shrinkage = shrinkage
        self._sums: dict[bool, np.ndarray] = {}
        self._counts = {True: 0, False: 0}
        self._scatter: np.ndarray | None = None

    def partial_fit(self, feature_maps: np.ndarray, masks: Sequence[np.ndarray]) -> "ObjectnessModel":
        """Add cells of N x C x h x w maps: object where the mask covers > 60%, background under 5%."""
        for feature_map, mask in zip(feature_maps, masks):
            cover = _cell_cover(mask, feature_map.shape[1:])
            cells = feature_map.reshape(feature_map.shape[0], -1).T.astype(np.float64)
            for is_object, chosen in ((True, cover.ravel() > 0.6), (False, cover.ravel() < 0.05)):
                if chosen.any():
                    picked = cells[chosen]
                    self._sums[is_object] = self._sums.get(is_object, 0) + picked.sum(axis=0)
                    self._counts[is_object] += len(picked)
                    self._scatter = (0 if self._scatter is None else self._scatter) + picked.T @ picked
        return self

    @property
    def can_solve(self) -> bool:
        """Whether both object and background cells have been seen."""
        return min(self._counts.values()) > 0

    def solve(self) -> "ObjectnessModel":
        if not self.can_solve:
            raise ValueError("objectness needs both object and background cells")
        means = {label: self._sums[label] / self._counts[label] for label in (True, False)}
        total = self._counts[True] + self._counts[False]
        covariance = self._scatter / total - sum(
            self._counts[label] / total * np.outer(means[label], means[label]) for label in (True, False))
        covariance += self.shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        weights = np.linalg.solve(covariance, means[True] - means[False])
        self.coef_ = weights.astype(np.float32)
        self.intercept_ = float(-weights @ (means[True] + means[False]) / 2)
        return self

    def probability(self, feature_map: np.ndarray) -> np.ndarray:
        """P(product) per cell of one C x h x w map."""
        logits = np.tensordot(self.coef_, feature_map, axes=(0, 0)) + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))

    def boxes(self, feature_map: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5,
              max_boxes: int = 5) -> list[Box]:
        """Boxes of the products in one image, main product first: the regions where a product
        is more likely than not. Where no cell is, the photo shows no product the model knows
        (or all of one): the box is the whole photo, scored with the highest cell probability."""
        cells = self.probability(feature_map)
        if cells.max() <= 0.5:
            return [Box(0, 0, *image_size, round(float(cells.max()), 4))]
        probability = np.clip(upsample(cells), 0.0, 1.0)
        return boxes_from_map(probability, image_size, cutoff=0.5, threshold=threshold, max_boxes=max_boxes)


def upsample(grid: np.ndarray) -> np.ndarray:
    """A cell map at UPSAMPLE times its resolution (bilinear), for smoother region outlines."""
    return ndimage.zoom(grid.astype(np.float64), UPSAMPLE, order=1, grid_mode=True, mode="nearest")


def _cell_cover(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each feature-map cell that the pixel mask covers."""
    rows = np.array_split(np.arange(mask.shape[0]), grid[0])
    cols = np.array_split(np.arange(mask.shape[1]), grid[1])
    return np.array([[mask[r[0] : r[-1] + 1, c[0] : c[-1] + 1].mean() for c in cols] for r in rows])


def _to_pixels(rows: slice, cols: slice, grid_h: int, grid_w: int, width: int, height: int, score: float) -> Box:
    x0, x1 = cols.start / grid_w * width, cols.stop / grid_w * width
    y0, y1 = rows.start / grid_h * height, rows.stop / grid_h * height
    return Box(x0=int(x0), y0=int(y0), x1=int(min(width, np.ceil(x1))), y1=int(min(height, np.ceil(y1))),
               score=round(score, 4))


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
