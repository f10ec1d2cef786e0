"""Where the milvus backend should keep the float features it re-ranks with: measured.

Milvus 2.3 allows one vector field per collection, so features in Milvus mean a second
collection (image_id primary key, FLOAT_VECTOR) read by id after the Hamming search.
This compares, for the shortlist of one query (R ids), that Milvus query against the
local SQLite store's lookup (`MetadataStore.vectors`), on N random images.

Starts its own Milvus server (the `milvus` package, cluster extra) on 127.0.0.1 in a
temporary folder:  python bench/milvus_rerank.py [--images 20000] [--shortlist 800]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--shortlist", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from milvus import MilvusServer, MilvusServerConfig
    from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections

    from snapshop.index.store import MetadataStore, NewImage, NewItem

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.images, 256)).astype(np.float16)
    codes = rng.integers(0, 256, (args.images, 32), dtype=np.uint8)
    folder = Path(tempfile.mkdtemp(prefix="snapshop-rerank-"))
    store = MetadataStore(folder / "meta.sqlite")
    with store.transaction():
        ids = [image_ids[0] for image_ids in store.upsert_items(
            [NewItem(f"i{row}", "c", {}, [NewImage(f"i{row}", "x.jpg", [0, 0, 1, 1], features[row])])
             for row in range(args.images)])]
        store.set_vectors(np.array(ids), features, codes)

    server = MilvusServer(MilvusServerConfig())
    server.set_base_dir(str(folder / "milvus"))
    server.start()
    try:
        connections.connect(uri=f"http://127.0.0.1:{server.listen_port}")
        schema = CollectionSchema([FieldSchema("image_id", DataType.INT64, is_primary=True),
                                   FieldSchema("feature", DataType.FLOAT_VECTOR, dim=256)])
        collection = Collection("features", schema)
        for start in range(0, args.images, 5000):
            collection.insert([ids[start:start + 5000], features[start:start + 5000].astype(np.float32).tolist()])
        collection.create_index("feature", {"index_type": "FLAT", "metric_type": "IP", "params": {}})
        collection.load()
        collection.flush()

        def milvus_lookup(wanted: list[int]) -> np.ndarray:
            rows = collection.query(f"image_id in {wanted}", output_fields=["feature"], consistency_level="Bounded")
            return np.array([row["feature"] for row in rows], np.float32)

        def store_lookup(wanted: list[int]) -> np.ndarray:
            return store.vectors(wanted).features.astype(np.float32)

        for name, lookup in (("sqlite store", store_lookup), ("milvus query", milvus_lookup)):
            times = []
            for _ in range(args.repeats):
                wanted = sorted(rng.choice(ids, args.shortlist, replace=False).tolist())
                start = time.perf_counter()
                found = lookup(wanted)
                times.append((time.perf_counter() - start) * 1000)
                assert found.shape == (args.shortlist, 256)
            print(f"{name}: {statistics.median(times):.1f} ms median, {min(times):.1f} ms best "
                  f"({args.shortlist} features of {args.images} images, {args.repeats} runs)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
