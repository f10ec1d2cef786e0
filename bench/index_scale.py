"""The index engine at 1,000,000 images: binary + re-rank vs exact float and HNSW, live updates.

    .venv/bin/python bench/index_scale.py [--source bench/out/fm70k] [--out bench/out/scale] [--total 1000000]

Needs the 70k index of `bench/search_speed.py` (run it first). Data, said plainly:

* catalog vectors: the 70,000 real Fashion-MNIST embeddings of that index, plus SYNTHETIC
  embeddings drawn to match their distribution: a random real embedding plus Gaussian noise
  with the per-dimension spread of the real ones, re-normalised, in the category of the
  embedding it came from; the noise is scaled so that a synthetic embedding is as similar to
  its source as a real embedding is to its nearest real neighbour (median cosine), i.e. the
  catalog grows by products as alike as the real ones are; codes from the index's own ITQ
  rotation;
* queries: embeddings of SIMULATED shopper photos (`build_shopper_queries` on the test split),
  localized and embedded by the full pipeline.

Everything goes through the real write path (SQLite change log -> live index -> compaction into
IVF base segments). Printed, measured in this one run: recall@10 against exact float cosine
(faiss IndexFlatIP) and ms/query for ours at several nprobe / shortlist values, IndexFlatIP and
float HNSW; resident memory of each index; 10,000 adds and 10,000 removes until visible; query
latency while a partition compacts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from snapshop.datasets import build_shopper_queries
from snapshop.index.live import IndexParams, LiveIndex
from snapshop.index.store import MetadataStore, NewImage, NewItem
from snapshop.models.encoder import crop
from snapshop.models.pooling import l2_normalize
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

K = 10
WRITE_CHUNK = 20_000


def real_vectors(source: Path):
    engine = Engine.open(source / "index", load_settings({"index": str(source / "index")}))
    vectors = engine.store.vectors()
    return engine, vectors


def query_vectors(engine: Engine, source: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and codes of SIMULATED shopper photos, through localization and embedding."""
    shots = build_shopper_queries(source / "catalog-test", source / "queries-scale", n_queries=count)
    rows = [json.loads(line) for line in shots.read_text().splitlines() if line.strip()]
    images = [engine.load(shots.parent / row["image"]) for row in rows]
    boxes = engine.encoder.locate(images)
    descriptors = engine.encoder.describe([crop(image, found[0]) for image, found in zip(images, boxes)])
    return engine.codec.encode(descriptors)


def synthetic(features: np.ndarray, partitions: np.ndarray, count: int, noise: float, rotation, seed: int = 0):
    """SYNTHETIC embeddings drawn around the real ones; codes from the same ITQ rotation."""
    rng = np.random.default_rng(seed)
    spread = features.std(axis=0)
    chunks = []
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        source = rng.integers(0, len(features), n)
        drawn = l2_normalize(features[source] + noise * spread * rng.standard_normal((n, features.shape[1])).astype(np.float32))
        chunks.append((drawn, partitions[source]))
    drawn = np.concatenate([c[0] for c in chunks])
    return drawn, rotation.transform(drawn), np.concatenate([c[1] for c in chunks])


def calibrated_noise(features: np.ndarray, sample: int = 2000) -> float:
    """The noise scale whose draws are as similar to their source as real embeddings are to
    their nearest real neighbour (median cosine over a sample)."""
    rng = np.random.default_rng(1)
    probe = features[rng.choice(len(features), sample, replace=False)]
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    target = float(np.median(flat.search(probe, 2)[0][:, 1]))  # [:, 0] is the probe itself
    spread = features.std(axis=0)
    low, high = 0.0, 4.0
    for _ in range(30):
        noise = (low + high) / 2
        drawn = l2_normalize(probe + noise * spread * rng.standard_normal(probe.shape).astype(np.float32))
        low, high = (noise, high) if np.median((drawn * probe).sum(axis=1)) > target else (low, noise)
    print(f"median cosine of a real embedding to its nearest real neighbour: {target:.3f}; noise scale {noise:.3f}")
    return noise


