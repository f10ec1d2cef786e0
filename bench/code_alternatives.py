"""Other code indexes at 1,000,000 images, against ours and exact float, measured in one run.

    .venv/bin/python bench/code_alternatives.py [--source bench/out/fm70k-vectors]   # ~15 min

The data of `bench/index_scale.py`, made the same way: the 70,000 real Fashion-MNIST embeddings
plus 930,000 SYNTHETIC ones drawn around them, queried by 500 SIMULATED shopper photos (run
`bench/real_embeddings.py` first). Every search runs on one core, single queries, and every
shortlist is re-ranked by float cosine on the float16 features, as the engine does. Printed:
recall@10 against exact float cosine (faiss IndexFlatIP), ms per query and the speed-up over
IndexFlatIP, for

* ours as the engine runs it: the ten category partitions of one shard, each a base segment
  (4-bit fast-scan over the 256-bit sign codes), merged into the shortlist, re-ranked;
* the same code scan as one index over all 1,000,000 codes: the floor of that design;
* faiss RaBitQ fast-scan (1 bit a dimension, and 2 bits: the extended RaBitQ estimator);
* faiss IVF + RaBitQ fast-scan (1,024 lists);
* a learned 4-bit PQ fast-scan of 16 bytes (half our code size);
* a cascade: 128 of the 256 bits scanned, the 256-bit score refining that list in faiss.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from index_scale import EVERY_LIST, K, one_shard, recall, scale_arguments, scaled_vectors
from snapshop.index.rerank import cosines
from snapshop.index.scan import CORNERS, code_signs, sign_code_index

TRAIN_SAMPLE = 100_000


def corner_index(kind, *args) -> faiss.Index:
    """A faiss PQ index (fast-scan or not) whose codebooks are the 4-d cube's corners, or, with
    8-d sub-vectors, the corners on the first 4 dimensions and 0 on the others (half the bits)."""
    index = kind(*args, faiss.METRIC_INNER_PRODUCT)
    sub = index.pq.dsub
    centroids = np.zeros((index.pq.M, 16, sub), np.float32)
    centroids[:, :, :4] = CORNERS
    faiss.copy_array_to_vector(centroids.ravel(), index.pq.centroids)
    index.is_trained = True
    return index


def main() -> None:
    args = scale_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                           Path("bench/out/code_alternatives.json"))
    _, features, codes, partitions, query_features, rotation = scaled_vectors(args)
    query_projections = rotation.project(query_features).astype(np.float32)
    features16 = features.astype(np.float16)
    projections = rotation.project(features).astype(np.float32)  # an orthogonal rotation: same inner products
    sample = projections[np.random.default_rng(0).choice(len(projections), TRAIN_SAMPLE, replace=False)]
    rows: list[dict] = []

    def reranked(found: np.ndarray, q: int) -> np.ndarray:
        found = found[found >= 0]
        order = np.argsort(-cosines(features16[found][None], query_features[q : q + 1])[0])[:K]
        return np.pad(found[order], (0, K - len(order)), constant_values=-1)

    def measure(name: str, setting: str, search: Callable[[int], np.ndarray], *, timed: int = 200) -> None:
        found = np.array([search(q) for q in range(len(query_features))])
        start = time.perf_counter()
        for q in range(timed):
            search(q % len(query_features))
        ms = (time.perf_counter() - start) * 1000 / timed
        rows.append({"index": name, "setting": setting, "recall@10": round(recall(found, exact), 4),
                     "ms_per_query": round(ms, 2), "speedup": round(flat_ms / ms, 1)})
        print(json.dumps(rows[-1]), flush=True)

    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    exact = flat.search(query_features, K)[1]  # both cores: the ground truth is not what is timed
    with threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        start = time.perf_counter()
        for q in range(100):
            flat.search(query_features[q : q + 1], K)
        flat_ms = (time.perf_counter() - start) * 1000 / 100
        del flat
        rows.append({"index": "IndexFlatIP", "setting": "exact float", "recall@10": 1.0,
                     "ms_per_query": round(flat_ms, 2), "speedup": 1.0})
        print(json.dumps(rows[-1]), flush=True)

        with tempfile.TemporaryDirectory() as folder:
            engine, _ = one_shard(Path(folder), partitions, codes, features16)
            for shortlist in (800, 1600, 3200):
                measure(f"ours: engine, {len(engine.states)} partitions", f"shortlist {shortlist}", lambda q: engine.search(
                    query_projections[q : q + 1], query_features[q : q + 1], shortlist, None, EVERY_LIST).image_ids[0, :K])
            del engine

        one = sign_code_index(codes)
        for shortlist in (800, 1600, 3200):
            measure("ours: one code index", f"shortlist {shortlist}",
                    lambda q: reranked(one.search(query_projections[q : q + 1], shortlist)[1][0], q))
        del one

        for bits, shortlists in ((1, (800, 1600, 3200)), (2, (100, 400))):
            rabitq = faiss.IndexRaBitQFastScan(features.shape[1], faiss.METRIC_INNER_PRODUCT, 32, bits)
            rabitq.train(sample)
            rabitq.add(projections)
            rabitq.qb = 8
            for shortlist in shortlists:
                measure(f"RaBitQ fast-scan, {bits} bit ({rabitq.code_size} B)", f"shortlist {shortlist}",
                        lambda q: reranked(rabitq.search(query_projections[q : q + 1], shortlist)[1][0], q))
            del rabitq

        ivf = faiss.IndexIVFRaBitQFastScan(faiss.IndexFlatIP(features.shape[1]), features.shape[1], 1024,
                                           faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        ivf.add(projections)
        ivf.qb = 8
        for nprobe in (64, 128):
            ivf.nprobe = nprobe
            for shortlist in (1600, 3200):
                measure("IVF1024 + RaBitQ fast-scan", f"nprobe {nprobe}, shortlist {shortlist}",
                        lambda q: reranked(ivf.search(query_projections[q : q + 1], shortlist)[1][0], q))
        del ivf

        pq = faiss.IndexPQFastScan(features.shape[1], 32, 4, faiss.METRIC_INNER_PRODUCT)
        pq.train(sample)
        pq.add(projections)
        for shortlist in (3200, 6400):
            measure("learned PQ fast-scan, 16 B", f"shortlist {shortlist}",
                    lambda q: reranked(pq.search(query_projections[q : q + 1], shortlist)[1][0], q))
        del pq

        cascade = faiss.IndexRefine(corner_index(faiss.IndexPQFastScan, 256, 32, 4), corner_index(faiss.IndexPQ, 256, 64, 4))
        for start in range(0, len(codes), 65_536):
            cascade.add(code_signs(codes[start : start + 65_536]))
        for first in (12_800, 25_600):
            cascade.k_factor = first / 3200
            measure("128-bit scan, 256-bit refine", f"{first} -> shortlist 3200",
                    lambda q: reranked(cascade.search(query_projections[q : q + 1], 3200)[1][0], q))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": "70,000 real Fashion-MNIST embeddings + SYNTHETIC ones drawn around "
                                            "them; queries: SIMULATED shopper photos; one core", "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
