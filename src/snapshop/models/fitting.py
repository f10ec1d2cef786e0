"""Synthetic views of a catalog, described for fitting: objectness, whitening, classifier.

For a sample of catalog images, `describe_views` composes one synthetic view each
(`models.augment`), runs the localization pass on it to accumulate the objectness model,
and describes the view's (jittered) product box like a query crop. The descriptors pair
each sampled catalog image with a query-like view of itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.models.augment import generic_photos, jitter_box, synthetic_view
from snapshop.models.encoder import ImageEncoder, crop
from snapshop.models.localize import ObjectnessModel

BATCH = 64


@dataclass
class CatalogViews:
    """Descriptors of views; `rows[i]` is the catalog row that view i shows."""

    rows: np.ndarray
    descriptors: np.ndarray
    objectness: ObjectnessModel


def describe_views(encoder: ImageEncoder, images: Sequence[Image.Image], rows: np.ndarray, *, seed: int = 0,
                   progress: bool = False) -> CatalogViews:
    """One synthetic view per image: objectness statistics and a descriptor of its product crop."""
    rng = np.random.default_rng(seed)
    scenes = generic_photos()
    objectness = ObjectnessModel()
    descriptors = []
    for start in tqdm(range(0, len(images), BATCH), desc="synthetic views", unit="batch", disable=not progress):
        views = [synthetic_view(image, scenes[rng.integers(len(scenes))], rng) for image in images[start : start + BATCH]]
        maps = encoder.backbone.feature_maps([view.image for view in views], encoder.detect_size)
        objectness.partial_fit(maps, [view.mask for view in views])
        crops = [crop(view.image, jitter_box(view.box, view.image.size, rng)) for view in views]
        descriptors.append(encoder.describe(crops))
    return CatalogViews(rows=np.asarray(rows), descriptors=np.concatenate(descriptors), objectness=objectness.solve())
