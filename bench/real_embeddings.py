"""The pipeline's embeddings of all 70,000 Fashion-MNIST images and of SIMULATED shopper photos.

    .venv/bin/python bench/real_embeddings.py [--out bench/out/fm70k-vectors] [--queries 500] [--fitted INDEX]

What the index benchmarks (`bench/index_scale.py`) search. Made once, then reused:

* an Engine indexes a 3,000-item Fashion-MNIST catalog (test split) with default settings:
  that fits the objectness model, the learned whitening (on synthetic views) and the ITQ
  rotation exactly as `snapshop add` does (catalog side without localization, as in
  `bench/search_speed.py`), but with a linear category classifier: no vector depends on the
  category network, whose two trainings took about 85 minutes on 2 cores;
  `--fitted INDEX` copies an index already fitted by `snapshop add`
  on a Fashion-MNIST catalog instead (e.g. the demo's) and saves fitting the models again;
* every Fashion-MNIST image (60,000 train + 10,000 test), rendered as a catalog photo in
  memory, is described by that engine's CNN and encoded by its codec: float features and
  256-bit codes, with its category;
* SIMULATED shopper photos of test-split items are localized, described and encoded by the
  same engine, as a search would.

Written to OUT/vectors.npz (features, codes, categories, item ids) and OUT/queries.npz.

`--stand-in` writes RANDOM vectors of the same shapes instead, in seconds and without the CNN
(Gaussian, 2,000 clusters spread over the ten categories; queries are noisy copies of catalog
vectors), with a codec fitted on 3,000 of them: for the numbers that depend on sizes, not on
the embeddings (write, update and compaction latency), when there is no time for the fitting
and embedding (about 40 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_shopper_queries
from snapshop.datasets.fashion import FASHION_CATEGORIES, catalog_photo, item_id, item_style, load_fashion_mnist
from snapshop.index.store import MetadataStore
from snapshop.models.encoder import Codec, crop
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

FIT_ITEMS = 3000
STAND_IN_PREFIX = "random"  # the item ids of --stand-in vectors
BATCH = 64


def fitted_engine(out: Path, fitted: Path | None) -> Engine:
    """An engine whose models were fitted on a FIT_ITEMS-item catalog (built once), or a copy of
    the `fitted` index."""
    index = out / "index"
    if not (index / "manifest.json").is_file():
        manifest = build_fashion_catalog(out / "catalog", n_items=FIT_ITEMS, split="test")  # the queries' items
        if fitted is not None:
            shutil.copytree(fitted, index, ignore=shutil.ignore_patterns("write.lock"))
        else:
            settings = load_settings({"index": str(index), "localize": False, "duplicate_candidate": 0.97,
                                      "category_epochs": 0})  # no category network: it changes no vector
            engine = Engine.open_or_create(index, settings)
            engine.add(read_catalog(manifest), progress=True)
            engine.close()
    return Engine.open(index, load_settings({"index": str(index)}))


def catalog_vectors(engine: Engine) -> dict[str, np.ndarray]:
    """Features, codes and categories of every Fashion-MNIST image, described like a catalog shot."""
    features, codes, categories, ids = [], [], [], []
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        for start in tqdm(range(0, len(images), BATCH), desc=f"embedding {split}", unit="batch"):
            batch = range(start, min(start + BATCH, len(images)))
            photos = [Image.fromarray(catalog_photo(images[i], item_style(i, int(labels[i]))[1], 224)) for i in batch]
            described = engine.encoder.describe(photos)
            batch_features, batch_codes = engine.codec.encode(described)
            features.append(batch_features.astype(np.float32))
            codes.append(batch_codes)
            categories += [FASHION_CATEGORIES[int(labels[i])] for i in batch]
            ids += [item_id(split, i) for i in batch]
    return {"features": np.concatenate(features), "codes": np.concatenate(codes),
            "categories": np.array(categories), "item_ids": np.array(ids)}


def query_vectors(engine: Engine, out: Path, count: int) -> dict[str, np.ndarray]:
    """Features and codes of SIMULATED shopper photos, through localization and embedding."""
    shots = build_shopper_queries(out / "catalog", out / "queries", n_queries=count)
    rows = [json.loads(line) for line in shots.read_text().splitlines() if line.strip()]
    features, codes = [], []
    for start in tqdm(range(0, len(rows), BATCH), desc="queries", unit="batch"):
        images = [engine.load(shots.parent / row["image"]) for row in rows[start : start + BATCH]]
        boxes = engine.encoder.locate(images)
        described = engine.encoder.describe([crop(image, found[0]) for image, found in zip(images, boxes)])
        batch_features, batch_codes = engine.codec.encode(described)
        features.append(batch_features.astype(np.float32))
        codes.append(batch_codes)
    return {"features": np.concatenate(features), "codes": np.concatenate(codes),
            "item_ids": np.array([row["item_id"] for row in rows])}


def stand_in_vectors(out: Path, count: int = 70_000, queries: int = 500, dim: int = 256) -> None:
    """RANDOM stand-ins for catalog and query vectors, and a fitted index holding their codec."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    cluster = rng.integers(0, len(centres), count)
    descriptors = centres[cluster] + 1.5 * rng.standard_normal((count, dim)).astype(np.float32)
    codec = Codec.unprojected(descriptors[:FIT_ITEMS], bits=dim, source="RANDOM stand-in vectors")
    (out / "index").mkdir(parents=True)
    store = MetadataStore(out / "index" / "meta.sqlite")
    with store.transaction():
        store.save_fitted("codec", codec.to_blob(), {"source": codec.source, "fitted_on": FIT_ITEMS})
    store.close()
    features, codes = codec.encode(descriptors)
    np.savez(out / "vectors.npz", features=features, codes=codes,
             categories=np.array(FASHION_CATEGORIES)[cluster % len(FASHION_CATEGORIES)],
             item_ids=np.array([f"{STAND_IN_PREFIX}{i}" for i in range(count)]))
    shown = rng.integers(0, count, queries)
    query_features, query_codes = codec.encode(descriptors[shown] + 0.5 * rng.standard_normal((queries, dim)).astype(np.float32))
    np.savez(out / "queries.npz", features=query_features, codes=query_codes, item_ids=np.array([f"{STAND_IN_PREFIX}{i}" for i in shown]))


def load(out: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The saved catalog and query vectors (run this script first)."""
    with np.load(out / "vectors.npz") as catalog, np.load(out / "queries.npz") as queries:
        return dict(catalog), dict(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--fitted", type=Path, help="copy this fitted index instead of fitting one on 3,000 items")
    parser.add_argument("--stand-in", action="store_true", help="RANDOM vectors of the same shapes, no CNN (see above)")
    args = parser.parse_args()
    if args.stand_in:
        stand_in_vectors(args.out)
        print(f"wrote RANDOM stand-in vectors to {args.out}")
        return
    engine = fitted_engine(args.out, args.fitted)
    if not (args.out / "vectors.npz").is_file():
        np.savez(args.out / "vectors.npz", **catalog_vectors(engine))
    if not (args.out / "queries.npz").is_file():
        np.savez(args.out / "queries.npz", **query_vectors(engine, args.out, args.queries))
    print(f"codec: {engine.codec.source}; wrote {args.out / 'vectors.npz'} and {args.out / 'queries.npz'}")
    engine.close()


if __name__ == "__main__":
    main()
