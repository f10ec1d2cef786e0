"""The object box, learned from clicks.

A click says which product a shopper's photo shows. Where that product's catalog
appearance (its pooled descriptor) matches the cells of the photo's feature map, among the
cells the current localization takes for a product, is where the product is: one box per
clicked photo, and no box label anywhere. The objectness model (`models.localize`, until
now fitted on synthetic views) is fitted again on those boxes, so the localization learns
the real photos' backgrounds: the clutter it took for a product, which no click confirms,
becomes background. The embedding is then trained on the crops of that learned box
(`relocated`), the crops the new version's searches will embed.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.errors import SnapshopError
from snapshop.learn.mining import Triplet
from snapshop.learn.train import CatalogImages
from snapshop.models.encoder import ImageEncoder, crop
from snapshop.models.localize import CellObjectness, ObjectnessModel, boxes_from_map, upsample
from snapshop.models.pooling import pool

log = logging.getLogger(__name__)

MAX_PHOTOS = 2000  # clicked photos located (measured: 400 of them already give most of the gain)
BATCH = 16
SPREAD = 0.5  # a cell is the product's when its score is this many deviations above the photo's mean


def learn_objectness(encoder: ImageEncoder, load: Callable[[str], Image.Image], triplets: list[Triplet],
                     catalog: CatalogImages, *, seed: int = 0, progress: bool = False) -> tuple[ObjectnessModel, int] | None:
    """An objectness model fitted on the boxes where the clicked products are found, and how
    many photos taught it; None without a current objectness model or enough usable photos."""
    if encoder.objectness is None:
        log.info("no box learned from clicks: the index has no objectness model to start from")
        return None
    clicked = {triplet.query_image: triplet.positive for triplet in triplets}  # one click per photo
    photos = list(clicked)
    if len(photos) > MAX_PHOTOS:
        photos = [photos[i] for i in np.sort(np.random.default_rng(seed).choice(len(photos), MAX_PHOTOS, replace=False))]
    appearance = _product_descriptors(encoder, load, catalog, {clicked[photo] for photo in photos})
    model, taught = ObjectnessModel(), 0
    for start in tqdm(range(0, len(photos), BATCH), desc="learning the box", unit="batch", disable=not progress):
        batch = [(photo, clicked[photo]) for photo in photos[start:start + BATCH] if clicked[photo] in appearance]
        images = []
        for photo, _ in batch:
            try:
                images.append(load(str(photo)))
            except SnapshopError as exc:
                log.info("%s: %s", photo, exc)
                images.append(None)
        kept = [(image, item) for image, (_, item) in zip(images, batch) if image is not None]
        if not kept:
            continue
        maps = encoder.backbone.feature_maps([image for image, _ in kept], encoder.detect_size)
        masks = [clicked_product_mask(encoder.objectness, feature_map, appearance[item], image.size)
                 for (image, item), feature_map in zip(kept, maps)]
        model.partial_fit(maps, masks)
        taught += len(kept)
    if not model.can_solve:
        log.info("no box learned from clicks: no photo showed both product and background")
        return None
    return model.solve(), taught


def relocated(encoder: ImageEncoder, objectness: ObjectnessModel, load: Callable[[str], Image.Image],
              triplets: list[Triplet], *, progress: bool = False) -> list[Triplet]:
    """The triplets with each photo's box found again, by `objectness` (photos that cannot be
    read keep theirs; training skips them anyway)."""
    photos = list(dict.fromkeys(triplet.query_image for triplet in triplets))
    boxes = found_boxes(encoder, objectness, load, photos, desc="boxing the clicked photos", progress=progress)
    return [replace(triplet, box=boxes.get(triplet.query_image, triplet.box)) for triplet in triplets]


def found_boxes(encoder: ImageEncoder, objectness: ObjectnessModel, load: Callable[[str], Image.Image],
                photos: list[Path | str], *, desc: str = "boxing photos",
                progress: bool = False) -> dict[Path | str, list[int]]:
    """The main box `encoder` finds in each readable photo when it locates with `objectness`
    ([x0, y0, x1, y1] pixels, by photo; unreadable photos are left out)."""
    learned = copy.copy(encoder)
    learned.objectness = objectness
    boxes: dict[Path | str, list[int]] = {}
    for start in tqdm(range(0, len(photos), BATCH), desc=desc, unit="batch", disable=not progress):
        readable = []
        for photo in photos[start:start + BATCH]:
            try:
                readable.append((photo, load(str(photo))))
            except SnapshopError as exc:
                log.info("%s: %s", photo, exc)
        for (photo, _), found in zip(readable, learned.locate([image for _, image in readable])):
            boxes[photo] = found[0].as_list()
    return boxes


def clicked_product_mask(objectness: CellObjectness, feature_map: np.ndarray, product: np.ndarray,
                         size: tuple[int, int]) -> np.ndarray:
    """Pixel mask (H x W) of the box where the clicked product is in one photo: the main region
    of product-likeness times similarity to the product's catalog descriptor."""
    cells = feature_map.reshape(len(feature_map), -1)
    similarity = product @ (cells / (np.linalg.norm(cells, axis=0, keepdims=True) + 1e-6))
    score = objectness.probability(feature_map) * np.clip(similarity.reshape(feature_map.shape[1:]), 0.0, None)
    score = upsample(score)
    score = (score - score.min()) / (np.ptp(score) + 1e-9)
    box = boxes_from_map(score, size, cutoff=float(score.mean() + SPREAD * score.std()), threshold=1.0)[0]
    mask = np.zeros((size[1], size[0]), bool)
    mask[box.y0:box.y1, box.x0:box.x1] = True
    return mask


def _product_descriptors(encoder: ImageEncoder, load: Callable[[str], Image.Image], catalog: CatalogImages,
                         items: set[str]) -> dict[str, np.ndarray]:
    """Each item's appearance in the backbone's own channels: its first catalog image's
    product, GeM-pooled and L2-normalised (the cells it is compared with are raw channels too)."""
    first: dict[str, tuple[str, list[int] | None]] = {}
    for source, box, item in zip(catalog.sources, catalog.boxes, catalog.item_ids):
        if item in items and item not in first:
            first[item] = (source, box)
    found: dict[str, np.ndarray] = {}
    names = list(first)
    for start in range(0, len(names), BATCH):
        crops, kept = [], []
        for item in names[start:start + BATCH]:
            source, box = first[item]
            try:
                image = load(source)
            except SnapshopError as exc:
                log.info("%s: %s", source, exc)
                continue
            crops.append(crop(image, box) if box else image)
            kept.append(item)
        if crops:
            pooled = pool(encoder.backbone.feature_maps(crops), "gem")  # L2-normalised
            found.update(zip(kept, pooled))
    return found
