"""Identical items: copies verify, look-alikes and other colours do not; groups are components."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from snapshop.curate.colour import dominant_colours
from snapshop.curate.duplicates import DuplicateRules, DuplicateVerifier, ImageRef, components


@pytest.fixture(scope="module")
def photos(draw_product) -> dict[str, Image.Image]:
    original = draw_product("circle", 2, size=320)
    buffer = io.BytesIO()
    original.save(buffer, format="JPEG", quality=30)
    hsv = np.asarray(original.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 100) % 256
    return {
        "original": original,
        "jpeg": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "resized": original.resize((200, 200)),
        "cropped": original.crop((12, 12, 308, 308)),
        "other colour": Image.fromarray(hsv, "HSV").convert("RGB"),
        "other product": draw_product("square", 2, size=320),
    }


@pytest.fixture(scope="module")
def verifier(photos) -> DuplicateVerifier:
    return DuplicateVerifier(lambda name: photos[name], DuplicateRules(accept_cosine=1.01, min_cosine=0.0))


def ref(photos, number: int, name: str) -> ImageRef:
    return ImageRef(number, name, name, [c.to_json() for c in dominant_colours(photos[name])])


@pytest.mark.parametrize("copy", ["jpeg", "resized", "cropped"])
def test_a_copy_verifies_geometrically(photos, verifier, copy):
    check = verifier.check(ref(photos, 1, "original"), ref(photos, 2, copy), cosine=0.9)
    assert check.same and check.inliers >= 10 and check.correlation >= 0.95


def test_another_product_and_another_colour_are_not_identical(photos, verifier):
    assert not verifier.check(ref(photos, 1, "original"), ref(photos, 3, "other product"), cosine=0.9).same
    other_colour = verifier.check(ref(photos, 1, "original"), ref(photos, 4, "other colour"), cosine=0.9)
    assert not other_colour.same and other_colour.colour_distance > 14


def test_cosine_alone_decides_at_the_ends(photos):
    rules = DuplicateRules(accept_cosine=0.97, min_cosine=0.7)
    verifier = DuplicateVerifier(lambda name: pytest.fail("no photo should be loaded"), rules)
    a, b = ref(photos, 1, "original"), ref(photos, 2, "jpeg")
    assert verifier.check(a, b, cosine=0.98).same
    assert not verifier.check(a, b, cosine=0.5).same


def test_groups_are_connected_components_named_by_their_smallest_id():
    group = components([("b", "c"), ("c", "d"), ("x", "y")], ["d", "x", "lonely"])
    assert group == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x", "lonely": "lonely"}
