"""A writer for the crash test: deterministic batches of adds, updates and removes.

    python crash_writer.py INDEX CATALOG_MANIFEST FIRST_BATCH LAST_BATCH

Prints `begin {...}` before each batch and `ack {...}` once `add` / `remove` returned
(the write is acknowledged). Small compaction thresholds make compactions frequent.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from snapshop.catalog.manifest import read_catalog
from snapshop.search.engine import Engine
from snapshop.settings import load_settings


def batch_plan(number: int, images: list[dict]) -> dict:
    rng = random.Random(number)
    kind = rng.choice(["add", "add", "update", "remove"])
    if kind == "remove":
        return {"kind": kind, "ids": [f"n{rng.randrange(number + 1)}_0" for _ in range(2)] + [rng.choice(images)["item_id"]]}
    ids = [f"n{number}_{j}" for j in range(rng.randint(1, 3))] if kind == "add" else \
        [f"n{rng.randrange(number + 1)}_0", rng.choice(images)["item_id"]]
    return {"kind": kind, "ids": ids, "rows": [{**rng.choice(images), "item_id": item_id} for item_id in ids]}


def main() -> None:
    index, catalog, first, last = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    images = [json.loads(line) for line in catalog.read_text().splitlines()]
    for row in images:
        row["image"] = str(catalog.parent / row["image"])
    settings = load_settings({"index": str(index), "localize": False, "compact_delta": 4, "compact_tombstones": 3},
                             environ={})
    engine = Engine.open_or_create(index, settings)
    for number in range(first, last):
        plan = batch_plan(number, images)
        print("begin", json.dumps({"batch": number, "ids": plan["ids"]}), flush=True)
        if plan["kind"] == "remove":
            engine.remove(plan["ids"])
            present, absent = [], plan["ids"]
        else:
            manifest = index.parent / f"batch-{number}.jsonl"
            manifest.write_text("".join(json.dumps(row) + "\n" for row in plan["rows"]))
            engine.add(read_catalog(manifest))
            present, absent = plan["ids"], []
        print("ack", json.dumps({"batch": number, "present": present, "absent": absent}), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
