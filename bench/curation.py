"""Result quality (issue 7) on a Fashion-MNIST catalog with planted duplicates and poor photos.

    .venv/bin/python bench/curation.py [--out bench/out/curation] [--items 1000] [--queries 300]

Builds (once) a catalog of `--items` Fashion-MNIST products plus planted rows (15% duplicates:
re-encoded, resized, cropped, re-balanced copies; 10% low-quality twins: blurred, dark, tiny,
text overlay, cluttered backdrop; 5% colour variants, which are other products), indexes it, and
with SIMULATED shopper photos of the original products as queries reports:

* identical-item detection: precision and recall over the planted duplicate pairs (a predicted pair
  is right when both items show one product);
* `snapshop eval` with curation on and off: recall@K (a card counts when it holds the true product
  among its folded items), duplicate cards in the top 10;
* for queries whose product has a low-quality twin: how often the twin ranks below its clean
  photo (curation on, identical items not folded, so both can be seen).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets.planted import DUPLICATE_KINDS, LOW_QUALITY_KINDS, build_planted_catalog
from snapshop.datasets.photos import read_jsonl
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate, read_queries
from snapshop.search.results import Query
from snapshop.settings import load_settings

OFF = {"collapse_duplicates": False, "quality_weight": 0.0, "diversity": 0.0, "colour_weight": 0.0}


def detection(engine: Engine, rows: dict[str, dict]) -> dict:
    predicted = {pair for items in engine.store.duplicate_groups().values()
                 for pair in itertools.combinations(sorted(items), 2)}
    planted = {tuple(sorted((item, row["product"]))) for item, row in rows.items()
               if row.get("planted") in DUPLICATE_KINDS}
    twins = {tuple(sorted((item, row["product"]))) for item, row in rows.items()
             if row.get("planted") in LOW_QUALITY_KINDS}
    right = [pair for pair in predicted if rows[pair[0]]["product"] == rows[pair[1]]["product"]]
    return {"predicted_pairs": len(predicted), "precision": round(len(right) / max(1, len(predicted)), 4),
            "recall": round(len(predicted & planted) / len(planted), 4), "planted_pairs": len(planted),
            "low_quality_twins_grouped": f"{len(predicted & twins)}/{len(twins)}",
            "missed": sorted(rows[a].get("planted") or rows[b].get("planted") for a, b in planted - predicted)}


def twin_order(index: Path, queries: Path, rows: dict[str, dict]) -> dict:
    """Clean photo above its low-quality twin, over queries where both are in the top 50."""
    twin_of = {row["product"]: item for item, row in rows.items() if row.get("planted") in LOW_QUALITY_KINDS}
    outcome = {}
    for name, overrides in (("quality on", {"collapse_duplicates": False}), ("quality off", {**OFF})):
        engine = Engine.open(index, load_settings({"index": str(index), **overrides}))
        above = seen = 0
        for query in read_queries(queries):
            if query["item_id"] not in twin_of:
                continue
            ids = [hit.item_id for hit in engine.search([Query("q", query["path"])], k=50)[0].results]
            if query["item_id"] in ids and twin_of[query["item_id"]] in ids:
                seen += 1
                above += ids.index(query["item_id"]) < ids.index(twin_of[query["item_id"]])
        engine.close()
        outcome[name] = {"queries_with_both": seen, "clean_above_twin": round(above / max(1, seen), 4)}
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/curation"))
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    manifest = args.out / "catalog" / "manifest.jsonl"
    queries = args.out / "catalog" / "queries" / "queries.jsonl"
    if not queries.exists():
        manifest, queries = build_planted_catalog(args.out / "catalog", n_items=args.items, n_queries=args.queries)
    rows = {row["item_id"]: row for row in read_jsonl(manifest)}
    index = args.out / "index"
    report: dict = {"catalog_rows": len(rows), "queries": args.queries}
    if not index.exists():
        engine = Engine.open_or_create(index, load_settings({"index": str(index)}))
        began = time.perf_counter()
        engine.add(read_catalog(manifest), progress=True)
        report["add_s"] = round(time.perf_counter() - began, 1)
        engine.close()
    engine = Engine.open(index, load_settings({"index": str(index)}))
    report["detection"] = detection(engine, rows)
    report["no_match"] = engine.stats()["no_match"]
    engine.close()
    for name, overrides in (("curation on", {}), ("curation off", OFF)):
        engine = Engine.open(index, load_settings({"index": str(index), **overrides}))
        metrics = evaluate(engine, queries, baseline=False, progress=True)["pipeline"]
        engine.close()
        report[name] = {key: metrics[key] for key in ("recall@1", "recall@10", "duplicate_rate", "no_match_rate")}
        report[name]["ms_per_query"] = metrics["ms_per_query"]
    report["twins"] = twin_order(index, queries, rows)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
