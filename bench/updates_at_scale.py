"""Live updates on an index that `bench/index_scale.py` built: 10,000 removes and 10,000 adds.

    .venv/bin/python bench/updates_at_scale.py [--index bench/out/scale] [--seed 1]

The same write path and the same timings as index_scale.py's update section (from the call
until the next query sees the change: commit + the live index's refresh), without building
the index and its baselines again. The items removed are 10,000 random ones still in the
index (by `--seed`); the ones added are new SYNTHETIC embeddings drawn as index_scale.py
draws them. After the removes, it checks the removed images' own features and the
SIMULATED shopper queries against the results, and waits for the background sweep of the
removed image rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np

from index_scale import (DEFAULT_GENERATOR, GENERATORS, Draws, calibrated_noise, open_built, source_vectors, synthetic,
                         timed_adds, timed_removes)
from snapshop.settings import load_settings

COUNT = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("bench/out/fm70k-vectors"))
    parser.add_argument("--generator", choices=GENERATORS, default=DEFAULT_GENERATOR,
                        help="how the synthetic embeddings are drawn (index_scale.Draws)")
    parser.add_argument("--index", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    catalog, real_features, query_features, rotation = source_vectors(args.source)
    settings = load_settings({})
    store, index = open_built(args.index, catalog["codes"].shape[1] * 8, real_features.shape[1])
    report: dict = {"index": str(args.index), "images": len(index), "seed": args.seed}

    items = [item for item in store.item_ids() if item.startswith("v")]
    gone = list(np.random.default_rng(args.seed).choice(items, COUNT, replace=False))
    victims = store.vectors(store.images_of(gone))
    probes = np.concatenate([query_features, victims.features[:500].astype(np.float32)])
    report["remove_10k"] = timed_removes(store, index, rotation, gone, victims.image_ids, probes, settings.shortlist)
    draws = Draws(real_features, args.generator)
    added, added_codes, added_parts = synthetic(draws, catalog["categories"], COUNT, calibrated_noise(draws), rotation,
                                                seed=1000 + args.seed)
    report["add_10k"] = timed_adds(store, index, rotation, [f"fresh{args.seed}-{i}" for i in range(COUNT)],
                                   added_parts, added, added_codes)
    print(json.dumps(report, indent=2))
    (args.index.parent / f"updates_at_scale-{args.seed}.json").write_text(json.dumps(report, indent=2))
    index.close()
    store.close()


if __name__ == "__main__":
    main()
