"""Retrieval quality with a category network fine-tuned on a small Fashion-MNIST catalog
(300 test images, SIMULATED shopper photos of 80 of them as queries: tests/search/conftest.py),
and what a version trained from clicks keeps of it. Thresholds sit below the numbers of real
runs (see the comments).
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from snapshop.catalog.manifest import read_catalog
from snapshop.models.category_net import fit_category_network
from snapshop.models.pooling import layout
from snapshop.search import engine as engine_module
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate
from snapshop.search.results import Query

pytestmark = pytest.mark.timeout(1800)  # indexing with a network: 390-510 s, more beside another worker


@pytest.fixture(scope="module")
def network_index(fashion, index_fashion):
    """The catalog indexed with a category network, here from 300 labelled images and for 2
    epochs (by default: 1,000 images, 8 epochs); and how many crops each network learned from."""
    trained_on = []

    def recording(fronts, labels, classes, **options):
        trained_on.append(len(labels))
        return fit_category_network(fronts, labels, classes, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "fit_category_network", recording)
        engine = index_fashion("index-network", category_network_from=300, category_epochs=2)
    return engine, trained_on


def test_a_large_enough_catalog_fine_tunes_a_category_network(fashion, network_index):
    engine, trained_on = network_index
    assert engine.stats()["category_model"]["network"] and engine.category_model.classifier is None
    # One network without the held-out images chooses alpha; the one kept learns from all:
    # each image's catalog crop and its VIEWS_PER_IMAGE views' true-box and found-box crops.
    assert trained_on[0] < trained_on[1] == 300 * (1 + 2 * engine_module.VIEWS_PER_IMAGE)
    pipeline = evaluate(engine, fashion[2])["pipeline"]
    assert pipeline["category_accuracy"] >= 0.5  # chance 0.1; measured 0.63 (the linear classifier's 0.71:
    # a network needs more images and epochs, hence the default from 1,000 images)
    reopened = Engine.open(engine.settings.index, engine.settings)
    assert reopened.category_model.network is not None


@pytest.fixture
def network_copy(network_index, make_settings, tmp_path):
    """An engine on a private, writable copy of the index with a category network."""
    source, _ = network_index
    shutil.copytree(source.settings.index, tmp_path / "index")
    settings = make_settings(index=str(tmp_path / "index"), category_network_from=300, category_epochs=2)
    engine = Engine.open(settings.index, settings)
    yield engine
    engine.close()


def test_a_refit_with_click_examples_keeps_the_category_network(fashion, network_copy, monkeypatch):
    """A version trained from clicks inherits its source's network and holds click examples,
    with which no network is fine-tuned: its refits keep the network, not a linear classifier."""
    engine = network_copy
    network = engine.store.fitted("category")
    rows = read_catalog(fashion[1]).rows[:40]  # their catalog images stand in for clicked query crops
    crops = [Image.open(row.image).convert("RGB") for row in rows]
    labels = [row.category for row in rows]
    engine.set_click_examples(layout(engine.backbone.feature_maps(crops)), labels)
    monkeypatch.setattr(engine, "_catalog_views", lambda ids, progress: None)  # views do not matter here: 100 s saved
    with engine.store.transaction():
        engine._refit(progress=False)  # what an `add` does when the catalog has doubled
    assert engine.store.fitted("category") == network
    engine._reload()
    assert engine.category_model.network is not None and engine.category_model.classifier is None


def test_a_box_learned_from_clicks_stays_the_main_box(fashion, network_copy):
    """With a category network, the main box is the candidate the network is surest of; an
    objectness model learned from clicks keeps its own main box (the network's choice among its
    candidates measured worse on a version trained from SIMULATED clicks)."""
    engine = network_copy
    queries = [json.loads(line) for line in fashion[2].read_text().splitlines()][:30]
    photos = [fashion[2].parent / query["image"] for query in queries]
    located = engine.encoder.locate_with_candidates([Image.open(photo).convert("RGB") for photo in photos])

    def main_boxes() -> list[list[int]]:
        return [result.boxes[0].as_list() for result in engine.search([Query(p.name, p) for p in photos], k=5)]

    chosen_by_network = main_boxes()
    assert chosen_by_network != [boxes[0].as_list() for boxes, _ in located]  # the network picks other candidates
    engine.set_click_objectness(engine.encoder.objectness, photos=len(queries))  # as if learned from clicks
    assert main_boxes() == [boxes[0].as_list() for boxes, _ in located]
