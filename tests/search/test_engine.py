"""The engine end to end on a tiny synthetic catalog: add, search, upsert, remove, errors, locking."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from snapshop.catalog.manifest import Catalog, read_catalog
from snapshop.errors import IndexError_, SnapshopError
from snapshop.index.folder import IndexFolder
from snapshop.models.encoder import Descriptions, crop
from snapshop.models.fitting import CatalogViews
from snapshop.models.localize import Box
from snapshop.search.engine import CategoryModel, Engine, _layout_examples
from snapshop.search.results import Query, SearchResult

STAGES = {"decode", "category", "detect", "embed", "search", "curate"}


def write_manifest(path, rows) -> Catalog:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return read_catalog(path)


def top_ids(result, count: int = 1) -> list[str]:
    return [hit.item_id for hit in result.results[:count]]


# --- searching the shared index (read-only) ----------------------------------------------------


def test_index_holds_the_catalog(engine, catalog):
    stats = engine.stats()
    assert stats["items"] == 12 and stats["images"] == 13 and stats["pending_images"] == 0
    assert stats["partitions"] == {"circles": 5, "squares": 4, "triangles": 4}
    assert stats["model"]["name"] == "efficientnet-lite0"
    assert (stats["dim"], stats["bits"], stats["pooling"]) == (256, 256, "gem")
    assert stats["category_model"]["classes"] == ["circles", "squares", "triangles"]
    assert sorted(engine.categories) == ["circles", "squares", "triangles"]


def test_exact_copy_finds_its_item_first(engine, catalog):
    queries = [Query(item_id, catalog.image(item_id)) for item_id in catalog.item_ids]
    results = engine.search(queries, k=5)
    assert [top_ids(result)[0] for result in results] == catalog.item_ids
    for result in results:
        assert result.error is None
        assert result.results[0].score > 0.98
        assert result.category.name == catalog.categories[result.query]


def test_exact_copy_as_uploaded_bytes_gives_the_same_answer(engine, catalog):
    path = catalog.image("square-2")
    by_path, by_bytes = engine.search([Query("p", path), Query("b", path.read_bytes())], k=5)
    assert top_ids(by_path, 5) == top_ids(by_bytes, 5)
    assert [h.score for h in by_path.results] == pytest.approx([h.score for h in by_bytes.results], abs=1e-5)


@pytest.mark.parametrize("item_id", ["circle-0", "square-0", "triangle-0", "circle-2", "triangle-2"])
def test_shifted_resized_copy_on_a_background_finds_its_item_first(engine, catalog, draw_shopper_photo, tmp_path, item_id):
    path = tmp_path / "shot.jpg"
    with Image.open(catalog.image(item_id)) as product:
        draw_shopper_photo(product.convert("RGB")).save(path, quality=90)
    result = engine.search([Query("shot", path)], k=5)[0]
    assert result.error is None
    assert top_ids(result) == [item_id], [(h.item_id, round(h.score, 3)) for h in result.results]
    # The object was found: the main box lies on the pasted product (150..340 x 70..260), not the whole photo.
    box = result.boxes[0]
    assert box.x0 < 245 < box.x1 and box.y0 < 165 < box.y1
    assert box.area < 0.8 * 420 * 320


def test_results_have_distinct_items_best_first_with_their_fields(engine, catalog):
    result = engine.search([Query("q", catalog.image("circle-0"))], k=12)[0]
    ids = [hit.item_id for hit in result.results]
    assert len(ids) == len(set(ids))
    assert ids.count("circle-0") == 1  # two catalog images, one result
    scores = [hit.score for hit in result.results]
    assert scores == sorted(scores, reverse=True)
    best = result.results[0]
    assert best.item_id == "circle-0" and best.category == "circles"
    assert best.image == str(catalog.image("circle-0"))
    assert best.fields["title"] == "solid circle" and best.fields["price"] == 10
    assert best.fields["url"] == "https://shop.example/circle-0"


def test_second_image_of_an_item_finds_that_item(engine, catalog):
    result = engine.search([Query("back", catalog.images["circle-0"][1])], k=3)[0]
    assert top_ids(result) == ["circle-0"]
    assert result.results[0].image == str(catalog.images["circle-0"][1])


def test_k_limits_results(engine, catalog):
    result = engine.search([Query("q", catalog.image("square-1"))], k=2)[0]
    assert len(result.results) == 2
    with pytest.raises(SnapshopError, match="k"):
        engine.search([Query("q", catalog.image("square-1"))], k=0)


def test_timing_and_boxes_are_reported(engine, catalog):
    result = engine.search([Query("q", catalog.image("triangle-1"))], k=3)[0]
    assert set(result.timing_ms) == STAGES
    assert all(value >= 0 for value in result.timing_ms.values())
    assert result.boxes and all(0 <= b.x0 < b.x1 <= 256 and 0 <= b.y0 < b.y1 <= 256 for b in result.boxes)
    assert result.searched_categories and result.category.name in result.searched_categories


def test_forced_category(engine, catalog):
    result = engine.search([Query("q", catalog.image("circle-1"))], k=10, category="squares")[0]
    assert result.category.name == "squares" and result.category.forced
    assert result.searched_categories == ["squares"]
    assert {hit.category for hit in result.results} == {"squares"}
    assert len(result.results) == 4


def test_unknown_category_is_a_user_error(engine, catalog):
    with pytest.raises(SnapshopError, match="hats"):
        engine.search([Query("q", catalog.image("circle-1"))], category="hats")


def test_a_query_that_fails_to_decode_does_not_stop_the_others(engine, catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    queries = [Query("good-1", catalog.image("square-3")), Query("broken", broken),
               Query("missing", tmp_path / "missing.jpg"), Query("good-2", catalog.image("triangle-3"))]
    results = engine.search(queries, k=3)
    assert [r.query for r in results] == ["good-1", "broken", "missing", "good-2"]
    assert results[1].error and "broken.jpg" in results[1].error and not results[1].results
    assert results[2].error and "no such file" in results[2].error
    assert top_ids(results[0]) == ["square-3"] and top_ids(results[3]) == ["triangle-3"]
    assert results[0].error is None and results[3].error is None
    assert results[1].to_json() == {"query": "broken", "error": results[1].error}


def test_all_queries_failing_returns_only_errors(engine, tmp_path):
    results = engine.search([Query("a", b"nope"), Query("b", tmp_path / "none.png")])
    assert all(r.error for r in results) and not any(r.results for r in results)


def test_a_given_box_is_searched_instead_of_the_detected_one(engine, catalog, draw_shopper_photo, tmp_path):
    with Image.open(catalog.image("triangle-0")) as product:
        photo = draw_shopper_photo(product.convert("RGB"))
    outside = Query("outside", _png(photo), box=[0, 0, 999, 50])
    inside = Query("inside", _png(photo), box=[150, 70, 340, 260])
    ok, bad = engine.search([inside, outside], k=3)
    assert [b.as_list() for b in ok.boxes] == [[150, 70, 340, 260]]
    assert top_ids(ok) == ["triangle-0"]
    assert bad.error and "box" in bad.error


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- opening ---------------------------------------------------------------------------------


def test_opening_a_missing_index_is_a_clear_error(tmp_path, settings):
    with pytest.raises(IndexError_, match="no snapshop index") as raised:
        Engine.open(tmp_path / "nowhere", settings)
    assert str(tmp_path / "nowhere") in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "nowhere").exists()


def test_opening_an_index_with_a_damaged_manifest(fresh_index, settings):
    (fresh_index / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexError_, match="damaged"):
        Engine.open(fresh_index, settings)


def test_opening_an_index_with_a_changed_model_file(fresh_index, settings):
    (fresh_index / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IndexError_, match="model"):
        Engine.open(fresh_index, settings)


def test_opening_an_index_with_a_corrupt_database(fresh_index, settings):
    for extra in fresh_index.glob("meta.sqlite-*"):
        extra.unlink()
    (fresh_index / "meta.sqlite").write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(IndexError_):
        Engine.open(fresh_index, settings).stats()


def test_an_index_is_reopened_with_the_same_answers(fresh_index, settings, catalog, engine):
    reopened = Engine.open(fresh_index, settings)
    try:
        query = [Query("q", catalog.image("square-1"))]
        assert top_ids(reopened.search(query, k=5)[0], 5) == top_ids(engine.search(query, k=5)[0], 5)
        assert reopened.stats()["items"] == 12
    finally:
        reopened.close()


def test_searching_an_empty_index(tmp_path, settings, catalog):
    empty = Engine.open_or_create(tmp_path / "empty", settings)
    try:
        with pytest.raises(IndexError_, match="empty"):
            empty.search([Query("q", catalog.image("circle-1"))])
    finally:
        empty.close()


def test_bits_over_dim_is_refused_before_creating_anything(tmp_path, make_settings):
    with pytest.raises(SnapshopError, match="bits"):
        Engine.open_or_create(tmp_path / "idx", make_settings(dim=64, bits=128))
    assert not (tmp_path / "idx").exists()


# --- writing: upsert, remove, failures ---------------------------------------------------------


@pytest.fixture
def writer(fresh_index, settings):
    opened = Engine.open_or_create(fresh_index, settings)
    yield opened
    opened.close()


def test_re_adding_the_same_manifest_keeps_the_counts(writer, catalog):
    report = writer.add(read_catalog(catalog.manifest))
    assert (report.items_added, report.items_updated, report.images) == (0, 12, 13)
    assert report.errors == []
    stats = writer.stats()
    assert (stats["items"], stats["images"], stats["pending_images"]) == (12, 13, 0)
    assert top_ids(writer.search([Query("q", catalog.image("square-2"))], k=3)[0]) == ["square-2"]


def test_changing_an_items_image_replaces_it(writer, catalog, draw_product, tmp_path):
    new_image = tmp_path / "triangle-1-new.png"
    draw_product("square", 1, scale=0.45).save(new_image)  # the item now looks like a small striped square
    report = writer.add(write_manifest(tmp_path / "update.jsonl", [
        {"item_id": "triangle-1", "image": str(new_image), "category": "triangles", "title": "new look"}]))
    assert (report.items_added, report.items_updated, report.images) == (0, 1, 1)

    item = writer.item("triangle-1")
    assert item["images"] == [str(new_image)] and item["title"] == "new look"
    stats = writer.stats()
    assert (stats["items"], stats["images"]) == (12, 13)

    found = writer.search([Query("new", new_image)], k=3, category="triangles")[0]
    assert top_ids(found) == ["triangle-1"] and found.results[0].score > 0.98
    old = writer.search([Query("old", catalog.image("triangle-1"))], k=12)[0]
    for hit in old.results:
        if hit.item_id == "triangle-1":
            assert hit.image == str(new_image) and hit.score < 0.98


def test_an_item_with_two_images_appears_once(writer, catalog, draw_product, tmp_path):
    front, back = tmp_path / "front.png", tmp_path / "back.png"
    draw_product("square", 2, scale=0.8).save(front)  # a bigger version of square-2's look
    draw_product("square", 2, scale=0.66).save(back)
    report = writer.add(write_manifest(tmp_path / "pair.jsonl", [
        {"item_id": "pair", "image": str(front), "category": "squares"},
        {"item_id": "pair", "image": str(back), "category": "squares"}]))
    assert (report.items_added, report.images) == (1, 2)
    assert writer.stats()["images"] == 15
    result = writer.search([Query("q", front)], k=13)[0]
    ids = [hit.item_id for hit in result.results]
    assert ids[0] == "pair" and ids.count("pair") == 1
    assert result.results[0].image == str(front)


def test_removed_items_never_appear_again(writer, catalog, settings, fresh_index):
    report = writer.remove(["circle-1", "not-there", "circle-1"])
    assert report.removed == ["circle-1"] and report.missing == ["not-there"]
    assert writer.item("circle-1") is None
    assert writer.stats()["items"] == 11 and writer.stats()["images"] == 12

    query = [Query("q", catalog.image("circle-1"))]
    for category in (None, "circles"):
        ids = [hit.item_id for hit in writer.search(query, k=20, category=category)[0].results]
        assert "circle-1" not in ids and ids
    # Durable: another process opening the index sees the removal too.
    other = Engine.open(fresh_index, settings)
    try:
        assert "circle-1" not in [h.item_id for h in other.search(query, k=20)[0].results]
    finally:
        other.close()


def test_removing_a_whole_category(writer, catalog):
    writer.remove([item for item in catalog.item_ids if item.startswith("triangle")])
    assert "triangles" not in writer.categories
    result = writer.search([Query("q", catalog.image("triangle-2"))], k=5)[0]
    assert result.results and all(hit.category != "triangles" for hit in result.results)
    assert result.category.name != "triangles"


def test_a_failing_row_for_an_existing_item_keeps_the_indexed_version(writer, catalog, tmp_path):
    before = writer.item("square-0")
    report = writer.add(write_manifest(tmp_path / "broken.jsonl", [
        {"item_id": "square-0", "image": str(tmp_path / "missing.png"), "category": "squares", "title": "changed"}]))
    assert report.items_updated == 0 and report.images == 0
    reasons = [error.reason for error in report.errors if error.item_id == "square-0"]
    assert any("no such file" in reason for reason in reasons)
    assert any("kept the indexed version" in reason for reason in reasons)
    assert writer.item("square-0") == before
    assert top_ids(writer.search([Query("q", catalog.image("square-0"))], k=3)[0]) == ["square-0"]


def test_bad_rows_are_reported_and_the_good_ones_added(writer, draw_product, tmp_path):
    good = tmp_path / "good.png"
    draw_product("circle", 3, scale=0.4).save(good)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"item_id": "new-good", "image": str(good), "category": "circles"}),
        "{oops",
        json.dumps({"item_id": "new-bad", "image": str(text), "category": "circles"}),
    ]) + "\n")
    report = writer.add(read_catalog(manifest))
    assert report.items_added == 1
    assert sorted((error.line, error.item_id) for error in report.errors) == [(2, None), (3, "new-bad")]
    assert writer.item("new-good") is not None and writer.item("new-bad") is None


def test_a_catalog_without_categories(tmp_path, settings, draw_product):
    folder = tmp_path / "plain"
    folder.mkdir()
    for shape, variant in [("circle", 0), ("square", 1), ("triangle", 2), ("circle", 3), ("square", 2)]:
        draw_product(shape, variant).save(folder / f"{shape}{variant}.png")
    engine = Engine.open_or_create(tmp_path / "idx", settings)
    try:
        report = engine.add(read_catalog(folder))
        assert report.items_added == 5 and report.errors == []
        stats = engine.stats()
        assert stats["partitions"] == {"": 5} and stats["category_model"]["classes"] == []
        assert engine.categories == []
        result = engine.search([Query("q", folder / "square1.png")], k=5)[0]
        assert result.category is None
        assert result.to_json()["category"] is None
        assert top_ids(result) == ["square1"] and len(result.results) == 5
        assert all(hit.category is None for hit in result.results)
        with pytest.raises(SnapshopError, match="none"):
            engine.search([Query("q", folder / "square1.png")], category="circles")
    finally:
        engine.close()


# --- models and locking ---------------------------------------------------------------------


def test_adding_with_a_different_model_is_refused(fresh_index, settings, tiny_onnx):
    with pytest.raises(IndexError_, match="tiny"):
        Engine.open_or_create(fresh_index, settings, model=str(tiny_onnx))
    same = Engine.open_or_create(fresh_index, settings, model="efficientnet-lite0")
    same.close()


def test_a_model_with_fewer_channels_than_bits_is_a_user_error(tmp_path, make_settings, tiny_onnx, draw_product, monkeypatch):
    monkeypatch.setenv("SNAPSHOP_CACHE", str(tmp_path / "cache"))  # keep the tiny model's generic cache out of the real one
    folder = tmp_path / "plain"
    folder.mkdir()
    draw_product("circle", 0).save(folder / "a.png")
    with pytest.raises(SnapshopError):
        engine = Engine.open_or_create(tmp_path / "idx", make_settings(dim=64, bits=64), model=str(tiny_onnx))
        engine.add(read_catalog(folder))  # 8-channel features cannot give 64-bit codes


def test_a_second_writer_is_refused(writer, catalog, fresh_index):
    with IndexFolder(fresh_index).write_lock():
        with pytest.raises(IndexError_, match="another process"):
            writer.add(read_catalog(catalog.manifest))
        with pytest.raises(IndexError_, match="another process"):
            writer.remove(["circle-0"])
    assert writer.item("circle-0") is not None
    writer.remove(["circle-0"])  # the lock is free again
    assert writer.item("circle-0") is None


def test_the_lock_is_released_after_a_failed_write(writer, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"item_id": "x", "image": str(tmp_path / "nope.png")}) + "\n")
    writer.add(read_catalog(manifest))
    writer.remove(["square-1"])
    assert writer.item("square-1") is None


def test_an_item_without_category_in_a_categorised_catalog_can_be_found(writer, draw_product, tmp_path):
    image = tmp_path / "loose.png"
    draw_product("triangle", 1, scale=0.45).save(image)
    report = writer.add(write_manifest(tmp_path / "loose.jsonl", [{"item_id": "loose", "image": str(image)}]))
    assert report.items_added == 1
    result = writer.search([Query("q", image)], k=3)[0]
    assert top_ids(result) == ["loose"], (result.searched_categories, [(h.item_id, h.score) for h in result.results])


def test_changing_an_items_category_moves_it(writer, catalog, tmp_path):
    report = writer.add(write_manifest(tmp_path / "move.jsonl", [
        {"item_id": "square-0", "image": str(catalog.image("square-0")), "category": "circles"}]))
    assert report.items_updated == 1
    assert writer.stats()["partitions"] == {"circles": 6, "squares": 3, "triangles": 4}
    forced = writer.search([Query("q", catalog.image("square-0"))], k=3, category="circles")[0]
    assert top_ids(forced) == ["square-0"] and forced.results[0].category == "circles"


def test_classifier_examples_take_each_catalog_image_once_and_every_view():
    def described(offset: float) -> Descriptions:
        return Descriptions(np.zeros((4, 2)), offset + np.arange(4, dtype=np.float16)[:, None] * np.ones((1, 3)))

    views = CatalogViews(rows=np.array([0, 0, 1, 1]), truth=described(10), found=described(20), catalog=described(0),
                         objectness=None)
    shown = np.array([5, 6])[views.rows]
    examples, labels = _layout_examples(views, np.array([True, True, False, False]), shown)
    assert examples[:, 0].tolist() == [0, 10, 11, 20, 21]  # catalog image 0 once, both its views twice
    assert labels.tolist() == [5] * 5


# --- choosing the main box among the localizer's candidates --------------------------------------


class RedMeansBag:
    """A stand-in category network: the redder a crop, the surer it shows a bag; unsure (0.5 /
    0.5) of a crop with no red."""

    def probabilities(self, crops: list[Image.Image]) -> np.ndarray:
        pixels = [np.asarray(c, np.float32) / 255 for c in crops]
        redness = np.array([(p[..., 0] - p[..., 1]).mean() for p in pixels]).clip(0, 1)
        bag = 0.5 + 0.5 * redness
        return np.stack([bag, 1 - bag], axis=1)


def _engine_with_bag_network() -> Engine:
    """An engine with only a category model: classes bag and shoe, `RedMeansBag` as its network."""
    engine = object.__new__(Engine)
    engine.category_model = CategoryModel(np.array(["bag", "shoe"]), None, 0.5, network=RedMeansBag())
    return engine


def test_among_alike_candidates_the_main_box_is_the_one_the_category_network_is_surest_of():
    photo = Image.new("RGB", (400, 300), (90, 120, 90))
    photo.paste((220, 30, 30), (250, 150, 330, 230))  # the product: a red bag
    clutter, bag = Box(20, 20, 150, 120, 0.5), Box(245, 145, 335, 235, 0.45)  # objectness alike
    engine = _engine_with_bag_network()
    result = SearchResult(query="photo", boxes=[clutter])
    said = engine._choose_main_boxes([result], {0: photo}, {0: [clutter, bag]}, None)
    assert result.boxes == [bag, clutter]  # the surer crop is the main box; the other box stays listed
    assert said[0][0] > 0.6  # the network's probabilities of the chosen crop, for the category stage
    forced = SearchResult(query="photo", boxes=[clutter])
    engine._choose_main_boxes([forced], {0: photo}, {0: [clutter, bag]}, "shoe")
    assert forced.boxes[0] == clutter  # a forced category asks for the crop surest of that category


def test_the_objectness_model_s_doubt_outweighs_a_slightly_surer_network():
    photo = Image.new("RGB", (400, 300), (90, 120, 90))
    photo.paste((200, 60, 60), (250, 150, 330, 230))  # the product, a bag in dim light
    photo.paste((240, 20, 20), (30, 30, 90, 90))  # a red sign on the wall behind
    sign, bag = Box(30, 30, 90, 90, 0.2), Box(245, 145, 335, 235, 0.9)
    engine = _engine_with_bag_network()
    said = RedMeansBag().probabilities([crop(photo, sign), crop(photo, bag)])[:, 0]
    assert said[0] > said[1]  # the network alone would take the sign
    result = SearchResult(query="photo", boxes=[bag, sign])
    engine._choose_main_boxes([result], {0: photo}, {0: [sign, bag]}, None)
    assert result.boxes[0] == bag
