"""The live index on synthetic vectors: code shortlist + re-rank, partitions, live writes,
compaction, shards and replicas, memory-mapped loading, other processes' writes."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing

import faiss
import numpy as np
import pytest

from snapshop.errors import IndexError_
from snapshop.index.folder import IndexFolder
from snapshop.index import scan
from snapshop.index.live import LAYOUT, IndexParams, LiveIndex, ShardCodes
from snapshop.index.scan import sign_code_index
from snapshop.index.store import _LOG_REMOVALS, MetadataStore, NewImage, NewItem
from snapshop.models.encoder import Codec
from snapshop.models.projection import sign_code
from snapshop.models.pooling import l2_normalize


class Synthetic:
    """A store and a live index over random vectors; writes go through the store like the engine's."""

    def __init__(self, folder, *, bits: int = 64, dim: int = 32, **params) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.bits, self.dim = bits, dim
        self.store = MetadataStore(folder / "meta.sqlite")
        self.params = IndexParams(bits=bits, dim=dim, **params)
        self.index = LiveIndex(folder, self.store, self.params, codec="test")

    def write(self, items: list[str], partitions: list[str], codes: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Upsert one image per item, searchable in the same transaction (as `Engine.add` does)."""
        with self.store.transaction():
            ids = [image_ids[0] for image_ids in self.store.upsert_items(
                [NewItem(item, part or None, {}, [NewImage(item, f"{item}.jpg", [0, 0, 1, 1], np.zeros(1))])
                 for item, part in zip(items, partitions)])]
            self.store.set_vectors(np.array(ids), features, codes)
        self.index.refresh()
        return np.array(ids, np.int64)

    def remove(self, items: list[str]) -> None:
        with self.store.transaction():
            self.store.delete_items(items)
        self.index.refresh()

    def reopen(self, **params) -> LiveIndex:
        return LiveIndex(self.folder, self.store, IndexParams(bits=self.bits, dim=self.dim, **params), codec="test")

    def close(self) -> None:
        self.index.close()
        self.store.close()


def project(features: np.ndarray, bits: int = 64) -> np.ndarray:
    """Projections on one fixed set of random hyperplanes (the same for catalog and queries)."""
    return (features @ np.random.default_rng(100).standard_normal((features.shape[1], bits))).astype(np.float32)


def encode(features: np.ndarray, bits: int = 64) -> np.ndarray:
    """Codes: the signs of the projections."""
    return sign_code(project(features, bits))


def random_vectors(n: int, bits: int = 64, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    features = l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))
    return encode(features, bits), features


@pytest.fixture
def synthetic(tmp_path):
    made: list[Synthetic] = []

    def make(n: int = 300, partitions=("a", "b", "c"), **params) -> tuple[Synthetic, np.ndarray, list[str], np.ndarray, np.ndarray]:
        index = Synthetic(tmp_path / f"index{len(made)}", **params)
        made.append(index)
        codes, features = random_vectors(n, index.bits, index.dim)
        labels = [partitions[i % len(partitions)] for i in range(n)]
        ids = index.write([f"item{i}" for i in range(n)], labels, codes, features) if n else np.zeros(0, np.int64)
        return index, ids, labels, codes, features

    yield make
    for index in made:
        index.close()


# --- search basics --------------------------------------------------------------------------------


def test_counts_and_partitions(synthetic):
    s, ids, *_ = synthetic()
    assert len(s.index) == 300
    assert s.index.partitions == {"a": 100, "b": 100, "c": 100}
    assert list(s.index.image_ids()) == list(ids)


def test_the_store_hands_out_every_searchable_vector_in_batches(synthetic):
    s, ids, *_ = synthetic(n=23)
    s.remove(["item4"])
    whole = s.store.vectors()
    batches = list(s.store.vector_batches(5))
    assert [len(batch.image_ids) for batch in batches] == [5, 5, 5, 5, 2]
    assert np.concatenate([batch.image_ids for batch in batches]).tolist() == whole.image_ids.tolist()
    assert np.array_equal(np.concatenate([batch.codes for batch in batches]), whole.codes)
    assert [item for batch in batches for item in batch.item_ids] == whole.item_ids


def test_exact_copy_is_found_first_with_cosine_one(synthetic):
    s, ids, _, codes, features = synthetic()
    found = s.index.search(project(features[:20]), features[:20], shortlist=10)
    assert found.image_ids.shape == (20, 10)
    assert list(found.image_ids[:, 0]) == list(ids[:20])
    assert np.allclose(found.scores[:, 0], 1.0, atol=2e-3)  # float16 storage
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()  # best first


def test_search_within_partitions(synthetic):
    s, ids, labels, codes, features = synthetic()
    found = s.index.search(project(features[:5]), features[:5], shortlist=30, partitions=["b"])
    returned = found.image_ids[found.image_ids >= 0]
    assert len(returned) and set(returned) <= set(ids[np.array(labels) == "b"])
    assert set(found.partitions[found.image_ids >= 0]) == {"b"}
    unknown = s.index.search(project(features[:3]), features[:3], shortlist=10, partitions=["nope"])
    assert unknown.image_ids.shape[0] == 3 and (unknown.image_ids == -1).all()


def test_short_lists_are_padded(synthetic):
    s, ids, _, codes, features = synthetic(n=6, partitions=("only",))
    found = s.index.search(project(features[:2]), features[:2], shortlist=10)
    assert (found.image_ids[:, :6] >= 0).all() and (found.image_ids[:, 6:] == -1).all()
    assert np.isneginf(found.scores[:, 6:]).all()


def test_rerank_order_is_exact_cosine_order_on_the_shortlist(synthetic):
    s, ids, _, codes, features = synthetic(n=400, partitions=("all",))
    queries = l2_normalize(features[:10] + 0.3 * np.random.default_rng(9).standard_normal(features[:10].shape).astype(np.float32))
    found = s.index.search(project(queries), queries, shortlist=400)  # shortlist = everything
    exact = queries @ features.astype(np.float16).astype(np.float32).T
    for row in range(10):
        assert list(found.image_ids[row][:20]) == list(ids[np.argsort(-exact[row], kind="stable")][:20])


def test_a_batch_re_ranked_block_by_block_answers_as_single_queries_do(synthetic, monkeypatch):
    s, ids, _, codes, features = synthetic(n=400)
    queries = l2_normalize(features[:12] + 0.3 * np.random.default_rng(3).standard_normal(features[:12].shape).astype(np.float32))
    monkeypatch.setattr("snapshop.index.live.RERANK_BLOCK", 100)  # 100 candidate rows a call: 2 queries at 50
    batch = s.index.search(project(queries), queries, shortlist=50)
    for row in range(12):
        single = s.index.search(project(queries[row : row + 1]), queries[row : row + 1], shortlist=50)
        assert list(batch.image_ids[row]) == list(single.image_ids[0])
        np.testing.assert_allclose(batch.scores[row], single.scores[0], rtol=1e-6)


SCANS = {
    "top-k": {},
    "threshold": {"SAMPLED_LIST_MIN": 32, "SAMPLE_STRIDE": 4, "THRESHOLD_SCAN_MIN": 2, "THRESHOLD_SCAN_BATCH_MAX": 4},
    "threshold set too high": {"SAMPLED_LIST_MIN": 32, "SAMPLE_STRIDE": 4, "THRESHOLD_SCAN_MIN": 2,
                               "THRESHOLD_SCAN_BATCH_MAX": 4},
}


def _above_a_higher_threshold(above):
    """A threshold scan whose sample misjudged: only the best five codes pass."""
    def scan_above(self, *args):
        answers = above(self, *args)
        return answers and [tuple(part[np.argsort(-scores)[:5]] for part in (scores, labels))
                            for scores, labels in answers]
    return scan_above


@pytest.mark.parametrize("scan_kind", SCANS)
def test_one_scan_shortlists_the_best_live_codes_of_the_searched_partitions(synthetic, monkeypatch, scan_kind):
    """Base and delta of every partition in one faiss scan: the shortlist holds the best-scoring
    live codes of the searched partitions only, tombstones skipped even when they crowd its top;
    by a top-k scan, or by a threshold scan (a query it leaves short asks the top-k scan)."""
    for name, value in SCANS[scan_kind].items():
        monkeypatch.setattr(scan, name, value)
    if scan_kind == "threshold set too high":
        monkeypatch.setattr(scan.CodeScan, "above_threshold", _above_a_higher_threshold(scan.CodeScan.above_threshold))
    by_top_k = []
    top_k = ShardCodes._top_k
    monkeypatch.setattr(ShardCodes, "_top_k", lambda self, projections, *args: (
        by_top_k.append(len(projections)), top_k(self, projections, *args))[1])
    s, ids, labels, codes, features = synthetic(n=600)
    s.index.compact()
    new_codes, new_features = random_vectors(60, seed=5)
    new_labels = ["a", "b", "c"] * 20
    new_ids = s.write([f"new{i}" for i in range(60)], new_labels, new_codes, new_features)  # deltas
    items = np.array([f"item{i}" for i in range(600)] + [f"new{i}" for i in range(60)])
    all_ids, all_labels = np.concatenate([ids, new_ids]), np.array(labels + new_labels)
    all_codes = np.concatenate([codes, new_codes])
    queries = l2_normalize(features[:4] + 0.3 * np.random.default_rng(3).standard_normal(features[:4].shape).astype(np.float32))
    in_a = np.flatnonzero(all_labels == "a")
    best_in_a = in_a[sign_code_index(all_codes[in_a]).search(project(queries[:1]), 50)[1][0]]
    removed = np.concatenate([best_in_a, np.flatnonzero(all_labels == "b")[-5:]])  # base tombstones and delta removals
    s.remove(list(items[removed]))
    live = np.setdiff1d(np.arange(len(all_ids)), removed)
    assert s.index.shards[0][0].states["a"].tombstones.size == len(np.intersect1d(best_in_a, np.arange(600)))

    for partitions in (None, ["a"], ["b", "c"]):
        candidates = live if partitions is None else live[np.isin(all_labels[live], partitions)]
        reference = sign_code_index(all_codes[candidates])
        scores, rows = reference.search(project(queries), len(candidates))
        score_of = [dict(zip(all_ids[candidates[r]], q)) for r, q in zip(rows, scores)]
        by_top_k.clear()
        found = s.index.search(project(queries), queries, shortlist=20, partitions=partitions).image_ids
        assert found.shape == (4, 20) and not np.isin(found, all_ids[removed]).any()
        for query in range(4):
            assert sorted(score_of[query][i] for i in found[query]) == sorted(scores[query, :20])
        assert sum(by_top_k) == {"top-k": 4, "threshold": sum(by_top_k), "threshold set too high": 4}[scan_kind]
        if scan_kind == "threshold":
            assert sum(by_top_k) < 4  # most answered by threshold (query 0 may be left short by its tombstones)


@pytest.mark.parametrize("bad", [
    lambda features: encode(features),  # packed codes, not projections
    lambda features: project(features).astype(np.int64),
    lambda features: project(features)[:, :32],
    lambda features: project(features)[0],
])
def test_anything_but_float_projections_is_a_type_error(synthetic, bad):
    s, _, _, codes, features = synthetic(n=10)
    with pytest.raises(TypeError, match="projections"):
        s.index.search(bad(features[:2]), features[:2], shortlist=5)


def test_features_of_the_wrong_width_are_refused(synthetic):
    s, _, _, codes, features = synthetic(n=10)
    with pytest.raises(ValueError, match="features"):
        s.index.search(project(features[:2, :8]), features[:2, :8], shortlist=5)


# --- live writes ----------------------------------------------------------------------------------


def test_adds_are_visible_to_the_next_query(synthetic):
    s, ids, labels, codes, features = synthetic(n=100)
    new_codes, new_features = random_vectors(5, seed=7)
    new_ids = s.write([f"new{i}" for i in range(5)], ["a"] * 5, new_codes, new_features)
    found = s.index.search(project(new_features), new_features, shortlist=5)
    assert list(found.image_ids[:, 0]) == list(new_ids)


def test_removed_images_are_never_returned_from_base_or_delta(synthetic):
    s, ids, labels, codes, features = synthetic(n=300, compact_delta=10_000)
    s.index.compact()  # half of what is removed sits in a base segment, half in the delta
    more_codes, more_features = random_vectors(50, seed=3)
    more = s.write([f"more{i}" for i in range(50)], ["a"] * 50, more_codes, more_features)
    s.remove([f"item{i}" for i in range(0, 300, 2)] + [f"more{i}" for i in range(0, 50, 2)])
    gone = set(ids[::2]) | set(more[::2])
    found = s.index.search(project(np.concatenate([features, more_features])), np.concatenate([features, more_features]), shortlist=400)
    assert not set(found.image_ids.ravel()) & gone
    assert set(found.image_ids[0][found.image_ids[0] >= 0]) == (set(ids) | set(more)) - gone
    assert len(s.index) == 175 and s.index.segment_report()[0]["tombstones"] == 50


def test_an_upsert_replaces_the_image(synthetic):
    s, ids, labels, codes, features = synthetic(n=50)
    new_codes, new_features = random_vectors(1, seed=11)
    new_id = s.write(["item3"], ["c"], new_codes, new_features)[0]
    found = s.index.search(project(features[3:4]), features[3:4], shortlist=60)
    assert ids[3] not in found.image_ids and new_id in found.image_ids
    assert s.index.partitions == {"a": 16, "b": 17, "c": 17}  # item3 moved from a to c


def test_writes_by_another_process_reach_a_reader_that_refreshes(synthetic):
    s, ids, labels, codes, features = synthetic(n=50)
    reader = LiveIndex(s.folder, MetadataStore(s.folder / "meta.sqlite"), s.params, codec="test")
    new_codes, new_features = random_vectors(3, seed=5)
    new_ids = s.write(["x", "y", "z"], ["a"] * 3, new_codes, new_features)
    s.remove(["item0"])
    assert ids[0] in reader.image_ids() and new_ids[0] not in reader.image_ids()  # not yet looked
    reader.refresh()
    assert ids[0] not in reader.image_ids() and set(new_ids) <= set(reader.image_ids())
    s.index.compact()
    reader.refresh()  # the layout changed: reloaded from the new segments
    assert list(reader.image_ids()) == list(s.index.image_ids())
    reader.close()


# --- compaction and segments ------------------------------------------------------------------------


def test_compaction_writes_base_segments_and_keeps_the_answers(synthetic):
    s, ids, labels, codes, features = synthetic(n=300)
    before = s.index.search(project(features[:30]), features[:30], shortlist=20)
    report = s.index.compact()
    assert {r["partition"] for r in report} == {"a", "b", "c"}
    assert all(seg["base"] == "codes" and seg["delta_images"] == 0 for seg in s.index.segment_report())
    after = s.index.search(project(features[:30]), features[:30], shortlist=20)
    assert (before.image_ids == after.image_ids).all()
    assert (s.folder / LAYOUT).is_file()
    assert s.store.changes_since(0) == []  # every change is in a segment now


def test_compacting_one_partition_keeps_the_other_segments_open(synthetic):
    s, ids, labels, codes, features = synthetic(n=300)
    s.index.compact()
    opened = {name: state.base for name, state in s.index.shards[0][0].states.items()}
    s.remove(["item0"])  # partition "a"
    s.index.compact([("a", 0)])
    after = s.index.shards[0][0].states
    assert after["b"].base is opened["b"] and after["c"].base is opened["c"]
    assert after["a"].base is not opened["a"] and len(after["a"].base) == 99
    assert not np.isin(ids[0], s.index.search(project(features[:1]), features[:1], shortlist=300).image_ids).any()


def test_a_compaction_swaps_in_its_partition_alone_and_answers_as_a_reopened_index(synthetic):
    s, ids, labels, codes, features = synthetic(n=300, compact_delta=10_000)
    s.index.compact()
    more_codes, more_features = random_vectors(30, seed=4)
    s.write([f"more{i}" for i in range(30)], ["a", "b", "c"] * 10, more_codes, more_features)
    s.remove([f"item{i}" for i in range(0, 60, 4)])  # tombstones in every partition
    before = s.index.shards[0][0].states
    s.index.compact([("a", 0)])
    after = s.index.shards[0][0].states
    assert after["b"] is before["b"] and after["c"] is before["c"]  # no replay of the change log
    assert len(after["a"].delta) == 0 and len(after["a"].tombstones) == 0
    assert_answers_as_a_reopened_index(s, s.index, np.concatenate([features[:40], more_features]))


def test_a_reader_opens_only_the_segments_another_process_compacted(synthetic):
    s, ids, labels, codes, features = synthetic(n=300, compact_delta=10_000)
    s.index.compact()
    reader = LiveIndex(s.folder, MetadataStore(s.folder / "meta.sqlite"), s.params, codec="test")
    more_codes, more_features = random_vectors(30, seed=4)
    s.write([f"more{i}" for i in range(30)], ["a", "b", "c"] * 10, more_codes, more_features)
    s.remove([f"item{i}" for i in range(0, 60, 4)])
    reader.refresh()
    before = reader.shards[0][0].states
    s.index.compact([("a", 0)])
    late_codes, late_features = random_vectors(1, seed=9)
    s.write(["late"], ["a"], late_codes, late_features)  # committed after the compaction
    reader.refresh()
    after = reader.shards[0][0].states
    assert after["b"] is before["b"] and after["c"] is before["c"]
    assert after["a"].base.name != before["a"].base.name and len(after["a"].delta) == 1
    assert_answers_as_a_reopened_index(s, reader, np.concatenate([features[:40], more_features, late_features]))
    reader.close()


def assert_answers_as_a_reopened_index(s, index: LiveIndex, queries: np.ndarray) -> None:
    """`index` holds what an index opened afresh from the folder holds, and answers alike."""
    reopened = LiveIndex(s.folder, MetadataStore(s.folder / "meta.sqlite"), s.params, codec="test")
    assert list(reopened.image_ids()) == list(index.image_ids())
    ours, theirs = (i.search(project(queries), queries, shortlist=400) for i in (index, reopened))
    assert (ours.image_ids[:, :10] == theirs.image_ids[:, :10]).all()  # every live image re-ranked: no ties at a cut
    assert all(set(a) == set(b) for a, b in zip(ours.image_ids, theirs.image_ids))
    assert reopened.segment_report() == index.segment_report()
    reopened.close()


def test_a_reopened_index_memory_maps_its_segments(synthetic):
    s, ids, labels, codes, features = synthetic(n=3000, partitions=("all",))
    s.index.compact()
    more_codes, more_features = random_vectors(10, seed=8)
    more = s.write([f"m{i}" for i in range(10)], ["all"] * 10, more_codes, more_features)
    s.remove(["item1"])
    reopened = s.reopen()
    state = reopened.shards[0][0].states["all"]
    assert all(isinstance(part.base, np.memmap) for part in (state.base.rows.features, state.base.rows.codes))
    assert len(state.delta) == 10 and list(state.tombstones) == [ids[1]]  # replayed from the change log
    assert list(reopened.image_ids()) == list(s.index.image_ids())
    assert set(more) <= set(reopened.search(project(more_features), more_features, shortlist=5).image_ids[:, 0])
    reopened.close()


SPLIT = {"list_size": 32, "lists_from": 150}  # 200 images a partition: about 6 k-means lists each


def test_a_large_base_is_split_into_k_means_lists_and_scanning_them_all_answers_alike(synthetic):
    s, ids, labels, codes, features = synthetic(n=600, lists_probed=1_000, **SPLIT)
    queries = l2_normalize(features[:30] + 0.3 * np.random.default_rng(6).standard_normal(features[:30].shape).astype(np.float32))
    before = s.index.search(project(queries), queries, shortlist=40)
    s.index.compact()
    report = s.index.segment_report()
    assert all(seg["base"] == "k-means lists" and seg["lists"] == 6 and seg["base_images"] == 200 for seg in report)
    base = s.index.shards[0][0].states["a"].base
    assert base.centroids.shape == (6, 32) and np.bincount(base.list_of).sum() == 200  # in feature space
    after = s.index.search(project(queries), queries, shortlist=40)
    assert (before.image_ids == after.image_ids).all() and np.allclose(before.scores, after.scores)
    assert_answers_as_a_reopened_index(s, s.index, queries)


def test_a_query_scans_only_the_lists_nearest_it_and_never_a_removed_image(synthetic):
    s, ids, labels, codes, features = synthetic(n=600, lists_probed=4, **SPLIT)
    s.index.compact()
    s.remove([f"item{i}" for i in range(0, 600, 7)])
    more_codes, more_features = random_vectors(30, seed=4)
    more = s.write([f"more{i}" for i in range(30)], ["a", "b", "c"] * 10, more_codes, more_features)  # deltas: scanned whole
    found = s.index.search(project(features), features, shortlist=20, explain=True)
    explain = found.explain
    assert s.index.search(project(features[:2]), features[:2], shortlist=20).explain == []  # a report only when asked
    assert sum(part["lists_probed"] for part in explain) == pytest.approx(4 + 3)  # 4 of 18 split lists, and 3 deltas
    removed = ids[::7]
    assert not np.isin(found.image_ids, removed).any()
    live = np.setdiff1d(np.arange(600), np.arange(0, 600, 7))
    assert (found.image_ids[live, 0] == ids[live]).mean() >= 0.95  # its own list is near it: 0.982 on this data
    assert (s.index.search(project(more_features), more_features, shortlist=5).image_ids[:, 0] == more).all()
    in_a = s.index.search(project(features[:20]), features[:20], shortlist=20, partitions=["a"], explain=True)
    assert set(in_a.partitions[in_a.image_ids >= 0]) == {"a"}
    assert [part["lists_probed"] for part in in_a.explain] == [pytest.approx(4 + 1)]  # 4 of its 6 lists, and its delta


def test_queries_during_compaction_see_the_old_or_the_new_state_never_a_mix(synthetic):
    s, ids, labels, codes, features = synthetic(n=2000, partitions=("a", "b"))
    expected = s.index.search(project(features[:16]), features[:16], shortlist=10).image_ids
    failures: list[str] = []
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            found = s.index.search(project(features[:16]), features[:16], shortlist=10).image_ids
            if not (found == expected).all():
                failures.append("changed answer")

    threads = [threading.Thread(target=query) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        s.index.compact()
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []


# --- shards and replicas --------------------------------------------------------------------------


def test_one_shard_and_four_shards_give_the_same_results(tmp_path):
    codes, features = random_vectors(2000, seed=1)
    labels = [("a", "b")[i % 2] for i in range(2000)]
    answers = []
    for shards in (1, 4):
        s = Synthetic(tmp_path / f"s{shards}", shards=shards)
        s.write([f"item{i}" for i in range(2000)], labels, codes, features)
        s.index.compact()
        found = s.index.search(project(features[:100]), features[:100], shortlist=2000)  # exhaustive: exact re-rank
        answers.append(found.image_ids[:, :10])
        if shards == 4:
            assert len(s.index.shards) == 4 and all(len(r[0].states["a"]) > 200 for r in s.index.shards)
        s.close()
    assert (answers[0] == answers[1]).all()


def test_four_shards_find_what_one_shard_finds_at_the_default_shortlist(tmp_path):
    codes, features = random_vectors(3000, seed=1)
    queries = l2_normalize(features[:100] + 0.2 * np.random.default_rng(2).standard_normal((100, 32)).astype(np.float32))
    exact = np.argsort(-(queries @ features.T), axis=1)[:, :10] + 1  # image ids start at 1
    recall = {}
    for shards in (1, 4):
        s = Synthetic(tmp_path / f"s{shards}", shards=shards)
        s.write([f"item{i}" for i in range(3000)], ["all"] * 3000, codes, features)
        found = s.index.search(project(queries), queries, shortlist=200).image_ids[:, :10]
        recall[shards] = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        s.close()
    assert recall[4] >= recall[1] > 0.3  # each shard re-ranks its own shortlist: never fewer candidates


def test_replicas_answer_in_turn_and_a_failing_one_hands_over(synthetic, monkeypatch):
    s, ids, labels, codes, features = synthetic(n=200, shards=2, replicas=2)
    expected = s.index.search(project(features[:5]), features[:5], shortlist=10).image_ids
    asked: list[int] = []
    for shard in s.index.shards:
        for number, replica in enumerate(shard):
            original = replica.search

            def spy(*args, _number=number, _original=original, **kwargs):
                asked.append(_number)
                return _original(*args, **kwargs)

            monkeypatch.setattr(replica, "search", spy)
    for _ in range(4):
        s.index.search(project(features[:5]), features[:5], shortlist=10)
    assert sorted(asked) == [0] * 4 + [1] * 4  # each shard's two replicas took turns

    def broken(*args, **kwargs):
        raise OSError("replica lost its disk")

    monkeypatch.setattr(s.index.shards[0][0], "search", broken)
    for _ in range(3):
        assert (s.index.search(project(features[:5]), features[:5], shortlist=10).image_ids == expected).all()
    monkeypatch.setattr(s.index.shards[0][1], "search", broken)
    with pytest.raises(IndexError_, match="every replica failed"):
        s.index.search(project(features[:5]), features[:5], shortlist=10)


def segment_generations(folder) -> set[int]:
    return {int(path.name.split(".")[0].rsplit("-g", 1)[1]) for path in (folder / "segments").iterdir()}


def test_changing_the_shard_count_re_shards_on_compaction(synthetic):
    s, ids, labels, codes, features = synthetic(n=300)
    s.index.compact()
    resharded = s.reopen(shards=3)
    assert len(resharded.shards) == 3 and list(resharded.image_ids()) == list(ids)
    generations_before = segment_generations(s.folder)
    resharded.compact()
    assert {seg["shard"] for seg in resharded.segment_report()} == {0, 1, 2}
    assert min(segment_generations(s.folder)) > max(generations_before)  # no name a reader may have mapped
    again = s.reopen(shards=3)
    assert list(again.image_ids()) == list(ids)
    resharded.close()
    again.close()


# --- recall against exact float search with a real codec ----------------------------------------------


def clustered_descriptors(rng: np.random.Generator, n: int, d: int = 512, clusters: int = 50) -> np.ndarray:
    """Non-negative, L2-normalised vectors around cluster centres with a shared low-rank spread."""
    centres = rng.standard_normal((clusters, d))
    basis = rng.standard_normal((64, d)) / 8
    labels = rng.integers(0, clusters, n)
    data = centres[labels] + rng.standard_normal((n, 64)) @ basis * 1.8 + rng.standard_normal((n, d)) * 0.18
    return l2_normalize(np.maximum(data, 0).astype(np.float32))


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = clustered_descriptors(rng, 5200)
    codec = Codec.fit(data[:5000], dim=128, bits=128, source="test")
    features, codes = codec.encode(data[:5000])
    query_features, query_projections = codec.query(data[5000:])
    s = Synthetic(tmp_path_factory.mktemp("realistic"), bits=128, dim=128)
    ids = s.write([f"item{i}" for i in range(5000)], ["all"] * 5000, codes, features)
    exact = ids[np.argsort(-(query_features @ features.T), axis=1)[:, :10]]
    yield s.index, query_projections, query_features, exact, (ids, codes)
    s.close()


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(e)) / 10 for f, e in zip(found, exact)]))


def test_code_shortlist_plus_rerank_recalls_exact_float_search(realistic):
    index, projections, query_features, exact, _ = realistic
    assert recall_at_10(index.search(projections, query_features, shortlist=200).image_ids, exact) >= 0.95  # 0.99 in real runs


def test_rerank_is_what_brings_recall_up(realistic):
    index, projections, query_features, exact, _ = realistic
    codes_only = recall_at_10(index.search(projections, query_features, shortlist=10).image_ids, exact)
    reranked = recall_at_10(index.search(projections, query_features, shortlist=200).image_ids, exact)
    assert codes_only < 0.8 and reranked > codes_only + 0.15


def test_the_asymmetric_shortlist_holds_more_true_neighbours_than_hamming_distance(realistic):
    """Scoring the query's float projection against the codes loses less than comparing two codes."""
    index, projections, query_features, exact, (ids, codes) = realistic
    hamming = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    hamming.add(codes)
    by_hamming = ids[hamming.search(sign_code(projections), 50)[1]]
    ours = index.search(projections, query_features, shortlist=50).image_ids
    assert recall_at_10(ours, exact) > recall_at_10(_reranked(by_hamming, ids, query_features, index), exact) + 0.05


def _reranked(candidates: np.ndarray, ids: np.ndarray, query_features: np.ndarray, index: LiveIndex) -> np.ndarray:
    """Candidates in float cosine order (the same re-rank as the index's)."""
    stored = index.shards[0][0].states["all"].delta.rows
    features = stored.features[stored.rows_of(candidates)].astype(np.float32)
    order = np.argsort(-np.einsum("qrd,qd->qr", features, query_features), axis=1)
    return np.take_along_axis(candidates, order, 1)


def test_index_folder_lock_is_exclusive(tmp_path):
    folder = IndexFolder(tmp_path / "idx")
    with folder.write_lock():
        with pytest.raises(IndexError_, match="another process is writing"):
            with IndexFolder(tmp_path / "idx").write_lock():
                pass


def _wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_committed_writes_reach_the_database_file_in_the_background(tmp_path):
    """COMMIT waits only for the WAL; the upkeep thread copies the frames into the file after."""
    store = MetadataStore(tmp_path / "meta.sqlite")
    try:
        before = (tmp_path / "meta.sqlite").stat().st_size
        with store.transaction():
            store.upsert_items([NewItem(f"item{i}", "a", {"title": "x" * 2000}, []) for i in range(500)])
        assert _wait_until(lambda: (tmp_path / "meta.sqlite").stat().st_size > before + 500 * 2000), \
            "nothing was checkpointed"
        assert len(store.item_ids()) == 500
    finally:
        store.close()


def _raw_image_rows(path) -> int:
    """Image rows in the database file, swept or not (the store's own reads skip unswept ones)."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def test_a_removed_items_images_vanish_at_once_and_their_rows_are_swept_after_the_commit(synthetic):
    index, *_ = synthetic(n=40)
    path = index.folder / "meta.sqlite"
    index.remove([f"item{i}" for i in range(10)])
    gone = {f"item{i}" for i in range(10)}
    assert index.store.counts()["images"] == 30
    assert not gone & {item for _, item, _ in index.store.image_rows()}
    assert not gone & {item for item, _, _ in index.store.image_boxes()}
    assert index.store.images_of(gone) == []
    assert len(index.store.vectors().image_ids) == 30
    assert _wait_until(lambda: _raw_image_rows(path) == 30), "the removed items' image rows were never swept"


def test_a_removal_finds_the_images_it_logs_without_reading_their_rows(synthetic):
    index, *_ = synthetic(n=20)
    with closing(sqlite3.connect(index.folder / "meta.sqlite")) as db:
        plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + _LOG_REMOVALS, ("item1",)))
    assert "searchable_images" in plan, plan
    index.remove(["item1"])
    assert [change.op for change in index.store.changes_since(0) if change.item_id == "item1"][-1] == "remove"


def test_an_item_added_again_before_the_sweep_keeps_only_its_new_images(synthetic, monkeypatch):
    index, _, labels, codes, features = synthetic(n=20)
    path = index.folder / "meta.sqlite"
    monkeypatch.setattr(type(index.store._upkeep), "_sweep", lambda self, db: None)
    index.remove(["item3"])
    assert _raw_image_rows(path) == 20, "the image row is left to the sweep"
    new_ids = index.write(["item3"], [labels[3]], codes[:1], features[:1])
    assert [image_id for image_id, item, _ in index.store.image_rows() if item == "item3"] == new_ids.tolist()
    assert index.store.counts()["images"] == 20
    monkeypatch.undo()
    index.store.close()  # the next process that writes sweeps what this one left
    index.store = MetadataStore(path)
    with index.store.transaction():
        index.store.delete_items(["item4"])
    assert _wait_until(lambda: _raw_image_rows(path) == 19)
    assert [image_id for image_id, item, _ in index.store.image_rows() if item == "item3"] == new_ids.tolist()


def test_images_still_to_encode_are_counted_from_their_own_index(tmp_path):
    """`counts()` runs after every add: at 1M images a scan of the table took 0.6 s."""
    store = MetadataStore(tmp_path / "meta.sqlite")
    try:
        descriptor = np.ones(8, np.float32)
        with store.transaction():
            image_ids = store.upsert_items([
                NewItem(f"item{i}", "a", {}, [NewImage(f"item{i}", f"item{i}.png", [0, 0, 1, 1], descriptor)] * 2)
                for i in range(5)])
            encoded = np.array(image_ids[0] + image_ids[1])
            store.set_vectors(encoded, np.ones((4, 4), np.float32), np.zeros((4, 8), np.uint8))
            store.delete_items(["item1", "item2"])
        assert store.counts() == {"items": 3, "images": 6, "pending": 4}
        plan = " ".join(row[3] for row in store._read.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM images WHERE code IS NULL"))
        assert "pending_images" in plan, plan
    finally:
        store.close()
