"""Result curation in the engine: product groups kept up to date by add and remove, identical
items folded into one result, poor photos demoted, colour filter, every signal switchable."""

from __future__ import annotations

import json

import pytest
from PIL import ImageFilter

from snapshop.catalog.manifest import Catalog, read_catalog
from snapshop.errors import SnapshopError
from snapshop.search.engine import Engine
from snapshop.search.results import Query


def write_manifest(path, rows) -> Catalog:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return read_catalog(path)


@pytest.fixture
def writer(fresh_index, make_settings):
    opened = Engine.open_or_create(fresh_index, make_settings())
    yield opened
    opened.close()


@pytest.fixture
def resold(tmp_path, catalog) -> dict:
    """circle-1 re-uploaded by another seller as a poor JPEG, and a blurred twin of square-3."""
    from PIL import Image

    jpeg, blurred = tmp_path / "resold.jpg", tmp_path / "blurred.png"
    Image.open(catalog.image("circle-1")).save(jpeg, quality=30)
    Image.open(catalog.image("square-3")).filter(ImageFilter.GaussianBlur(6)).save(blurred)
    return {"jpeg": jpeg, "blurred": blurred}


def groups(engine: Engine) -> dict[str, list[str]]:
    return engine.store.duplicate_groups()


def test_an_identical_item_joins_the_group_in_the_same_add(writer, resold, tmp_path):
    assert groups(writer) == {}
    writer.add(write_manifest(tmp_path / "resold.jsonl", [
        {"item_id": "circle-1-resold", "image": str(resold["jpeg"]), "category": "circles"}]))
    assert groups(writer) == {"circle-1": ["circle-1", "circle-1-resold"]}
    assert writer.item("circle-1-resold")["group"] == "circle-1"


def test_removing_a_member_leaves_the_group_correct(writer, resold, tmp_path):
    writer.add(write_manifest(tmp_path / "resold.jsonl", [
        {"item_id": "circle-1-resold", "image": str(resold["jpeg"]), "category": "circles"}]))
    writer.remove(["circle-1"])
    assert groups(writer) == {}
    assert writer.item("circle-1-resold")["group"] == "circle-1-resold"


def test_identical_items_fold_into_one_result_unless_turned_off(writer, resold, tmp_path, catalog, make_settings):
    writer.add(write_manifest(tmp_path / "resold.jsonl", [
        {"item_id": "circle-1-resold", "image": str(resold["jpeg"]), "category": "circles"}]))
    folded = writer.search([Query("q", catalog.image("circle-1"))], k=5)[0]
    ids = [hit.item_id for hit in folded.results]
    assert ids[0] == "circle-1" and "circle-1-resold" not in ids
    assert folded.results[0].also == ["circle-1-resold"]
    assert folded.to_json()["results"][0]["group"] == "circle-1"
    plain = Engine.open(writer.folder.path, make_settings(collapse_duplicates=False))
    ids = [hit.item_id for hit in plain.search([Query("q", catalog.image("circle-1"))], k=5)[0].results]
    plain.close()
    assert ids[:2] == ["circle-1", "circle-1-resold"]


def test_a_blurred_twin_ranks_below_its_clean_photo(writer, resold, tmp_path, catalog, make_settings,
                                                   draw_shopper_photo):
    from PIL import Image

    writer.add(write_manifest(tmp_path / "blurred.jsonl", [
        {"item_id": "square-3-blurred", "image": str(resold["blurred"]), "category": "squares"}]))
    photo = tmp_path / "shot.jpg"
    draw_shopper_photo(Image.open(catalog.image("square-3"))).save(photo)
    engine = Engine.open(writer.folder.path, make_settings(collapse_duplicates=False))
    result = engine.search([Query("q", photo)], k=5)[0]
    engine.close()
    ids = [hit.item_id for hit in result.results]
    assert ids.index("square-3") < ids.index("square-3-blurred")
    blurred = result.results[ids.index("square-3-blurred")]
    assert blurred.quality < result.results[ids.index("square-3")].quality
    assert blurred.signals["quality"] < 0


def test_every_image_has_a_quality_and_colours(engine, catalog):
    hit = engine.search([Query("q", catalog.image("square-2"))], k=1)[0].results[0]
    assert 0 < hit.quality <= 1 and hit.colours and hit.colours[0]["share"] > 0.3
    assert engine.item("square-2")["main_image"] == engine.item("square-2")["images"][0]


def test_colour_filter_keeps_only_that_colour(engine, catalog):
    wanted = engine.search([Query("q", catalog.image("square-2"))], k=1)[0].results[0].colours[0]["name"]
    results = engine.search([Query("q", catalog.image("square-2"))], k=12, colour=wanted)[0].results
    assert results and all(any(c["name"] == wanted for c in hit.colours) for hit in results)
    with pytest.raises(SnapshopError, match="unknown colour"):
        engine.search([Query("q", catalog.image("square-2"))], colour="octarine")


def test_the_same_image_twice_in_one_item_is_stored_once(writer, catalog, tmp_path):
    report = writer.add(write_manifest(tmp_path / "twice.jsonl", [
        {"item_id": "twice", "image": str(catalog.image("square-1")), "category": "squares"},
        {"item_id": "twice", "image": str(catalog.image("square-1")), "category": "squares"}]))
    assert (report.images, report.images_merged) == (1, 1)


def test_a_query_with_nothing_above_the_threshold_says_no_close_match(writer, catalog, make_settings, tmp_path):
    from PIL import Image

    from snapshop.models.projection import save_arrays

    with writer.store.transaction():  # a calibration that separates well, with a threshold no result reaches
        writer.store.save_fitted("match", save_arrays(), {"threshold": 0.999, "balanced_accuracy": 0.9})
    noise = tmp_path / "noise.png"
    Image.effect_noise((300, 300), 90).convert("RGB").save(noise)
    engine = Engine.open(writer.folder.path, make_settings())
    result = engine.search([Query("q", noise)], k=3)[0]
    engine.close()
    assert result.to_json()["match"] == "none" and all(hit.close is False for hit in result.results)
    quiet = Engine.open(writer.folder.path, make_settings(no_match=False))
    assert "match" not in quiet.search([Query("q", noise)], k=3)[0].to_json()
    quiet.close()


def test_an_unreliable_calibration_is_not_used(writer, make_settings):
    from snapshop.models.projection import save_arrays

    with writer.store.transaction():
        writer.store.save_fitted("match", save_arrays(), {"threshold": 0.5, "balanced_accuracy": 0.6})
    engine = Engine.open(writer.folder.path, make_settings())
    assert engine.match_threshold is None and engine.stats()["no_match"]["used"] is False
    engine.close()
