"""Retrieval quality of the pipeline against the baseline, and the choices behind the defaults.

    .venv/bin/python bench/quality.py [--out bench/out/quality] [--items 2000] [--queries 500]

On a Fashion-MNIST catalog (test split) with SIMULATED shopper photos as queries, and on
the real multi-view photos, it runs `snapshop eval` (pipeline and baseline side by side)
for each pooling (GAP, GeM, R-MAC) and with localization on and off, and prints one
markdown table per data set.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_real_multiview, build_shopper_queries
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate
from snapshop.settings import load_settings

VARIANTS = (
    ("gem", True),
    ("gap", True),
    ("rmac", True),
    ("gem", False),
)
COLUMNS = ("recall@1", "recall@5", "recall@10", "mAP@10", "category_accuracy", "box_iou")


def run_variant(catalog: Path, queries: Path, index: Path, pooling: str, localize: bool, baseline: bool) -> dict:
    shutil.rmtree(index, ignore_errors=True)
    settings = load_settings({"index": str(index), "pooling": pooling, "localize": localize})
    engine = Engine.open_or_create(settings.index, settings)
    engine.add(read_catalog(catalog), progress=True)
    return evaluate(engine, queries, baseline=baseline, progress=True)


def table(title: str, rows: list[tuple[str, dict]]) -> str:
    lines = [f"### {title}", "", "| variant | " + " | ".join(COLUMNS) + " | ms/query |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, metrics in rows:
        cells = ["-" if metrics.get(c) is None else f"{metrics[c]:.3f}" for c in COLUMNS]
        ms = sum(metrics["ms_per_query"].values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    catalog = build_fashion_catalog(args.out / "catalog", n_items=args.items)
    queries = build_shopper_queries(args.out / "catalog", args.out / "queries", n_queries=args.queries)
    real_catalog, real_queries = build_real_multiview(args.out / "real")

    report: dict[str, dict] = {}
    for data, (cat, qs) in {"simulated": (catalog, queries), "real": (real_catalog, real_queries)}.items():
        rows = []
        for pooling, localize in VARIANTS:
            name = f"{pooling}{'' if localize else ', no localization'}"
            outcome = run_variant(cat, qs, args.out / f"index-{data}-{pooling}-{int(localize)}", pooling, localize,
                                  baseline=not rows)
            if not rows:
                rows.append(("baseline: whole-photo GAP, exact float", outcome["baseline"]))
            rows.append((f"pipeline: {name}", outcome["pipeline"]))
            report[f"{data}/{name}"] = outcome
        print(table(f"{data} queries ({outcome['queries']} against {outcome['index']['items']} items)", rows))
        print()
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
