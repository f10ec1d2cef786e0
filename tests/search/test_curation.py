"""Result curation in the engine: product groups kept up to date by add and remove, identical
items folded into one result, poor photos demoted, colour filter, every signal switchable."""

from __future__ import annotations

import json

import pytest
from PIL import ImageFilter

from snapshop.catalog.manifest import Catalog, read_catalog
from snapshop.errors import SnapshopError
from snapshop.search.engine import Engine, no_match_point
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


def test_identical_items_already_known_are_linked_as_given_without_checking_images(writer, catalog, tmp_path):
    """What `snapshop train` does when it embeds the catalog again with a new model: the links the
    source version verified on the same images are copied; links to items not held are dropped."""
    relisted = write_manifest(tmp_path / "relisted.jsonl", [
        {"item_id": "square-3-relisted", "image": str(catalog.image("square-3")), "category": "squares"}])
    writer.add(relisted, identical=[("square-3-relisted", "circle-1", {"copied": True}),
                                    ("square-3-relisted", "no-such-item", {})])
    assert groups(writer) == {"circle-1": ["circle-1", "square-3-relisted"]}  # square-3 itself: not checked
    assert writer.store.duplicate_links() == [("circle-1", "square-3-relisted", {"copied": True})]


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

    import numpy as np

    from snapshop.models.projection import save_arrays

    with writer.store.transaction():  # a calibration that separates well, with a threshold no result reaches
        writer.store.save_fitted("match", save_arrays(true=np.full(50, 0.999), false=np.full(50, 0.1)), {})
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
    """True matches and strangers scoring alike: the threshold keeping 95% of true matches
    marks only 5% of strangers, no more often than true matches, so it is not used."""
    import numpy as np

    from snapshop.models.projection import save_arrays

    alike = np.linspace(0, 1, 200)
    with writer.store.transaction():
        writer.store.save_fitted("match", save_arrays(true=alike, false=alike), {})
    engine = Engine.open(writer.folder.path, make_settings())
    assert engine.match_threshold is None and engine.stats()["no_match"]["used"] is False
    assert engine.stats()["no_match"]["none_when_absent"] < 0.1
    engine.close()


def test_the_no_match_threshold_keeps_the_share_of_true_matches_asked_for(writer, make_settings):
    """The threshold is chosen from the stored calibration at load: a setting, no refit."""
    import numpy as np

    from snapshop.models.projection import save_arrays

    rng = np.random.default_rng(0)
    true, false = rng.normal(0.6, 0.1, 1000), rng.normal(0.3, 0.1, 1000)
    with writer.store.transaction():
        writer.store.save_fitted("match", save_arrays(true=true, false=false), {})
    for keep in (0.8, 0.95, 0.99):
        engine = Engine.open(writer.folder.path, make_settings(no_match_keep=keep))
        point = engine.stats()["no_match"]
        engine.close()
        assert point["used"] and engine.match_threshold == point["threshold"]
        assert keep <= (true >= point["threshold"]).mean() < keep + 0.01
        assert point["none_when_absent"] == pytest.approx((false < point["threshold"]).mean(), abs=1e-3)
    assert 0.5 < point["none_when_absent"] < 0.95  # at 0.99 kept, the overlap costs strangers marked


def _calibrate(engine: Engine, *, learned: bool, view_noise: float, seed: int = 0) -> dict:
    """Fit the no-match threshold on made-up descriptors: 40 products of two near-identical
    images each, and one view per image, `view_noise` away from it."""
    from types import SimpleNamespace

    import numpy as np

    from snapshop.models.encoder import Codec

    rng = np.random.default_rng(seed)
    products = np.repeat(np.arange(40), 2)
    looks = rng.standard_normal((40, 64))
    descriptors = looks[products] + 0.05 * rng.standard_normal((80, 64))
    shown = descriptors + view_noise * rng.standard_normal((80, 64))
    views = SimpleNamespace(rows=np.arange(80), found=SimpleNamespace(pooled=shown), truth=SimpleNamespace(pooled=shown))
    pairs = (descriptors, shown) if learned else None
    engine.codec = Codec.fit(descriptors, dim=32, bits=32, source="test", pairs=pairs)
    with engine.store.transaction():
        engine._fit_match_threshold(descriptors, products, views)
    match = engine.store.fitted("match")
    return match[1] | no_match_point(match, keep=0.95) | {
        "true": (engine.codec.projection.transform(shown) * engine.codec.projection.transform(descriptors)).sum(1)}


@pytest.mark.parametrize("learned", [False, True])
def test_the_no_match_threshold_sits_between_true_matches_and_strangers(writer, learned):
    """An item's other image is not a stranger: counting it as one would put the threshold
    above the true matches."""
    info = _calibrate(writer, learned=learned, view_noise=0.3)
    assert info["true_first"] >= 0.9 * info["fitted_on"]
    assert info["false_median"] < info["threshold"] < info["true_median"]
    assert info["close_when_right"] >= 0.95 and info["none_when_absent"] >= 0.9 and info["used"]
    assert (info["true"] >= info["threshold"]).mean() >= 0.9


def test_too_few_true_first_results_fit_no_threshold(writer, make_settings):
    """Views too far from their images to find them: no threshold is fitted, none is used."""
    info = _calibrate(writer, learned=False, view_noise=30.0)
    assert info["true_first"] < 20 and info["threshold"] is None and not info["used"]
    engine = Engine.open(writer.folder.path, make_settings())
    assert engine.match_threshold is None and engine.stats()["no_match"]["used"] is False
    engine.close()


def test_eval_judges_the_no_match_marks_as_if_the_true_product_were_not_indexed():
    from snapshop.search.evaluate import _judge_no_match
    from snapshop.search.results import Hit, SearchResult

    def result(*hits):
        return SearchResult("q", results=[Hit(item, score, "x.png", None, also=also, close=close)
                                          for item, score, also, close in hits], match="close")

    right, absent = [], []
    _judge_no_match(result(("a", 0.9, [], True), ("b", 0.4, [], False)), "a", 1, right, absent)
    _judge_no_match(result(("b", 0.8, ["a"], True), ("c", 0.7, [], True)), "a", 1, right, absent)  # a folded into b
    _judge_no_match(result(("c", 0.6, [], False), ("a", 0.5, [], False)), "a", 2, right, absent)
    assert right == [True, True] and absent == [True, False, True]
