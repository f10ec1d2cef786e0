"""Learning from clicks, end to end, on SIMULATED data (issue 5's acceptance run).

    .venv/bin/python bench/clicks.py [--loss triplet]   # ~1.5 h on 2 cores; steps already done are reused

1. The demo catalog (2,000 Fashion-MNIST *test* items) indexed with the pretrained model.
2. SIMULATED shopper photos: 20,000 for the click log on half of the background photos
   (seed 101), 1,000 held out on the other half (seed 202): other backgrounds, other seed.
3. Every training photo searched once with the pretrained model; two SIMULATED click logs
   from those result pages: clean (no wrong clicks) and noisy (20% of clicks on a wrong item).
4. `snapshop train` on each log (new versions, not activated), timed.
5. One evaluation of every version on the held-out photos, side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_shopper_queries, list_background_photos
from snapshop.learn.loop import train_from_clicks
from snapshop.learn.simulate import ResultPage, ShopperModel, search_pages, write_shoppers
from snapshop.learn.train import TrainConfig
from snapshop.search.engine import Engine
from snapshop.search.evaluate import evaluate
from snapshop.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/clicks"))
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--impressions", type=int, default=20000)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--loss", choices=("triplet", "npair"), default="npair", help="snapshop train --loss")
    args = parser.parse_args()
    out: Path = args.out
    backgrounds = list_background_photos()
    training_backgrounds, held_out_backgrounds = backgrounds[0::2], backgrounds[1::2]
    if not (out / "catalog" / "manifest.jsonl").is_file():
        build_fashion_catalog(out / "catalog", n_items=args.items)
    if not (out / "heldout" / "queries.jsonl").is_file():
        build_shopper_queries(out / "catalog", out / "heldout", n_queries=args.held_out, seed=202,
                              backgrounds=held_out_backgrounds)
    settings = load_settings({"index": out / "index"})
    if not (out / "index" / "manifest.json").is_file():
        engine = Engine.open_or_create(out / "index", settings)
        engine.add(read_catalog(out / "catalog" / "manifest.jsonl"), progress=True)
        engine.close()
    if not (out / "train_photos" / "queries.jsonl").is_file():
        build_shopper_queries(out / "catalog", out / "train_photos", n_queries=args.impressions, seed=101,
                              backgrounds=training_backgrounds)
    pages = _pages(out, settings)
    results = {"machine_ms_per_search": _machine_speed(out, settings)}
    for name, noise in (("clean", 0.0), ("noisy", args.noise)):
        log_path = out / f"clicks-{name}.jsonl"
        report = write_shoppers(pages, log_path, model=ShopperModel(noise=noise), seed=7)
        print(f"{name} SIMULATED log: {json.dumps(report.to_json())}", flush=True)
        trained = _trained_on(out, settings, log_path, TrainConfig(loss=args.loss))
        if trained is not None:  # a run stopped after this training: its version stands (training is deterministic)
            results[name] = {**trained, "train_wall_s": None, "log": report.to_json()}
            print(f"{name}: version {trained['version']} already trained on {log_path}, reused", flush=True)
            continue
        began = time.perf_counter()
        summary = train_from_clicks(settings, log_path, config=TrainConfig(loss=args.loss), switch="never",
                                    progress=True)
        summary["train_wall_s"] = round(time.perf_counter() - began, 1)
        summary["log"] = report.to_json()
        results[name] = summary
        print(f"{name}: version {summary['version']}, {summary['train_wall_s']} s, held-out (log) recall@1 "
              f"{summary['baseline_recall@1']} -> {summary['recall@1']}", flush=True)
    results["eval"] = _evaluate_versions(out, settings)
    (out / "result.json").write_text(json.dumps(results, indent=2))
    _print_table(results)


def _pages(out: Path, settings) -> list[ResultPage]:
    """The pretrained model's result pages for the training photos (cached: the slow part)."""
    cache = out / "pages.jsonl"
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        return [ResultPage(Path(r["query_image"]), r["true_item"], r["box"], [tuple(h) for h in r["hits"]]) for r in rows]
    engine = Engine.open(out / "index", settings)
    began = time.perf_counter()
    pages, errors = search_pages(engine, out / "train_photos" / "queries.jsonl", progress=True)
    print(f"searched {len(pages)} SIMULATED photos in {time.perf_counter() - began:.0f} s ({errors} errors)")
    engine.close()
    cache.write_text("".join(json.dumps({"query_image": str(p.query_image), "true_item": p.true_item, "box": p.box,
                                         "hits": p.hits}) + "\n" for p in pages))
    return pages


def _machine_speed(out: Path, settings, photos: int = 200) -> float:
    """ms per search of the first training photos with the pretrained model: how fast this machine
    is today (it has varied 5x between runs), to read the training time by."""
    engine = Engine.open(out / "index", settings)
    began = time.perf_counter()
    search_pages(engine, out / "train_photos" / "queries.jsonl", limit=photos)
    engine.close()
    speed = round((time.perf_counter() - began) * 1000 / photos, 1)
    print(f"machine speed today: {speed} ms per search ({photos} SIMULATED training photos; 34 on the fastest day)",
          flush=True)
    return speed


def _trained_on(out: Path, settings, log_path: Path, config: TrainConfig) -> dict | None:
    """The training summary of the version already trained on `log_path` with `config`, if any."""
    engine = Engine.open(out / "index", settings)
    versions = engine.versions
    engine.close()
    for entry in versions:
        training = entry["training"] or {}
        if training.get("click_log") == str(log_path) and training["config"] == asdict(config):
            return {"version": entry["version"], **training}
    return None


def _evaluate_versions(out: Path, settings) -> dict:
    engine = Engine.open(out / "index", settings)
    outcomes = {}
    for entry in engine.versions:
        folder = engine.folder.version(entry["version"])
        version_engine = Engine(folder, settings, folder.read_manifest())
        outcomes[entry["version"]] = {"model": entry["model"], "training": (entry["training"] or {}).get("click_log"),
                                      **evaluate(version_engine, out / "heldout" / "queries.jsonl", baseline=False,
                                                 progress=True)["pipeline"]}
        version_engine.close()
    return outcomes


def _print_table(results: dict) -> None:
    rows = results["eval"]
    base = next(iter(rows.values()))
    print(f"\n{'version':<18}{'trained on':<28}{'recall@1':>9}{'recall@10':>10}{'box IoU':>9}{'category':>9}  gain@1")
    for version, row in rows.items():
        trained = Path(row["training"]).name if row["training"] else "pretrained"
        gain = row["recall@1"] / base["recall@1"] - 1 if base["recall@1"] else float("nan")
        print(f"{version:<18}{trained:<28}{row['recall@1']:>9.3f}{row['recall@10']:>10.3f}{row['box_iou']:>9.3f}"
              f"{row['category_accuracy']:>9.3f}  {gain:+.0%}")
    print(f"machine speed: {results['machine_ms_per_search']} ms per search")
    for name in ("clean", "noisy"):
        wall = results[name]["train_wall_s"]
        print(f"train {name}: " + (f"{wall:.0f} s wall" if wall is not None else "reused from an earlier run"))


if __name__ == "__main__":
    main()
