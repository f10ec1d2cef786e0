"""Synthetic views, learned whitening and the objectness model fitted on views."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import product_image
from snapshop.models.augment import generic_photos, jitter_box, object_alpha, synthetic_view
from snapshop.models.encoder import ImageEncoder
from snapshop.models.fitting import describe_views
from snapshop.models.localize import box_iou
from snapshop.models.projection import LearnedWhitening, PCAWhitening


def test_object_alpha_separates_the_product_from_its_white_background():
    alpha = object_alpha(product_image("square", 0))
    assert alpha[128, 128] == 1.0 and alpha[2, 2] == 0.0
    assert 0.2 < (alpha > 0.5).mean() < 0.6


def test_a_photo_that_is_not_a_clean_shot_is_one_opaque_rectangle():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert object_alpha(noisy).min() == 1.0


def test_synthetic_view_records_where_the_product_went():
    rng = np.random.default_rng(3)
    view = synthetic_view(product_image("circle", 1), generic_photos()[0], rng)
    x0, y0, x1, y1 = view.box
    assert view.mask.shape == (view.image.height, view.image.width)
    assert view.mask[y0:y1, x0:x1].mean() > 0.5 and view.mask.sum() == view.mask[y0:y1, x0:x1].sum()
    assert 0 <= x0 < x1 <= view.image.width and 0 <= y0 < y1 <= view.image.height


def test_jittered_box_stays_inside_and_near():
    rng = np.random.default_rng(0)
    for _ in range(50):
        moved = jitter_box([40, 30, 140, 130], (200, 160), rng)
        assert 0 <= moved[0] < moved[2] <= 200 and 0 <= moved[1] < moved[3] <= 160
        assert box_iou(moved, [40, 30, 140, 130]) > 0.5


def test_learned_whitening_discounts_the_directions_in_which_views_differ():
    rng = np.random.default_rng(0)
    products = rng.standard_normal((400, 32))
    nuisance = np.zeros((400, 32))
    nuisance[:, 0] = 20 * rng.standard_normal(400)  # views vary wildly along axis 0 only
    anchors, views = products, products + nuisance
    data = np.concatenate([anchors, views])
    learned = LearnedWhitening(8, pre_dim=32).fit(data, (anchors, views))
    plain = PCAWhitening(8).fit(data)

    def view_distance(model) -> float:
        return float(np.linalg.norm(model.transform(anchors) - model.transform(views), axis=1).mean())

    assert view_distance(learned) < 0.5 * view_distance(plain)


def test_objectness_fitted_on_views_finds_a_product_in_a_scene(backbone):
    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    catalog = [product_image(shape, variant) for shape in ("circle", "square", "triangle") for variant in range(4)]
    views = describe_views(encoder, catalog * 3, np.arange(36), seed=1)
    assert views.descriptors.shape == (36, 1280)
    rng = np.random.default_rng(11)
    scenes = generic_photos()
    shots = [synthetic_view(image, scenes[int(rng.integers(len(scenes)))], rng) for image in catalog * 2]

    def mean_iou() -> float:
        found = encoder.locate([shot.image for shot in shots])
        return float(np.mean([box_iou(boxes[0].as_list(), shot.box) for boxes, shot in zip(found, shots)]))

    scda = mean_iou()
    encoder.objectness = views.objectness
    learned = mean_iou()
    assert learned > 0.4 and learned > scda + 0.05
