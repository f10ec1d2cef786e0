"""The loop from clicks to a new model version: `snapshop train`, `snapshop model list/use`.

Training reads the click log against the active version, mines triplets, trains the head
on cached feature maps and exports backbone + head as one ONNX file. That file becomes a
new model version: a whole index folder under `versions/`, into which every catalog item
is embedded again while searches keep using the active version. Only when the new
version holds the whole catalog is it activated, by one atomic file replace; the old
versions stay, so `snapshop model use` can roll back (bringing the version up to date with
the catalog first: items added, changed or removed meanwhile).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from snapshop.catalog.manifest import Catalog, CatalogRow
from snapshop.errors import ModelError, SnapshopError
from snapshop.index.folder import IndexFolder
from snapshop.learn.boxes import learn_objectness, relocated
from snapshop.learn.clicklog import read_click_log
from snapshop.learn.mining import TrustPolicy, mine_triplets
from snapshop.learn.model import ClickHead, load_head, save_head
from snapshop.learn.train import CatalogImages, Embedder, TrainConfig, train_head
from snapshop.models.backbone import ModelSpec, export_trained_model
from snapshop.models.pooling import pool
from snapshop.search.engine import Engine, item_fields
from snapshop.settings import Settings

log = logging.getLogger(__name__)

HEAD_FILE = "head.npz"
TRAINING_FILE = "training.json"


def train_from_clicks(settings: Settings, click_log: Path, *, config: TrainConfig = TrainConfig(),
                      policy: TrustPolicy = TrustPolicy(), output: Path | None = None, switch: str = "better",
                      progress: bool = False) -> dict:
    """Train on a click log, build the new version, activate it (`switch`: better, always, never)."""
    engine = Engine.open(settings.index, settings)
    clicks = read_click_log(click_log, engine.store.existing_items)
    triplets = mine_triplets(clicks.impressions, policy)
    if not triplets:
        raise SnapshopError(f"{click_log}: no usable click ({len(clicks.impressions)} impressions, "
                            f"{len(clicks.bad_lines)} bad lines)")
    variant = _efficientnet_variant(engine)
    initial, current = starting_point(engine)
    catalog = catalog_images(engine)
    workdir = engine.folder.root / "training"
    learned_box = learn_objectness(engine.encoder, engine.load, triplets, catalog, seed=config.seed, progress=progress)
    if learned_box is not None:  # the new version searches the crops of the learned box: train on those
        triplets = relocated(engine.encoder, learned_box[0], engine.load, triplets, progress=progress)
    result = train_head(initial, current, engine.backbone, engine.load, triplets, catalog, workdir, config,
                        progress=progress)
    scratch = workdir / "model.onnx"
    export_trained_model(result.head, scratch, variant)
    spec = ModelSpec(f"efficientnet-lite{variant}+clicks", scratch, engine.manifest.preprocessing)
    info = {"click_log": str(click_log), "simulated_log": clicks.simulated, "impressions": len(clicks.impressions),
            "bad_lines": len(clicks.bad_lines), "config": asdict(config), "policy": asdict(policy),
            "trained_from": engine.manifest.model_version, "backbone_variant": variant,
            "box_learned_on_photos": learned_box[1] if learned_box else 0, **result.summary()}
    improved = result.recall > result.baseline_recall
    folder = engine.folder.new_version_folder(spec.version)
    if folder.exists():
        raise SnapshopError(f"model version {spec.version} already exists in {engine.folder.root}")
    with folder.write_lock(for_this_thread=True):
        manifest = folder.create(spec, dim=engine.manifest.dim, bits=engine.manifest.bits, pooling=engine.manifest.pooling)
        save_head(result.head, folder.path / HEAD_FILE)
        (folder.path / TRAINING_FILE).write_text(json.dumps(info, indent=2))
        trained = Engine(folder, settings, manifest)
        trained.inherit_category_network(engine)
        if result.category_layouts is not None:
            trained.set_click_examples(result.category_layouts, result.category_labels)
        if learned_box is not None:
            trained.set_click_objectness(*learned_box)
        trained.add(Catalog(click_log, catalog_rows(engine), []), progress=progress,
                    identical=engine.store.duplicate_links())  # the same images: no need to check them again
        sync_version(engine, trained, progress=progress)  # writes that landed before the lock was taken
        activate = switch == "always" or (switch == "better" and improved)
        if activate:
            folder.activate(spec.version)
    trained.close()
    engine.close()
    standalone = output or engine.folder.root / f"trained-{spec.version}.onnx"
    shutil.copyfile(folder.model_path, standalone)
    return {"version": spec.version, "active": activate, "model_file": str(standalone), **info}


def use_version(settings: Settings, version: str, *, progress: bool = False) -> dict:
    """Bring a model version up to date with the catalog of the active one, then activate it."""
    current = Engine.open(settings.index, settings)
    target_folder = current.folder.version(version)
    with current.folder.write_lock(for_this_thread=True):
        target = Engine(target_folder, settings, target_folder.read_manifest())
        changed = sync_version(current, target, progress=progress)
        target_folder.activate(version)
    target.close()
    current.close()
    return {"version": version, **changed}


def sync_version(source: Engine, target: Engine, *, progress: bool = False) -> dict:
    """Make `target` hold exactly `source`'s items (fields, category and image files)."""
    wanted = source.store.items(source.store.item_ids())
    held = target.store.items(target.store.item_ids())
    stale = [item for item, fields in wanted.items() if _content(held.get(item)) != _content(fields)]
    gone = [item for item in held if item not in wanted]
    if stale:
        target.add(Catalog(source.folder.path, _rows({item: wanted[item] for item in stale}), []), progress=progress)
    if gone:
        target.remove(gone)
    return {"updated": len(stale), "removed": len(gone)}


