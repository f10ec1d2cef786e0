"""Hamming shortlist with faiss, float re-rank, partitions and removals."""

from __future__ import annotations

import numpy as np
import pytest

from snapshop.index.binary import BinaryIndex
from snapshop.models.encoder import Codec
from snapshop.models.pooling import l2_normalize


def random_index(n: int = 300, bits: int = 64, dim: int = 32, partitions=("a", "b", "c"), seed: int = 0):
    rng = np.random.default_rng(seed)
    features = l2_normalize(rng.standard_normal((n, dim)).astype(np.float32))
    codes = np.packbits(features[:, :bits] @ rng.standard_normal((dim, bits)) > 0, axis=1)
    ids = np.arange(n, dtype=np.int64) * 5 + 3  # ids need not be dense or start at 0
    labels = [partitions[i % len(partitions)] for i in range(n)]
    index = BinaryIndex(bits=bits, dim=dim)
    index.add(ids, labels, codes, features)
    return index, ids, labels, codes, features


def clustered_descriptors(rng: np.random.Generator, n: int, d: int = 512, clusters: int = 50) -> np.ndarray:
    """Non-negative, L2-normalised vectors around cluster centres with a shared low-rank spread."""
    centres = rng.standard_normal((clusters, d))
    basis = rng.standard_normal((64, d)) / 8
    labels = rng.integers(0, clusters, n)
    data = centres[labels] + rng.standard_normal((n, 64)) @ basis * 1.8 + rng.standard_normal((n, d)) * 0.18
    return l2_normalize(np.maximum(data, 0).astype(np.float32))


# --- basics ----------------------------------------------------------------------------------


def test_add_counts_and_partitions():
    index, ids, labels, *_ = random_index()
    assert len(index) == 300
    assert index.partitions == {"a": 100, "b": 100, "c": 100}


def test_exact_copy_is_found_first_with_cosine_one():
    index, ids, _, codes, features = random_index()
    found = index.search(codes[:20], features[:20], shortlist=10)
    assert found.image_ids.shape == (20, 30)  # a shortlist of 10 from each of the 3 partitions
    assert list(found.image_ids[:, 0]) == list(ids[:20])
    assert np.allclose(found.scores[:, 0], 1.0, atol=2e-3)  # float16 storage
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()  # best first


def test_search_within_partitions():
    index, ids, labels, codes, features = random_index()
    in_b = set(ids[np.array(labels) == "b"])
    found = index.search(codes[:5], features[:5], shortlist=30, partitions=["b"])
    returned = found.image_ids[found.image_ids >= 0]
    assert len(returned) and set(returned) <= in_b
    # Several partitions: shortlist per partition, merged.
    both = index.search(codes[:5], features[:5], shortlist=30, partitions=["a", "c"])
    assert set(both.image_ids[both.image_ids >= 0]) <= set(ids[np.array(labels) != "b"])
    assert both.image_ids.shape[1] == 60


def test_unknown_partition_finds_nothing():
    index, _, _, codes, features = random_index()
    found = index.search(codes[:3], features[:3], shortlist=10, partitions=["nope"])
    assert (found.image_ids == -1).all() and found.image_ids.shape[0] == 3


def test_short_lists_are_padded():
    index, ids, _, codes, features = random_index(n=6, partitions=("only",))
    found = index.search(codes[:2], features[:2], shortlist=10)
    assert found.image_ids.shape == (2, 10)
    assert (found.image_ids[:, :6] >= 0).all() and (found.image_ids[:, 6:] == -1).all()
    assert np.isneginf(found.scores[:, 6:]).all()


def test_remove_means_never_returned():
    index, ids, labels, codes, features = random_index()
    gone = ids[:50]
    index.remove(gone)
    assert len(index) == 250
    found = index.search(codes, features, shortlist=300)
    assert not set(found.image_ids.ravel()) & set(gone)
    assert set(found.image_ids[0][found.image_ids[0] >= 0]) == set(ids[50:])


