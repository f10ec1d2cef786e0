"""Query latency while a partition compacts, on the 1M index that `bench/index_scale.py` built.

    .venv/bin/python bench/compaction_latency.py [--index bench/out/scale] [--repeats 6]

Each repeat: the p99 of 500 single queries (the SIMULATED shopper photos' embeddings, one
core, default shortlist), then one partition (about 100,000 images of 70,000 real + SYNTHETIC
embeddings) compacted in a background thread while queries run, and the p99 of those; a
different partition each repeat. (Before 0f63e3d this script also compared a compaction that
built its code index on two faiss threads; a compaction now only packs codes, no OpenMP
work, so there is one way left to measure.)

Written to bench/out/compaction_latency.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from index_scale import fitted_rotation, open_built
from real_embeddings import load as load_vectors
from snapshop.settings import load_settings

QUERIES = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--index", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    _, queries = load_vectors(args.source)
    features = queries["features"].astype(np.float32)
    projections = fitted_rotation(args.source).query(features)
    settings = load_settings({})
    store, index = open_built(args.index, projections.shape[1], features.shape[1])
    partitions = [entry["partition"] for entry in index.segment_report()]

    def one_query(q: int) -> float:
        q %= len(features)
        start = time.perf_counter()
        index.search(projections[q : q + 1], features[q : q + 1], settings.shortlist)
        return (time.perf_counter() - start) * 1000

    runs: list[dict] = []
    for repeat in range(args.repeats):
        normal = [one_query(q) for q in range(QUERIES)]
        during: list[float] = []
        key = (partitions[repeat % len(partitions)], 0)
        worker = threading.Thread(target=index.compact, args=([key],))
        began = time.perf_counter()
        worker.start()
        while worker.is_alive():
            during.append(one_query(len(during)))
        worker.join()
        run = {"partition": key[0], "p99_normal_ms": round(float(np.percentile(normal, 99)), 2),
               "p99_during_ms": round(float(np.percentile(during, 99)), 2), "queries_during": len(during),
               "compaction_s": round(time.perf_counter() - began, 2)}
        run["ratio"] = round(run["p99_during_ms"] / run["p99_normal_ms"], 2)
        runs.append(run)
        print(run, flush=True)
    summary = {"mean_p99_normal_ms": round(float(np.mean([r["p99_normal_ms"] for r in runs])), 2),
               "mean_p99_during_ms": round(float(np.mean([r["p99_during_ms"] for r in runs])), 2),
               "mean_ratio": round(float(np.mean([r["ratio"] for r in runs])), 2),
               "worst_ratio": max(r["ratio"] for r in runs),
               "mean_compaction_s": round(float(np.mean([r["compaction_s"] for r in runs])), 2)}
    print(json.dumps(summary, indent=2))
    (args.index.parent / "compaction_latency.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
