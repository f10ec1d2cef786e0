"""The index engine at 1,000,000 images: code shortlist + re-rank vs exact float, Hamming and HNSW; live updates.

    .venv/bin/python bench/index_scale.py [--source bench/out/fm70k-vectors] [--out bench/out/scale] [--total 1000000]

Needs the vectors of `bench/real_embeddings.py` (run it first). Data, said plainly:

* catalog vectors: the 70,000 real Fashion-MNIST embeddings, plus SYNTHETIC embeddings drawn
  to match their distribution: a random real embedding plus Gaussian noise, re-normalised, in
  the category of the embedding it came from (`Draws`). The noise runs along the directions to
  that embedding's ten nearest real neighbours ("neighbours", the default) or along every
  dimension with the real per-dimension spread ("axes", the runs before 2026-12-07 evening);
  either way it is scaled so that a synthetic embedding is as similar to its source as a real
  embedding is to its nearest real neighbour (median cosine). `bench/synthetic_fidelity.py`
  measured both against the real set: both are harder to search than real embeddings, the
  "axes" draws much more so; codes from the fitted index's own ITQ rotation;
* queries: embeddings of SIMULATED shopper photos, localized and embedded by the pipeline.

Everything goes through the real write path (SQLite change log -> live index -> compaction
into base segments). Every search runs on one core (one faiss / BLAS thread), over all
partitions. Printed, measured in this one run: recall@10 against exact float cosine (faiss
IndexFlatIP) and ms per single query for ours at several shortlist sizes (the median of
ROUNDS passes over all queries, IndexFlatIP timed before, between and after them, as this
machine's speed wanders: the speedup is the ratio of the two medians), and in batches of 8
against IndexFlatIP given the same batches right after; for a Hamming shortlist of the same
codes with the same re-rank, for IndexFlatIP and for float HNSW; the
memory each holds; 10,000 adds and 10,000 removes from the call until the next query sees
them (commit + the index's refresh); the p99 of 500 queries while partitions
compact one after another against the p99 of 500 before, with what the process holds frozen
out of the garbage collector's reach, as `snapshop serve` runs.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from real_embeddings import STAND_IN_PREFIX
from real_embeddings import load as load_vectors
from snapshop.index.coarse import ListPlan, planned_lists
from snapshop.index.live import IndexParams, LiveIndex, ShardReplica
from snapshop.index.partition import PartitionState
from snapshop.index.segments import BaseSegment, Rows
from snapshop.index.store import MetadataStore, NewImage, NewItem
from snapshop.models.encoder import Codec
from snapshop.models.pooling import l2_normalize
from snapshop.models.projection import ITQ, sign_decoder
from snapshop.settings import load_settings

K = 10
BATCH = 8  # queries searched at once, as the service batches those that arrive together
ROUNDS = 3  # single-query passes over all queries per shortlist, each between two IndexFlatIP timings
WRITE_CHUNK = 20_000
SHORTLISTS = (400, 800, 1600, 2000, 2300, 2600, 3200)
HNSW_EF = (64, 128, 256, 512)


def open_built(folder: Path, bits: int, dim: int) -> tuple[MetadataStore, LiveIndex]:
    """The store and live index this script built in `folder`, with the default settings."""
    settings = load_settings({})
    store = MetadataStore(folder / "meta.sqlite")
    params = IndexParams.from_settings(settings, bits=bits, dim=dim)
    return store, LiveIndex(folder, store, params, codec="bench")


def fitted_rotation(source: Path) -> ITQ:
    """The ITQ rotation the fitted index of `bench/real_embeddings.py` encodes with. A codec
    fitted before the code decoder existed gets its decoder fitted here, as `Codec.fit` would
    have: on the embeddings of the catalog the codec was fitted on."""
    store = MetadataStore(source / "index" / "meta.sqlite")
    blob, info = store.fitted("codec")
    store.close()
    rotation = Codec.from_blob(blob, info["source"]).rotation
    if rotation.decoder_ is None:
        fitted_items = {json.loads(line)["item_id"] for line in (source / "catalog" / "manifest.jsonl").read_text().splitlines()}
        catalog, _ = load_vectors(source)
        fitted = np.isin(catalog["item_ids"], list(fitted_items))
        rotation.decoder_ = sign_decoder(rotation.project(catalog["features"][fitted])).astype(np.float32)
    return rotation


def source_vectors(source: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, ITQ]:
    """What `bench/real_embeddings.py` saved in `source`: its catalog arrays, their float32
    features, the queries' float32 features, and the fitted index's ITQ rotation."""
    catalog, queries = load_vectors(source)
    return (catalog, catalog["features"].astype(np.float32), queries["features"].astype(np.float32),
            fitted_rotation(source))


NEIGHBOURS = 10  # real neighbours whose directions a "neighbours" draw moves along
GENERATORS = ("axes", "neighbours")
DEFAULT_GENERATOR = "neighbours"  # the closer to real embeddings (bench/synthetic_fidelity.py)


class Draws:
    """How SYNTHETIC embeddings are drawn around the real ones: a real embedding plus noise,
    re-normalised, where the noise runs

    * "axes": along every dimension at once, with the real embeddings' spread in it;
    * "neighbours": along the directions from the embedding to its NEIGHBOURS nearest real
      ones (Gaussian weights), so a draw stays where real embeddings lie.

    The noise scale is calibrated the same way for both (`calibrated_noise`)."""

    def __init__(self, features: np.ndarray, generator: str) -> None:
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; one of {', '.join(GENERATORS)}")
        self.features, self.generator = features, generator
        self.spread = features.std(axis=0)
        self.neighbours = nearest_real(features, NEIGHBOURS) if generator == "neighbours" else None

    def around(self, source: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        """One draw around each real embedding numbered in `source`, at this noise scale."""
        origin = self.features[source]
        if self.neighbours is None:
            directions = self.spread * rng.standard_normal(origin.shape).astype(np.float32)
        else:
            away = self.features[self.neighbours[source]] - origin[:, None]
            weights = rng.standard_normal((len(source), NEIGHBOURS)).astype(np.float32) / NEIGHBOURS**0.5  # stays float32
            directions = np.einsum("nk,nkd->nd", weights, away)
        return l2_normalize(origin + noise * directions)


def nearest_real(features: np.ndarray, count: int) -> np.ndarray:
    """Each embedding's `count` nearest others (exact inner product), N x count rows."""
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    rows = [flat.search(features[start : start + 5000], count + 1)[1]
            for start in tqdm(range(0, len(features), 5000), desc="real neighbours", unit="batch")]
    found = np.concatenate(rows)
    itself = found == np.arange(len(features))[:, None]
    itself[~itself.any(axis=1), -1] = True  # a duplicate may outrank the embedding itself: drop the last
    return found[~itself].reshape(len(features), count)


