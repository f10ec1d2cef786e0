"""Object localization without box labels, from the backbone's own activations.

Selective Convolutional Descriptor Aggregation (Wei et al., 2017): summing a feature map
over channels gives an activation map whose above-mean region covers the objects. Each
connected region is a box; the one with the most activation is the main object.
The threshold sits half a standard deviation above SCDA's mean, which keeps the cells that
the object's edges light up out of its box.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Boxes of the objects in one image (main object first) from its C x h x w feature map.

    Always returns at least one box: the whole image when nothing stands out.
    """
    width, height = image_size
    activation = ndimage.zoom(feature_map.sum(axis=0).astype(np.float64), UPSAMPLE, order=1,
                              grid_mode=True, mode="nearest")
    peak = activation.max()
    whole = Box(0, 0, width, height, 0.0)
    if peak <= 0 or np.ptp(activation) < 1e-6 * peak:
        return [whole]
    regions, count = ndimage.label(activation > activation.mean() + THRESHOLD_STD * activation.std())
    index = np.arange(1, count + 1)
    masses = ndimage.sum_labels(activation, regions, index)
    peaks = ndimage.maximum(activation, regions, index)
    slices = ndimage.find_objects(regions)
    grid_h, grid_w = activation.shape
    boxes: list[tuple[float, Box]] = []
    for mass, region_peak, (rows, cols) in zip(masses, peaks, slices):
        if (rows.stop - rows.start) * (cols.stop - cols.start) < MIN_AREA_FRACTION * grid_h * grid_w:
            continue
        box = _to_pixels(rows, cols, grid_h, grid_w, width, height, float(region_peak / peak))
        boxes.append((float(mass), box))
    if not boxes:
        return [whole]
    boxes.sort(key=lambda pair: pair[0], reverse=True)
    main, rest = boxes[0][1], [box for _, box in boxes[1:] if box.score >= threshold]
    return [main] + sorted(rest, key=lambda box: box.score, reverse=True)[: max_boxes - 1]


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