def write(store: MetadataStore, item_ids: list[str], partitions: np.ndarray, features: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Upsert one image per item, searchable in the same transaction (the engine's write path)."""
    with store.transaction():
        ids = [image_ids[0] for image_ids in store.upsert_items(
            [NewItem(item, str(part) or None, {}, [NewImage(item, "", [0, 0, 1, 1], np.zeros(0))])
             for item, part in zip(item_ids, partitions)])]
        store.set_vectors(np.array(ids), features, codes)
    return np.array(ids)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(e[:K])) / K for f, e in zip(found, exact)]))


def per_query_ms(search, queries: int) -> float:
    start = time.perf_counter()
    for q in range(queries):
        search(q)
    return (time.perf_counter() - start) * 1000 / queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--noise", type=float, default=None, help="noise scale [default: calibrated, see above]")
    args = parser.parse_args()
    report: dict = {"data": "70,000 real Fashion-MNIST embeddings + SYNTHETIC embeddings drawn around them; "
                            "queries: SIMULATED shopper photos"}

    engine, real = real_vectors(args.source)
    query_features, query_codes = query_vectors(engine, args.source, args.queries)
    real_features = real.features.astype(np.float32)
    noise = args.noise if args.noise is not None else calibrated_noise(real_features)
    report["synthetic_noise"] = round(noise, 3)
    drawn, drawn_codes, drawn_parts = synthetic(real_features, np.array(real.partitions), args.total - len(real_features),
                                                noise, engine.codec.rotation)
    features = np.concatenate([real_features, drawn])
    codes = np.concatenate([real.codes, drawn_codes])
    partitions = np.concatenate([np.array(real.partitions), drawn_parts])
    engine.close()
    print(f"{len(features)} vectors ({len(real_features)} real), dim {features.shape[1]}, {codes.shape[1] * 8} bits")

    # --- our index, through the real write path ---------------------------------------------------
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    store = MetadataStore(args.out / "meta.sqlite")
    began = time.perf_counter()
    image_ids = np.zeros(len(features), np.int64)
    for start in tqdm(range(0, len(features), WRITE_CHUNK), desc="writing", unit="chunk"):
        part = slice(start, start + WRITE_CHUNK)
        image_ids[part] = write(store, [f"v{i}" for i in range(start, min(start + WRITE_CHUNK, len(features)))],
                                partitions[part], features[part], codes[part])
    report["write_s"] = round(time.perf_counter() - began, 1)
    settings = load_settings({})
    params = IndexParams(bits=codes.shape[1] * 8, dim=features.shape[1], nprobe=settings.nprobe,
                         ivf_min=settings.ivf_min_images, compact_delta=settings.compact_delta,
                         compact_tombstones=settings.compact_tombstones)
    began = time.perf_counter()
    index = LiveIndex(args.out, store, params, codec="bench")
    index.compact()
    report["compact_all_s"] = round(time.perf_counter() - began, 1)
    index.close()
    del index

    rss_before = rss_mb()
    began = time.perf_counter()
    index = LiveIndex(args.out, store, params, codec="bench")  # memory-mapped open
    report["open_s"] = round(time.perf_counter() - began, 2)
    report["segments"] = sorted({seg["base"] for seg in index.segment_report()})
    binary_bytes = sum(path.stat().st_size for path in (args.out / "segments").glob("*.faiss"))
    ids_bytes = sum(path.stat().st_size for path in (args.out / "segments").glob("*.ids.npy"))
    float16_bytes = sum(path.stat().st_size for path in (args.out / "segments").glob("*.features.npy"))

    # --- exact float and HNSW on the same vectors ---------------------------------------------------
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    began = time.perf_counter()
    _, exact_rows = flat.search(query_features, K)
    flat_batch_ms = (time.perf_counter() - began) * 1000 / len(query_features)
    exact = image_ids[exact_rows]
    flat_ms = per_query_ms(lambda q: flat.search(query_features[q : q + 1], K), min(50, len(query_features)))

    rows = []
    for nprobe in (16, 64, 256):
        for shortlist in (200, 800, 1600):
            index.params = replace(index.params, nprobe=nprobe)
            found = index.search(query_codes, query_features, shortlist).image_ids
            ms = per_query_ms(lambda q: index.search(query_codes[q : q + 1], query_features[q : q + 1], shortlist),
                              len(query_features))
            rows.append({"nprobe": nprobe, "shortlist": shortlist, "recall@10": round(recall(found, exact), 4),
                         "ms_per_query": round(ms, 3), "speedup_vs_flat": round(flat_ms / ms, 1)})
            print(rows[-1])
    index.params = replace(index.params, nprobe=settings.nprobe)
    report["ours"] = rows
    report["index_flat_ip"] = {"ms_per_query": round(flat_ms, 2), "ms_per_query_batched": round(flat_batch_ms, 3),
                               "ram_mb": round(features.nbytes / 2**20, 1)}

    began = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(features.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(features)
    hnsw_build_s = time.perf_counter() - began
    hnsw_rows = []
    for ef in (16, 32, 64, 128):
        hnsw.hnsw.efSearch = ef
        _, found_rows = hnsw.search(query_features, K)
        ms = per_query_ms(lambda q: hnsw.search(query_features[q : q + 1], K), len(query_features))
        hnsw_rows.append({"efSearch": ef, "recall@10": round(recall(image_ids[found_rows], exact), 4),
                          "ms_per_query": round(ms, 3)})
        print("hnsw", hnsw_rows[-1])
    report["hnsw_float"] = {"M": 16, "efConstruction": 40, "build_s": round(hnsw_build_s, 1), "rows": hnsw_rows,
                            "ram_mb": round((features.nbytes + hnsw.ntotal * 16 * 2 * 4) / 2**20, 1)}
    del hnsw, flat
    report["memory_mb"] = {
        "ours_binary_ivf_in_ram": round((binary_bytes + ids_bytes) / 2**20, 1),
        "ours_float16_rerank_features_memory_mapped_on_disk": round(float16_bytes / 2**20, 1),
        "float_index": round(features.nbytes / 2**20, 1),
        "ratio_float_to_ours_in_ram": round(features.nbytes / (binary_bytes + ids_bytes), 1),
        "process_rss_after_open_and_queries": round(rss_mb() - rss_before, 1),
    }

    # --- live updates at this scale ------------------------------------------------------------------
    rng = np.random.default_rng(5)
    new_features, new_codes, new_parts = synthetic(real_features, np.array(real.partitions), 10_000, noise,
                                                   engine.codec.rotation, seed=9)
    began = time.perf_counter()
    new_ids = write(store, [f"new{i}" for i in range(10_000)], new_parts, new_features, new_codes)
    index.refresh()
    visible = index.search(new_codes[:200], new_features[:200], 10).image_ids[:, 0]
    report["add_10k_visible_s"] = round(time.perf_counter() - began, 3)
    report["add_10k_found_first"] = float(np.mean(visible == new_ids[:200]))
    gone = rng.choice(len(features), 10_000, replace=False)
    began = time.perf_counter()
    with store.transaction():
        store.delete_items([f"v{i}" for i in gone])
    index.refresh()
    report["remove_10k_s"] = round(time.perf_counter() - began, 3)
    gone_ids = set(image_ids[gone])
    hits = index.search(np.concatenate([query_codes, codes[gone[:500]]]),
                        np.concatenate([query_features, features[gone[:500]]]), settings.shortlist).image_ids
    report["removed_in_results"] = int(np.isin(hits, list(gone_ids)).sum())

    latencies = []
    for q in range(len(query_features)):
        start = time.perf_counter()
        index.search(query_codes[q : q + 1], query_features[q : q + 1], settings.shortlist)
        latencies.append((time.perf_counter() - start) * 1000)
    during: list[float] = []
    worker = threading.Thread(target=index.compact, args=([(index.segment_report()[0]["partition"], 0)],))
    worker.start()
    q = 0
    while worker.is_alive():
        start = time.perf_counter()
        index.search(query_codes[q % len(query_codes) : q % len(query_codes) + 1],
                     query_features[q % len(query_codes) : q % len(query_codes) + 1], settings.shortlist)
        during.append((time.perf_counter() - start) * 1000)
        q += 1
    worker.join()
    report["query_p99_ms"] = {"normal": round(float(np.percentile(latencies, 99)), 3),
                              "during_compaction": round(float(np.percentile(during, 99)), 3) if during else None,
                              "queries_during_compaction": len(during)}
    report["vs_flat_ram_ratio_goal"] = "<= 1/16"
    print(json.dumps(report, indent=2))
    (args.out.parent / "index_scale.json").write_text(json.dumps(report, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
