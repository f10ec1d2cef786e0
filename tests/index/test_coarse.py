"""K-means lists of large base segments: how many, which image goes where, and when a compaction keeps them."""

from __future__ import annotations

import numpy as np
import pytest

from snapshop.index.coarse import ListPlan, planned_lists

PLAN = ListPlan(list_size=50, min_images=400)


def clustered_features(centres: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Unit float16 features of points scattered around the given centres (as a segment stores them)."""
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal((count, centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def centres():
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 64)), rng.standard_normal((12, 64))  # where the catalog was, where it went


@pytest.mark.parametrize("images, lists", [(399, 1), (400, 8), (1_000, 20), (1_024, 20)])
def test_a_segment_gets_a_list_per_list_size_codes_from_the_size_on(images, lists):
    assert PLAN.lists_for(images) == lists


def test_a_small_segment_is_not_split():
    assert planned_lists(PLAN, np.zeros((399, 64), np.float16)) is None


def test_each_image_goes_to_the_list_of_its_nearest_centroid(centres):
    features = clustered_features(centres[0], 1_000, seed=1)
    centroids, list_of = planned_lists(PLAN, features)
    assert centroids.shape == (20, 64) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    scores = features.astype(np.float32) @ centroids.T
    assert np.allclose(scores[np.arange(len(features)), list_of], scores.max(axis=1), atol=1e-4)
    assert np.bincount(list_of, minlength=20).max() < 4 * 50  # no list holds most of the images


def test_a_compaction_keeps_the_centroids_while_new_images_fit_them(centres):
    old = clustered_features(centres[0], 1_000, seed=1)
    centroids, list_of = planned_lists(PLAN, old)
    new = clustered_features(centres[0], 200, seed=2)  # more of the same
    kept = np.concatenate([np.arange(100, 1_000), np.full(200, -1)])  # 100 removed, 200 added
    again, again_list_of = planned_lists(PLAN, np.concatenate([old[100:], new]), kept, (centroids, list_of))
    assert again is centroids
    assert np.array_equal(again_list_of[:900], list_of[100:])  # the old images stay in their lists
    scores = new.astype(np.float32) @ centroids.T
    assert np.array_equal(again_list_of[900:], scores.argmax(axis=1))


def test_a_compaction_trains_new_centroids_when_the_data_drifted_or_outgrew_them(centres):
    old = clustered_features(centres[0], 1_000, seed=1)
    centroids, list_of = planned_lists(PLAN, old)
    elsewhere = clustered_features(centres[1], 600, seed=3)
    drifted = planned_lists(PLAN, np.concatenate([old, elsewhere]), np.concatenate([np.arange(1_000), np.full(600, -1)]),
                            (centroids, list_of))
    assert drifted[0] is not centroids and len(drifted[0]) == 32
    more = clustered_features(centres[0], 1_500, seed=4)  # the same data, but 2.5 times as much: 50 lists wanted
    grown = planned_lists(PLAN, np.concatenate([old, more]), np.concatenate([np.arange(1_000), np.full(1_500, -1)]),
                          (centroids, list_of))
    assert grown[0] is not centroids and len(grown[0]) == 50

