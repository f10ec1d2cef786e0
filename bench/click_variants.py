"""Training choices compared on the SIMULATED click logs of bench/clicks.py (run that first).

    .venv/bin/python bench/click_variants.py     # ~1 h on 2 cores (the refiner variants train longest)

Each variant trains the head from the pretrained model on one log, as `snapshop train` does
(the box learned from the log's clicks first, the clicked photos boxed again with it); each
is measured on the 1,000 held-out SIMULATED shopper photos (other backgrounds, other seed)
with their true items: recall@1 of exact float search over every catalog image, each photo
cropped to the box that learned objectness finds (as the trained version's searches crop it),
and the mean IoU of the box each head learned inside the crop (mapped to the photo) with the
simulator's true box, next to the found box's.
Variants: a linear head vs the cell refiner (128 or 256 hidden units), triplet vs N-pair loss,
and on the noisy log (20% of clicks on a wrong item) the dwell filter vs every click.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from snapshop.learn.boxes import found_boxes, learn_objectness, relocated
from snapshop.learn.clicklog import read_click_log
from snapshop.learn.loop import catalog_images, starting_point
from snapshop.learn.mining import TrustPolicy, mine_triplets
from snapshop.learn.train import Embedder, MapCache, TrainConfig, train_head
from snapshop.models.encoder import crop_region
from snapshop.models.localize import box_iou
from snapshop.search.engine import Engine
from snapshop.search.evaluate import read_queries
from snapshop.settings import load_settings

VARIANTS = (
    ("clean log, N-pair, linear head", "clean", TrainConfig(refine=0), TrustPolicy()),
    ("clean log, N-pair, refiner 128 (default)", "clean", TrainConfig(), TrustPolicy()),
    ("clean log, N-pair, refiner 256", "clean", TrainConfig(refine=256), TrustPolicy()),
    ("clean log, triplet loss, refiner 128", "clean", TrainConfig(loss="triplet"), TrustPolicy()),
    ("noisy log, dwell filter (default)", "noisy", TrainConfig(), TrustPolicy()),
    ("noisy log, every click", "noisy", TrainConfig(), TrustPolicy(use_all=True)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/clicks"))
    args = parser.parse_args()
    settings = load_settings({"index": args.out / "index"})
    engine = Engine.open(args.out / "index", settings)
    catalog = catalog_images(engine)
    held = read_queries(args.out / "heldout" / "queries.jsonl")
    cache = args.out / "index" / "training" / "maps"
    catalog_maps, kept = MapCache(engine.backbone, cache, "catalog").build(list(zip(catalog.sources, catalog.boxes)),
                                                                          engine.load, progress=True)
    truth = np.array([q["item_id"] for q in held])
    items = np.array(catalog.item_ids)[kept]
    true_boxes = [q["box"] for q in held]
    initial, current = starting_point(engine)
    print(f"\n{'variant':<52}{'triplets':>9}{'log held-out':>13}{'photos held-out':>16}{'box IoU':>9}")
    boxed: dict[tuple[str, TrustPolicy], tuple] = {}
    for name, log_name, config, policy in VARIANTS:
        if (log_name, policy) not in boxed:
            boxed[log_name, policy] = _boxed(engine, catalog, args.out / f"clicks-{log_name}.jsonl", policy, held, cache)
            triplets, held_maps, boxes = boxed[log_name, policy]
            found_iou = np.mean([box_iou(found, true) for found, true in zip(boxes, true_boxes)])
            clicks = "every click of the " if policy.use_all else ""
            print(f"{'pretrained, box from ' + clicks + 'the ' + log_name + ' log':<52}{'':>9}{'':>13}"
                  f"{_recall(current, held_maps, catalog_maps, truth, items):>16.3f}{found_iou:>9.3f}", flush=True)
        triplets, held_maps, boxes = boxed[log_name, policy]
        result = train_head(initial, current, engine.backbone, engine.load, triplets, catalog,
                            args.out / "index" / "training", config)
        regions = [crop_region(engine.load(q["path"]), box) for q, box in zip(held, boxes)]
        with torch.no_grad():
            learned = result.head.box(torch.from_numpy(np.asarray(held_maps, np.float32))).numpy()
        iou = np.mean([box_iou(_in_photo(box, region), true) for box, region, true in zip(learned, regions, true_boxes)])
        print(f"{name:<52}{result.triplets:>9}{result.recall:>13.3f}"
              f"{_recall(Embedder.of(result.head), held_maps, catalog_maps, truth, items):>16.3f}{iou:>9.3f}", flush=True)


def _boxed(engine: Engine, catalog, log_path: Path, policy: TrustPolicy, held: list[dict], cache: Path) -> tuple:
    """As `snapshop train` does: the box learned from the log's clicks, the triplets boxed again
    with it; and the held-out photos boxed with it (their crops' feature maps, and the boxes)."""
    clicks = read_click_log(log_path, engine.store.existing_items)
    triplets = mine_triplets(clicks.impressions, policy)
    objectness, _ = learn_objectness(engine.encoder, engine.load, triplets, catalog, progress=True)
    triplets = relocated(engine.encoder, objectness, engine.load, triplets, progress=True)
    found = found_boxes(engine.encoder, objectness, engine.load, [str(q["path"]) for q in held], progress=True)
    boxes = [found[str(q["path"])] for q in held]
    held_maps, _ = MapCache(engine.backbone, cache, "heldout").build([(q["path"], b) for q, b in zip(held, boxes)],
                                                                     engine.load, progress=True)
    return triplets, held_maps, boxes


def _in_photo(box: np.ndarray, region: tuple[int, int, int, int]) -> list[float]:
    """A box in 0-1 of a crop, in the pixels of the photo the crop was cut from."""
    x0, y0, x1, y1 = region
    return [x0 + box[0] * (x1 - x0), y0 + box[1] * (y1 - y0), x0 + box[2] * (x1 - x0), y0 + box[3] * (y1 - y0)]


def _recall(model: Embedder, queries: np.ndarray, catalog: np.ndarray, truth: np.ndarray, items: np.ndarray) -> float:
    """recall@1 of exact float search: the nearest catalog image's item is the true one."""
    with torch.no_grad():
        gallery = torch.cat([model.catalog(torch.from_numpy(np.asarray(catalog[s : s + 512], np.float32)))
                             for s in range(0, len(catalog), 512)])
        found = torch.cat([model.query(torch.from_numpy(np.asarray(queries[s : s + 512], np.float32)))
                           for s in range(0, len(queries), 512)])
    return float(np.mean(items[(found @ gallery.T).argmax(dim=1).numpy()] == truth))

if __name__ == "__main__":
    main()
