"""Scanning fewer codes, and batching queries: what each does to recall@10 and speed at 1,000,000 images.

    .venv/bin/python bench/pruning.py [--source bench/out/fm70k-vectors]   # ~15 min

The engine scores every code of the partitions it searches. Two ways to score fewer, measured here
against exact float cosine over all the images (faiss IndexFlatIP), in one run:

* **by category**, as Pailitao does: only the partitions of the category the kNN vote picks (and
  the runner-up when the vote is unsure), the vote itself over all codes or over one code in 32;
* **by k-means lists** (IVF) over the codes: an eighth, a quarter or a third of the lists probed,
  on the 70,000 real embeddings alone and on all 1,000,000 (outside the engine: one faiss index).

And the engine's scan of every code with queries in batches (as the service's batcher forms them
under load), beside IndexFlatIP with the same batches.

Data: as `bench/index_scale.py` (run `bench/real_embeddings.py` first): the 70,000 real
Fashion-MNIST embeddings plus SYNTHETIC ones drawn around them, in their source's category,
queried by the 500 SIMULATED shopper photos, whose category is their item's. Every shortlist is
re-ranked by float cosine on the float16 features. One core.
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

from code_alternatives import corner_index
from index_scale import EVERY_LIST, K, one_shard, recall, scale_arguments, scaled_vectors
from snapshop.index.rerank import cosines
from snapshop.index.scan import code_signs, sign_code_index
from snapshop.models.category import knn_vote

SAMPLE_STRIDE = 32  # the vote over a sample reads one code in 32, as the engine's threshold scan samples
VOTE_SHORTLIST = 400  # the engine's kNN vote: 40 candidates per neighbour, 10 neighbours, re-ranked
VOTERS = 10
RUNNER_UP_BELOW = (0.6, 1.01)  # the engine's default, and always the runner-up too
SHORTLISTS = (1000, 2000)
BATCHES = (1, 8, 32)
IVF_SHARES = (8, 4, 3)  # 1 list in 8, 4, 3 probed
IVF_SHORTLISTS = (2000, 3000)


class Measure:
    """Recall@10 against `exact` and ms per query beside IndexFlatIP, rows collected for the report."""

    def __init__(self, exact: np.ndarray, flat_ms: float) -> None:
        self.exact, self.flat_ms, self.rows = exact, flat_ms, []

    def __call__(self, name: str, setting: str, search: Callable[[int], np.ndarray], queries: int, *,
                 timed: int = 200, **extra) -> None:
        found = np.array([search(q) for q in range(queries)])
        start = time.perf_counter()
        for q in range(timed):
            search(q % queries)
        ms = (time.perf_counter() - start) * 1000 / timed
        self.rows.append({"index": name, "setting": setting, "recall@10": round(recall(found, self.exact), 4),
                          "ms_per_query": round(ms, 2), "speedup": round(self.flat_ms / ms, 1), **extra})
        print(json.dumps(self.rows[-1]), flush=True)


def timed_flat(flat: faiss.IndexFlatIP, queries: np.ndarray, batch: int, rounds: int) -> float:
    """IndexFlatIP's ms per query, `batch` queries a call."""
    start = time.perf_counter()
    for n in range(rounds):
        at = n * batch % (len(queries) - batch + 1)
        flat.search(queries[at : at + batch], K)
    return (time.perf_counter() - start) * 1000 / (rounds * batch)


