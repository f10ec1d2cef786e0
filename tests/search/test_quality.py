"""Retrieval quality from a real run of the pipeline on a small Fashion-MNIST catalog, with
the default settings (a linear category classifier at this size).

The catalog is 300 Fashion-MNIST test images; the queries are SIMULATED shopper photos
of 80 of them (tests/search/conftest.py). Thresholds sit below the numbers of real runs (see
the comments) so that a regression fails while run-to-run noise does not.
"""

from __future__ import annotations

import pytest

from snapshop.search import engine as engine_module
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate

pytestmark = pytest.mark.timeout(1800)  # indexing the catalog: 250-380 s, more beside another worker


@pytest.fixture(scope="module")
def outcome(fashion, index_fashion):
    return evaluate(index_fashion("index"), fashion[2])


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
