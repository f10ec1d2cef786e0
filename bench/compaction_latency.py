"""Query latency while a partition compacts, on the 1M index that `bench/index_scale.py` built.

    .venv/bin/python bench/compaction_latency.py [--index bench/out/scale] [--repeats 6]

Each repeat: the p99 of 500 single queries (the SIMULATED shopper photos' embeddings, one
core, default shortlist), then partitions (about 100,000 images each of 70,000 real + SYNTHETIC
embeddings) compacted one after another in a background thread, a different one first each
repeat, until 500 queries have been answered during compactions, and the p99 of those. The two
p99s are of the same number of queries: a single compaction of 0.2-0.7 s overlaps 30-150
queries, whose p99 is their maximum. Each repeat runs twice: with the process's objects left to
the garbage collector, then moved out of its reach (`gc.freeze()`, as `snapshop serve` does
after start-up). (Before 0f63e3d this script also compared a compaction that
built its code index on two faiss threads; a compaction now only packs codes, no OpenMP work,
so there is one way left to measure.)

Written to bench/out/compaction_latency.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np

from index_scale import fitted_rotation, latency_during_compactions, open_built, single_query_timer
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

    one_query = single_query_timer(index, projections, features, settings.shortlist)

    runs: list[dict] = []
    for repeat in range(args.repeats):
        for frozen in (False, True):
            runs.append(latency_during_compactions(index, one_query, QUERIES, first=repeat, frozen=frozen))
            print(runs[-1], flush=True)
    summary = {}
    for frozen in (False, True):
        done = [r for r in runs if r["frozen"] is frozen]
        summary["frozen" if frozen else "not_frozen"] = {
            "mean_p99_normal_ms": round(float(np.mean([r["p99_normal_ms"] for r in done])), 2),
            "mean_p99_during_ms": round(float(np.mean([r["p99_during_ms"] for r in done])), 2),
            "mean_ratio": round(float(np.mean([r["ratio"] for r in done])), 2),
            "worst_ratio": max(r["ratio"] for r in done),
            "worst_query_during_ms": max(r["max_during_ms"] for r in done),
            "mean_compaction_s": round(float(np.mean([r["compaction_s"] for r in done])), 2)}
    print(json.dumps(summary, indent=2))
    (args.index.parent / "compaction_latency.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
