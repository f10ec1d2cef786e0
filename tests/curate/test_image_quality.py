"""Image quality: each signal falls for the defect it measures, and the score with it."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from snapshop.curate.quality import image_quality, text_overlay


@pytest.fixture(scope="module")
def clean(draw_product) -> Image.Image:
    return draw_product("square", 1, size=480)


def test_a_clean_product_shot_scores_well(clean):
    quality = image_quality(clean)
    assert quality.score > 0.6
    assert quality.signals["backdrop"] == 1.0 and quality.signals["overlay"] == 1.0


@pytest.mark.parametrize("defect, signal", [
    (lambda im: im.filter(ImageFilter.GaussianBlur(8)), "sharpness"),
    (lambda im: ImageEnhance.Brightness(im).enhance(0.25), "exposure"),
    (lambda im: im.resize((40, 40)), "resolution"),
])
def test_each_defect_lowers_its_signal_and_the_score(clean, defect, signal):
    good, poor = image_quality(clean), image_quality(defect(clean))
    assert poor.signals[signal] < good.signals[signal] - 0.1
    assert poor.score < good.score


def test_a_cluttered_backdrop_scores_below_a_plain_one(clean, draw_shopper_photo):
    scene = Image.effect_noise((480, 480), 60).convert("RGB")
    scene.paste(clean.resize((240, 240)), (120, 120))
    assert image_quality(scene).signals["backdrop"] < 1.0
    assert image_quality(scene).score < image_quality(clean).score


def test_printed_text_is_found_and_plain_products_are_not(clean):
    assert text_overlay(clean) == 0.0
    lettered = clean.copy()
    draw = ImageDraw.Draw(lettered)
    draw.text((20, 425), "SALE -50% TODAY", fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    assert text_overlay(lettered) >= 0.5
    assert image_quality(lettered).score < image_quality(clean).score
