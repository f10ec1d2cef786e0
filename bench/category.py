"""Where category accuracy is lost: localization or classification, classifier or kNN vote.

    .venv/bin/python bench/category.py [--index bench/out/quality/index-simulated-gem-1]
                                       [--queries bench/out/quality/queries/queries.jsonl]

Reads an index that `bench/quality.py` built (Fashion-MNIST catalog) and its SIMULATED
shopper photos, and prints, for the crop of the main box the pipeline searches, of the true box
(perfect localization) and of the whole photo: the accuracy of the classifier alone, of
the kNN vote alone and of their fusion with the index's alpha, plus the box IoU. The kNN
vote here is exact float search over every catalog image, not the index's shortlist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from snapshop.models.category import fuse, knn_vote
from snapshop.models.encoder import crop
from snapshop.models.localize import box_iou
from snapshop.search.engine import Engine, _classifier_input
from snapshop.search.evaluate import read_queries
from snapshop.search.results import Query
from snapshop.settings import load_settings

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("bench/out/quality/index-simulated-gem-1"))
    parser.add_argument("--queries", type=Path, default=Path("bench/out/quality/queries/queries.jsonl"))
    args = parser.parse_args()
    settings = load_settings({"index": str(args.index)})
    engine = Engine.open(settings.index, settings)
    model = engine.category_model
    if model is None or (model.classifier is None and model.network is None):
        raise SystemExit(f"{args.index}: no category classifier in this index")
    queries = [q for q in read_queries(args.queries) if q.get("category") and q.get("box")]
    images = [engine.load(q["path"]) for q in queries]
    truth = np.searchsorted(model.classes, [q["category"] for q in queries])
    found = [result.boxes[0] for start in range(0, len(queries), BATCH)  # the main box the pipeline searches
             for result in engine.search([Query(q["path"], q["path"]) for q in queries[start : start + BATCH]], k=1)]
    _, descriptors, labels = engine.store.descriptors()
    catalog = engine.codec.encode(descriptors)[0]
    catalog_truth = np.searchsorted(model.classes, labels)
    print(f"classifier: {'fine-tuned network' if model.network is not None else 'linear'}")
    print(f"{len(queries)} SIMULATED queries against {len(descriptors)} catalog images; alpha = {model.alpha:.2f}")
    print(f"box IoU of the boxes found: {np.mean([box_iou(b.as_list(), q['box']) for b, q in zip(found, queries)]):.3f}")
    print("| crop | classifier | kNN vote | fused |\n|---|---|---|---|")
    crops = {"box found": found, "true box": [q["box"] for q in queries], "whole photo": [None] * len(queries)}
    for name, boxes in crops.items():
        shown = [image if box is None else crop(image, box) for image, box in zip(images, boxes)]
        described = [engine.encoder.describe_regions(shown[start : start + BATCH]) for start in range(0, len(shown), BATCH)]
        p_model = (model.network.probabilities(shown) if model.network is not None else
                   np.concatenate([model.classifier.predict_proba(_classifier_input(model.classifier, d)) for d in described]))
        sims = np.concatenate([engine.codec.encode(d.pooled)[0] for d in described]) @ catalog.T
        nearest = np.argsort(-sims, axis=1)[:, : settings.category_knn]
        p_search = knn_vote(catalog_truth[nearest], np.take_along_axis(sims, nearest, 1), model.classes)
        accuracy = [(p.argmax(axis=1) == truth).mean() for p in (p_model, p_search, fuse(p_model, p_search, model.alpha))]
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |")
    engine.close()


if __name__ == "__main__":
    main()
