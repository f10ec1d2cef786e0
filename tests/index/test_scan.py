"""The code scan: segments' codes as faiss lists, stacked and searched in one pass."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from snapshop.index import scan
from snapshop.index.scan import ROW_MASK, CodeList, CodeScan, sign_code_index

SIZES = (1, 31, 33, 70, 0)  # around the 32-code block, and an empty list


def segments_and_rows(scan: CodeScan, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segment number and row of each label (garbage where a label is -1 or PAD)."""
    found = np.searchsorted(scan.first_labels, labels, side="right") - 1
    return scan.by_label[found.clip(0, len(scan.lists) - 1)], labels & ROW_MASK


@pytest.fixture(scope="module")
def lists():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 256, (size, 32), dtype=np.uint8) for size in SIZES]
    return codes, CodeScan([CodeList(part) for part in codes]), rng.standard_normal((5, 256)).astype(np.float32)


@pytest.mark.parametrize("probe", [[0, 1, 2, 3, 4], [2], [1, 3], [4]])
def test_one_scan_scores_as_a_flat_index_of_the_probed_lists(lists, probe):
    codes, scan, queries = lists
    probed = [number for number in probe if SIZES[number]]
    scores, labels = scan.top_k(queries, 40, np.array(probe))
    found_lists, rows = segments_and_rows(scan, labels)
    expected_count = min(40, sum(SIZES[number] for number in probe))
    assert scores.shape == (5, expected_count)
    if not probed:
        return
    flat = sign_code_index(np.concatenate([codes[number] for number in probed]))
    flat_scores, flat_rows = flat.search(queries, expected_count)
    assert np.array_equal(scores, flat_scores)  # the same quantized scores, best first
    assert set(found_lists.ravel()) <= set(probed)
    offsets = dict(zip(probed, np.cumsum([0] + [SIZES[number] for number in probed])))
    as_flat_rows = np.vectorize(offsets.get)(found_lists) + rows
    for query in range(5):  # ties may come in another order: compare the rows score by score
        assert sorted(zip(scores[query], as_flat_rows[query])) == sorted(zip(flat_scores[query], flat_rows[query]))


@pytest.mark.parametrize("probe", [[0, 1, 2, 3, 4], [3, 2], [4, 1]])
def test_a_single_query_scanning_its_lists_in_probe_order_finds_what_a_batch_finds(lists, probe):
    """One query is scanned by another index over the same lists (its lists in the order given)."""
    _, scan, queries = lists
    batch = scan.top_k(queries, 40, np.array(probe))
    for query in range(len(queries)):
        alone = scan.top_k(queries[query : query + 1], 40, np.array(probe))
        assert sorted(zip(*(part[0] for part in alone))) == sorted(zip(*(part[query] for part in batch)))


def test_a_list_holds_its_packed_codes_and_a_label_per_code():
    code_list = CodeList(np.zeros((33, 32), np.uint8))
    assert code_list.size == 33 and code_list.bits == 256
    assert code_list.nbytes == 64 * 32 + 33 * 8  # two blocks of 32 codes


@pytest.fixture
def sampled(monkeypatch):
    """Lists long enough to be sampled, one code in four; a threshold scan whenever the sampled
    codes outnumber the wanted ones twice."""
    monkeypatch.setattr(scan, "SAMPLED_LIST_MIN", 64)
    monkeypatch.setattr(scan, "SAMPLE_STRIDE", 4)
    monkeypatch.setattr(scan, "THRESHOLD_SCAN_MIN", 2)
    monkeypatch.setattr(scan, "THRESHOLD_SCAN_BATCH_MAX", 6)
    rng = np.random.default_rng(1)
    codes = [rng.integers(0, 256, (size, 32), dtype=np.uint8) for size in (300, 40, 500, 0, 257)]
    return codes, CodeScan([CodeList(part) for part in codes]), rng.standard_normal((6, 256)).astype(np.float32)


@pytest.mark.parametrize("probe", [[0, 1, 2, 3, 4], [2, 4], [1, 0]])
def test_a_threshold_scan_returns_every_code_above_its_threshold(sampled, probe):
    codes, code_scan, queries = sampled
    answers = code_scan.above_threshold(queries, 30, np.array(probe))
    assert answers is not None and len(answers) == len(queries)
    flat = sign_code_index(np.concatenate([codes[number] for number in probe]))
    everything = flat.search(queries, flat.ntotal)[0]
    for query, ((scores, labels), all_scores) in enumerate(zip(answers, everything)):
        lists, rows = segments_and_rows(code_scan, labels)
        passed = len(scores)
        assert 30 * 0.5 < passed < 30 * 4  # aimed a little above 30 by the sample
        assert np.array_equal(np.sort(scores)[::-1], all_scores[:passed])  # the best ones, none above left out
        assert set(lists) <= set(probe) and len(set(zip(lists, rows))) == passed
        own_scores = [sign_code_index(codes[number][row : row + 1]).search(queries[query : query + 1], 1)[0][0, 0]
                      for number, row in zip(lists, rows)]
        assert np.array_equal(own_scores, scores)  # each score is its own code's


