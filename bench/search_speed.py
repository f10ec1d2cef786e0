"""Search-stage speed and binary-vs-exact recall on all 70,000 Fashion-MNIST images.

    .venv/bin/python bench/search_speed.py [--source bench/out/fm70k-vectors] [--out bench/out/fm70k]

Needs `bench/real_embeddings.py` (run it first). Builds (once) the index of every Fashion-MNIST
image (train + test, rendered as catalog photos): a copy of that script's fitted index (models
fitted by `snapshop add` on 3,000 items) into which the embeddings of all 70,000 images are
written through the store, as `add` writes them (without their image files, quality and colour
traits: curation sees none). Then, on SIMULATED shopper photos searched with the full pipeline
(localization on, default settings):

* ms per query per stage at batch 1 and batch 32 (the search stage is the code shortlist +
  float re-rank, compared with the CNN passes: detect + embed; one result per item, identical
  items folded and the rest of curation are the separate "curate" stage);
* recall@10 of the code shortlist + re-rank against exact float cosine over the same vectors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from real_embeddings import load as load_vectors
from snapshop.index.store import MetadataStore, NewImage, NewItem
from snapshop.models.encoder import crop
from snapshop.search.engine import Engine
from snapshop.search.results import Query
from snapshop.settings import load_settings

WRITE_CHUNK = 10_000


def build_index(source: Path, out: Path) -> None:
    """The fitted index of `real_embeddings.py`, holding all 70,000 embeddings."""
    if (out / "index" / "manifest.json").is_file():
        return
    shutil.copytree(source / "index", out / "index")
    catalog, _ = load_vectors(source)
    store = MetadataStore(out / "index" / "meta.sqlite")
    for start in tqdm(range(0, len(catalog["codes"]), WRITE_CHUNK), desc="writing", unit="chunk"):
        rows = slice(start, start + WRITE_CHUNK)
        with store.transaction():
            ids = [image_ids[0] for image_ids in store.upsert_items([
                NewItem(str(item), str(category), {}, [NewImage(str(item), "", [0, 0, 224, 224], np.zeros(0))])
                for item, category in zip(catalog["item_ids"][rows], catalog["categories"][rows])])]
            store.set_vectors(np.array(ids), catalog["features"][rows], catalog["codes"][rows])
    store.close()
    engine = Engine.open(out / "index", load_settings({"index": str(out / "index")}))
    engine.compact()
    engine.close()


def stage_timings(engine: Engine, queries: list[Query], batch: int) -> dict[str, float]:
    """Mean ms per query per stage over all queries, searched `batch` at a time."""
    totals: dict[str, float] = {}
    for start in range(0, len(queries), batch):
        for stage, ms in engine.search(queries[start : start + batch], k=10)[0].timing_ms.items():
            totals[stage] = totals.get(stage, 0.0) + ms * len(queries[start : start + batch])
    return {stage: round(ms / len(queries), 3) for stage, ms in totals.items()}


def recall_vs_exact(engine: Engine, queries: list[Query], k: int = 10) -> float:
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
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/fm70k"))
    args = parser.parse_args()
    began = time.perf_counter()
    build_index(args.source, args.out)
    build_s = time.perf_counter() - began
    engine = Engine.open(args.out / "index", load_settings({"index": str(args.out / "index")}))
    shots = args.source / "queries" / "queries.jsonl"  # the SIMULATED shopper photos of real_embeddings.py
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
        "recall@10_vs_exact": round(recall_vs_exact(engine, queries), 4),
    }
    for batch in (1, 32):
        timing = report[f"ms_per_query_batch_{batch}"]
        cnn = timing["detect"] + timing["embed"]
        report[f"search_share_of_cnn_batch_{batch}"] = round(timing["search"] / cnn, 4)
    print(json.dumps(report, indent=2))
    (args.out / "search_speed.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
