"""Segments: row-aligned ids, codes and float16 features, kept sorted by id, and their files."""

from __future__ import annotations

import numpy as np

from snapshop.index.segments import BaseSegment, Rows


def test_rows_merge_by_id_each_row_in_its_place():
    """A compaction's rows: the base's (sorted) and the delta's (any order, float32 features) merged by id."""
    base = Rows(np.array([2, 5, 9, 14], np.int64), np.arange(4, dtype=np.uint8)[:, None] * np.ones((1, 8), np.uint8),
                np.arange(4, dtype=np.float16)[:, None] * np.ones((1, 4), np.float16))
    delta = Rows(np.array([11, 1, 6], np.int64), np.array([[11], [1], [6]], np.uint8) * np.ones((1, 8), np.uint8),
                 np.array([[11], [1], [6]], np.float32) * np.ones((1, 4), np.float32))
    merged = base.concat(delta)
    assert merged.ids.tolist() == [1, 2, 5, 6, 9, 11, 14]
    assert merged.codes[:, 0].tolist() == [1, 0, 1, 6, 2, 11, 3]
    assert merged.features.dtype == np.float16 and merged.features[:, 3].tolist() == [1, 0, 1, 6, 2, 11, 3]
    assert base.concat(Rows.empty(64, 4)) is base  # nothing to merge: the base's own (memory-mapped) rows


def test_a_split_segment_of_an_older_index_opens_as_one_list(tmp_path):
    """Centroids written in the codes' sign space (`.centroids.npy`, before they moved to feature
    space) are not scored with a query's embedding: the segment is scanned whole."""
    rng = np.random.default_rng(0)
    rows = Rows(np.arange(64, dtype=np.int64), rng.integers(0, 256, (64, 8), dtype=np.uint8),
                rng.standard_normal((64, 4)).astype(np.float16))
    centroids, list_of = rng.standard_normal((4, 4)).astype(np.float32), np.arange(64) % 4
    split = BaseSegment.build(tmp_path, "s", rows, (centroids, list_of))
    assert split.codes.lists == 4 and np.array_equal(split.centroids, centroids)
    (tmp_path / "s.feature_centroids.npy").rename(tmp_path / "s.centroids.npy")
    older = BaseSegment.load(tmp_path, "s")
    assert older.codes.lists == 1 and older.centroids is None and older.codes.size == 64
