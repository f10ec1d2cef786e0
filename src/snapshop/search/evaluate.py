"""`snapshop eval`: retrieval, category and localization metrics, with a baseline in the same run.

The dataset is JSON Lines, one query per line: `image` (relative to the file's folder),
the true `item_id`, and optionally `category` and `box` (x0, y0, x1, y1). The baseline is
the plain approach the pipeline must beat: the pretrained GAP feature of the whole photo,
exact float cosine over every catalog image, no category, no localization.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from snapshop.errors import DatasetError, SnapshopError
from snapshop.models.localize import box_iou
from snapshop.models.pooling import pool
from snapshop.search.engine import Engine
from snapshop.search.results import Query

CUTOFFS = (1, 5, 10)
BATCH = 32


def read_queries(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Labelled queries with image paths resolved against the file's folder."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the query set ({exc.strerror})") from None
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, item_id = row["image"], str(row["item_id"])
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{path}:{number}: each line needs a JSON object with image and item_id") from None
        queries.append({**row, "item_id": item_id, "path": Path(path).parent / image})
    if not queries:
        raise DatasetError(f"{path}: no queries")
    return queries[:limit] if limit else queries


def evaluate(engine: Engine, dataset: Path, *, limit: int | None = None, baseline: bool = True,
             progress: bool = False) -> dict[str, Any]:
    """Run the pipeline (and the baseline) on every query; return both sets of metrics."""
    queries = read_queries(dataset, limit)
    stats = engine.stats()
    outcome: dict[str, Any] = {
        "dataset": str(dataset),
        "queries": len(queries),
        "index": {key: stats[key] for key in ("items", "images", "model", "pooling", "dim", "bits", "projection")},
        "pipeline": _evaluate_pipeline(engine, queries, progress),
    }
    if baseline:
        outcome["baseline"] = _evaluate_baseline(engine, queries, progress)
    return outcome


def _evaluate_pipeline(engine: Engine, queries: list[dict], progress: bool) -> dict[str, Any]:
    ranked: list[list[set[str]]] = []
    duplicate_rates: list[float] = []
    no_match: list[bool] = []
    category_hits: list[bool] = []
    ious: list[float] = []
    stage_ms: dict[str, float] = defaultdict(float)
    errors = 0
    for start in tqdm(range(0, len(queries), BATCH), desc="pipeline", unit="batch", disable=not progress):
        batch = queries[start : start + BATCH]
        results = engine.search([Query(str(q["path"]), q["path"]) for q in batch], k=max(CUTOFFS))
        for query, result in zip(batch, results):
            if result.error:
                errors += 1
                ranked.append([])
                continue
            ranked.append([{hit.item_id, *hit.also} for hit in result.results])
            duplicate_rates.append(_duplicate_rate(result.results[: max(CUTOFFS)]))
            if result.match is not None:
                no_match.append(result.match == "none")
            if query.get("category") is not None and result.category is not None:
                category_hits.append(result.category.name == query["category"])
            if query.get("box") and result.boxes:
                ious.append(box_iou(result.boxes[0].as_list(), query["box"]))
            for stage, ms in result.timing_ms.items():
                stage_ms[stage] += ms
    metrics = _retrieval_metrics(ranked, [q["item_id"] for q in queries])
    valid = max(1, len(queries) - errors)
    metrics.update(
        category_accuracy=_mean(category_hits),
        box_iou=_mean(ious),
        duplicate_rate=_mean(duplicate_rates),
        no_match_rate=_mean(no_match),
        errors=errors,
        ms_per_query={stage: round(ms / valid, 2) for stage, ms in stage_ms.items()},
    )
    return metrics


def _evaluate_baseline(engine: Engine, queries: list[dict], progress: bool) -> dict[str, Any]:
    """Whole-photo GAP descriptors, exact float cosine against every catalog image."""
    backbone = engine.backbone
    rows = list(engine.store.image_rows())
    catalog = []
    for start in tqdm(range(0, len(rows), BATCH), desc="baseline catalog", unit="batch", disable=not progress):
        images = [engine.load(source) for _, _, source in rows[start : start + BATCH]]
        catalog.append(pool(backbone.feature_maps(images), "gap"))
    catalog_vectors = np.concatenate(catalog)
    item_of_row = np.array([item_id for _, item_id, _ in rows])
    ranked: list[list[set[str]]] = []
    elapsed = 0.0
    for start in tqdm(range(0, len(queries), BATCH), desc="baseline queries", unit="batch", disable=not progress):
        batch = queries[start : start + BATCH]
        began = time.perf_counter()
        loaded = []
        for query in batch:
            try:
                loaded.append(engine.load(query["path"]))
            except SnapshopError:
                loaded.append(None)
        good = [image for image in loaded if image is not None]
        vectors = iter(pool(backbone.feature_maps(good), "gap")) if good else iter(())
        for image in loaded:
            if image is None:
                ranked.append([])
                continue
            order = np.argsort(-(catalog_vectors @ next(vectors)))
            ranked.append([{item} for item in list(dict.fromkeys(item_of_row[order[: 20 * max(CUTOFFS)]]))[: max(CUTOFFS)]])
        elapsed += time.perf_counter() - began
    metrics = _retrieval_metrics(ranked, [q["item_id"] for q in queries])
    metrics.update(category_accuracy=None, box_iou=None, ms_per_query={"total": round(1000 * elapsed / len(queries), 2)})
    return metrics


def _retrieval_metrics(ranked: list[list[set[str]]], truth: list[str]) -> dict[str, Any]:
    """recall@K (a card holding the true item in the top K) and mAP@10 (one relevant item: 1 / rank).
    A card holds its item and the identical items folded into it."""
    ranks = [next((rank for rank, card in enumerate(cards, start=1) if item in card), None)
             for cards, item in zip(ranked, truth)]
    metrics: dict[str, Any] = {f"recall@{k}": _mean([r is not None and r <= k for r in ranks]) for k in CUTOFFS}
    metrics["mAP@10"] = _mean([1.0 / r if r is not None and r <= 10 else 0.0 for r in ranks])
    return metrics


def _duplicate_rate(hits: list) -> float:
    """Share of the results that show the same product as a result above them. The product is the
    catalog's `product` field where it has one (planted test catalogs), else the product group."""
    products = [hit.fields.get("product", hit.group or hit.item_id) for hit in hits]
    return sum(product in products[:rank] for rank, product in enumerate(products)) / max(1, len(products))


def _mean(values: list) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def format_table(outcome: dict[str, Any]) -> str:
    """The pipeline and the baseline side by side, as plain text."""
    pipeline, baseline = outcome["pipeline"], outcome.get("baseline", {})
    names = [f"recall@{k}" for k in CUTOFFS] + ["mAP@10", "category_accuracy", "box_iou", "duplicate_rate",
                                                 "no_match_rate"]
    lines = [f"{outcome['queries']} queries from {outcome['dataset']} against {outcome['index']['items']} items",
             f"{'metric':<20}{'pipeline':>10}{'baseline':>10}"]
    for name in names:
        lines.append(f"{name:<20}{_cell(pipeline.get(name)):>10}{_cell(baseline.get(name)):>10}")
    stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in pipeline["ms_per_query"].items())
    lines.append(f"ms/query pipeline: {stages}")
    if baseline:
        lines.append(f"ms/query baseline: total {baseline['ms_per_query']['total']:.1f}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_report(outcome: dict[str, Any], folder: Path) -> None:
    """report.json and report.md in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(outcome, indent=2))
    (folder / "report.md").write_text(f"# snapshop evaluation\n\n```\n{format_table(outcome)}\n```\n")
