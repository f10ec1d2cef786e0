"""Which SYNTHETIC embeddings stand in for real ones at 1M: each generator of `index_scale.Draws`
against the 70,000 real Fashion-MNIST embeddings they are drawn from, at the same size.

    .venv/bin/python bench/synthetic_fidelity.py [--source bench/out/fm70k-vectors]   # ~5 min

`bench/index_scale.py` fills 1,000,000 images with synthetic embeddings drawn around the real
ones, so its recall and speed-ups hold for real catalogs only as far as the draws are as hard
to search as real embeddings. Here every real embedding is replaced by one draw around it (so a
set has the real one's size and layout), and each set is measured beside the real set, in one
run:

* shape: the share of variance in the top 8 / 32 / 128 principal axes, and the median cosine
  of an embedding to its nearest other one in its set;
* difficulty, queried by the 500 SIMULATED shopper photos, recall@10 against exact float
  cosine within the same set: our code shortlist (asymmetric, 256-bit sign codes of the
  fitted ITQ rotation) re-ranked by float cosine, at shortlist 100 / 400; a Hamming shortlist
  of 400 with the same re-rank; float HNSW (M 16) at efSearch 16 / 64.

A generator stands in for real embeddings when these match the real set's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np

from index_scale import GENERATORS, K, Draws, calibrated_noise, recall, source_vectors
from snapshop.index.scan import sign_code_index

SHORTLISTS = (100, 400)
HNSW_EF = (16, 64)


def shape(features: np.ndarray) -> dict:
    """Principal-axis variance shares and the median nearest-other cosine (over 2,000 probes)."""
    centred = features - features.mean(axis=0)
    variances = np.linalg.eigvalsh(centred.T @ centred / len(features))[::-1]
    shares = np.cumsum(variances) / variances.sum()
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    probe = np.random.default_rng(2).choice(len(features), 2000, replace=False)
    nearest_other = flat.search(features[probe], 2)[0][:, 1]
    return {"variance_in_top_8_32_128_axes": [round(float(shares[n - 1]), 3) for n in (8, 32, 128)],
            "median_nearest_other_cosine": round(float(np.median(nearest_other)), 3)}


def reranked(features: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's shortlisted rows, best K by float cosine."""
    scores = np.einsum("qrd,qd->qr", features[rows], queries)
    return np.take_along_axis(rows, np.argsort(-scores, axis=1)[:, :K], 1)


def difficulty(features: np.ndarray, codes: np.ndarray, queries: np.ndarray, projections: np.ndarray,
               query_codes: np.ndarray) -> dict:
    """Recall@10 against exact float cosine within this set, for each method."""
    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(features)
    exact = flat.search(queries, K)[1]
    asymmetric, hamming = sign_code_index(codes), faiss.IndexBinaryFlat(codes.shape[1] * 8)
    hamming.add(codes)
    found = {f"ours_shortlist_{n}": recall(reranked(features, asymmetric.search(projections, n)[1], queries), exact)
             for n in SHORTLISTS}
    found[f"hamming_shortlist_{SHORTLISTS[-1]}"] = recall(
        reranked(features, hamming.search(query_codes, SHORTLISTS[-1])[1], queries), exact)
    hnsw = faiss.IndexHNSWFlat(features.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(features)
    for ef in HNSW_EF:
        hnsw.hnsw.efSearch = ef
        found[f"hnsw_ef_{ef}"] = recall(hnsw.search(queries, K)[1], exact)
    return {name: round(value, 3) for name, value in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    args = parser.parse_args()
    catalog, real, query_features, rotation = source_vectors(args.source)
    query_projections, query_codes = rotation.query(query_features), rotation.transform(query_features)
    sets = {"real": (real, catalog["codes"])}
    for generator in GENERATORS:
        draws = Draws(real, generator)
        drawn = draws.around(np.arange(len(real)), calibrated_noise(draws), np.random.default_rng(3))
        sets[f"synthetic ({generator})"] = (drawn, rotation.transform(drawn))
    report = {"data": f"{len(real)} real Fashion-MNIST embeddings and, per generator, one SYNTHETIC draw around "
                      "each; queries: SIMULATED shopper photos", "source": str(args.source), "sets": {}}
    for name, (features, codes) in sets.items():
        report["sets"][name] = {**shape(features),
                                **difficulty(features, codes, query_features, query_projections, query_codes)}
        print(name, report["sets"][name], flush=True)
    out = Path("bench/out/synthetic_fidelity.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
