"""Identical-item detection: the same product listed twice (another seller, a re-upload).

Candidates are an image's few nearest catalog images by float cosine. A pair is the same product when

* its cosine is at least `accept_cosine` (the embedding alone is sure), or
* its cosine is at least `min_cosine` and the two photos verify geometrically: ORB keypoints
  matched under one similarity transform (RANSAC, at least `min_inliers` inliers), and the
  photos, aligned by that transform, correlate at least `min_correlation` where the product is;

and, in both cases, the products' dominant colours are at most `max_colour_distance` apart
(earth mover's distance in CIELAB: a model in another colour is a variant, not a duplicate). Groups are the connected components of verified pairs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from skimage.feature import ORB, match_descriptors
from skimage.measure import ransac
from skimage.transform import SimilarityTransform, warp

from snapshop.curate.colour import colour_distance

VERIFY_SIDE = 256
KEYPOINTS = 400
BACKDROP_LEVELS = 12.0  # grey levels from the border's median that still count as backdrop


@dataclass(frozen=True)
class ImageRef:
    """What verification needs of one catalog image."""

    image_id: int
    item_id: str
    source: str
    colours: list[dict]


@dataclass(frozen=True)
class PairCheck:
    """The evidence on one candidate pair, and the verdict."""

    cosine: float
    colour_distance: float
    inliers: int | None = None
    correlation: float | None = None
    same: bool = False

    def to_json(self) -> dict:
        return {key: (round(value, 4) if isinstance(value, float) else value)
                for key, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True)
class DuplicateRules:
    """Thresholds of the duplicate test (settings)."""

    accept_cosine: float = 0.97
    min_cosine: float = 0.4
    min_inliers: int = 10
    min_correlation: float = 0.95
    max_colour_distance: float = 14.0


class DuplicateVerifier:
    """Checks candidate pairs; keypoints of each photo are computed once per verifier."""

    def __init__(self, load: Callable[[str], Image.Image], rules: DuplicateRules) -> None:
        self.load = load
        self.rules = rules
        self._photos: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}

    def check(self, a: ImageRef, b: ImageRef, cosine: float) -> PairCheck:
        rules = self.rules
        distance = colour_distance(a.colours, b.colours)
        if cosine < rules.min_cosine or distance > rules.max_colour_distance:
            return PairCheck(cosine, distance)
        if cosine >= rules.accept_cosine:
            return PairCheck(cosine, distance, same=True)
        inliers, correlation = self._geometry(a, b)
        same = inliers >= rules.min_inliers and correlation >= rules.min_correlation
        return PairCheck(cosine, distance, inliers, round(correlation, 4), same)

    def _geometry(self, a: ImageRef, b: ImageRef) -> tuple[int, float]:
        """(RANSAC inliers, correlation of the aligned photos over the product) of a pair."""
        first, second = self._keypoints(a), self._keypoints(b)
        if first is None or second is None:
            return 0, 0.0
        (grey_a, points_a, descriptors_a), (grey_b, points_b, descriptors_b) = first, second
        matches = match_descriptors(descriptors_a, descriptors_b, cross_check=True, max_ratio=0.8)
        if len(matches) < 3:
            return 0, 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no inliers found" is an answer here, not a problem
            model, inliers = ransac((points_a[matches[:, 0]], points_b[matches[:, 1]]), SimilarityTransform,
                                    min_samples=3, residual_threshold=4, max_trials=300, rng=0)
        if not model or inliers is None:
            return 0, 0.0
        aligned = warp(grey_a, model.inverse, output_shape=grey_b.shape, cval=np.nan)
        return int(inliers.sum()), _product_correlation(aligned, grey_b)

    def _keypoints(self, ref: ImageRef) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if ref.image_id not in self._photos:
            self._photos[ref.image_id] = _orb(self.load(ref.source))
        return self._photos[ref.image_id]


def _orb(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Grey photo at VERIFY_SIDE, ORB keypoints (x, y) and descriptors; None when it has too few."""
    scale = VERIFY_SIDE / max(image.size)
    grey = np.asarray(image.convert("L").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                                Image.Resampling.BILINEAR), np.float64) / 255.0
    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(grey)
    except RuntimeError:  # too few corners to describe
        return None
    if len(orb.keypoints) < 3:
        return None
    return grey, orb.keypoints[:, ::-1].copy(), orb.descriptors


def _product_correlation(aligned: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of two aligned grey photos where either shows something other than backdrop."""
    valid = ~np.isnan(aligned)
    if valid.sum() < 100:
        return 0.0
    border = np.concatenate([target[0], target[-1], target[:, 0], target[:, -1]])
    backdrop = np.median(border)
    filled = np.where(valid, aligned, backdrop)
    product = valid & ((np.abs(target - backdrop) > BACKDROP_LEVELS / 255) | (np.abs(filled - backdrop) > BACKDROP_LEVELS / 255))
    if product.sum() < 100:
        return 0.0
    x, y = filled[product], target[product]
    if x.std() < 1e-6 or y.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def components(links: Iterable[tuple[str, str]], members: Iterable[str]) -> dict[str, str]:
    """Group id (the smallest item id of its connected component) of every item in `members`
    and of everything linked to them."""
    neighbours: dict[str, set[str]] = {}
    for a, b in links:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    group: dict[str, str] = {}
    for start in members:
        if start in group:
            continue
        seen, stack = {start}, [start]
        while stack:
            for other in neighbours.get(stack.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        name = min(seen)
        group.update((item, name) for item in seen)
    return group
