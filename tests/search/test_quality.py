"""Retrieval quality from a real run of the pipeline on a small Fashion-MNIST catalog.

The catalog is 300 Fashion-MNIST test images; the queries are SIMULATED shopper photos
of 80 of them. Thresholds sit below the numbers of real runs (see the comments) so that a
regression fails while run-to-run noise does not.
"""

from __future__ import annotations

import pytest

from snapshop.catalog.manifest import read_catalog
from snapshop.models.category_net import fit_category_network
from snapshop.search import engine as engine_module
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate

datasets = pytest.importorskip("snapshop.datasets")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The catalog manifest and the SIMULATED queries' file."""
    try:
        datasets.load_fashion_mnist("test")
    except Exception as exc:  # the Debian package is installed by scripts/install.sh
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    root = tmp_path_factory.mktemp("quality")
    manifest = datasets.build_fashion_catalog(root / "catalog", n_items=300)
    queries = datasets.build_shopper_queries(root / "catalog", root / "queries", n_queries=80)
    return root, manifest, queries


def indexed(fashion, make_settings, name: str, **overrides) -> Engine:
    root, manifest, _ = fashion
    settings = make_settings(index=str(root / name), **overrides)
    engine = Engine.open_or_create(settings.index, settings)
    engine.add(read_catalog(manifest))
    return engine


@pytest.fixture(scope="module")
def outcome(fashion, make_settings):
    return evaluate(indexed(fashion, make_settings, "index"), fashion[2])


def test_pipeline_beats_the_whole_photo_baseline(outcome):
    pipeline, baseline = outcome["pipeline"], outcome["baseline"]
    assert pipeline["recall@10"] >= baseline["recall@10"] + 0.3  # measured 0.588 vs 0.188
    assert pipeline["recall@1"] >= baseline["recall@1"] + 0.15  # measured 0.313 vs 0.050


def test_category_and_box_are_better_than_chance(outcome):
    pipeline = outcome["pipeline"]
    assert pipeline["category_accuracy"] >= 0.6  # 10 categories: chance is 0.1; measured 0.71
    assert pipeline["box_iou"] >= 0.45  # measured 0.53 (0.42 with the Fisher objectness)


def test_the_index_localizes_with_the_context_net_it_trained_on_its_views(fashion, make_settings, outcome):
    settings = make_settings(index=str(fashion[0] / "index"))  # the index `outcome` measured
    localizer = Engine.open(settings.index, settings).stats()["localizer"]
    assert localizer["model"] == "context net" and localizer["learned_from"] == "synthetic views"
    assert 0 < localizer["fitted_on"] <= 300 * engine_module.VIEWS_PER_IMAGE  # views of 300 clean shots


def test_every_query_is_answered_with_timings(outcome):
    pipeline = outcome["pipeline"]
    assert pipeline["errors"] == 0
    assert set(pipeline["ms_per_query"]) == {"decode", "detect", "embed", "category", "search", "curate"}


def test_a_large_enough_catalog_fine_tunes_a_category_network(fashion, make_settings, monkeypatch):
    """Here from 300 labelled images and for 2 epochs (by default: 1,000 images, 8 epochs)."""
    trained_on = []

    def recording(fronts, labels, classes, **options):
        trained_on.append(len(labels))
        return fit_category_network(fronts, labels, classes, **options)

    monkeypatch.setattr(engine_module, "fit_category_network", recording)
    engine = indexed(fashion, make_settings, "index-network", category_network_from=300, category_epochs=2)
    assert engine.stats()["category_model"]["network"] and engine.category_model.classifier is None
    # One network without the held-out images chooses alpha; the one kept learns from all:
    # each image's catalog crop and its VIEWS_PER_IMAGE views' true-box and found-box crops.
    assert trained_on[0] < trained_on[1] == 300 * (1 + 2 * engine_module.VIEWS_PER_IMAGE)
    pipeline = evaluate(engine, fashion[2])["pipeline"]
    assert pipeline["category_accuracy"] >= 0.5  # chance 0.1; measured 0.63 (the linear classifier's 0.71:
    # a network needs more images and epochs, hence the default from 1,000 images)
    reopened = Engine.open(engine.settings.index, engine.settings)
    assert reopened.category_model.network is not None
