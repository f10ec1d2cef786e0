"""Training the click head on cached backbone feature maps.

The backbone stays frozen up to its last feature map: every query crop and catalog image
goes through it once, and its feature maps are cached (float16, memory-mapped) for the
epochs that follow, so an epoch costs only the head (whose cell refiner fine-tunes the top
of the backbone on those maps). Each batch takes the triplets' anchors, their clicked items and
the items skipped next to them; the loss is the N-pair loss over the skipped items and the
other clicked items of the batch (the default), or the triplet loss on the hardest of those
negatives (online hard mining, FaceNet). A held-out part of the log (by photo) measures
recall@1 of the clicked item against every cached catalog image, for the current model and
after each epoch; the best epoch is kept. Checkpoints after each epoch make a run resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm import tqdm

from snapshop.errors import SnapshopError
from snapshop.learn.mining import Triplet, held_out
from snapshop.learn.model import ClickHead
from snapshop.models.backbone import Backbone
from snapshop.models.encoder import crop
from snapshop.models.pooling import layout

log = logging.getLogger(__name__)

MAX_CATALOG_IMAGES = 20_000  # catalog images cached for training and held-out ranking
MAX_CATEGORY_EXAMPLES = 3000  # query crops kept as category examples
EVAL_BATCH = 512


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 1e-3
    margin: float = 0.1
    loss: str = "npair"  # or "triplet"; N-pair measured better (docs/benchmarks.md)
    temperature: float = 0.05  # of the N-pair loss
    refine: int = 128  # hidden units of the head's cell refiner (0: a linear head); measured in docs/benchmarks.md
    held_out: float = 0.1  # share of the photos kept for evaluation
    seed: int = 0


@dataclass
class TrainResult:
    head: ClickHead
    baseline_recall: float  # held-out recall@1 of the current model
    recall: float  # held-out recall@1 of the best epoch
    history: list[dict] = field(default_factory=list)
    triplets: int = 0
    held_out_triplets: int = 0
    skipped_photos: int = 0
    seconds: float = 0.0
    category_layouts: np.ndarray | None = None  # query crops' regional layouts, labelled by the clicked item
    category_labels: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-safe: recall is None when no click was held out."""
        rounded = lambda value: None if np.isnan(value) else round(value, 4)
        return {"baseline_recall@1": rounded(self.baseline_recall), "recall@1": rounded(self.recall),
                "triplets": self.triplets, "held_out_triplets": self.held_out_triplets,
                "skipped_photos": self.skipped_photos, "seconds": round(self.seconds, 1), "history": self.history}


