"""Make the shipped `fashion-clicks` head from SIMULATED clicks over Fashion-MNIST *training* images.

    .venv/bin/python bench/fashion_clicks.py     # ~25 min on 2 cores; writes src/snapshop/models/weights/fashion-clicks.npz
    .venv/bin/python bench/fashion_clicks.py --loss triplet --refine 0 --weights OTHER.npz   # the recipe before 2026-12-05

A catalog of training-split items (never in the demo catalog, which is test-split) is
indexed with the pretrained EfficientNet-Lite0; SIMULATED shopper photos of its items (on
half of the background photos) are searched, SIMULATED shoppers click (5% of clicks on a
wrong item), and the head is trained on the mined triplets, as `snapshop train` does (its loss
and cell refiner by default). The catalog, photos, index and log are kept in --out, so a
second run with another recipe trains on the same clicks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_shopper_queries, list_background_photos
from snapshop.learn.clicklog import read_click_log
from snapshop.learn.loop import catalog_images, starting_point
from snapshop.learn.mining import mine_triplets
from snapshop.learn.model import save_head
from snapshop.learn.simulate import ShopperModel, simulate_clicks
from snapshop.learn.train import TrainConfig, train_head
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

WEIGHTS = Path("src/snapshop/models/weights/fashion-clicks.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/fashion-clicks"))
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=4000)
    parser.add_argument("--loss", choices=("npair", "triplet"), default=TrainConfig.loss)
    parser.add_argument("--refine", type=int, default=TrainConfig.refine, help="hidden units of the cell refiner (0: linear)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    out: Path = args.out
    if not (out / "catalog" / "manifest.jsonl").is_file():
        build_fashion_catalog(out / "catalog", n_items=args.items, split="train", seed=5)
    if not (out / "photos" / "queries.jsonl").is_file():
        build_shopper_queries(out / "catalog", out / "photos", n_queries=args.photos, seed=303,
                              backgrounds=list_background_photos()[0::2])
    settings = load_settings({"index": out / "index"})
    engine = Engine.open_or_create(out / "index", settings, model="efficientnet-lite0")
    if not engine.store.counts()["items"]:
        engine.add(read_catalog(out / "catalog" / "manifest.jsonl"), progress=True)
    log_path = out / "clicks.jsonl"
    if not log_path.is_file():
        report = simulate_clicks(engine, out / "photos" / "queries.jsonl", log_path, model=ShopperModel(noise=0.05),
                                 seed=11, progress=True)
        print("SIMULATED log:", json.dumps(report.to_json()))
    clicks = read_click_log(log_path, engine.store.existing_items)
    initial, current = starting_point(engine)
    result = train_head(initial, current, engine.backbone, engine.load, mine_triplets(clicks.impressions),
                        catalog_images(engine), out / "training",
                        TrainConfig(loss=args.loss, refine=args.refine), progress=True)
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    save_head(result.head, args.weights)
    print(json.dumps(result.summary(), indent=2))
    print(f"wrote {args.weights}")


if __name__ == "__main__":
    main()
