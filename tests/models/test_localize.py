"""Object localization from the backbone's activations (SCDA) and the box helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from snapshop.models.encoder import CROP_MARGIN, ImageEncoder, crop
from snapshop.models.localize import (Box, ContextObjectness, ObjectnessModel, _cell_cover, _convolve, box_iou,
                                      find_boxes, objectness_from_arrays)

WIDTH, HEIGHT = 480, 360


def background(kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "noise":  # textured mid-grey, like a table top
        pixels = (128 + rng.normal(0, 12, (HEIGHT, WIDTH, 3))).clip(0, 255).astype(np.uint8)
        return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))
    if kind == "gradient":  # uneven light plus sensor noise
        rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
        pixels = (110 + 60 * cols / WIDTH + 20 * rows / HEIGHT)[..., None] + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return Image.new("RGB", (WIDTH, HEIGHT), (150, 150, 150))


def synthetic_photo(kind: str, box: tuple[int, int, int, int], ground: str, seed: int = 0) -> Image.Image:
    """A 480x360 photo with one object filling `box` on a plain or textured grey background."""
    image = background(ground, seed)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw = ImageDraw.Draw(image)
    if kind == "shoe":  # dark upper, white sole, laces
        draw.polygon([(x0, y1), (x0, y0 + h * 0.3), (x0 + w * 0.35, y0), (x0 + w * 0.55, y0 + h * 0.45),
                      (x1, y0 + h * 0.6), (x1, y1)], fill=(40, 25, 20))
        draw.rectangle([x0, y1 - h * 0.12, x1, y1], fill=(230, 230, 225))
        for i in range(5):
            draw.line([(x0 + w * (0.3 + 0.05 * i), y0 + h * 0.25 + 4 * i),
                       (x0 + w * (0.45 + 0.05 * i), y0 + h * 0.35 + 4 * i)], fill=(200, 200, 200), width=3)
    elif kind == "checked-box":  # a red and yellow checked rectangle
        pixels = np.asarray(image).copy()
        rows, cols = np.mgrid[y0:y1, x0:x1]
        checked = ((rows // 12 + cols // 12) % 2)[..., None].astype(bool)
        pixels[y0:y1, x0:x1] = np.where(checked, [200, 30, 40], [240, 200, 40])
        image = Image.fromarray(pixels)
    else:  # a brown bag with a handle
        draw.polygon([(x0 + w * 0.1, y0 + h * 0.35), (x1 - w * 0.1, y0 + h * 0.35), (x1, y1), (x0, y1)], fill=(150, 60, 30))
        draw.arc([x0 + w * 0.25, y0, x1 - w * 0.25, y0 + h * 0.7], 180, 360, fill=(90, 40, 20), width=10)
    return image


SCENES = {
    "shoe on textured grey": ("shoe", (150, 110, 350, 270), "noise"),
    "checked box on a gradient": ("checked-box", (200, 120, 400, 320), "gradient"),
    "bag on plain grey": ("bag", (60, 60, 260, 280), "plain"),
}


@pytest.fixture(scope="module")
def encoder(backbone) -> ImageEncoder:
    return ImageEncoder(backbone, pooling="gem", detect_size=320, box_threshold=0.5)


@pytest.fixture(scope="module")
def located(encoder) -> dict[str, list[Box]]:
    photos = {name: synthetic_photo(kind, box, ground) for name, (kind, box, ground) in SCENES.items()}
    return dict(zip(photos, encoder.locate(list(photos.values()))))


@pytest.mark.parametrize("scene", list(SCENES))
def test_main_box_matches_the_object(located, scene):
    truth = list(SCENES[scene][1])
    main = located[scene][0]
    assert box_iou(main.as_list(), truth) > 0.5, f"main box {main.as_list()} vs true box {truth}"


@pytest.mark.parametrize("scene", list(SCENES))
def test_main_box_is_on_the_object_not_the_whole_photo(located, scene):
    x0, y0, x1, y1 = SCENES[scene][1]
    main = located[scene][0]
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    assert main.x0 < centre[0] < main.x1 and main.y0 < centre[1] < main.y1
    assert main.area < 0.8 * WIDTH * HEIGHT
    assert box_iou(main.as_list(), [x0, y0, x1, y1]) > 0.2
    assert main.score == 1.0


def test_boxes_lie_inside_the_image_main_first(located):
    for boxes in located.values():
        assert boxes, "locate always returns at least one box"
        for box in boxes:
            assert 0 <= box.x0 < box.x1 <= WIDTH and 0 <= box.y0 < box.y1 <= HEIGHT
            assert 0.0 <= box.score <= 1.0


def test_locate_without_localization_returns_the_whole_image_and_runs_no_model():
    class NoModel:
        def feature_maps(self, *args, **kwargs):
            raise AssertionError("the backbone must not run when localization is off")

    encoder = ImageEncoder(NoModel(), pooling="gem", detect_size=320, box_threshold=0.5, localize=False)
    boxes = encoder.locate([Image.new("RGB", (300, 200)), Image.new("RGB", (50, 80))])
    assert [[b.as_list() for b in found] for found in boxes] == [[[0, 0, 300, 200]], [[0, 0, 50, 80]]]


def test_a_clean_shot_is_located_without_the_model():
    class NoModel:
        def feature_maps(self, *args, **kwargs):
            raise AssertionError("a clean shot needs no backbone pass")

    shot = Image.new("RGB", (300, 200), "white")
    shot.paste((200, 30, 40), (100, 40, 160, 190))
    encoder = ImageEncoder(NoModel(), pooling="gem", detect_size=320, box_threshold=0.5)
    assert [b.as_list() for b in encoder.locate([shot])[0]] == [[100, 40, 160, 190]]


def test_objectness_that_sees_no_likely_product_takes_the_likeliest_region_and_a_flat_map_the_whole_photo():
    model = ObjectnessModel()
    model.coef_, model.intercept_ = np.ones(4, np.float32), -10.0  # every cell below 0.5
    boxes = model.boxes(blob_map([(slice(2, 4), slice(2, 4), 2.0)]), (640, 480))
    assert len(boxes) == 1 and box_iou(boxes[0].as_list(), [128, 96, 256, 192]) > 0.4 and boxes[0].score < 0.5
    flat = model.boxes(np.zeros((4, 10, 10), np.float32), (640, 480))
    assert [box.as_list() for box in flat] == [[0, 0, 640, 480]]
    model.intercept_ = -5.0  # now the blob's cells are products, the rest not
    main = model.boxes(blob_map([(slice(2, 4), slice(2, 4), 2.0)]), (640, 480))[0]
    assert box_iou(main.as_list(), [128, 96, 256, 192]) > 0.4 and main.score > 0.5


def test_candidates_hold_a_fainter_region_that_boxes_leave_out():
    model = ObjectnessModel()
    model.coef_, model.intercept_ = np.ones(4, np.float32), -5.0
    feature_map = blob_map([(slice(1, 3), slice(1, 3), 2.0), (slice(6, 9), slice(6, 9), 1.1)])  # P 0.95 and 0.35
    boxes, candidates = model.boxes_and_candidates(feature_map, (400, 400))
    assert boxes == model.boxes(feature_map, (400, 400)) and candidates[0] == boxes[0]
    assert len(boxes) == 1 and box_iou(boxes[0].as_list(), [40, 40, 120, 120]) > 0.5
    assert any(box_iou(box.as_list(), [240, 240, 360, 360]) > 0.5 for box in candidates[1:])


def outlined_squares(count: int, seed: int) -> tuple[np.ndarray, list[np.ndarray], list[list[int]]]:
    """Maps (count x 8 x 14 x 14) of one square each that only its outline cells light up (a
    plain product's middle looks like a plain background), noise elsewhere; the square's pixel
    mask (448 x 448) and box."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 0.3, (count, 8, 14, 14)).astype(np.float32)
    masks, boxes = [], []
    for feature_map in maps:
        side = int(rng.integers(3, 6))
        top, left = (int(v) for v in rng.integers(0, 14 - side, 2))
        feature_map[:3, top : top + side, left : left + side] += 2.0
        feature_map[:3, top + 1 : top + side - 1, left + 1 : left + side - 1] -= 2.0  # the middle is plain
        mask = np.zeros((448, 448), bool)
        mask[top * 32 : (top + side) * 32, left * 32 : (left + side) * 32] = True
        masks.append(mask)
        boxes.append([left * 32, top * 32, (left + side) * 32, (top + side) * 32])
    return maps, masks, boxes


def test_context_objectness_fills_in_a_product_its_outline_encloses():
    maps, masks, _ = outlined_squares(200, seed=0)
    context = ContextObjectness(seed=0).partial_fit(maps[:64], masks[:64]).partial_fit(maps[64:], masks[64:]).solve()
    fisher = ObjectnessModel().partial_fit(maps, masks).solve()
    test_maps, _, boxes = outlined_squares(40, seed=1)

    def middle_probability(model: ObjectnessModel | ContextObjectness) -> float:
        return float(np.mean([model.probability(m)[b[1] // 32 + 1, b[0] // 32 + 1] for m, b in zip(test_maps, boxes)]))

    def mean_iou(model: ObjectnessModel | ContextObjectness) -> float:
        return float(np.mean([box_iou(model.boxes(m, (448, 448))[0].as_list(), b) for m, b in zip(test_maps, boxes)]))

    assert middle_probability(context) > 0.5 > middle_probability(fisher)
    assert mean_iou(context) > 0.7
    stored = objectness_from_arrays({name: array.copy() for name, array in context.to_arrays().items()})
    assert isinstance(stored, ContextObjectness)
    assert np.allclose(stored.probability(test_maps[0]), context.probability(test_maps[0]))


def test_the_context_net_computes_what_torch_computes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, weights = rng.normal(size=(5, 7, 9)).astype(np.float32), rng.normal(size=(4, 5, 3, 3)).astype(np.float32)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weights), padding=1)[0].numpy()
    assert np.allclose(_convolve(x, weights), expected, atol=1e-4)


def test_crop_keeps_the_aspect_with_a_margin_and_stays_inside():
    photo = Image.new("RGB", (640, 480))
    tall = crop(photo, [300, 100, 340, 300])  # a 40 x 200 box: trousers
    side = round(200 * (1 + 2 * CROP_MARGIN))
    assert tall.size == (side, side)
    assert crop(photo, [600, 0, 640, 200]).size == (side, side)  # shifted inside at the edge
    assert crop(photo, [0, 0, 640, 480]).size == (640, 480)  # the whole photo stays whole
    assert crop(photo, [20, 200, 620, 260]).size == (640, 480)  # as square as the photo allows
    assert crop(photo, [10, 10, 12, 12]).size == (640, 480)  # a degenerate box: the whole photo


def test_describe_gives_unit_descriptors(encoder):
    photos = [synthetic_photo("shoe", (150, 110, 350, 270), "plain"), synthetic_photo("bag", (60, 60, 260, 280), "noise")]
    descriptors = encoder.describe(photos)
    assert descriptors.shape == (2, 1280) and descriptors.dtype == np.float32
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-4)


# --- find_boxes on hand-made feature maps ------------------------------------------------------


def blob_map(blobs: list[tuple[slice, slice, float]], size: int = 10, channels: int = 4) -> np.ndarray:
    feature_map = np.zeros((channels, size, size), np.float32)
    for rows, cols, value in blobs:
        feature_map[:, rows, cols] = value
    return feature_map


def inside(box: Box, point: tuple[float, float]) -> bool:
    return box.x0 <= point[0] <= box.x1 and box.y0 <= point[1] <= box.y1


def test_two_separated_blobs_give_two_boxes_main_first():
    # Image 400x300 on a 10x10 grid: one cell is 40x30 pixels.
    strong = (slice(1, 5), slice(1, 5), 5.0)  # cells 1-4: pixels x 40-200, y 30-150
    weaker = (slice(6, 9), slice(6, 9), 4.0)  # cells 6-8: pixels x 240-360, y 180-270
    boxes = find_boxes(blob_map([weaker, strong]), (400, 300), threshold=0.5)

    assert len(boxes) == 2
    main, other = boxes
    assert inside(main, (120, 90)) and not inside(main, (300, 225))
    assert inside(other, (300, 225)) and not inside(other, (120, 90))
    assert main.score == 1.0 and other.score == pytest.approx(0.8, abs=0.01)
    assert box_iou(main.as_list(), other.as_list()) == 0.0
    assert box_iou(main.as_list(), [40, 30, 200, 150]) > 0.4
    assert box_iou(other.as_list(), [240, 180, 360, 270]) > 0.4


def test_main_box_is_the_one_with_the_most_activation_not_the_highest_peak():
    big = (slice(0, 5), slice(0, 5), 3.0)  # large, moderate
    sharp = (slice(7, 9), slice(7, 9), 5.0)  # small, bright
    main, other = find_boxes(blob_map([big, sharp]), (200, 200), threshold=0.5)
    assert inside(main, (50, 50)) and inside(other, (160, 160))
    assert main.score == pytest.approx(0.6, abs=0.01) and other.score == 1.0


def test_a_secondary_blob_below_the_threshold_is_dropped():
    boxes = find_boxes(blob_map([(slice(1, 5), slice(1, 5), 5.0), (slice(6, 9), slice(6, 9), 1.0)]), (400, 300), threshold=0.5)
    assert len(boxes) == 1 and inside(boxes[0], (120, 90))


def test_max_boxes_is_respected():
    blobs = [(slice(r, r + 2), slice(c, c + 2), 5.0 - 0.5 * i) for i, (r, c) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)])]
    assert len(find_boxes(blob_map(blobs, size=9), (90, 90), threshold=0.1, max_boxes=2)) == 2
    assert len(find_boxes(blob_map(blobs, size=9), (90, 90), threshold=0.1, max_boxes=5)) == 4


@pytest.mark.parametrize("value", [0.0, 1.0, 3.5])
def test_flat_map_gives_the_whole_image(value):
    boxes = find_boxes(np.full((8, 7, 7), value, np.float32), (640, 480))
    assert [box.as_list() for box in boxes] == [[0, 0, 640, 480]]


def test_negative_map_gives_the_whole_image():
    boxes = find_boxes(-np.ones((4, 7, 7), np.float32) - blob_map([(slice(2, 4), slice(2, 4), 1.0)], size=7), (100, 100))
    assert [box.as_list() for box in boxes] == [[0, 0, 100, 100]]


# --- box_iou -------------------------------------------------------------------------------------


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(4 / 100)
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_cell_cover_is_each_cells_own_share_of_the_mask():
    """Cells of unequal size (37 rows in 5 cells, 53 columns in 7) each get the share they hold."""
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    rows, cols = np.array_split(np.arange(37), 5), np.array_split(np.arange(53), 7)
    expected = [[mask[np.ix_(r, c)].mean() for c in cols] for r in rows]
    np.testing.assert_array_equal(_cell_cover(mask, (5, 7)), expected)
