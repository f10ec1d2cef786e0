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


@dataclass(frozen=True)
class ResultPage:
    """What a search showed for one labelled photo."""

    query_image: Path
    true_item: str
    box: list[int] | None
    hits: list[tuple[str, list[str]]]  # (item_id, identical items folded into its card), best first


def search_pages(engine: Engine, queries_path: Path, *, shown: int = 20, limit: int | None = None,
                 progress: bool = False) -> tuple[list[ResultPage], int]:
    """Search every labelled photo with the current model: its result page, and how many failed."""
    queries = read_queries(queries_path, limit)
    pages, errors = [], 0
    for start in tqdm(range(0, len(queries), BATCH), desc="searching", unit="batch", disable=not progress):
        batch = queries[start : start + BATCH]
        for query, result in zip(batch, engine.search([Query(str(q["path"]), q["path"]) for q in batch], k=shown)):
            if result.error:
                errors += 1
                continue
            pages.append(ResultPage(Path(query["path"]), query["item_id"],
                                    result.boxes[0].as_list() if result.boxes else None,
                                    [(hit.item_id, list(hit.also)) for hit in result.results]))
    return pages, errors


def simulate_clicks(engine: Engine, queries_path: Path, out_path: Path, *, model: ShopperModel = ShopperModel(),
                    seed: int = 0, limit: int | None = None, progress: bool = False) -> SimulationReport:
    """Search every labelled photo of `queries_path` and write one simulated impression per photo."""
    pages, errors = search_pages(engine, queries_path, shown=model.shown, limit=limit, progress=progress)
    report = write_shoppers(pages, out_path, model=model, seed=seed)
    report.errors = errors
    return report


def write_shoppers(pages: list[ResultPage], out_path: Path, *, model: ShopperModel = ShopperModel(),
                   seed: int = 0) -> SimulationReport:
    """Simulated shoppers on result pages, written as a click log (atomically)."""
    rng = np.random.default_rng(seed)
    report = SimulationReport()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_path.with_suffix(out_path.suffix + ".tmp")
    with scratch.open("w", encoding="utf-8") as log:
        for number, page in enumerate(pages):
            record = {"ts": (START + timedelta(seconds=number)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "query_image": _relative(page.query_image, out_path.parent), "box": page.box,
                      **_shopper(page, model, rng), "simulated": True}
            log.write(json.dumps(record) + "\n")
            report.impressions += 1
            report.with_click += bool(record["clicked"])
            report.clicks += len(record["clicked"])
            report.wrong_clicks += sum(not _is_true(item, page) for item in record["clicked"])
        log.flush()
        os.fsync(log.fileno())
    os.replace(scratch, out_path)
    return report


def _shopper(page: ResultPage, model: ShopperModel, rng: np.random.Generator) -> dict[str, Any]:
    """One simulated shopper's clicks on a result page."""
    shown = [item for item, _ in page.hits]
    record: dict[str, Any] = {"shown": shown, "clicked": [], "dwell_ms": {}, "purchased": []}
    if not shown or rng.random() < model.leave:
        return record
    seen = [rank for rank in range(len(shown)) if rng.random() < 1.0 / (rank + 1) ** model.eta]
    true_seen = [rank for rank in seen if _is_true(shown[rank], page)]
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


def _is_true(item: str, page: ResultPage) -> bool:
    """The true product, or a card that folds it in (an identical item of another seller)."""
    return item == page.true_item or any(shown == item and page.true_item in also for shown, also in page.hits)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to the log's folder (as the web page writes it), else absolute."""
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:
        return str(path.resolve())
