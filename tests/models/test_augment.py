"""Synthetic views, learned whitening and the objectness model fitted on views."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from snapshop.models.augment import (cut_out, generic_photos, is_clean_shot, jitter_box, object_alpha, product_box,
                                     synthetic_view)
from snapshop.models.encoder import ImageEncoder
from snapshop.models.fitting import MIN_OBJECTNESS_VIEWS, describe_views
from snapshop.models.localize import box_iou
from snapshop.models.projection import LearnedWhitening, PCAWhitening


def test_object_alpha_separates_the_product_from_its_white_background(draw_product):
    alpha = object_alpha(draw_product("square", 0))
    assert alpha[128, 128] == 1.0 and alpha[2, 2] == 0.0
    assert 0.2 < (alpha > 0.5).mean() < 0.6


def test_a_photo_that_is_not_a_clean_shot_is_one_opaque_rectangle():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert object_alpha(noisy).min() == 1.0


def test_a_product_touching_the_edges_is_still_a_clean_shot_and_a_scene_is_not():
    tall = Image.new("RGB", (120, 120), "white")
    tall.paste((30, 60, 150), (40, 0, 80, 120))  # trousers fill the height of their shot
    assert is_clean_shot(tall) and product_box(tall) == [40, 0, 80, 120]
    scene = generic_photos()[0]
    assert not is_clean_shot(scene) and product_box(scene) is None
    assert object_alpha(scene).min() == 1.0


def test_a_product_on_a_starry_sky_is_a_scene_not_a_clean_shot():
    rng = np.random.default_rng(0)
    sky = np.zeros((240, 320, 3), np.uint8)
    stars = rng.integers(0, [240, 320], (2000, 2))
    sky[stars[:, 0], stars[:, 1]] = 255  # stars all across a black backdrop
    photo = Image.fromarray(sky)
    photo.paste((200, 40, 40), (100, 60, 160, 140))
    assert not is_clean_shot(photo) and product_box(photo) is None  # the localizer's job, not the whole photo
    sky[stars[:, 0], stars[:, 1]] = 0
    studio = Image.fromarray(sky)
    studio.paste((200, 40, 40), (100, 60, 160, 140))
    assert is_clean_shot(studio) and product_box(studio) == [100, 60, 160, 140]


def test_product_box_peels_a_backdrop_inside_a_backdrop(draw_product):
    print_on_table = Image.new("RGB", (300, 200), (200, 190, 170))
    print_on_table.paste(draw_product("square", 0, size=100), (150, 50))  # a catalog print lying on a table
    x0, y0, x1, y1 = product_box(print_on_table)
    assert (x0, y0) == pytest.approx((150 + 19, 50 + 19), abs=2) and (x1, y1) == pytest.approx((150 + 81, 50 + 81), abs=2)


def test_cut_out_takes_the_white_fringe_out_of_the_product_edge():
    shot = Image.new("RGB", (28, 28), "white")
    shot.paste((20, 40, 160), (7, 7, 21, 21))
    soft = shot.resize((224, 224), Image.BILINEAR)  # a small shot blown up: a soft outline, 8 pixels wide
    colour, alpha = cut_out(soft)
    colour, alpha = np.asarray(colour, np.float32), np.asarray(alpha) / 255.0
    fringe = (alpha > 0.05) & (alpha < 0.95)
    assert fringe.any()
    raw = np.asarray(soft, np.float32)
    # in the fringe, the cut-out colour is the product's own, not the light mix of the shot
    assert np.abs(colour[fringe] - [20, 40, 160]).max(axis=1).mean() < 0.5 * np.abs(raw[fringe] - [20, 40, 160]).max(axis=1).mean()


def test_synthetic_view_records_where_the_product_went(draw_product):
    rng = np.random.default_rng(3)
    view = synthetic_view(draw_product("circle", 1), generic_photos()[0], rng)
    x0, y0, x1, y1 = view.box
    assert view.mask.shape == (view.image.height, view.image.width)
    assert view.mask[y0:y1, x0:x1].mean() > 0.5 and view.mask.sum() == view.mask[y0:y1, x0:x1].sum()
    assert 0 <= x0 < x1 <= view.image.width and 0 <= y0 < y1 <= view.image.height


def test_a_view_from_a_cut_out_made_beforehand_is_the_same_view(draw_product):
    """Several views of one image share its cut-out (`describe_views` makes it once)."""
    image, scene = draw_product("circle", 1), generic_photos()[0]
    made_here = synthetic_view(image, scene, np.random.default_rng(3))
    reused = synthetic_view(image, scene, np.random.default_rng(3), cutout=cut_out(image))
    assert made_here.box == reused.box and np.array_equal(made_here.mask, reused.mask)
    assert np.array_equal(np.asarray(made_here.image), np.asarray(reused.image))


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


def test_objectness_fitted_on_views_finds_a_product_in_a_scene(backbone, draw_product):
    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    catalog = [draw_product(shape, variant) for shape in ("circle", "square", "triangle") for variant in range(4)]
    views = describe_views(encoder, catalog * 3, np.arange(36), seed=1)
    assert views.descriptors.shape == (36, 1280)
    for described in (views.truth, views.found, views.catalog):
        assert described.pooled.shape == (36, 1280) and described.layout.shape == (36, 9 * 1280)
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

    # An index whose box was learned from clicks keeps that model: the views are boxed by it, none is fitted.
    kept = describe_views(encoder, catalog * 3, np.arange(36), seed=1, fit_objectness=False)
    assert kept.objectness is None
    assert np.array_equal(kept.truth.pooled, views.truth.pooled)  # the same views
    assert not np.allclose(kept.found.pooled, views.found.pooled)  # boxed by the encoder's model, not SCDA


def test_a_handful_of_clean_shots_fits_no_objectness_model(backbone, draw_product):
    """A context net fitted on two or three views learns noise (a catalog of real scenes with one
    clean shot boxed small patches at the edges of its queries), so below MIN_OBJECTNESS_VIEWS
    views of clean shots the index keeps SCDA."""
    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    catalog = [draw_product(shape, 0) for shape in ("circle", "square", "triangle")]
    per_image = MIN_OBJECTNESS_VIEWS // len(catalog)  # one view short of enough
    assert describe_views(encoder, catalog, np.arange(3), views_per_image=per_image).objectness is None
    assert describe_views(encoder, catalog, np.arange(3), views_per_image=per_image + 1).objectness is not None


def test_several_views_per_image_describe_each_catalog_image_once(backbone, draw_product):
    encoder = ImageEncoder(backbone, pooling="gem", detect_size=448, box_threshold=0.5)
    catalog = [draw_product(shape, 0) for shape in ("circle", "square", "triangle")]
    views = describe_views(encoder, catalog, np.array([4, 7, 9]), views_per_image=2, seed=2)
    assert views.rows.tolist() == [4, 4, 7, 7, 9, 9]
    for described in (views.truth, views.found, views.catalog):
        assert described.pooled.shape == (6, 1280) and described.layout.shape == (6, 9 * 1280)
    assert np.array_equal(views.catalog.pooled[0], views.catalog.pooled[1])  # one catalog image, described once
    assert not np.allclose(views.truth.pooled[0], views.truth.pooled[1])  # two different views of it
