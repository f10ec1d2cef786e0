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
  photo (curation on, identical items not folded, so both can be seen);
* for queries whose product has a colour variant: how often the variant is suggested on the
  product's card ("same product, other colour").
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets.planted import DUPLICATE_KINDS, LOW_QUALITY_KINDS, build_planted_catalog
from snapshop.datasets.photos import read_jsonl
from snapshop.search.engine import Engine, threshold_sweep
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


def no_match_check(records: list[dict], threshold: float | None) -> dict:
    """The stored no-match threshold against the SIMULATED queries, used by the engine or not:
    right first results kept close, and each query's first result of another product (what it
    would show were its product not indexed) marked not close; and the threshold best for them."""
    right = np.array([r["results"][0]["score"] for r in records if r["rank"] == 1])
    firsts = (next((h["score"] for h in r["results"] if r["item_id"] not in {h["item_id"], *h["also"]}), None)
              for r in records)
    strangers = np.array([score for score in firsts if score is not None])

    def judged(t: float, close: float, none: float) -> dict:
        return {"threshold": round(float(t), 4), "close_when_right": round(float(close), 4),
                "none_when_absent": round(float(none), 4), "balanced_accuracy": round(float(close + none) / 2, 4)}

    candidates, close, none = threshold_sweep(right, strangers)
    best = int(np.argmax(close + none))
    stored = (judged(threshold, (right >= threshold).mean(), (strangers < threshold).mean())
              if threshold is not None else None)
    return {"right_first": len(right), "strangers": len(strangers), "at_stored": stored,
            "best_for_these_queries": judged(candidates[best], close[best], none[best])}


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


def duplicate_cards(index: Path, queries: Path, rows: dict[str, dict], overrides: dict) -> dict:
    """Top-10 cards showing a product already shown above them: any (low-quality twins included),
    and those where both cards are the original or a planted copy (the planted duplicates)."""
    engine = Engine.open(index, load_settings({"index": str(index), **overrides}))
    repeats = copies = cards = 0
    for query in read_queries(queries):
        first: dict[str, str] = {}  # product -> the item of its first card
        for hit in engine.search([Query("q", query["path"])], k=10)[0].results:
            product = rows[hit.item_id]["product"]
            cards += 1
            if product in first:
                repeats += 1
                copies += all(rows[item].get("planted") not in LOW_QUALITY_KINDS for item in (hit.item_id, first[product]))
            else:
                first[product] = hit.item_id
    engine.close()
    return {"repeated_product_cards": round(repeats / cards, 4), "planted_copy_cards": round(copies / cards, 4)}


def variant_suggestions(index: Path, queries: Path, rows: dict[str, dict]) -> dict:
    """For queries whose product has a colour variant: is it suggested on the product's card?"""
    variant_of = {item[: -len("_var")]: item for item, row in rows.items() if row.get("planted") == "variant"}
    engine = Engine.open(index, load_settings({"index": str(index)}))
    suggested = shown = 0
    for query in read_queries(queries):
        if query["item_id"] not in variant_of:
            continue
        hits = engine.search([Query("q", query["path"])], k=10)[0].results
        card = next((hit for hit in hits if query["item_id"] in {hit.item_id, *hit.also}), None)
        if card is not None:
            shown += 1
            suggested += variant_of[query["item_id"]] in card.other_colours
    engine.close()
    return {"queries_with_card_in_top_10": shown, "variant_suggested": round(suggested / max(1, shown), 4)}


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
        outcome = evaluate(engine, queries, baseline=False, progress=True, details=True)
        engine.close()
        metrics = outcome["pipeline"]
        if not overrides:
            report["no_match_held_out"] = no_match_check(outcome["queries_detail"], report["no_match"]["threshold"])
        report[name] = {key: metrics[key] for key in ("recall@1", "recall@10", "duplicate_rate", "no_match_rate",
                                                      "close_when_right", "none_when_absent")}
        report[name]["ms_per_query"] = metrics["ms_per_query"]
        report[name]["top_10"] = duplicate_cards(index, queries, rows, overrides)
    report["twins"] = twin_order(index, queries, rows)
    report["other_colours"] = variant_suggestions(index, queries, rows)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
