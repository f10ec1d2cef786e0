"""Dominant colours: of the product inside its box, not of the backdrop."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from snapshop.curate.colour import check_colour, colour_distance, colour_overlap, dominant_colours, has_colour
from snapshop.errors import SnapshopError


def test_the_white_backdrop_is_not_a_colour_of_the_product():
    image = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(image).rectangle([60, 60, 140, 140], fill=(200, 30, 35))
    colours = dominant_colours(image)
    assert colours[0].name == "red" and colours[0].share > 0.8
    assert "white" not in [c.name for c in colours]


def test_inside_a_box_of_a_scene_the_middle_counts():
    scene = Image.effect_noise((300, 200), 80).convert("RGB")
    ImageDraw.Draw(scene).rectangle([100, 50, 200, 150], fill=(45, 95, 195))
    assert dominant_colours(scene, [90, 40, 210, 160])[0].name == "blue"


def test_two_colours_share_the_product():
    image = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(image).rectangle([40, 40, 100, 160], fill=(20, 20, 20))
    ImageDraw.Draw(image).rectangle([100, 40, 160, 160], fill=(235, 205, 45))
    names = {c.name: c.share for c in dominant_colours(image)}
    assert set(names) == {"black", "yellow"} and abs(names["black"] - names["yellow"]) < 0.2


def test_overlap_filter_and_names():
    red, blue = [{"name": "red", "share": 0.9}], [{"name": "blue", "share": 1.0}]
    assert colour_overlap(red, red) == pytest.approx(0.9) and colour_overlap(red, blue) == 0.0
    assert has_colour(red, "red") and not has_colour(red, "blue")
    assert check_colour("Navy") == "navy"
    with pytest.raises(SnapshopError, match="known colours"):
        check_colour("octarine")


def test_colour_distance_is_the_cost_of_repainting_one_product_into_the_other():
    near_black = [{"name": "black", "hex": "#2a2a2a", "share": 0.9}]
    charcoal_ish = [{"name": "grey", "hex": "#303030", "share": 0.9}]  # another name, nearly the same colour
    red = [{"name": "red", "hex": "#c81e23", "share": 0.9}]
    assert colour_distance(near_black, charcoal_ish) < 3  # by distance, not by name
    assert colour_overlap(near_black, charcoal_ish) == 0.0
    assert colour_distance(near_black, red) > 40
    half_and_half = [{"name": "black", "hex": "#2a2a2a", "share": 0.5}, {"name": "red", "hex": "#c81e23", "share": 0.5}]
    # half the mass moves from black to red: half the black-red distance
    assert colour_distance(near_black, half_and_half) == pytest.approx(colour_distance(near_black, red) / 2, rel=1e-6)
    assert colour_distance(half_and_half, half_and_half) == pytest.approx(0.0, abs=1e-9)
    assert colour_distance([], red) == float("inf")
