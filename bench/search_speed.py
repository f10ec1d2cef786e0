"""Search-stage speed and binary-vs-exact recall on all 70,000 Fashion-MNIST images.

    .venv/bin/python bench/search_speed.py [--out bench/out/fm70k] [--queries 500]

Builds (once) a catalog of every Fashion-MNIST image (train + test, rendered as catalog
photos) and its index, then on SIMULATED shopper photos searched with the full pipeline
(localization on, default settings):

* ms per query per stage at batch 1 and batch 32 (the search stage is the code shortlist +
  float re-rank, compared with the CNN passes: detect + embed; one result per item, identical
  items folded and the rest of curation are the separate "curate" stage);
* recall@10 of binary search + re-rank against exact float cosine over the same vectors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_shopper_queries
from snapshop.models.encoder import crop
from snapshop.search.engine import Engine
from snapshop.search.results import Query
from snapshop.settings import load_settings


def build_index(out: Path) -> None:
    """Index every Fashion-MNIST image. The catalog side skips localization (clean shots on
    white, where the box is nearly the whole image) to keep the 70k ingest short on 2 cores."""
    settings = load_settings({"index": str(out / "index"), "localize": False})
    engine = Engine.open_or_create(settings.index, settings)
    if engine.stats()["items"] < 70_000:
        for split, count in (("train", 60_000), ("test", 10_000)):
            manifest = build_fashion_catalog(out / f"catalog-{split}", n_items=count, split=split)
            engine.add(read_catalog(manifest), progress=True)
    engine.close()


def stage_timings(engine: Engine, queries: list[Query], batch: int) -> dict[str, float]:
    """Mean ms per query per stage over all queries, searched `batch` at a time."""
    totals: dict[str, float] = {}
    for start in range(0, len(queries), batch):
        for stage, ms in engine.search(queries[start : start + batch], k=10)[0].timing_ms.items():
            totals[stage] = totals.get(stage, 0.0) + ms * len(queries[start : start + batch])
    return {stage: round(ms / len(queries), 3) for stage, ms in totals.items()}


def binary_vs_exact_recall(engine: Engine, queries: list[Query], k: int = 10) -> float:
    """Share of the exact float top-k images that the code shortlist + re-rank also returns."""
    images = [engine.load(q.source) for q in queries]
    boxes = engine.encoder.locate(images)
    descriptors = engine.encoder.describe([crop(image, found[0]) for image, found in zip(images, boxes)])
    features, projections = engine.codec.query(descriptors)
    vectors = engine.store.vectors()
    exact = vectors.image_ids[np.argsort(-(features @ vectors.features.astype(np.float32).T), axis=1)[:, :k]]
    found = engine.index.search(projections, features, engine.settings.shortlist).image_ids[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/fm70k"))
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    began = time.perf_counter()
    build_index(args.out)
    build_s = time.perf_counter() - began
    engine = Engine.open(args.out / "index", load_settings({"index": str(args.out / "index")}))
    shots = build_shopper_queries(args.out / "catalog-test", args.out / "queries", n_queries=args.queries)
    rows = [json.loads(line) for line in shots.read_text().splitlines() if line.strip()]
    queries = [Query(row["image"], shots.parent / row["image"]) for row in rows]
    engine.search(queries[:4])  # warm-up
    report = {
        "catalog_images": engine.stats()["images"],
        "index_build_s": round(build_s, 1),
        "shortlist": engine.settings.shortlist,
        "detect_size": engine.settings.detect_size,
        "ms_per_query_batch_1": stage_timings(engine, queries[:100], 1),
        "ms_per_query_batch_32": stage_timings(engine, queries, 32),
        "recall@10_binary_vs_exact": round(binary_vs_exact_recall(engine, queries), 4),
    }
    for batch in (1, 32):
        timing = report[f"ms_per_query_batch_{batch}"]
        cnn = timing["detect"] + timing["embed"]
        report[f"search_share_of_cnn_batch_{batch}"] = round(timing["search"] / cnn, 4)
    print(json.dumps(report, indent=2))
    (args.out / "search_speed.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
