"""PCA-whitening, ITQ binary codes, the Codec that joins them, and feature-map pooling."""

from __future__ import annotations

import numpy as np
import pytest

from snapshop.models.encoder import Codec
from snapshop.models.pooling import gap, gem, l2_normalize, layout, pool, rmac
from snapshop.models.projection import ITQ, PCAWhitening, load_arrays, save_arrays


def descriptors(n: int = 600, d: int = 96, seed: int = 0) -> np.ndarray:
    """Clustered, non-negative, L2-normalised vectors with decaying variance (like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * np.linspace(2.0, 0.2, d)
    labels = rng.integers(0, len(centres), n)
    data = np.maximum(centres[labels] + rng.standard_normal((n, d)) * np.linspace(1.0, 0.1, d), 0)
    return l2_normalize(data.astype(np.float32))


def quantization_error(vectors: np.ndarray, rotation: np.ndarray) -> float:
    """ITQ's loss ||sign(VR) - VR||^2, with V scaled so its entries are about unit size."""
    rotated = vectors * np.sqrt(vectors.shape[1]) @ rotation
    return float(np.sum((np.sign(rotated) - rotated) ** 2))


# --- PCA whitening ---------------------------------------------------------------------------


def test_pca_whitening_shapes_and_unit_output():
    data = descriptors()
    pca = PCAWhitening(32).fit(data)
    assert pca.components_.shape == (96, 32) and pca.mean_.shape == (96,)
    assert pca.output_dim == 32
    projected = pca.transform(data[:50])
    assert projected.shape == (50, 32) and projected.dtype == np.float32
    assert np.allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-4)


def test_pca_whitening_output_dim_is_capped_by_the_data():
    pca = PCAWhitening(256).fit(descriptors(n=40, d=96))
    assert pca.output_dim == 40  # at most min(samples, features) axes exist


def test_whitening_balances_the_variance_of_the_axes():
    data = descriptors(n=2000)
    whitened = (data - data.mean(axis=0)) @ PCAWhitening(16).fit(data).components_
    plain = (data - data.mean(axis=0)) @ PCAWhitening(16, whiten=False).fit(data).components_
    spread = lambda x: x.var(axis=0).max() / x.var(axis=0).min()  # noqa: E731
    assert spread(whitened) < 2.0 and spread(plain) > 10.0


def test_projection_keeps_neighbours():
    data = descriptors(n=800)
    projected = PCAWhitening(48).fit(data).transform(data)
    original = np.argsort(-(data[:100] @ data.T), axis=1)[:, 1:6]
    kept = np.argsort(-(projected[:100] @ projected.T), axis=1)[:, 1:11]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(original, kept)])
    assert overlap > 0.6


# --- ITQ -----------------------------------------------------------------------------------------


def test_itq_codes_are_packed_uint8():
    vectors = PCAWhitening(64).fit(descriptors()).transform(descriptors())
    itq = ITQ(64, iterations=20).fit(vectors)
    assert itq.rotation_.shape == (64, 64)
    assert np.allclose(itq.rotation_ @ itq.rotation_.T, np.eye(64), atol=1e-4)
    codes = itq.transform(vectors)
    assert codes.dtype == np.uint8 and codes.shape == (len(vectors), 8)
    bits = np.unpackbits(codes, axis=1)
    assert np.array_equal(bits.astype(bool), (vectors[:, :64] @ itq.rotation_) > 0)
    # Balanced-ish bits: no bit is constant over the whole set.
    assert 0.05 < bits.mean() < 0.95 and (bits.mean(axis=0) > 0).all() and (bits.mean(axis=0) < 1).all()


def test_itq_uses_the_leading_dimensions_when_bits_is_below_dim():
    vectors = PCAWhitening(64).fit(descriptors()).transform(descriptors())
    itq = ITQ(32, iterations=10).fit(vectors)
    assert itq.rotation_.shape == (32, 32) and itq.transform(vectors).shape == (len(vectors), 4)


