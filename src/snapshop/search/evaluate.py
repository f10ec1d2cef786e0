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
from snapshop.search.results import Query, SearchResult

CUTOFFS = (1, 5, 10)
BATCH = 32
DETAIL = "queries_detail"


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
             progress: bool = False, details: bool = False) -> dict[str, Any]:
    """Run the pipeline (and the baseline) on every query; return both sets of metrics.

    `details` adds `queries_detail`, one record per query (truth, prediction, top results) for the HTML report.
    """
    queries = read_queries(dataset, limit)
    stats = engine.stats()
    pipeline, records = _evaluate_pipeline(engine, queries, progress)
    outcome: dict[str, Any] = {
        "dataset": str(dataset),
        "queries": len(queries),
        "index": {key: stats[key] for key in ("items", "images", "model", "pooling", "dim", "bits", "projection")},
        "pipeline": pipeline,
    }
    if baseline:
        outcome["baseline"] = _evaluate_baseline(engine, queries, progress)
    if details:
        outcome[DETAIL] = records
    return outcome


def summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome without its per-query records: what report.json and `--json` hold."""
    return {key: value for key, value in outcome.items() if key != DETAIL}


def _evaluate_pipeline(engine: Engine, queries: list[dict], progress: bool) -> tuple[dict[str, Any], list[dict]]:
    """The pipeline's metrics, and one record per query."""
    ranks: list[int | None] = []
    records: list[dict[str, Any]] = []
    duplicate_rates: list[float] = []
    no_match: list[bool] = []
    close_when_right: list[bool] = []  # a right first result marked a close match
    none_when_absent: list[bool] = []  # the first other product marked not close
    categories: list[tuple[str, str]] = []  # (true, predicted)
    ious: list[float] = []
    stage_ms: dict[str, float] = defaultdict(float)
    errors = 0
    for start in tqdm(range(0, len(queries), BATCH), desc="pipeline", unit="batch", disable=not progress):
        batch = queries[start : start + BATCH]
        results = engine.search([Query(str(q["path"]), q["path"]) for q in batch], k=max(CUTOFFS))
        for query, result in zip(batch, results):
            ranks.append(_rank([{hit.item_id, *hit.also} for hit in result.results], query["item_id"]))
            records.append(_record(query, result, ranks[-1]))
            if result.error:
                errors += 1
                continue
            duplicate_rates.append(_duplicate_rate(result.results[: max(CUTOFFS)]))
            if result.match is not None:
                no_match.append(result.match == "none")
                _judge_no_match(result, query["item_id"], ranks[-1], close_when_right, none_when_absent)
            if query.get("category") is not None and result.category is not None:
                categories.append((str(query["category"]), result.category.name))
            if query.get("box") and result.boxes:
                ious.append(box_iou(result.boxes[0].as_list(), query["box"]))
            for stage, ms in result.timing_ms.items():
                stage_ms[stage] += ms
    metrics = _retrieval_metrics(ranks)
    valid = max(1, len(queries) - errors)
    metrics.update(
        category_accuracy=_mean([true == predicted for true, predicted in categories]),
        box_iou=_mean(ious),
        duplicate_rate=_mean(duplicate_rates),
        no_match_rate=_mean(no_match),
        close_when_right=_mean(close_when_right),
        none_when_absent=_mean(none_when_absent),
        errors=errors,
        ms_per_query={stage: round(ms / valid, 2) for stage, ms in stage_ms.items()},
        per_category=_per_category(ranks, queries),
        confusion=_confusion(categories),
    )
    return metrics, records


def _judge_no_match(result: SearchResult, item_id: str, rank: int | None, close_when_right: list[bool],
                    none_when_absent: list[bool]) -> None:
    """How the no-match marks serve this query: a right first result should be close; the first
    result of another product (what comes first were the true one not indexed) should not."""
    if rank == 1:
        close_when_right.append(bool(result.results[0].close))
    stranger = next((hit for hit in result.results if item_id not in {hit.item_id, *hit.also}), None)
    if stranger is not None:
        none_when_absent.append(not stranger.close)


