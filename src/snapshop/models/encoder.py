"""From RGB images to descriptors, float embeddings and binary codes.

`ImageEncoder` runs the backbone twice per photo: once on the whole photo to find the
objects (localization), once on the chosen crop to describe it (pooled descriptor, and the
regional layout the category classifier reads). A clean shot (a product on a plain
backdrop, as in most catalogs) needs no model to find its product.
`Codec` maps descriptors to the index's compact float vectors (PCA-whitening) and binary
codes (ITQ); it is fitted on the catalog, or on a generic image set when the catalog is
too small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from snapshop.models.augment import generic_photos, is_clean_shot, product_box
from snapshop.models.backbone import Backbone
from snapshop.models.localize import Box, CellObjectness, find_boxes
from snapshop.models.pooling import layout, pool
from snapshop.models.projection import ITQ, LearnedWhitening, PCAWhitening, load_arrays, save_arrays

log = logging.getLogger(__name__)

GENERIC_CROPS_PER_IMAGE = 32
CROP_MARGIN = 0.1
PRODUCT_MARGIN = CROP_MARGIN / (1 + 2 * CROP_MARGIN)  # the margin as a share of the crop's side
GENERIC_SET_VERSION = 2  # bump when generic_images/ changes, to invalidate cached descriptors


class ImageEncoder:
    """Localize objects and describe image crops with one backbone."""

    def __init__(self, backbone: Backbone, *, pooling: str, detect_size: int, box_threshold: float,
                 localize: bool = True) -> None:
        self.backbone = backbone
        self.pooling = pooling
        self.detect_size = detect_size
        self.box_threshold = box_threshold
        self.localize = localize
        self.objectness: CellObjectness | None = None

    def locate(self, images: Sequence[Image.Image]) -> list[list[Box]]:
        """Boxes per image, main object first (one backbone pass at `detect_size`).

        In a clean shot the product is what differs from the plain backdrop. Otherwise the
        fitted objectness model finds the products when there is one, SCDA when there is not;
        with localization off, the box is the whole image and no pass is run.
        """
        return [boxes for boxes, _ in self.locate_with_candidates(images)]

    def locate_with_candidates(self, images: Sequence[Image.Image]) -> list[tuple[list[Box], list[Box]]]:
        """Per image, its boxes (as `locate`) and the candidate boxes for its main product
        (`CellObjectness.boxes_and_candidates`; only the main box without a fitted objectness model)."""
        if not self.localize:
            wholes = [Box(0, 0, image.width, image.height, 1.0) for image in images]
            return [([whole], [whole]) for whole in wholes]
        found: list[tuple[list[Box], list[Box]] | None] = []
        for image in images:
            box = product_box(image)
            clean = None if box is None else Box(*box, 1.0)
            found.append(None if clean is None else ([clean], [clean]))
        scenes = [position for position, located in enumerate(found) if located is None]
        maps = self.backbone.feature_maps([images[p] for p in scenes], self.detect_size) if scenes else []
        for position, feature_map in zip(scenes, maps):
            size = images[position].size
            if self.objectness is not None:
                found[position] = self.objectness.boxes_and_candidates(feature_map, size, threshold=self.box_threshold)
            else:
                boxes = find_boxes(feature_map, size, threshold=self.box_threshold)
                found[position] = (boxes, boxes[:1])
        return found

    def describe(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised descriptors, N x D float32: the pooled feature map, or the embedding
        of a model trained from clicks."""
        return self.describe_regions(images, with_layout=False).pooled

    def describe_regions(self, images: Sequence[Image.Image], *, with_layout: bool = True) -> "Descriptions":
        """Descriptors and regional layouts of the same backbone pass. A model trained from
        clicks describes a query crop inside the box it learned, a catalog shot over its product."""
        outputs = self.backbone.run(images)
        maps = outputs[0]
        if self.backbone.has_head:  # a catalog shot is described over its whole product
            clean = np.array([is_clean_shot(image) for image in images], bool)[:, None]
            pooled = np.where(clean, outputs[3], outputs[1]).astype(np.float32)
        else:
            pooled = pool(maps, self.pooling)
        return Descriptions(pooled, layout(maps) if with_layout else np.zeros((len(maps), 0), np.float32))


@dataclass
class Descriptions:
    """Per image: the descriptor (N x D, what the index stores) and the regional layout
    (N x 9C, what the category classifier reads)."""

    pooled: np.ndarray
    layout: np.ndarray