def synthetic(draws: Draws, partitions: np.ndarray, count: int, noise: float, rotation: ITQ, seed: int = 0):
    """SYNTHETIC embeddings drawn around the real ones, in their source's partition; codes from
    the same ITQ rotation."""
    rng = np.random.default_rng(seed)
    chunks = [(np.zeros((0, draws.features.shape[1]), np.float32), partitions[:0])]
    for start in range(0, count, 20_000):
        source = rng.integers(0, len(draws.features), min(20_000, count - start))
        chunks.append((draws.around(source, noise, rng), partitions[source]))
    drawn = np.concatenate([c[0] for c in chunks])
    return drawn, rotation.transform(drawn), np.concatenate([c[1] for c in chunks])


def scale_arguments(parser: argparse.ArgumentParser, out: Path) -> argparse.Namespace:
    """--source, --generator, --total and --out (default `out`) added to `parser`, and parsed:
    the options every 1M benchmark takes."""
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--generator", choices=GENERATORS, default=DEFAULT_GENERATOR,
                        help="how the synthetic embeddings are drawn (Draws)")
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=out)
    return parser.parse_args()


def scaled_vectors(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray, ITQ]:
    """The saved catalog, then `args.total` features, codes and partitions (the real ones first,
    then SYNTHETIC draws around them at the calibrated noise), the queries' features and the rotation."""
    catalog, real, query_features, rotation = source_vectors(args.source)
    draws = Draws(real, args.generator)
    drawn, drawn_codes, drawn_parts = synthetic(draws, catalog["categories"], args.total - len(real),
                                                calibrated_noise(draws), rotation)
    return (catalog, np.concatenate([real, drawn]), np.concatenate([catalog["codes"], drawn_codes]),
            np.concatenate([catalog["categories"], drawn_parts]), query_features, rotation)