def ivf_over_codes(projections: np.ndarray, codes: np.ndarray, lists: int) -> faiss.IndexIVFPQFastScan:
    """Sign codes in k-means lists (spherical k-means of the projections, codes assigned by their
    signs), scored as the engine scores them (corner codebooks, no residual)."""
    kmeans = faiss.Kmeans(projections.shape[1], lists, niter=10, seed=1, spherical=True)
    sample = np.random.default_rng(0).choice(len(projections), min(len(projections), 100 * lists), replace=False)
    kmeans.train(projections[sample])
    quantizer = faiss.IndexFlatIP(projections.shape[1])
    quantizer.add(kmeans.centroids)
    index = corner_index(faiss.IndexIVFPQFastScan, quantizer, projections.shape[1], lists, projections.shape[1] // 4, 4)
    index.by_residual = False
    for start in range(0, len(codes), 65_536):
        index.add(code_signs(codes[start : start + 65_536]))
    return index


def main() -> None:
    args = scale_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), Path("bench/out/pruning.json"))
    catalog, features, codes, partitions, query_features, rotation = scaled_vectors(args)
    real_count = len(catalog["features"])
    queries = np.load(args.source / "queries.npz")
    category_of = dict(zip(catalog["item_ids"].tolist(), catalog["categories"].tolist()))
    classes, labels = np.unique(partitions, return_inverse=True)
    query_labels = np.searchsorted(classes, [category_of[item] for item in queries["item_ids"].tolist()])
    features16 = features.astype(np.float16)
    query_projections = rotation.query(query_features).astype(np.float32)
    members = [np.flatnonzero(labels == number) for number in range(len(classes))]
    report: dict = {"data": f"70,000 real Fashion-MNIST embeddings + SYNTHETIC ones ({args.generator}) to "
                            f"{len(features):,}; queries: SIMULATED shopper photos; one core"}

    def reranked(found: np.ndarray, q: int, k: int = K) -> tuple[np.ndarray, np.ndarray]:
        found = found[found >= 0]
        scores = cosines(features16[found][None], query_features[q : q + 1])[0]
        order = np.argsort(-scores)[:k]
        return np.pad(found[order], (0, k - len(order)), constant_values=-1), scores[order]

    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    exact = flat.search(query_features, K)[1]  # both cores: the ground truth is not what is timed
    in_own = float((labels[exact] == query_labels[:, None]).mean())
    oracle = [np.argsort(-knn_vote(labels[row][None], np.ones((1, K)), classes)[0]) for row in exact]
    report["exact_top10_in"] = {
        "the_query_category": round(in_own, 4),
        "the_category_most_voted_by_the_exact_top10": round(float(np.mean([np.isin(labels[row], order[:1]).mean()
                                                                         for row, order in zip(exact, oracle)])), 4),
        "the_two_categories_most_voted_by_the_exact_top10": round(float(np.mean([np.isin(labels[row], order[:2]).mean()
                                                                               for row, order in zip(exact, oracle)])), 4)}
    print(json.dumps(report["exact_top10_in"]), flush=True)

    with threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        measure = Measure(exact, timed_flat(flat, query_features, 1, 100))
        report["index_flat_ip_ms"] = round(measure.flat_ms, 2)
        print("IndexFlatIP ms per query", report["index_flat_ip_ms"], flush=True)
        every = len(query_features)

        # --- by category ---------------------------------------------------------------------------
        per_category = [sign_code_index(codes[rows]) for rows in members]
        sampled_rows = np.concatenate([rows[::SAMPLE_STRIDE] for rows in members])
        voters = {"all codes": (sign_code_index(codes), None, VOTE_SHORTLIST),
                  f"1 code in {SAMPLE_STRIDE}": (sign_code_index(codes[sampled_rows]), sampled_rows,
                                                 VOTE_SHORTLIST // SAMPLE_STRIDE + 4 * VOTERS)}

        def vote(q: int, voter: str) -> np.ndarray:
            index, rows, shortlist = voters[voter]
            found = index.search(query_projections[q : q + 1], shortlist)[1][0]
            nearest, scores = reranked(found if rows is None else rows[found], q, VOTERS)
            return knn_vote(labels[nearest][None], scores[None], classes)[0]

        def restricted(q: int, voter: str, runner_up_below: float, shortlist: int) -> np.ndarray:
            votes = vote(q, voter)
            order = np.argsort(-votes)
            chosen = order[: 2 if votes[order[0]] < runner_up_below else 1]
            found = np.concatenate([members[c][per_category[c].search(query_projections[q : q + 1], shortlist)[1][0]]
                                    for c in chosen])
            return reranked(found, q)[0]

        for voter in voters:
            accuracy = np.mean([np.argmax(vote(q, voter)) == query_labels[q] for q in range(every)])
            report.setdefault("vote_accuracy", {})[voter] = round(float(accuracy), 4)
            for runner_up_below in RUNNER_UP_BELOW:
                for shortlist in SHORTLISTS:
                    searched = np.mean([1 + (vote(q, voter).max() < runner_up_below) for q in range(every)])
                    measure("ours, voted categories only", f"vote over {voter}, runner-up below {runner_up_below}, "
                            f"shortlist {shortlist}", lambda q: restricted(q, voter, runner_up_below, shortlist),
                            every, categories_searched=round(float(searched), 2))
        print("vote accuracy", report["vote_accuracy"], flush=True)
        del per_category, voters

        # --- by k-means lists -------------------------------------------------------------------------
        projections = rotation.project(features).astype(np.float32)
        for scope, count in (("70,000 real", real_count), ("all", len(features))):
            lists = 256 if count < 200_000 else 1024
            ivf = ivf_over_codes(projections[:count], codes[:count], lists)
            truth = faiss.IndexFlatIP(features.shape[1])
            truth.add(features[:count])
            scoped = Measure(truth.search(query_features, K)[1], timed_flat(truth, query_features, 1, 100))
            del truth
            one = sign_code_index(codes[:count])
            for shortlist in IVF_SHORTLISTS:
                scoped(f"ours, every code ({scope})", f"shortlist {shortlist}",
                       lambda q: reranked(one.search(query_projections[q : q + 1], shortlist)[1][0], q)[0], every)
            del one
            for share in IVF_SHARES:
                ivf.nprobe = lists // share
                for shortlist in IVF_SHORTLISTS:
                    scoped(f"k-means lists over the codes ({scope}), {lists} lists", f"1/{share} probed, shortlist {shortlist}",
                           lambda q: reranked(ivf.search(query_projections[q : q + 1], shortlist)[1][0], q)[0], every)
            measure.rows += scoped.rows
            del ivf
        del projections

        # --- every code, batched queries --------------------------------------------------------------
        with tempfile.TemporaryDirectory() as folder:
            engine, _ = one_shard(Path(folder), partitions, codes, features16)
            for batch in BATCHES:
                flat_ms = timed_flat(flat, query_features, batch, max(4, 100 // batch))
                for shortlist in SHORTLISTS:
                    found = np.concatenate([engine.search(query_projections[s : s + batch], query_features[s : s + batch],
                                                          shortlist, None, EVERY_LIST).image_ids[:, :K]
                                            for s in range(0, every - every % batch, batch)])
                    starts = [s % (every - batch + 1) for s in range(0, 480, batch)]
                    start = time.perf_counter()
                    for s in starts:
                        engine.search(query_projections[s : s + batch], query_features[s : s + batch], shortlist, None,
                                      EVERY_LIST)
                    ms = (time.perf_counter() - start) * 1000 / (len(starts) * batch)
                    measure.rows.append({"index": "ours, the engine, every code", "setting": f"batch {batch}, shortlist {shortlist}",
                                         "recall@10": round(recall(found, exact[: len(found)]), 4), "ms_per_query": round(ms, 2),
                                         "flat_ms_per_query_same_batch": round(flat_ms, 2), "speedup": round(flat_ms / ms, 1)})
                    print(json.dumps(measure.rows[-1]), flush=True)
            del engine

    report["rows"] = measure.rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
