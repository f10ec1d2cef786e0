"""Category accuracy: the top of the backbone fine-tuned for the category vs the linear classifier
on its frozen features, trained on the same crops and measured on the same query photos.

The training crops are what an index fits its category model on (`models.fitting`): each
catalog image's product crop, and `--views` synthetic views per image (`models.augment`, the
generic backgrounds shipped with the package) cut to their jittered true box and to the box the
index's localizer finds. The query photos are cut to their true box and to the box the index's
localizer finds (what the pipeline classifies).

- linear: logistic regression on the 3x3 regional layout of the pretrained maps (what
  `snapshop add` fits below `category_network_from` labelled images);
- network: `models.category_net`, EfficientNet-Lite0's last blocks and head convolution
  fine-tuned with a new linear layer for `--epochs` (what `snapshop add` fits from there on).
  Here it is trained on every crop; `add` holds a fifth of the images out to choose alpha.

    .venv/bin/python bench/category_finetune.py --catalog bench/out/clicks/catalog/manifest.jsonl \
        --queries bench/out/clicks/heldout/queries.jsonl --index bench/out/clicks/index
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from snapshop.catalog.images import load_image
from snapshop.models.augment import generic_photos, jitter_box, product_box, synthetic_view
from snapshop.models.backbone import Backbone, default_cache_dir
from snapshop.models.category_net import fit_category_network, front_backbone, top_probabilities
from snapshop.models.encoder import crop
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

BATCH = 32


def training_crops(rows: list[dict], root: Path, engine: Engine, views: int, seed: int):
    """(crop, category): per catalog image its product crop, then per view the true-box and found-box crops."""
    rng = np.random.default_rng(seed)
    scenes = generic_photos()
    for row in rows:
        image = load_image(root / row["image"])
        box = product_box(image)
        crops = [crop(image, box) if box is not None else image]
        made = [synthetic_view(image, scenes[rng.integers(len(scenes))], rng) for _ in range(views)]
        found = engine.encoder.locate([view.image for view in made])
        for view, boxes in zip(made, found):
            crops += [crop(view.image, jitter_box(view.box, view.image.size, rng)), crop(view.image, boxes[0])]
        for one in crops:
            yield one, row["category"]


def query_crops(rows: list[dict], root: Path, engine: Engine, which: str):
    """(crop, category) per query photo: the crop of its true box or of the box the index's localizer finds."""
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        images = [load_image(root / row["image"]) for row in batch]
        found = engine.encoder.locate(images) if which == "box found" else [[row["box"]] for row in batch]
        for image, row, boxes in zip(images, batch, found):
            yield crop(image, boxes[0]), row["category"]


def described(labelled, engine: Engine, front: Backbone, total: int, desc: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Per crop of a stream of (crop, label): the frozen blocks' maps (float16), the index
    backbone's regional layout (what the linear classifier reads), and the labels."""
    fronts, layouts, labels, pending = [], [], [], []

    def flush() -> None:
        fronts.append(front.feature_maps(pending).astype(np.float16))
        layouts.append(engine.encoder.describe_regions(pending).layout.astype(np.float16))
        pending.clear()

    for crop_image, label in tqdm(labelled, total=total, desc=desc, unit="crop"):
        pending.append(crop_image)
        labels.append(label)
        if len(pending) == BATCH:
            flush()
    if pending:
        flush()
    return np.concatenate(fronts), np.concatenate(layouts), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=Path("bench/out/clicks/catalog/manifest.jsonl"))
    parser.add_argument("--queries", type=Path, default=Path("bench/out/clicks/heldout/queries.jsonl"))
    parser.add_argument("--index", type=Path, default=Path("bench/out/clicks/index"),
                        help="an index of that catalog (EfficientNet-Lite0): its localizer boxes the views and "
                             "the queries, its backbone describes them for the linear classifier")
    parser.add_argument("--views", type=int, default=2, help="synthetic views per catalog image")
    parser.add_argument("--epochs", type=int, default=load_settings().category_epochs,
                        help="fine-tuning epochs of the network (default: what `snapshop add` uses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/category_finetune.json"))
    args = parser.parse_args()

    catalog_rows = [json.loads(line) for line in args.catalog.read_text().splitlines() if line.strip()]
    query_rows = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    classes = sorted({row["category"] for row in catalog_rows + query_rows})
    engine = Engine.open(args.index, load_settings())
    front = front_backbone(default_cache_dir())

    train_fronts, train_layouts, train_labels = described(
        training_crops(catalog_rows, args.catalog.parent, engine, args.views, args.seed), engine, front,
        len(catalog_rows) * (1 + 2 * args.views), "training crops")
    train_y = np.searchsorted(classes, train_labels)
    tests = {}
    for which in ("true box", "box found"):
        fronts, layouts, labels = described(query_crops(query_rows, args.queries.parent, engine, which), engine, front,
                                            len(query_rows), f"queries, {which}")
        tests[which] = (fronts, layouts.astype(np.float32), np.searchsorted(classes, labels))

    started = time.perf_counter()
    linear = LogisticRegression(C=1.0, max_iter=2000).fit(train_layouts.astype(np.float32), train_y)
    linear_s = time.perf_counter() - started
    started = time.perf_counter()
    top = fit_category_network(train_fronts, train_y, len(classes), epochs=args.epochs, seed=args.seed, progress=True)
    network_s = time.perf_counter() - started
    result = {"training_crops": len(train_y), "queries": len(query_rows), "epochs": args.epochs,
              "fit_seconds": {"linear": round(linear_s, 1), "network": round(network_s, 1)},
              "linear": {which: float(linear.score(lay, y)) for which, (_, lay, y) in tests.items()},
              "network": {which: float((top_probabilities(top, f).argmax(1) == y).mean())
                          for which, (f, _, y) in tests.items()}}
    print(f"{len(train_y)} training crops, {len(query_rows)} queries; category accuracy of the classifier alone:")
    print("| classifier | true box | box found | fit |\n|---|---:|---:|---:|")
    for name in ("linear", "network"):
        print(f"| {name} | {result[name]['true box']:.3f} | {result[name]['box found']:.3f} | "
              f"{result['fit_seconds'][name]:.0f} s |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