def test_itq_lowers_the_quantization_error_of_a_random_rotation():
    vectors = PCAWhitening(64).fit(descriptors(n=1500)).transform(descriptors(n=1500)).astype(np.float64)
    learned = ITQ(64, iterations=50).fit(vectors).rotation_.astype(np.float64)
    random_rotation, _ = np.linalg.qr(np.random.default_rng(123).standard_normal((64, 64)))
    learned_error = quantization_error(vectors, learned)
    assert learned_error < 0.9 * quantization_error(vectors, random_rotation)  # about 0.79 in real runs
    assert learned_error < 0.9 * quantization_error(vectors, np.eye(64))


@pytest.mark.parametrize("bits", [12, 128])
def test_itq_refuses_bits_not_a_multiple_of_8_or_over_dim(bits):
    with pytest.raises(ValueError, match="bits"):
        ITQ(bits).fit(np.random.default_rng(0).standard_normal((200, 64)))


def test_itq_is_deterministic():
    vectors = PCAWhitening(32).fit(descriptors()).transform(descriptors())
    assert np.array_equal(ITQ(32, iterations=5).fit(vectors).rotation_, ITQ(32, iterations=5).fit(vectors).rotation_)


def test_the_code_decoder_reconstructs_vectors_from_their_signs_better_than_scaled_signs():
    vectors = PCAWhitening(64).fit(descriptors(n=4000)).transform(descriptors(n=4000))
    itq = ITQ(64, iterations=20).fit(vectors)
    projected = itq.project(vectors)
    signs = np.unpackbits(itq.transform(vectors), axis=1).astype(np.float32) * 2 - 1
    best_scale = (projected * signs).sum() / (signs * signs).sum()
    decoded_error = np.linalg.norm(projected - signs @ itq.decoder_)
    assert decoded_error < np.linalg.norm(projected - best_scale * signs)  # 35.26 vs 35.53 here; real embeddings gain more


def test_a_query_scores_a_code_as_its_inner_product_with_the_code_reconstruction():
    vectors = PCAWhitening(64).fit(descriptors(n=2000)).transform(descriptors(n=2000))
    itq = ITQ(64, iterations=10).fit(vectors)
    signs = np.unpackbits(itq.transform(vectors[:50]), axis=1).astype(np.float32) * 2 - 1
    queries = vectors[1000:1005]
    assert np.allclose(itq.query(queries) @ signs.T, itq.project(queries) @ (signs @ itq.decoder_).T, atol=1e-4)


def test_a_code_decoder_fitted_on_few_vectors_stays_near_plain_signs():
    vectors = PCAWhitening(64).fit(descriptors()).transform(descriptors())[:40]
    decoder = ITQ(64, iterations=5).fit(vectors).decoder_
    diagonal = np.diag(decoder).mean() * np.eye(64)
    assert np.linalg.norm(decoder - diagonal) < 0.5 * np.linalg.norm(diagonal)


# --- Codec -----------------------------------------------------------------------------------


def test_codec_fit_encode_and_round_trip():
    data = descriptors(n=700)
    codec = Codec.fit(data, dim=48, bits=32, source="catalog")
    features, codes = codec.encode(data[:10])
    assert features.shape == (10, 48) and codes.shape == (10, 4) and codes.dtype == np.uint8
    again = Codec.from_blob(codec.to_blob(), "catalog")
    features2, codes2 = again.encode(data[:10])
    assert np.allclose(features, features2, atol=1e-6) and np.array_equal(codes, codes2)
    assert np.allclose(codec.query(data[:10])[1], again.query(data[:10])[1], atol=1e-6)
    assert again.source == "catalog"


def test_a_codec_saved_before_the_code_decoder_queries_with_its_plain_projections():
    codec = Codec.fit(descriptors(n=700), dim=48, bits=32, source="catalog")
    arrays = load_arrays(codec.to_blob())
    del arrays["decoder"]
    old = Codec.from_blob(save_arrays(**arrays), "catalog")
    features, projections = old.query(descriptors(n=5))
    assert np.allclose(projections, old.rotation.project(features))
    assert not np.allclose(projections, codec.query(descriptors(n=5))[1], atol=1e-3)


