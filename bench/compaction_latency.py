"""Query latency while a partition compacts, on the 1M index that `bench/index_scale.py` built.

    .venv/bin/python bench/compaction_latency.py [--index bench/out/scale] [--repeats 6]

Each repeat, for each way of building the compaction's code index, alternately: the p99 of
500 single queries (the SIMULATED shopper photos' embeddings, one core, default shortlist),
then one partition (about 100,000 images of 70,000 real + SYNTHETIC embeddings) compacted in a
background thread while queries run, and the p99 of those. The two ways, measured in one run:

* one faiss (OpenMP) thread, what `LiveIndex.compact` does since ed3e9bf;
* two threads, what it did before: `_one_faiss_thread` made a no-op for the compaction only
  (the queries keep their one thread).

Written to bench/out/compaction_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from index_scale import fitted_rotation, open_built
from real_embeddings import load as load_vectors
from snapshop.index import live
from snapshop.settings import load_settings

QUERIES = 500
WAYS = {"one faiss thread (default)": 1, "two faiss threads (before ed3e9bf)": 2}


def compaction(index: live.LiveIndex, key: tuple[str, int], threads: int) -> None:
    """Compact one partition the way `threads` names, in the calling thread."""
    faiss.omp_set_num_threads(threads)  # this thread's own OpenMP setting
    one_thread = live._one_faiss_thread
    if threads > 1:
        live._one_faiss_thread = contextlib.nullcontext
    try:
        index.compact([key])
    finally:
        live._one_faiss_thread = one_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--index", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    _, queries = load_vectors(args.source)
    features = queries["features"].astype(np.float32)
    projections = fitted_rotation(args.source).project(features)
    settings = load_settings({})
    store, index = open_built(args.index, projections.shape[1], features.shape[1])
    partitions = [entry["partition"] for entry in index.segment_report()]

    def one_query(q: int) -> float:
        q %= len(features)
        start = time.perf_counter()
        index.search(projections[q : q + 1], features[q : q + 1], settings.shortlist)
        return (time.perf_counter() - start) * 1000

    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for repeat in range(args.repeats):
        for way, threads in WAYS.items():
            normal = [one_query(q) for q in range(QUERIES)]
            during: list[float] = []
            key = (partitions[repeat % len(partitions)], 0)
            worker = threading.Thread(target=compaction, args=(index, key, threads))
            began = time.perf_counter()
            worker.start()
            while worker.is_alive():
                during.append(one_query(len(during)))
            worker.join()
            run = {"partition": key[0], "p99_normal_ms": round(float(np.percentile(normal, 99)), 2),
                   "p99_during_ms": round(float(np.percentile(during, 99)), 2), "queries_during": len(during),
                   "compaction_s": round(time.perf_counter() - began, 2)}
            run["ratio"] = round(run["p99_during_ms"] / run["p99_normal_ms"], 2)
            runs[way].append(run)
            print(way, run, flush=True)
    summary = {way: {"mean_p99_normal_ms": round(float(np.mean([r["p99_normal_ms"] for r in rows])), 2),
                     "mean_p99_during_ms": round(float(np.mean([r["p99_during_ms"] for r in rows])), 2),
                     "mean_ratio": round(float(np.mean([r["ratio"] for r in rows])), 2),
                     "worst_ratio": max(r["ratio"] for r in rows)} for way, rows in runs.items()}
    print(json.dumps(summary, indent=2))
    (args.index.parent / "compaction_latency.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