def test_no_threshold_scan_where_it_would_not_pay(sampled):
    codes, code_scan, queries = sampled
    assert code_scan.above_threshold(queries, 401, np.array([0, 2])) is None  # 800 codes, not twice 401
    assert code_scan.above_threshold(queries, 10, np.array([1, 3])) is None  # no sampled list
    short = CodeScan([CodeList(codes[1])])
    assert short.above_threshold(queries, 5, np.array([0])) is None
    assert code_scan.above_threshold(np.concatenate([queries, queries[:1]]), 30, np.array([0, 2])) is None  # 7 queries


def test_a_sample_is_one_code_in_stride_and_counts_in_memory(sampled):
    codes, code_scan, _ = sampled
    sample = code_scan.lists[0].sample
    assert sample is not None and sample.size == 75 and sample.sample is None
    assert code_scan.lists[0].nbytes == 320 * 32 + 300 * 8 + 96 * 32 + 75 * 8


def test_a_range_index_keeps_what_it_scans_alive_when_dropped_from_its_cache():
    """A query may still search a range index another query just evicted: the index holds its
    quantizer, its stack and the lists, so dropping every other reference loses nothing."""
    rng = np.random.default_rng(2)
    code_scan = CodeScan([CodeList(rng.integers(0, 256, (500, 32), dtype=np.uint8)) for _ in range(3)])
    query = rng.standard_normal((1, 256)).astype(np.float32)
    index = code_scan._range_index(np.array([0, 2]))
    before = np.sort(index.range_search(query, 0.0)[1])
    del code_scan
    gc.collect()
    clutter = [np.ones(100_000) for _ in range(50)]  # reuse freed memory, if any was freed
    assert len(before) > 100 and len(clutter) == 50
    assert np.array_equal(np.sort(index.range_search(query, 0.0)[1]), before)


@pytest.mark.parametrize("batched", [False, True])
def test_a_probed_lists_prior_is_added_to_each_of_its_codes_scores(batched):
    """A code's score is its sign-code score plus its list's prior, single queries and
    batches alike; the best come first, so a high prior lifts a whole list up the ranking."""
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    list_of = rng.integers(0, 3, 300)
    code_scan = CodeScan([CodeList(codes, list_of, np.zeros((3, 256), np.float32))])
    queries = rng.standard_normal((2, 256)).astype(np.float32)
    probe = np.array([[0, 1, 2], [2, 1, 0]])
    priors = np.array([[40.0, 0.0, -40.0], [2.0, 1.0, 0.0]], np.float32)
    if batched:
        scores, labels = code_scan.top_k(queries, 300, probe, priors)
    else:
        answers = [code_scan.top_k(queries[q : q + 1], 300, probe[q : q + 1], priors[q : q + 1]) for q in range(2)]
        scores, labels = (np.concatenate(parts) for parts in zip(*answers))
    flat_scores, flat_rows = sign_code_index(codes).search(queries, 300)
    for query in range(2):
        own_score = dict(zip(flat_rows[query], flat_scores[query]))
        prior_of_list = dict(zip(probe[query], priors[query]))
        rows = labels[query] & ROW_MASK
        expected = [own_score[row] + prior_of_list[list_of[row]] for row in rows]
        assert np.allclose(scores[query], expected, atol=0.05)  # fast-scan's 8-bit tables: about 0.02
        assert (np.diff(scores[query]) <= 1e-6).all()
    first_hundred = list_of[labels[0, :100] & ROW_MASK]
    assert (first_hundred == 0).mean() > 0.8  # list 0's prior of +40 lifts it over the others


def test_the_probe_gives_each_list_its_centroid_score_above_the_probed_ones_mean_as_its_prior():
    rng = np.random.default_rng(5)
    centroids = np.eye(4, 256, dtype=np.float32)  # scores with a query: its first four entries
    split = CodeList(rng.integers(0, 256, (80, 32), dtype=np.uint8), np.arange(80) % 4, centroids)
    whole = CodeList(rng.integers(0, 256, (10, 32), dtype=np.uint8))
    code_scan = CodeScan([whole, split])
    features = np.zeros((2, 256), np.float32)
    features[0, :4] = [0.1, 0.9, 0.5, 0.3]
    features[1, :4] = [0.8, 0.0, 0.2, 0.6]
    probe, priors = code_scan.probe(features, np.array([0, 1]), 2, centroid_weight=0.5)
    assert probe.tolist() == [[0, 2, 3], [0, 1, 4]]  # the whole list, then the two best centroids' (after it)
    assert np.allclose(priors, [[0, 0.5 * 0.2, -0.5 * 0.2], [0, 0.5 * 0.1, -0.5 * 0.1]])
    every_list, no_priors = code_scan.probe(features, np.array([0, 1]), 4, centroid_weight=0.5)
    assert every_list.tolist() == [0, 1, 2, 3, 4] and no_priors is None  # all probed: one row, no priors
