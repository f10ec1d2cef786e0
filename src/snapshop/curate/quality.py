"""How good a product photo is for display: resolution, sharpness, exposure, backdrop, overlays.

Each signal is in 0-1 (1 = good) and measured on the photo as decoded, around the product's box;
the score is their weighted geometric mean, so one bad signal pulls the score down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.measure import blur_effect

from snapshop.models.augment import is_clean_shot

WORK_SIDE = 256  # the product's box is measured at this longer side
GOOD_SIDE = 400  # a product shown this large (pixels, shorter side of its box) or larger is sharp enough
POOR_SIDE = 48
GLYPH_CONTRAST = 28  # grey levels above or below the 9x9 neighbourhood mean
MIN_LINE = 4  # glyphs side by side that make a line of text
WEIGHTS = {"resolution": 0.2, "sharpness": 0.2, "exposure": 0.25, "backdrop": 0.15, "overlay": 0.2}
CLUTTERED_BACKDROP = 0.25
FLOOR = 0.05


@dataclass(frozen=True)
class ImageQuality:
    """The quality score of one image and the signals it is made of."""

    score: float
    signals: dict[str, float]


def image_quality(image: Image.Image, box: list[int] | None = None) -> ImageQuality:
    """Score a decoded RGB photo; `box` is the product's box (the whole photo when None)."""
    x0, y0, x1, y1 = box or [0, 0, image.width, image.height]
    signals = {
        "resolution": _resolution(min(x1 - x0, y1 - y0)),
        "sharpness": _sharpness(_grey(image.crop((x0, y0, x1, y1)))),
        "exposure": _exposure(np.asarray(image.convert("L"), np.float32)),
        "backdrop": 1.0 if is_clean_shot(image) else CLUTTERED_BACKDROP,
        "overlay": 1.0 - text_overlay(image),
    }
    score = float(np.exp(sum(w * np.log(max(signals[name], FLOOR)) for name, w in WEIGHTS.items())))
    return ImageQuality(round(score, 4), {name: round(float(v), 4) for name, v in signals.items()})


def _resolution(short_side: int) -> float:
    """0 at POOR_SIDE pixels or fewer, 1 at GOOD_SIDE or more, linear in log size between."""
    return float(np.clip(np.log(max(short_side, 1) / POOR_SIDE) / np.log(GOOD_SIDE / POOR_SIDE), 0.0, 1.0))


def _grey(image: Image.Image) -> np.ndarray:
    """Grey levels, the longer side brought down to WORK_SIDE (never up: upscaling adds no detail)."""
    scale = min(1.0, WORK_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), np.float32)


def _sharpness(grey: np.ndarray) -> float:
    """1 - the blur effect of Crete-Roffet et al. (how little a re-blur changes the photo)."""
    return 1.0 - float(blur_effect(grey / 255.0))


def _exposure(luminance: np.ndarray) -> float:
    """Low when the brightest tones are dim (under-exposed) or the darkest are washed out."""
    dark, bright = np.percentile(luminance, [1, 99]) / 255.0
    under = np.clip((bright - 0.3) / 0.4, 0.0, 1.0)
    over = np.clip((0.85 - dark) / 0.35, 0.0, 1.0)
    return float(under * over)


def text_overlay(image: Image.Image) -> float:
    """0-1: how much the photo looks covered by printed text or a watermark.

    A glyph is a connected blob of strong local contrast (darker or lighter than its
    surroundings), 2.5-15% of the photo high, no wider than 1.5 times its height, filling
    15-65% of its box (strokes, not solid blocks or texture cells). Text is a line of at least
    MIN_LINE glyphs side by side on one baseline. The score counts glyphs in lines: 12 or more is 1."""
    grey = _grey(image)
    contrast = grey - ndimage.uniform_filter(grey, 9)
    height = grey.shape[0]
    in_lines = 0
    for strokes in (contrast < -GLYPH_CONTRAST, contrast > GLYPH_CONTRAST):
        labels, _ = ndimage.label(strokes)
        glyphs = []
        for number, found in enumerate(ndimage.find_objects(labels), start=1):
            h, w = found[0].stop - found[0].start, found[1].stop - found[1].start
            if 0.025 * height <= h <= 0.15 * height and 0.15 * h <= w <= 1.5 * h \
                    and 0.15 <= (labels[found] == number).mean() <= 0.65:
                glyphs.append((found[0].stop, h, found[1].start, found[1].stop))
        line_of = list(range(len(glyphs)))  # union-find over "next glyph on the same line"
        for i, (bottom, h, _, right) in enumerate(glyphs):
            for j, (other_bottom, other_h, left, _) in enumerate(glyphs):
                if abs(other_bottom - bottom) <= 0.2 * h and 0.7 <= other_h / h <= 1.4 and 0 < left - right <= 0.8 * h:
                    line_of[_root(line_of, i)] = _root(line_of, j)
        sizes = np.bincount([_root(line_of, i) for i in range(len(glyphs))], minlength=1)
        in_lines += int(sizes[sizes >= MIN_LINE].sum())
    return float(np.clip(in_lines / 12.0, 0.0, 1.0))


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i
