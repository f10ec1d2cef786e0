"""The engine with k-means lists in its base segments at 1,000,000 images, at several list sizes, against the engine scanning every code.

    .venv/bin/python bench/engine_lists.py [--source bench/out/fm70k-vectors] [--total 1000000]   # ~15 min

Every engine holds the same ten category partitions as base segments (one shard, as `snapshop`
builds them by default): one scans every code of the partitions it searches, the others split
each base segment into k-means lists of LIST_SIZES images (`index/coarse.py`, the `list_size`
setting) and scan the share of them (PROBED_SHARES) nearest the query. Printed, measured in this
one run, on one core: recall@10 against exact float cosine over all the images (faiss
IndexFlatIP) and ms per query, single queries and batches of 8, IndexFlatIP timed with the same
batches just before and after each; the memory each engine's codes take; the time the lists
take to build.

Data: as `bench/index_scale.py` (run `bench/real_embeddings.py` first): the 70,000 real
Fashion-MNIST embeddings plus SYNTHETIC ones drawn around them, queried by the 500 SIMULATED
shopper photos; every shortlist re-ranked by float cosine on the float16 features.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from index_scale import EVERY_LIST, K, one_shard, recall, scale_arguments, scaled_vectors
from pruning import timed_flat
from snapshop.index.coarse import ListPlan
from snapshop.settings import load_settings

LIST_SIZES = (512, 768, 1024)
PROBED_SHARES = (0.2, 0.256, 0.33)  # of a split engine's lists (0.256: the default 500 of 1,953 lists of 512)
SHORTLISTS = (2000, 2600)
BATCHES = (1, 8)


def main() -> None:
    args = scale_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), Path("bench/out/engine_lists.json"))
    _, features, codes, partitions, query_features, rotation = scaled_vectors(args)
    features16 = features.astype(np.float16)
    query_projections = rotation.query(query_features).astype(np.float32)
    settings = load_settings()
    report: dict = {"data": f"70,000 real Fashion-MNIST embeddings + SYNTHETIC ones ({args.generator}) to "
                            f"{len(features):,}; queries: SIMULATED shopper photos; one core",
                    "engines": {}, "rows": []}
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    exact = flat.search(query_features, K)[1]  # both cores: the ground truth is not what is timed
    every = len(query_features)

    with tempfile.TemporaryDirectory() as folder, threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        engines = [("every code", one_shard(Path(folder) / "whole", partitions, codes, features16)[0], (EVERY_LIST,))]
        for list_size in LIST_SIZES:
            name = f"k-means lists of {list_size}"
            split, listing_s = one_shard(Path(folder) / f"split{list_size}", partitions, codes, features16,
                                         ListPlan(list_size, settings.lists_from))
            lists = int(sum(state.base.codes.lists for state in split.states.values()))
            engines.append((name, split, tuple(round(share * lists) for share in PROBED_SHARES)))
            report["engines"][name] = {"lists": lists, "lists_build_s": round(listing_s, 1)}
        for name, replica, _ in engines:
            report["engines"].setdefault(name, {})["codes_mb"] = round(
                sum(state.base.codes.nbytes for state in replica.states.values()) / 2**20, 1)
        print(json.dumps(report["engines"]), flush=True)
        for batch in BATCHES:
            starts = [s % (every - batch + 1) for s in range(0, 400, batch)]
            for name, replica, probes in engines:
                for nprobe in probes:
                    for shortlist in SHORTLISTS:
                        found = np.concatenate([
                            replica.search(query_projections[s : s + batch], query_features[s : s + batch], shortlist, None,
                                           nprobe).image_ids[:, :K]
                            for s in range(0, every - every % batch, batch)])
                        flat_before = timed_flat(flat, query_features, batch, max(4, 60 // batch))
                        began = time.perf_counter()
                        for s in starts:
                            replica.search(query_projections[s : s + batch], query_features[s : s + batch], shortlist, None, nprobe)
                        ms = (time.perf_counter() - began) * 1000 / (len(starts) * batch)
                        flat_ms = (flat_before + timed_flat(flat, query_features, batch, max(4, 60 // batch))) / 2
                        report["rows"].append({
                            "engine": name, "lists_probed": "all" if nprobe == EVERY_LIST else nprobe, "batch": batch,
                            "shortlist": shortlist, "recall@10": round(recall(found, exact[: len(found)]), 4),
                            "ms_per_query": round(ms, 2), "flat_ms_per_query_same_batch": round(flat_ms, 2),
                            "speedup": round(flat_ms / ms, 1)})
                        print(json.dumps(report["rows"][-1]), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