def test_codec_refuses_more_bits_than_dimensions():
    with pytest.raises(ValueError):
        Codec.fit(descriptors(n=30, d=96), dim=64, bits=64, source="catalog")


def test_save_and_load_arrays():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["x", "yz"])}
    loaded = load_arrays(save_arrays(**arrays))
    assert set(loaded) == {"a", "names"}
    assert np.array_equal(loaded["a"], arrays["a"]) and list(loaded["names"]) == ["x", "yz"]


# --- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gap", "gem", "rmac"])
@pytest.mark.parametrize("grid", [(7, 7), (10, 10), (7, 10), (1, 1), (2, 3)])
def test_pooling_shapes_and_unit_norm(method, grid):
    maps = np.random.default_rng(0).uniform(0, 6, (3, 16, *grid)).astype(np.float32)
    pooled = pool(maps, method)
    assert pooled.shape == (3, 16) and pooled.dtype == np.float32
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(pooled).all()


def test_gap_and_gem_values():
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maps[0, 0] = [[1, 1], [1, 1]]
    maps[0, 1] = [[0, 0], [0, 8]]
    assert np.allclose(gap(maps), [[1.0, 2.0]])
    # GeM p=3 lies between the mean and the max: (8^3 / 4) ** (1/3) = 8 / 4 ** (1/3).
    assert np.allclose(gem(maps), [[1.0, 8 / 4 ** (1 / 3)]], rtol=1e-4)
    assert np.allclose(gem(maps, p=1.0), gap(maps), atol=1e-5)


def test_rmac_with_one_level_is_the_global_max():
    maps = np.random.default_rng(1).uniform(0, 6, (2, 5, 7, 7)).astype(np.float32)
    assert np.allclose(rmac(maps, levels=1), l2_normalize(maps.max(axis=(2, 3))), atol=1e-5)


def test_rmac_weighs_a_strong_local_region_more_than_gap():
    maps = np.zeros((1, 2, 7, 7), np.float32) + 0.1
    maps[0, 0, 1, 1] = 5.0  # one strong corner peak in channel 0
    maps[0, 1] += 0.5  # channel 1 is uniformly a little higher
    ratio = lambda pooled: pooled[0, 0] / pooled[0, 1]  # noqa: E731
    assert ratio(rmac(maps)) > 1.2 * ratio(gap(maps))


@pytest.mark.parametrize("grid", [(7, 7), (14, 10), (2, 1)])
def test_layout_is_one_unit_gem_per_cell_of_a_3x3_grid(grid):
    maps = np.random.default_rng(0).random((2, 16, *grid)).astype(np.float32)
    described = layout(maps)
    assert described.shape == (2, 9 * 16) and described.dtype == np.float32
    assert np.allclose(np.linalg.norm(described, axis=1), 1.0, atol=1e-5)
    cells = described.reshape(2, 9, 16)
    assert np.allclose(np.linalg.norm(cells, axis=2), 1 / 3, atol=1e-5)  # every cell counts the same


def test_layout_tells_where_things_are_and_gem_does_not():
    top, bottom = np.zeros((1, 4, 6, 6), np.float32), np.zeros((1, 4, 6, 6), np.float32)
    top[:, 0, :2], bottom[:, 0, 4:] = 1.0, 1.0  # the same thing, at the top or at the bottom
    top[:, 1], bottom[:, 1] = 0.5, 0.5
    assert np.allclose(gem(top), gem(bottom))
    assert float((layout(top) @ layout(bottom).T)[0, 0]) < 0.9


def test_unknown_pooling():
    with pytest.raises(ValueError, match="gap, gem, rmac"):
        pool(np.ones((1, 2, 3, 3), np.float32), "max")