EVERY_LIST = 2**31 - 1  # a lists_probed that scans every list


def one_shard(folder: Path, partitions: np.ndarray, codes: np.ndarray, features16: np.ndarray,
              plan: ListPlan | None = None) -> tuple[ShardReplica, float]:
    """One shard over a base segment per partition, written to `folder` as a compaction writes
    them (split into k-means lists by `plan`, else one list each), and the seconds the lists took."""
    classes, labels = np.unique(partitions, return_inverse=True)
    states, listing = {}, 0.0
    for number, name in enumerate(classes):
        rows = np.flatnonzero(labels == number)
        began = time.perf_counter()
        lists = planned_lists(plan, features16[rows]) if plan else None
        listing += time.perf_counter() - began
        base = BaseSegment.build(folder, f"p{number}", Rows(rows.astype(np.int64), codes[rows], features16[rows]), lists)
        states[str(name)] = replace(PartitionState.empty(str(name), 0, bits=codes.shape[1] * 8, dim=features16.shape[1]),
                                    base=base)
    return ShardReplica(0, states), listing


def calibrated_noise(draws: Draws, sample: int = 2000) -> float:
    """The noise scale whose draws are as similar to their source as real embeddings are to
    their nearest real neighbour (median cosine over a sample)."""
    features = draws.features
    rng = np.random.default_rng(1)
    probe = rng.choice(len(features), sample, replace=False)
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    target = float(np.median(flat.search(features[probe], 2)[0][:, 1]))  # [:, 0] is the probe itself
    low, high = 0.0, 4.0
    for _ in range(30):
        noise = (low + high) / 2
        drawn = draws.around(probe, noise, rng)
        low, high = (noise, high) if np.median((drawn * features[probe]).sum(axis=1)) > target else (low, noise)
    print(f"median cosine of a real embedding to its nearest real neighbour: {target:.3f}; "
          f"noise scale ({draws.generator}) {noise:.3f}")
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