def crop(image: Image.Image, box: Box | Sequence[int]) -> Image.Image:
    """The part of the image around a box, widened to a square where the image allows.

    The backbone sees a square; a box stretched to one would distort the product's shape
    (trousers would look like a skirt), so the crop keeps the aspect and shows more of
    the product's surroundings on its narrow side instead. A margin of `CROP_MARGIN` of the
    box's side shows the product's outline against what is behind it.
    """
    region = crop_region(image, box)
    return image if region == (0, 0, image.width, image.height) else image.crop(region)


def crop_region(image: Image.Image, box: Box | Sequence[int]) -> tuple[int, int, int, int]:
    """The pixels `crop` takes: (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box.as_list() if isinstance(box, Box) else box
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(image.width, int(x1)), min(image.height, int(y1))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0, 0, image.width, image.height
    side = round(max(x1 - x0, y1 - y0) * (1 + 2 * CROP_MARGIN))
    x0, x1 = _widen(x0, x1, side, image.width)
    y0, y1 = _widen(y0, y1, side, image.height)
    return x0, y0, x1, y1


def _widen(start: int, stop: int, target: int, limit: int) -> tuple[int, int]:
    """The span [start, stop) grown evenly to `target` (at most `limit`), shifted to stay inside."""
    size = min(max(stop - start, target), limit)
    start = max(0, min((start + stop - size) // 2, limit - size))
    return start, start + size


@dataclass
class Codec:
    """Descriptor -> (L2-normalised float embedding, packed binary code)."""

    projection: PCAWhitening
    rotation: ITQ
    source: str

    @classmethod
    def fit(cls, descriptors: np.ndarray, *, dim: int, bits: int, source: str,
            pairs: tuple[np.ndarray, np.ndarray] | None = None) -> "Codec":
        """PCA-whitening, or whitening learned from matching `pairs` when given; then ITQ."""
        projection = LearnedWhitening(dim).fit(descriptors, pairs) if pairs is not None else PCAWhitening(dim).fit(descriptors)
        if projection.output_dim < bits:
            raise ValueError(f"cannot fit {bits}-bit codes on {projection.output_dim} dimensions")
        rotation = ITQ(bits).fit(projection.transform(descriptors))
        return cls(projection, rotation, source)

    @classmethod
    def unprojected(cls, descriptors: np.ndarray, *, bits: int, source: str) -> "Codec":
        """The descriptors as they are (an embedding trained as the metric), then ITQ."""
        projection = PCAWhitening(descriptors.shape[1])
        projection.mean_ = np.zeros(descriptors.shape[1])
        projection.components_ = np.eye(descriptors.shape[1], dtype=np.float32)
        return cls(projection, ITQ(bits).fit(projection.transform(descriptors)), source)

    def encode(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float features, packed codes): what the index stores of catalog images."""
        features = self.projection.transform(descriptors)
        return features, self.rotation.transform(features)

    def query(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float features, projections on the code's axes, through the code decoder): what a
        query searches the index with."""
        features = self.projection.transform(descriptors)
        return features, self.rotation.query(features)

    def to_blob(self) -> bytes:
        decoder = self.rotation.decoder_
        return save_arrays(mean=self.projection.mean_, components=self.projection.components_,
                           rotation=self.rotation.rotation_, **({} if decoder is None else {"decoder": decoder}))

    @classmethod
    def from_blob(cls, blob: bytes, source: str) -> "Codec":
        arrays = load_arrays(blob)
        projection = PCAWhitening(arrays["components"].shape[1])
        projection.mean_, projection.components_ = arrays["mean"], arrays["components"]
        rotation = ITQ(arrays["rotation"].shape[0])
        rotation.rotation_ = arrays["rotation"]
        rotation.decoder_ = arrays.get("decoder")  # None: a codec fitted before the decoder existed
        return cls(projection, rotation, source)


def generic_descriptors(encoder: ImageEncoder, cache_dir: Path, *, seed: int = 0) -> np.ndarray:
    """Descriptors of random crops of the shipped generic photos (cached per model version)."""
    cache = cache_dir / "generic" / f"{encoder.backbone.spec.version}-{encoder.pooling}-{GENERIC_SET_VERSION}.npy"
    if cache.is_file():
        return np.load(cache)
    rng = np.random.default_rng(seed)
    crops = [_random_crop(photo, rng) for photo in generic_photos() for _ in range(GENERIC_CROPS_PER_IMAGE)]
    log.info("describing %d crops of the generic image set", len(crops))
    descriptors = encoder.describe(crops)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, descriptors)
    return descriptors


def _random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = rng.uniform(0.3, 1.0)
    width, height = int(image.width * side), int(image.height * rng.uniform(0.3, 1.0))
    left, top = rng.integers(0, image.width - width + 1), rng.integers(0, image.height - height + 1)
    patch = image.crop((int(left), int(top), int(left) + width, int(top) + height))
    return ImageOps.mirror(patch) if rng.random() < 0.5 else patch