class MapCache:
    """Backbone feature maps of image crops, computed once, kept float16 in a memory-mapped file."""

    def __init__(self, backbone: Backbone, folder: Path, name: str) -> None:
        self.backbone = backbone
        self.folder = folder
        self.name = name

    def build(self, crops: Sequence[tuple[Path | str, list[int] | None]], load: Callable[[Path | str], Image.Image],
              *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Maps of each (image, box) crop: (N' x C x h x w float16 memmap, the N' positions read)."""
        key = hashlib.sha1(json.dumps([[str(p), b] for p, b in crops]).encode()).hexdigest()[:16]
        path, kept_path = self.folder / f"{self.name}-{key}.f16", self.folder / f"{self.name}-{key}.kept.npy"
        shape_path = self.folder / f"{self.name}-{key}.shape.json"
        if path.is_file() and kept_path.is_file() and shape_path.is_file():
            return np.memmap(path, np.float16, "r", shape=tuple(json.loads(shape_path.read_text()))), np.load(kept_path)
        self.folder.mkdir(parents=True, exist_ok=True)
        chunks, kept = [], []
        step = self.backbone.batch_size
        for start in tqdm(range(0, len(crops), step), desc=f"feature maps ({self.name})", unit="batch",
                          disable=not progress):
            images = []
            for position in range(start, min(start + step, len(crops))):
                source, box = crops[position]
                try:
                    image = load(source)
                except SnapshopError as exc:
                    log.info("skipped %s: %s", source, exc)
                    continue
                images.append(crop(image, box) if box else image)
                kept.append(position)
            if images:
                chunks.append(self.backbone.feature_maps(images).astype(np.float16))
        maps = np.concatenate(chunks) if chunks else np.zeros((0, 1, 1, 1), np.float16)
        scratch = path.with_suffix(".tmp")
        stored = np.memmap(scratch, np.float16, "w+", shape=maps.shape)
        stored[:] = maps
        stored.flush()
        del stored
        scratch.replace(path)
        np.save(kept_path, np.array(kept, np.int64))
        shape_path.write_text(json.dumps(list(maps.shape)))
        return np.memmap(path, np.float16, "r", shape=maps.shape), np.array(kept, np.int64)


@dataclass(frozen=True)
class Embedder:
    """A model as training sees it: feature maps of query crops and of catalog crops to embeddings."""

    query: Callable[[torch.Tensor], torch.Tensor]
    catalog: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, head: ClickHead) -> "Embedder":
        return cls(lambda maps: head(maps)[0], head.embed_product)


@dataclass
class CatalogImages:
    """The catalog side of training: image sources and boxes, their item ids and categories."""

    sources: list[str]
    boxes: list[list[int] | None]
    item_ids: list[str]
    categories: dict[str, str]


def train_head(initial: ClickHead, current: "Embedder", backbone: Backbone,
               load: Callable[[Path | str], Image.Image], triplets: list[Triplet], catalog: CatalogImages,
               workdir: Path, config: TrainConfig = TrainConfig(), *, progress: bool = False) -> TrainResult:
    """Train a copy of `initial` on the triplets; `current` embeds maps with the model in use (the baseline)."""
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    cache = workdir / "maps"
    anchor_maps, kept = MapCache(backbone, cache, "queries").build(
        [(t.query_image, t.box) for t in triplets], load, progress=progress)
    skipped_photos = len(triplets) - len(kept)
    triplets = [triplets[i] for i in kept]
    wanted_items = {t.positive for t in triplets} | {n for t in triplets for n in t.negatives}
    chosen = _catalog_sample(catalog, wanted_items, rng)
    catalog_maps, kept_images = MapCache(backbone, cache, "catalog").build(
        [(catalog.sources[i], catalog.boxes[i]) for i in chosen], load, progress=progress)
    image_items = np.array([catalog.item_ids[chosen[i]] for i in kept_images])
    images_of: dict[str, list[int]] = {}
    for row, item in enumerate(image_items):
        images_of.setdefault(item, []).append(row)
    usable = [i for i, t in enumerate(triplets) if t.positive in images_of]
    is_held = np.array([held_out(triplets[i], config.held_out) for i in usable], bool)
    train_rows = [usable[i] for i in np.flatnonzero(~is_held)]
    held_rows = [usable[i] for i in np.flatnonzero(is_held)]
    if not train_rows:
        raise SnapshopError("no click in the log can be used for training (no trusted click on an indexed item)")

    def held_recall(model: Embedder) -> float:
        if not held_rows:
            return float("nan")
        with torch.no_grad():
            gallery = torch.cat([model.catalog(_tensor(catalog_maps[s : s + EVAL_BATCH]))
                                 for s in range(0, len(catalog_maps), EVAL_BATCH)])
            queries = torch.cat([model.query(_tensor(anchor_maps[held_rows[s : s + EVAL_BATCH]]))
                                 for s in range(0, len(held_rows), EVAL_BATCH)])
            best = (queries @ gallery.T).argmax(dim=1).numpy()
        return float(np.mean([image_items[b] == triplets[r].positive for b, r in zip(best, held_rows)]))

    baseline = held_recall(current)
    head = initial.with_refiner(config.refine)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    checkpoint = workdir / "checkpoint.pt"
    run_key = hashlib.sha1(json.dumps([asdict(config), [t.line for t in triplets], len(catalog_maps)]).encode()
                           + b"".join(value.tobytes() for value in initial.to_arrays().values())).hexdigest()
    start_epoch, history, best_state, best_recall = 0, [], head.state_dict(), held_recall(Embedder.of(head))
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("run") == run_key:
            head.load_state_dict(saved["head"])
            optimizer.load_state_dict(saved["optimizer"])
            start_epoch, history = saved["epoch"], saved["history"]
            best_state, best_recall = saved["best_state"], saved["best_recall"]
            log.info("resuming training at epoch %d", start_epoch + 1)
    for epoch in range(start_epoch, config.epochs):
        order = rng.permutation(train_rows)
        losses = []
        head.train()
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"training epoch {epoch + 1}/{config.epochs}", unit="batch",
                          disable=not progress):
            rows = order[start : start + config.batch_size]
            loss = _batch_loss(head, rows, triplets, anchor_maps, catalog_maps, images_of, config, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        head.eval()
        recall = held_recall(Embedder.of(head))
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5),
                        "held_out_recall@1": None if np.isnan(recall) else round(recall, 4)})
        if not held_rows or recall >= best_recall:
            best_state, best_recall = {k: v.clone() for k, v in head.state_dict().items()}, recall
        torch.save({"run": run_key, "head": head.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "history": history, "best_state": best_state, "best_recall": best_recall}, checkpoint)
        log.info("epoch %d: loss %.4f, held-out recall@1 %.3f", epoch + 1, np.mean(losses), recall)
    head.load_state_dict(best_state)
    head.eval()
    layouts, labels = _category_examples(anchor_maps, triplets, catalog.categories, rng)
    return TrainResult(head, baseline, best_recall, history, len(train_rows), len(held_rows), skipped_photos,
                       time.perf_counter() - began, layouts, labels)


def _batch_loss(head: ClickHead, rows: np.ndarray, triplets: list[Triplet], anchor_maps: np.ndarray,
                catalog_maps: np.ndarray, images_of: dict[str, list[int]], config: TrainConfig,
                rng: np.random.Generator) -> torch.Tensor:
    """Triplet (hardest negative) or N-pair loss of one batch."""
    batch = [triplets[r] for r in rows]
    items = list(dict.fromkeys([t.positive for t in batch] + [n for t in batch for n in t.negatives if n in images_of]))
    picked = [int(rng.choice(images_of[item])) for item in items]
    anchors = head(_tensor(anchor_maps[rows]))[0]
    gallery = head.embed_product(_tensor(catalog_maps[picked]))
    column = {item: i for i, item in enumerate(items)}
    similarity = anchors @ gallery.T  # B x items
    positive = torch.tensor([column[t.positive] for t in batch])
    allowed = torch.ones_like(similarity, dtype=torch.bool)
    allowed[torch.arange(len(batch)), positive] = False  # the clicked item is not a negative
    if config.loss == "npair":
        logits = similarity / config.temperature
        return F.cross_entropy(logits, positive)
    positive_score = similarity[torch.arange(len(batch)), positive]
    hardest = similarity.masked_fill(~allowed, -2.0).max(dim=1).values
    return F.relu(config.margin + hardest - positive_score).mean()


def _catalog_sample(catalog: CatalogImages, wanted: set[str], rng: np.random.Generator) -> list[int]:
    """Catalog images to cache: every image of the items in the log, then others up to the cap."""
    needed = [i for i, item in enumerate(catalog.item_ids) if item in wanted]
    others = [i for i, item in enumerate(catalog.item_ids) if item not in wanted]
    room = max(0, MAX_CATALOG_IMAGES - len(needed))
    extra = rng.choice(others, min(room, len(others)), replace=False).tolist() if others else []
    return sorted(needed + extra)


def _category_examples(anchor_maps: np.ndarray, triplets: list[Triplet], categories: dict[str, str],
                       rng: np.random.Generator) -> tuple[np.ndarray | None, list[str]]:
    """Regional layouts of query crops labelled with their clicked item's category."""
    labelled = [i for i, t in enumerate(triplets) if categories.get(t.positive)]
    if not labelled:
        return None, []
    chosen = np.sort(rng.choice(labelled, min(MAX_CATEGORY_EXAMPLES, len(labelled)), replace=False))
    layouts = np.concatenate([layout(np.asarray(anchor_maps[chosen[s : s + 256]], np.float32))
                              for s in range(0, len(chosen), 256)])
    return layouts.astype(np.float16), [categories[triplets[i].positive] for i in chosen]


def _tensor(maps: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(maps, np.float32))