def catalog_images(engine: Engine) -> CatalogImages:
    """The index's catalog images, boxes, items and categories, for training."""
    items = engine.store.items(engine.store.item_ids())
    images = engine.store.image_boxes()
    return CatalogImages([source for _, source, _ in images], [box for _, _, box in images],
                         [item for item, _, _ in images],
                         {item: fields.get("category") or "" for item, fields in items.items()})


def catalog_rows(engine: Engine) -> list[CatalogRow]:
    """The catalog an index holds, as manifest rows (to embed it again with another model)."""
    return _rows(engine.store.items(engine.store.item_ids()))


def _rows(items: dict[str, dict]) -> list[CatalogRow]:
    rows, line = [], 0
    for item_id, item in items.items():
        fields = item_fields(item)
        for source in item["images"]:
            line += 1
            rows.append(CatalogRow(line, item_id, Path(source), item.get("category"), fields))
    return rows


def _content(item: dict | None) -> tuple | None:
    if item is None:
        return None
    return tuple(sorted((key, json.dumps(value, sort_keys=True, default=str)) for key, value in item.items()
                        if key not in ("main_image", "group")))


def _efficientnet_variant(engine: Engine) -> int:
    """Which EfficientNet-Lite the index's backbone is (training re-exports it with the head)."""
    trained = engine.folder.path / TRAINING_FILE
    if trained.is_file():
        return int(json.loads(trained.read_text())["backbone_variant"])
    match = re.fullmatch(r"efficientnet-lite(\d)", engine.manifest.model_name)
    if match is None:
        raise ModelError(f"training from clicks needs an EfficientNet-Lite index; this one uses {engine.manifest.model_name}")
    return int(match.group(1))


def starting_point(engine: Engine) -> tuple[ClickHead, Embedder]:
    """The head training starts from (the current model's) and the current model itself."""
    projection = engine.codec.projection
    mean = torch.from_numpy(projection.mean_.astype(np.float32))
    components = torch.from_numpy(projection.components_.astype(np.float32))
    project = lambda vectors: F.normalize((vectors - mean) @ components, dim=1)
    head_file = engine.folder.path / HEAD_FILE
    if engine.backbone.has_head:
        if not head_file.is_file():
            raise ModelError(f"{engine.folder.path}: this model's head weights ({HEAD_FILE}) are missing; "
                             "train on an index of a plain backbone")
        previous = load_head(head_file).eval()
        return load_head(head_file), Embedder(lambda maps: project(previous(maps)[0]),
                                              lambda maps: project(previous.embed_product(maps)))
    pooling = engine.manifest.pooling
    pooled = lambda maps: project(torch.from_numpy(pool(maps.numpy(), pooling)))
    return ClickHead.from_projection(projection.mean_, projection.components_), Embedder(pooled, pooled)
