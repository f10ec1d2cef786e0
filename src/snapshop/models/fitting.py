"""Synthetic views of a catalog, described for fitting: objectness, whitening, classifier.

For a sample of catalog images, `describe_views` composes `views_per_image` synthetic
views each (`models.augment`) and runs the localization pass on them; views of clean shots, whose
product masks are exact, teach the objectness models. Each view is then described twice, like
a query: on its (jittered) true product box, and on the box that a Fisher objectness model
fitted on the views before it finds (out of sample, misses included: the crop a shopper's
photo gets). The context objectness model, which localizes queries from then on, is trained
on all the views at the end. The catalog image itself is described too, so the classifier
learns from catalog shots and views alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.models.augment import VIEW_SIDE, cut_out, generic_photos, is_clean_shot, jitter_box, synthetic_view
from snapshop.models.backbone import Backbone
from snapshop.models.encoder import Descriptions, ImageEncoder, crop
from snapshop.models.localize import CellObjectness, ContextObjectness, ObjectnessModel, find_boxes

BATCH = 64
MIN_OBJECTNESS_VIEWS = 20  # views of clean shots below which a context net learns noise, not products


@dataclass
class CatalogViews:
    """Descriptions of views; `rows[i]` is the catalog row that view i shows.

    `truth`: crops of the views' (jittered) true boxes; `found`: crops of the boxes the
    localizer found; `catalog`: the catalog images the views show, located as at indexing.
    """

    rows: np.ndarray
    truth: Descriptions
    found: Descriptions
    catalog: Descriptions
    objectness: CellObjectness | None  # None when under MIN_OBJECTNESS_VIEWS views of clean shots
    # showed what a product looks like (a catalog of scenes: SCDA localizes it)
    fronts: dict[str, np.ndarray] | None = None  # per crop kind, the `front` backbone's maps (float16);
    # "catalog" has one per catalog image, the others one per view

    @property
    def descriptors(self) -> np.ndarray:
        """Pooled descriptors of the true-box crops (one per view)."""
        return self.truth.pooled


def describe_views(encoder: ImageEncoder, images: Sequence[Image.Image], rows: np.ndarray, *, seed: int = 0,
                   views_per_image: int = 1, fit_objectness: bool = True, front: Backbone | None = None,
                   progress: bool = False) -> CatalogViews:
    """`views_per_image` synthetic views per image (each catalog image described once, its
    description repeated per view): an objectness model and descriptions of product crops.
    Without `fit_objectness`, the views are boxed by the encoder's own objectness model (one
    learned from clicks, which views do not replace) and none is fitted. With a `front`
    backbone, the same crops' maps from it are kept too (what a category network trains on)."""
    rng = np.random.default_rng(seed)
    scenes = generic_photos()
    fisher, context = ObjectnessModel(), ContextObjectness(seed=seed)
    parts: dict[str, list[Descriptions]] = {"truth": [], "found": [], "catalog": []}
    fronts: dict[str, list[np.ndarray]] = {name: [] for name in parts}
    for start in tqdm(range(0, len(images), BATCH), desc="synthetic views", unit="batch", disable=not progress):
        batch = images[start : start + BATCH]
        views = []
        for image in batch:
            cutout = cut_out(image)  # once for all the image's views
            views += [synthetic_view(image, scenes[rng.integers(len(scenes))], rng, cutout=cutout)
                      for _ in range(views_per_image)]
        # At the views' own side, whatever `detect_size` photos are localized at: the objectness
        # net is convolutional, and a larger photo gives a small product more cells (docs/benchmarks.md).
        maps = encoder.backbone.feature_maps([view.image for view in views], VIEW_SIDE)
        # Boxes from the model fitted on the views before this batch: out of sample, as for a query.
        current = fisher if fit_objectness and fisher.can_solve else encoder.objectness
        found = [_main_box(current, m, view.image.size) for m, view in zip(maps, views)]
        if fit_objectness:
            clean_sources = [is_clean_shot(image) for image in batch]  # a product's true silhouette
            clean = [i for i in range(len(views)) if clean_sources[i // views_per_image]]
            for model in (fisher, context):
                model.partial_fit(maps[clean], [views[i].mask for i in clean])
            if fisher.can_solve:
                fisher.solve()
        crops = {"truth": [crop(view.image, jitter_box(view.box, view.image.size, rng)) for view in views],
                 "found": [crop(view.image, box) for view, box in zip(views, found)],
                 "catalog": [crop(image, boxes[0]) for image, boxes in zip(batch, encoder.locate(batch))]}
        if front is not None:
            for name, pictures in crops.items():
                fronts[name].append(front.feature_maps(pictures).astype(np.float16))
        parts["truth"].append(encoder.describe_regions(crops["truth"]))
        parts["found"].append(encoder.describe_regions(crops["found"]))
        catalog = encoder.describe_regions(crops["catalog"])
        parts["catalog"].append(Descriptions(np.repeat(catalog.pooled, views_per_image, axis=0),
                                             np.repeat(catalog.layout, views_per_image, axis=0)))
    joined = {name: Descriptions(np.concatenate([d.pooled for d in described]),  # layouts in half precision:
                                 np.concatenate([d.layout.astype(np.float16) for d in described]))  # 9x the size
              for name, described in parts.items()}
    return CatalogViews(rows=np.repeat(np.asarray(rows), views_per_image),
                        objectness=(context.solve(progress=progress)
                                    if context.can_solve and context.images_seen >= MIN_OBJECTNESS_VIEWS else None),
                        fronts={name: np.concatenate(maps) for name, maps in fronts.items()} if front else None, **joined)


def _main_box(objectness: CellObjectness | None, feature_map: np.ndarray, size: tuple[int, int]) -> list[int]:
    boxes = objectness.boxes(feature_map, size) if objectness is not None else find_boxes(feature_map, size)
    return boxes[0].as_list()
