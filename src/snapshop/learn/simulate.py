"""Simulated shoppers: a click log from labelled (simulated) shopper photos, for training.

Each photo is searched with the index's current model; a simulated shopper then looks
down the results with position bias (rank r is seen with probability 1 / (r + 1)^eta,
Joachims et al.'s examination model), clicks the true product when seen, stays long on
its page and sometimes buys it. A `noise` share of the clicks go to a similar wrong item
instead (the best-ranked wrong item seen), whose page the shopper leaves quickly. Shoppers
who do not see the true product, and some who leave at once, do not click. The log is DESIGN.md's format with `"simulated": true` on every line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from snapshop.search.engine import Engine
from snapshop.search.evaluate import read_queries
from snapshop.search.results import Query

BATCH = 32
START = datetime(2026, 11, 24, tzinfo=timezone.utc)


@dataclass(frozen=True)
class ShopperModel:
    """How simulated shoppers behave."""

    shown: int = 20  # results on the page
    eta: float = 0.5  # position bias: rank r (0-based) is seen with probability 1 / (r + 1)^eta
    click_true: float = 0.9  # a shopper who sees the true product clicks it
    noise: float = 0.05  # a clicking shopper picks a similar wrong item instead
    leave: float = 0.1  # a shopper leaves without looking
    buy: float = 0.15  # a shopper who clicked the true product buys it
    true_dwell_s: float = 25.0  # median seconds on the page of the true product
    wrong_dwell_s: float = 4.0  # median seconds on a wrong item's page


@dataclass
class SimulationReport:
    impressions: int = 0
    with_click: int = 0
    clicks: int = 0
    wrong_clicks: int = 0
    errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "wrong_click_share": round(self.wrong_clicks / max(1, self.clicks), 4),
                "simulated": True}


def simulate_clicks(engine: Engine, queries_path: Path, out_path: Path, *, model: ShopperModel = ShopperModel(),
                    seed: int = 0, limit: int | None = None, progress: bool = False) -> SimulationReport:
    """Search every labelled photo of `queries_path` and write one simulated impression per photo."""
    queries = read_queries(queries_path, limit)
    rng = np.random.default_rng(seed)
    report = SimulationReport()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_path.with_suffix(out_path.suffix + ".tmp")
    with scratch.open("w", encoding="utf-8") as log:
        for start in tqdm(range(0, len(queries), BATCH), desc="simulated shoppers", unit="batch",
                          disable=not progress):
            batch = queries[start : start + BATCH]
            results = engine.search([Query(str(q["path"]), q["path"]) for q in batch], k=model.shown)
            for number, (query, result) in enumerate(zip(batch, results), start=start):
                if result.error:
                    report.errors += 1
                    continue
                record = _shopper(query["item_id"], result.results, model, rng)
                record = {"ts": (START + timedelta(seconds=number)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "query_image": _relative(Path(query["path"]), out_path.parent),
                          "box": result.boxes[0].as_list() if result.boxes else None, **record, "simulated": True}
                log.write(json.dumps(record) + "\n")
                report.impressions += 1
                report.with_click += bool(record["clicked"])
                report.clicks += len(record["clicked"])
                report.wrong_clicks += sum(not _is_true(item, query["item_id"], result.results) for item in record["clicked"])
        log.flush()
        os.fsync(log.fileno())
    os.replace(scratch, out_path)
    return report


def _shopper(true_item: str, hits: list, model: ShopperModel, rng: np.random.Generator) -> dict[str, Any]:
    """One simulated shopper's clicks on a result page."""
    shown = [hit.item_id for hit in hits]
    record: dict[str, Any] = {"shown": shown, "clicked": [], "dwell_ms": {}, "purchased": []}
    if not shown or rng.random() < model.leave:
        return record
    seen = [rank for rank in range(len(shown)) if rng.random() < 1.0 / (rank + 1) ** model.eta]
    true_seen = [rank for rank in seen if true_item == shown[rank] or true_item in hits[rank].also]
    if not true_seen or rng.random() >= model.click_true:
        return record
    wrong_seen = [rank for rank in seen if rank not in true_seen]
    if wrong_seen and rng.random() < model.noise:
        wrong = shown[wrong_seen[0]]
        record["clicked"].append(wrong)
        record["dwell_ms"][wrong] = round(float(rng.lognormal(np.log(model.wrong_dwell_s), 0.8)) * 1000)
    else:
        item = shown[true_seen[0]]
        record["clicked"].append(item)
        record["dwell_ms"][item] = round(float(rng.lognormal(np.log(model.true_dwell_s), 0.8)) * 1000)
        if rng.random() < model.buy:
            record["purchased"].append(item)
    return record


def _is_true(item: str, true_item: str, hits: list) -> bool:
    return item == true_item or any(hit.item_id == item and true_item in hit.also for hit in hits)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to the log's folder (as the web page writes it), else absolute."""
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:
        return str(path.resolve())
