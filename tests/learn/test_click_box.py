"""The box learned from clicks: the clicked product's appearance picks its region of the photo,
and an objectness model fitted on those regions finds products where the old one took clutter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snapshop.learn.boxes import clicked_product_mask, learn_objectness, relocated
from snapshop.learn.mining import Triplet
from snapshop.learn.train import CatalogImages
from snapshop.models.localize import ObjectnessModel, box_iou

CHANNELS, GRID = 16, 12


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def every_cell_a_product(channels: int = CHANNELS) -> ObjectnessModel:
    """An objectness model that finds every cell product-like (probability ~0.73): only the
    click can tell the regions apart."""
    model = ObjectnessModel()
    model.coef_, model.intercept_ = np.zeros(channels, np.float32), 1.0
    return model


def two_regions(product: np.ndarray, other: np.ndarray) -> np.ndarray:
    """A C x h x w map showing `product` in the top-left block and `other` in the bottom-right."""
    feature_map = np.full((CHANNELS, GRID, GRID), 0.01, np.float32)
    feature_map[:, 1:5, 1:5] = product[:, None, None]
    feature_map[:, 7:11, 6:11] = other[:, None, None]
    return feature_map


def test_the_clicked_products_region_is_boxed_not_the_other_product_like_one():
    rng = np.random.default_rng(0)
    product, other = unit(rng.random(CHANNELS)), unit(rng.random(CHANNELS) * np.eye(CHANNELS)[0] + 0.01)
    size = (240, 240)  # 20 px a cell

    mask = clicked_product_mask(every_cell_a_product(), two_regions(product, other), product, size)
    ys, xs = np.nonzero(mask)
    assert box_iou([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [20, 20, 100, 100]) > 0.6

    mask = clicked_product_mask(every_cell_a_product(), two_regions(product, other), other, size)
    ys, xs = np.nonzero(mask)
    assert box_iou([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [120, 140, 220, 220]) > 0.6


def test_clicks_teach_the_localization_the_real_photos_clutter(backbone, catalog, draw_shopper_photo, tmp_path):
    """A localization that has only seen products on plain backgrounds boxes clutter too; fitted
    again on where the clicked products are in cluttered photos, it finds the product in new ones."""
    from PIL import Image, ImageDraw

    from snapshop.catalog.images import load_image
    from snapshop.models.encoder import ImageEncoder

    side, places = 150, [(40, 60), (250, 230), (150, 40), (60, 260)]

    def photo_of(item: str, at: tuple[int, int], *, clutter: bool) -> Image.Image:
        photo = draw_shopper_photo(Image.open(catalog.image(item)).convert("RGB"), side=side, at=at,
                                   canvas=(448, 448), background=(200, 200, 200))
        paint = ImageDraw.Draw(photo)
        for x in range(0, 448, 24) if clutter else ():  # blue stripes away from the product
            if not at[0] - 30 < x < at[0] + side + 30:
                paint.rectangle([x, 0, x + 9, 447], fill=(40, 90, 160))
        return photo

    def true_box(at: tuple[int, int]) -> list[int]:
        return [at[0], at[1], at[0] + side, at[1] + side]

    items = catalog.item_ids[:8]
    plain = [(photo_of(item, places[n % 4], clutter=False), places[n % 4]) for n, item in enumerate(items)]
    masks = []
    for _, at in plain:
        mask = np.zeros((448, 448), bool)
        mask[at[1]:at[1] + side, at[0]:at[0] + side] = True
        masks.append(mask)
    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    encoder.objectness = ObjectnessModel().partial_fit(backbone.feature_maps([p for p, _ in plain], 448), masks).solve()
    triplets = []
    for n, item in enumerate(items):
        path = tmp_path / f"{item}.jpg"
        photo_of(item, places[n % 4], clutter=True).save(path)
        triplets.append(Triplet(path, None, item, (), n))
    images = CatalogImages([str(catalog.image(item)) for item in items], [None] * len(items), list(items), {})

    learned, photos = learn_objectness(encoder, load_image, triplets, images)

    assert photos == len(items)
    before, after = [], []
    for item, at in zip(catalog.item_ids[9:12], [(280, 60), (100, 250), (200, 150)]):  # products and places not clicked
        photo = photo_of(item, at, clutter=True)
        feature_map = backbone.feature_maps([photo], 448)[0]
        before.append(box_iou(encoder.objectness.boxes(feature_map, photo.size)[0].as_list(), true_box(at)))
        after.append(box_iou(learned.boxes(feature_map, photo.size)[0].as_list(), true_box(at)))
    assert np.mean(after) > 0.4 and np.mean(after) > np.mean(before) + 0.2, (before, after)

    unreadable = Triplet(tmp_path / "gone.jpg", [1, 2, 3, 4], items[0], (), 99)
    boxed = relocated(encoder, learned, load_image, triplets + [unreadable])  # what the head then trains on
    ious = [box_iou(t.box, true_box(places[n % 4])) for n, t in enumerate(boxed[: len(items)])]
    assert np.mean(ious) > 0.4, ious
    assert boxed[-1].box == [1, 2, 3, 4]  # a photo that cannot be read keeps its box
    assert encoder.objectness is not learned  # the index's own localization is untouched


def test_without_an_objectness_model_to_start_from_nothing_is_learned(backbone):
    from snapshop.models.encoder import ImageEncoder

    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    triplet = Triplet(Path("q.jpg"), None, "a", (), 1)
    assert learn_objectness(encoder, pytest.fail, [triplet], CatalogImages(["a.png"], [None], ["a"], {})) is None
