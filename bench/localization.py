"""Localization: the objectness models an index can fit, on the same synthetic views, measured
on the same SIMULATED shopper photos by the IoU of the main box with the true box.

The views are what `snapshop add` fits objectness on (`models.fitting`): catalog products
pasted on the generic backgrounds shipped with the package (`models.augment`), not the
shopper-photo simulator's backgrounds. Both models read the index backbone's feature map at
`detect_size`, and both box with `CellObjectness.boxes`.

- SCDA: the channel sum of the map, no fitting (what an index without views uses);
- Fisher: Fisher's discriminant per cell (`ObjectnessModel`, what indexes used before);
- context: `ContextObjectness`, a small convolutional net over each cell and its neighbours.

    .venv/bin/python bench/localization.py --catalog bench/out/clicks/catalog/manifest.jsonl \
        --queries bench/out/clicks/heldout/queries.jsonl --index bench/out/clicks/index
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from snapshop.catalog.images import load_image
from snapshop.models.augment import generic_photos, is_clean_shot, synthetic_view
from snapshop.models.localize import ContextObjectness, ObjectnessModel, box_iou, find_boxes
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

BATCH = 32
AREA_BUCKETS = [(0.0, 0.03), (0.03, 0.08), (0.08, 0.15), (0.15, 1.0)]  # true box, as a share of the photo


def fitted_models(engine: Engine, rows: list[dict], root: Path, views: int, seed: int) -> dict[str, object]:
    """Fisher and context objectness fitted on `views` synthetic views of each catalog image."""
    rng = np.random.default_rng(seed)
    scenes = generic_photos()
    fisher, context = ObjectnessModel(), ContextObjectness(max_views=len(rows) * views, seed=seed)
    for start in tqdm(range(0, len(rows), BATCH), desc="synthetic views", unit="batch"):
        images = [load_image(root / row["image"]) for row in rows[start : start + BATCH]]
        images = [image for image in images if is_clean_shot(image) for _ in range(views)]
        made = [synthetic_view(image, scenes[rng.integers(len(scenes))], rng) for image in images]
        maps = engine.encoder.backbone.feature_maps([view.image for view in made], engine.settings.detect_size)
        for model in (fisher, context):
            model.partial_fit(maps, [view.mask for view in made])
    started = time.perf_counter()
    context.solve(progress=True)
    print(f"context objectness trained in {time.perf_counter() - started:.0f} s")
    return {"SCDA": None, "Fisher": fisher.solve(), "context": context}


def measured(engine: Engine, models: dict[str, object], rows: list[dict], root: Path) -> dict[str, dict]:
    """Per model: mean IoU, shares of misses (IoU < 0.1) and hits (IoU >= 0.5), IoU per true-box
    size, ms per photo to box a feature map."""
    ious: dict[str, list[float]] = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    areas = []
    for start in tqdm(range(0, len(rows), BATCH), desc="query photos", unit="batch"):
        batch = rows[start : start + BATCH]
        images = [load_image(root / row["image"]) for row in batch]
        maps = engine.encoder.backbone.feature_maps(images, engine.settings.detect_size)
        for image, feature_map, row in zip(images, maps, batch):
            x0, y0, x1, y1 = row["box"]
            areas.append((x1 - x0) * (y1 - y0) / (image.width * image.height))
            for name, model in models.items():
                started = time.perf_counter()
                boxes = model.boxes(feature_map, image.size) if model is not None else find_boxes(feature_map, image.size)
                seconds[name] += time.perf_counter() - started
                ious[name].append(box_iou(boxes[0].as_list(), row["box"]))
    areas = np.array(areas)
    result = {}
    for name, values in ious.items():
        values = np.array(values)
        result[name] = {"mean_iou": round(float(values.mean()), 3), "missed": round(float(np.mean(values < 0.1)), 3),
                        "hit": round(float(np.mean(values >= 0.5)), 3),
                        "ms_per_photo": round(1000 * seconds[name] / len(values), 2),
                        "iou_by_true_area": {f"{lo}-{hi}": round(float(values[(areas >= lo) & (areas < hi)].mean()), 3)
                                             for lo, hi in AREA_BUCKETS if ((areas >= lo) & (areas < hi)).any()}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=Path("bench/out/clicks/catalog/manifest.jsonl"))
    parser.add_argument("--queries", type=Path, default=Path("bench/out/clicks/heldout/queries.jsonl"))
    parser.add_argument("--index", type=Path, default=Path("bench/out/clicks/index"),
                        help="an index of that catalog: its backbone makes the feature maps")
    parser.add_argument("--images", type=int, default=1500, help="catalog images given views")
    parser.add_argument("--views", type=int, default=2, help="synthetic views per catalog image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/localization.json"))
    args = parser.parse_args()

    catalog_rows = [json.loads(line) for line in args.catalog.read_text().splitlines() if line.strip()]
    query_rows = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    engine = Engine.open(args.index, load_settings())
    sample = np.random.default_rng(args.seed).permutation(len(catalog_rows))[: args.images]
    models = fitted_models(engine, [catalog_rows[i] for i in sorted(sample)], args.catalog.parent, args.views, args.seed)
    result = {"views": len(sample) * args.views, "queries": len(query_rows),
              "models": measured(engine, models, query_rows, args.queries.parent)}
    buckets = [f"{lo}-{hi}" for lo, hi in AREA_BUCKETS]
    print(f"{result['views']} synthetic views, {len(query_rows)} SIMULATED shopper photos; the main box:")
    print("| objectness | mean IoU | IoU < 0.1 | IoU >= 0.5 | " + " | ".join(f"IoU, true box {b} of the photo" for b in buckets)
          + " | ms/photo |\n|---|---:|---:|---:|" + "---:|" * (len(buckets) + 1))
    for name, scores in result["models"].items():
        by_area = " | ".join(f"{scores['iou_by_true_area'].get(b, float('nan')):.3f}" for b in buckets)
        print(f"| {name} | {scores['mean_iou']:.3f} | {scores['missed']:.3f} | {scores['hit']:.3f} | {by_area} | "
              f"{scores['ms_per_photo']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