def _record(query: dict[str, Any], result: SearchResult, rank: int | None) -> dict[str, Any]:
    """What the report's gallery shows of one query: the truth, the prediction, the top results."""
    return {
        "image": str(query["path"]),
        "item_id": query["item_id"],
        "category": query.get("category"),
        "box": query.get("box"),
        "predicted_category": result.category.name if result.category else None,
        "box_found": result.boxes[0].as_list() if result.boxes else None,
        "results": [{"item_id": hit.item_id, "image": hit.image, "score": round(hit.score, 4), "also": hit.also}
                    for hit in result.results],
        "rank": rank,
        "error": result.error,
    }


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
    ranks: list[int | None] = []
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
        for query, image in zip(batch, loaded):
            if image is None:
                ranks.append(None)
                continue
            order = np.argsort(-(catalog_vectors @ next(vectors)))
            items = list(dict.fromkeys(item_of_row[order[: 20 * max(CUTOFFS)]]))[: max(CUTOFFS)]
            ranks.append(_rank([{item} for item in items], query["item_id"]))
        elapsed += time.perf_counter() - began
    metrics = _retrieval_metrics(ranks)
    metrics.update(category_accuracy=None, box_iou=None, ms_per_query={"total": round(1000 * elapsed / len(queries), 2)})
    return metrics


def _rank(cards: list[set[str]], item: str) -> int | None:
    """Position (from 1) of the first card holding `item`; a card holds its item and the identical items folded
    into it."""
    return next((rank for rank, card in enumerate(cards, start=1) if item in card), None)


def _retrieval_metrics(ranks: list[int | None]) -> dict[str, Any]:
    """recall@K (the true item in the top K), for K = 1..10 as `recall_curve`, and mAP@10 (one relevant item:
    1 / rank)."""
    curve = [_recall(ranks, k) for k in range(1, max(CUTOFFS) + 1)]
    metrics: dict[str, Any] = {f"recall@{k}": curve[k - 1] for k in CUTOFFS}
    metrics["mAP@10"] = _mean([1.0 / r if r is not None and r <= 10 else 0.0 for r in ranks])
    metrics["recall_curve"] = curve
    return metrics


def _recall(ranks: list[int | None], k: int) -> float | None:
    return _mean([rank is not None and rank <= k for rank in ranks])


def _per_category(ranks: list[int | None], queries: list[dict]) -> dict[str, dict[str, Any]]:
    """recall@1 and recall@10 over the queries of each true category."""
    by_category: dict[str, list[int | None]] = defaultdict(list)
    for rank, query in zip(ranks, queries):
        if query.get("category") is not None:
            by_category[str(query["category"])].append(rank)
    return {category: {"queries": len(found), "recall@1": _recall(found, 1), "recall@10": _recall(found, 10)}
            for category, found in sorted(by_category.items())}


def _confusion(categories: list[tuple[str, str]]) -> dict[str, Any]:
    """Counts of (true, predicted) category pairs: a row per true class, a column per predicted class."""
    classes = sorted({name for pair in categories for name in pair})
    position = {name: number for number, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for true, predicted in categories:
        counts[position[true]][position[predicted]] += 1
    return {"classes": classes, "counts": counts}


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
                                                 "no_match_rate", "close_when_right", "none_when_absent"]
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


def write_report(runs: list[tuple[str, dict[str, Any]]], folder: Path) -> None:
    """report.json (per model version, without the per-query records) and report.md in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({label: summary(outcome) for label, outcome in runs}, indent=2))
    tables = "\n\n".join(f"## {label}\n\n```\n{format_table(outcome)}\n```" for label, outcome in runs)
    (folder / "report.md").write_text(f"# snapshop evaluation\n\n{tables}\n")