def disk_read_mb() -> float:
    """Bytes this process has made the kernel read from disk so far (page-cache misses), in MB."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def work_and_waits(began_cpu: float, began_read: float) -> dict:
    """What the calling thread computed (thread CPU seconds) and read from disk since the given
    marks: a write whose wall time far exceeds its CPU time waited (disk, fsync, a lock)."""
    return {"thread_cpu_s": round(time.thread_time() - began_cpu, 3),
            "disk_read_mb": round(disk_read_mb() - began_read, 1)}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(e[:K])) / K for f, e in zip(found, exact)]))


def per_query_ms(search, queries: int) -> float:
    start = time.perf_counter()
    for q in range(queries):
        search(q)
    return (time.perf_counter() - start) * 1000 / queries


def batched_ms(search, queries: int) -> float:
    """ms per query, searching BATCH queries at a time (`search(first, stop)`)."""
    start = time.perf_counter()
    for first in range(0, queries, BATCH):
        search(first, min(first + BATCH, queries))
    return (time.perf_counter() - start) * 1000 / queries


def hamming_then_rerank(hamming: faiss.IndexBinaryFlat, features16: np.ndarray, image_ids: np.ndarray,
                        query_codes: np.ndarray, query_features: np.ndarray, shortlist: int) -> np.ndarray:
    """The Hamming alternative: the `shortlist` nearest codes by Hamming distance, re-ranked by float cosine."""
    rows = hamming.search(query_codes, shortlist)[1]
    cosines = np.einsum("qrd,qd->qr", features16[rows].astype(np.float32), query_features)
    return image_ids[np.take_along_axis(rows, np.argsort(-cosines, axis=1)[:, :K], 1)]


def timed_adds(store: MetadataStore, index: LiveIndex, rotation: ITQ, item_ids: list[str], partitions: np.ndarray,
               features: np.ndarray, codes: np.ndarray) -> dict:
    """Adds from the call until the next query sees them (commit + the live index's refresh),
    and how many of the first 200 are their own first result."""
    began, began_cpu, began_read = time.perf_counter(), time.thread_time(), disk_read_mb()
    ids = write(store, item_ids, partitions, features, codes)
    committed = time.perf_counter()
    index.refresh()
    report = {"visible_s": round(time.perf_counter() - began, 3), "commit_s": round(committed - began, 3),
              **work_and_waits(began_cpu, began_read)}
    found = index.search(rotation.query(features[:200]), features[:200], 10).image_ids[:, 0]
    report["found_first_of_200"] = float(np.mean(found == ids[:200]))
    return report


def timed_removes(store: MetadataStore, index: LiveIndex, rotation: ITQ, item_ids: list[str], image_ids: np.ndarray,
                  probes: np.ndarray, shortlist: int) -> dict:
    """Removes from the call until the next query sees them, their images found in the
    results of `probes` (should be none), and when the background sweep of their rows ended."""
    began, began_cpu, began_read = time.perf_counter(), time.thread_time(), disk_read_mb()
    with store.transaction():
        store.delete_items(item_ids)
    committed = time.perf_counter()
    index.refresh()
    report = {"visible_s": round(time.perf_counter() - began, 3), "commit_s": round(committed - began, 3),
              **work_and_waits(began_cpu, began_read)}
    hits = index.search(rotation.query(probes), probes, shortlist).image_ids
    report["removed_in_results"] = int(np.isin(hits, image_ids).sum())
    report["image_rows_swept_s"] = round(swept_after(store.path) - committed, 3)
    return report


def swept_after(path: Path) -> float:
    """When the background sweep has deleted every removed item's image rows (the timings
    below are taken after it, so it does not run under them)."""
    with closing(sqlite3.connect(path)) as db:
        while db.execute("SELECT COUNT(*) FROM unswept_items").fetchone()[0]:
            time.sleep(0.01)
    return time.perf_counter()


def single_query_timer(index: LiveIndex, projections: np.ndarray, features: np.ndarray, shortlist: int):
    """`one_query(n)`: ms the index takes to answer the n-th query (cycling) alone."""
    def one_query(n: int) -> float:
        n %= len(features)
        start = time.perf_counter()
        index.search(projections[n : n + 1], features[n : n + 1], shortlist)
        return (time.perf_counter() - start) * 1000
    return one_query


def latency_during_compactions(index: LiveIndex, one_query, queries: int, first: int = 0, *,
                               frozen: bool = True) -> dict:
    """The p99 of `queries` single queries (`one_query(n)` -> ms) answered while partitions compact
    one after another in a background thread (the n-th partition of the segment report first),
    against the p99 of as many queries before: a single compaction overlaps too few queries for
    their p99 to be more than their maximum. `frozen`: what the process holds is first moved out
    of the garbage collector's reach, as `snapshop serve` does after start-up (else put back)."""
    if frozen:
        gc.collect()
        gc.freeze()
    else:
        gc.unfreeze()
    partitions = [entry["partition"] for entry in index.segment_report()]
    normal = [one_query(n) for n in range(queries)]
    during: list[float] = []
    compactions: list[float] = []
    done = threading.Event()

    def compact_until_done() -> None:
        for n in itertools.count(first):
            start = time.perf_counter()
            index.compact([(partitions[n % len(partitions)], 0)])
            compactions.append(time.perf_counter() - start)
            if done.is_set():
                return

    worker = threading.Thread(target=compact_until_done)
    worker.start()
    while len(during) < queries:
        during.append(one_query(len(during)))
    done.set()
    worker.join()
    p99_normal, p99_during = float(np.percentile(normal, 99)), float(np.percentile(during, 99))
    return {"first_partition": partitions[first % len(partitions)], "p99_normal_ms": round(p99_normal, 2),
            "p99_during_ms": round(p99_during, 2), "ratio": round(p99_during / p99_normal, 2),
            "max_normal_ms": round(max(normal), 2), "max_during_ms": round(max(during), 2),
            "queries_each": queries, "frozen": frozen, "compactions": len(compactions),
            "compaction_s": round(float(np.mean(compactions)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=None, help="noise scale [default: calibrated, see above]")
    args = scale_arguments(parser, Path("bench/out/scale"))
    faiss.omp_set_num_threads(1)
    catalog, real_features, query_features, rotation = source_vectors(args.source)
    stand_in = str(catalog["item_ids"][0]).startswith(STAND_IN_PREFIX)  # bench/real_embeddings.py --stand-in
    report: dict = {"data": ("70,000 RANDOM stand-in vectors" if stand_in else "70,000 real Fashion-MNIST embeddings")
                    + " + SYNTHETIC embeddings drawn around them; queries: "
                    + ("RANDOM" if stand_in else "SIMULATED shopper photos") + "; one core per search",
                    "source": str(args.source)}
    real_parts = catalog["categories"]
    query_projections = rotation.query(query_features)
    draws = Draws(real_features, args.generator)
    noise = args.noise if args.noise is not None else calibrated_noise(draws)
    report["synthetic"] = {"generator": args.generator, "noise": round(noise, 3)}
    drawn, drawn_codes, drawn_parts = synthetic(draws, real_parts, args.total - len(real_features), noise, rotation)
    features = np.concatenate([real_features, drawn])
    codes = np.concatenate([catalog["codes"], drawn_codes])
    partitions = np.concatenate([real_parts, drawn_parts])
    del drawn
    print(f"{len(features)} vectors ({len(real_features)} {'RANDOM stand-ins' if stand_in else 'real'}), "
          f"dim {features.shape[1]}, {codes.shape[1] * 8} bits, {len(query_features)} queries")

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
    params = IndexParams.from_settings(settings, bits=codes.shape[1] * 8, dim=features.shape[1])
    began = time.perf_counter()
    index = LiveIndex(args.out, store, params, codec="bench")
    index.compact()
    report["compact_all_s"] = round(time.perf_counter() - began, 1)
    index.close()
    del index

    rss_before = rss_mb()
    began = time.perf_counter()
    index = LiveIndex(args.out, store, params, codec="bench")  # memory-mapped rows, code lists read
    report["open_s"] = round(time.perf_counter() - began, 2)
    report["partitions"] = len(index.partitions)
    segments = args.out / "segments"
    code_list_bytes = sum(code_list.nbytes for replicas in index.shards for state in replicas[0].states.values()
                          for code_list, _, _ in state.code_lists())
    ids_bytes = sum(path.stat().st_size for path in segments.glob("*.ids.npy"))
    float16_bytes = sum(path.stat().st_size for path in segments.glob("*.features.npy"))

    with threadpool_limits(1):
        # --- exact float: the ground truth and the speed to beat ------------------------------------
        flat = faiss.IndexFlatIP(features.shape[1])
        flat.add(features)
        began = time.perf_counter()
        _, exact_rows = flat.search(query_features, K)
        flat_batch_ms = (time.perf_counter() - began) * 1000 / len(query_features)
        exact = image_ids[exact_rows]
        flat_ms = per_query_ms(lambda q: flat.search(query_features[q : q + 1], K), 100)
        report["index_flat_ip"] = {"ms_per_query": round(flat_ms, 2), "ms_per_query_batched": round(flat_batch_ms, 3),
                                   "ram_mb": round(features.nbytes / 2**20, 1)}
        print("IndexFlatIP", report["index_flat_ip"])

        def flat_alongside() -> float:
            """IndexFlatIP's ms per query again, right beside a measurement of ours (this
            machine's speed wanders between minutes)."""
            return per_query_ms(lambda q: flat.search(query_features[q : q + 1], K), 50)

        # --- ours, and a Hamming shortlist of the same codes with the same re-rank ---------------------
        hamming = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        hamming.add(codes)
        features16 = features.astype(np.float16)
        query_codes = rotation.transform(query_features)
        rows = []
        for shortlist in SHORTLISTS:
            found = index.search(query_projections, query_features, shortlist).image_ids
            flat_rounds, ours_rounds = [flat_alongside()], []
            for _ in range(ROUNDS):
                ours_rounds.append(per_query_ms(lambda q: index.search(query_projections[q : q + 1],
                                                                       query_features[q : q + 1], shortlist),
                                                len(query_features)))
                flat_rounds.append(flat_alongside())
            ms, flat_beside = float(np.median(ours_rounds)), float(np.median(flat_rounds))
            round_speedups = [(before + after) / 2 / ours for before, after, ours
                              in zip(flat_rounds, flat_rounds[1:], ours_rounds)]
            batch_ms = batched_ms(lambda first, stop: index.search(query_projections[first:stop], query_features[first:stop],
                                                                   shortlist), len(query_features))
            flat_batch_beside = batched_ms(lambda first, stop: flat.search(query_features[first:stop], K), 80)
            by_hamming = hamming_then_rerank(hamming, features16, image_ids, query_codes, query_features, shortlist)
            hamming_ms = per_query_ms(lambda q: hamming_then_rerank(
                hamming, features16, image_ids, query_codes[q : q + 1], query_features[q : q + 1], shortlist), 100)
            rows.append({"shortlist": shortlist, "recall@10": round(recall(found, exact), 4),
                         "ms_per_query": round(ms, 3), "speedup_vs_flat": round(flat_ms / ms, 1),
                         "flat_ms_alongside": round(flat_beside, 2), "speedup_vs_flat_alongside": round(flat_beside / ms, 1),
                         "ms_per_query_rounds": [round(v, 3) for v in ours_rounds],
                         "flat_ms_alongside_rounds": [round(v, 2) for v in flat_rounds],
                         "speedup_per_round": [round(v, 1) for v in round_speedups],
                         f"ms_per_query_in_batches_of_{BATCH}": round(batch_ms, 3),
                         f"flat_ms_per_query_in_batches_of_{BATCH}_alongside": round(flat_batch_beside, 2),
                         f"speedup_in_batches_of_{BATCH}": round(flat_batch_beside / batch_ms, 1),
                         "hamming_recall@10": round(recall(by_hamming, exact), 4),
                         "hamming_ms_per_query": round(hamming_ms, 3)})
            print(rows[-1])
        report["ours"] = rows
        del hamming, features16, flat

        began = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(features.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        faiss.omp_set_num_threads(2)  # building is not what is compared: use both cores
        hnsw.add(features)
        faiss.omp_set_num_threads(1)
        hnsw_build_s = time.perf_counter() - began
        hnsw_rows = []
        for ef in HNSW_EF:
            hnsw.hnsw.efSearch = ef
            _, found_rows = hnsw.search(query_features, K)
            ms = per_query_ms(lambda q: hnsw.search(query_features[q : q + 1], K), len(query_features))
            hnsw_rows.append({"efSearch": ef, "recall@10": round(recall(image_ids[found_rows], exact), 4),
                              "ms_per_query": round(ms, 3)})
            print("hnsw", hnsw_rows[-1])
        report["hnsw_float"] = {"M": 16, "efConstruction": 40, "build_s": round(hnsw_build_s, 1), "rows": hnsw_rows,
                                "ram_mb": round((features.nbytes + hnsw.ntotal * 16 * 2 * 4) / 2**20, 1)}
        del hnsw
    report["memory_mb"] = {
        "ours_code_lists_and_ids": round((code_list_bytes + ids_bytes) / 2**20, 1),
        "ours_float16_rerank_features_memory_mapped_on_disk": round(float16_bytes / 2**20, 1),
        "float_index": round(features.nbytes / 2**20, 1),
        "ratio_float_to_ours": round(features.nbytes / (code_list_bytes + ids_bytes), 1),
        "process_rss_growth_after_open_and_queries": round(rss_mb() - rss_before, 1),
    }

    # --- live updates at this scale ------------------------------------------------------------------
    new_features, new_codes, new_parts = synthetic(draws, real_parts, 10_000, noise, rotation, seed=9)
    report["add_10k"] = timed_adds(store, index, rotation, [f"new{i}" for i in range(10_000)], new_parts,
                                   new_features, new_codes)
    gone = np.random.default_rng(5).choice(len(features), 10_000, replace=False)
    report["remove_10k"] = timed_removes(store, index, rotation, [f"v{i}" for i in gone], image_ids[gone],
                                         np.concatenate([query_features, features[gone[:500]]]), settings.shortlist)
    print("updates", report["add_10k"], report["remove_10k"])

    one_query = single_query_timer(index, query_projections, query_features, settings.shortlist)
    report["query_p99_ms"] = latency_during_compactions(index, one_query, len(query_features))
    print(json.dumps(report, indent=2))
    (args.out.parent / f"index_scale-{args.total}.json").write_text(json.dumps(report, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