def test_remove_unknown_ids_is_harmless():
    index, ids, _, codes, features = random_index(n=30)
    index.remove(np.array([10_000, 99_999], np.int64))
    assert len(index) == 30


def test_removed_then_added_again_is_found():
    index, ids, labels, codes, features = random_index(n=30)
    index.remove(ids[:1])
    index.add(ids[:1], labels[:1], codes[:1], features[:1])
    assert index.search(codes[:1], features[:1], shortlist=5).image_ids[0, 0] == ids[0]


@pytest.mark.parametrize("bad", [
    lambda codes: codes.astype(np.int8),
    lambda codes: codes.astype(np.float32),
    lambda codes: np.unpackbits(codes, axis=1),  # one byte per bit: wrong width
    lambda codes: codes[:, :4],
])
def test_wrong_codes_are_a_type_error(bad):
    index, ids, labels, codes, features = random_index(n=10)
    with pytest.raises(TypeError, match="uint8"):
        index.add(ids + 1000, labels, bad(codes), features)
    assert len(index) == 10


def test_bits_must_be_a_multiple_of_8():
    with pytest.raises(ValueError):
        BinaryIndex(bits=100, dim=128)


def test_rerank_order_is_exact_cosine_order_on_the_shortlist():
    index, ids, _, codes, features = random_index(n=400, partitions=("all",), seed=3)
    queries = l2_normalize(features[:10] + 0.3 * np.random.default_rng(9).standard_normal(features[:10].shape).astype(np.float32))
    query_codes = codes[:10]
    found = index.search(query_codes, queries, shortlist=400)  # shortlist = everything
    stored = features.astype(np.float16).astype(np.float32)
    exact = queries @ stored.T
    for row in range(10):
        expected = ids[np.argsort(-exact[row], kind="stable")]
        assert np.allclose(np.sort(exact[row])[::-1], found.scores[row], atol=1e-4)
        assert list(found.image_ids[row][:20]) == list(expected[:20])


def test_rerank_reorders_a_hamming_shortlist():
    # Codes that say nothing (all equal) leave the float features to decide the order.
    rng = np.random.default_rng(4)
    features = l2_normalize(rng.standard_normal((50, 16)).astype(np.float32))
    index = BinaryIndex(bits=8, dim=16)
    index.add(np.arange(50), ["x"] * 50, np.zeros((50, 1), np.uint8), features)
    found = index.search(np.zeros((1, 1), np.uint8), features[7:8], shortlist=50)
    assert found.image_ids[0, 0] == 7
    assert list(found.image_ids[0]) == list(np.argsort(-(features @ features[7]), kind="stable"))


# --- recall against exact float search --------------------------------------------------------


@pytest.fixture(scope="module")
def realistic():
    rng = np.random.default_rng(0)
    data = clustered_descriptors(rng, 5200)
    base, queries = data[:5000], data[5000:]
    codec = Codec.fit(base, dim=128, bits=128, source="test")
    features, codes = codec.encode(base)
    query_features, query_codes = codec.encode(queries)
    ids = np.arange(5000, dtype=np.int64)
    index = BinaryIndex(bits=128, dim=128)
    index.add(ids, ["all"] * 5000, codes, features)
    exact = np.argsort(-(query_features @ features.T), axis=1)[:, :10]
    return index, query_codes, query_features, exact


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(e)) / 10 for f, e in zip(found, exact)]))


def test_binary_shortlist_plus_rerank_recalls_exact_float_search(realistic):
    index, query_codes, query_features, exact = realistic
    found = index.search(query_codes, query_features, shortlist=200)
    assert recall_at_10(found.image_ids, exact) >= 0.95  # 0.99 in real runs


def test_rerank_is_what_brings_recall_up(realistic):
    index, query_codes, query_features, exact = realistic
    hamming_only = recall_at_10(index.search(query_codes, query_features, shortlist=10).image_ids, exact)
    reranked = recall_at_10(index.search(query_codes, query_features, shortlist=200).image_ids, exact)
    assert hamming_only < 0.8 and reranked > hamming_only + 0.15  # about 0.45 vs 0.99 in real runs
