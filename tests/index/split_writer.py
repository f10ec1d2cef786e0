"""A writer for the crash test of k-means lists: batches of random vectors added and removed,
every partition compacted after each, with bases split into lists from 64 images on.

    python split_writer.py FOLDER FIRST_BATCH LAST_BATCH

Prints `begin {...}` before each batch and `ack {...}` once it is committed (acknowledged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from snapshop.index.live import IndexParams, LiveIndex
from snapshop.index.store import MetadataStore, NewImage, NewItem
from snapshop.models.pooling import l2_normalize

PARAMS = IndexParams(bits=64, dim=32, list_size=32, lists_from=64, lists_probed=3)
PER_BATCH = 40
PLANES = np.random.default_rng(100).standard_normal((32, 64)).astype(np.float32)


def batch_plan(number: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Items to add with their features, and items of the batch before to remove."""
    features = l2_normalize(np.random.default_rng(number).standard_normal((PER_BATCH, 32)).astype(np.float32))
    removed = [f"b{number - 1}_{j}" for j in range(0, PER_BATCH, 5)] if number else []
    return [f"b{number}_{j}" for j in range(PER_BATCH)], features, removed


def main() -> None:
    folder, first, last = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store = MetadataStore(folder / "meta.sqlite")
    index = LiveIndex(folder, store, PARAMS, codec="test")
    for number in range(first, last):
        items, features, removed = batch_plan(number)
        print("begin", json.dumps({"batch": number, "ids": items + removed}), flush=True)
        with store.transaction():
            ids = [image_ids[0] for image_ids in store.upsert_items(
                [NewItem(item, "ab"[j % 2], {}, [NewImage(item, f"{item}.jpg", [0, 0, 1, 1], np.zeros(1))])
                 for j, item in enumerate(items)])]
            store.set_vectors(np.array(ids), features, np.packbits(features @ PLANES > 0, axis=1))
            store.delete_items(removed)
        print("ack", json.dumps({"batch": number, "present": items, "absent": removed}), flush=True)
        index.refresh()
        index.compact()
    index.close()
    store.close()


if __name__ == "__main__":
    main()
